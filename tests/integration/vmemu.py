"""A cloud VM emulator: every running instance of a moto EC2 server becomes a real startd.

The elastic integration tests start it; it also runs by hand beside a booted sandbox pool::

    python -m tests.integration.vmemu --ec2 http://127.0.0.1:5000 [--never-join AMI]
        [--bare-image AMI] [-v]

For each instance that moto reports ``running`` it boots one emulated VM in the sandbox
chroot (``scripts/condor-sandbox``): its own directory, its own ``condor_master`` (and startd),
its own loopback address ``127.0.1.N`` and host name ``vmN.pool.test``. What the *image*
provides is written by the emulator (daemon list, directories, the network, the sandbox's
security, ``EC2InstanceID`` as a metadata-reading image would advertise it). Everything the
*factory* decides reaches the VM only through the instance's **user data**, applied as
cloud-init would: a ``#!`` script is run by ``/bin/sh`` as root, a ``#cloud-config`` document
gets its ``write_files`` written and its ``runcmd`` run. Paths under ``/etc/condor`` are the
VM's own (the emulator rewrites that prefix to the VM's directory, since one chroot holds every
VM); ``systemctl`` is a no-op, as HTCondor starts after the user data on these VMs.

Each emulator also plays the link-local **metadata service** (an HTTP server on 127.0.0.1):
``/<instance-id>/latest/meta-data/instance-id`` and ``.../spot/instance-action`` (404 until
``interrupt``), with IMDSv2's token ``PUT``. The user data says ``http://169.254.169.254`` as
on a cloud; the emulator rewrites that prefix to the VM's own path on its server (as it
rewrites ``/etc/condor``, and ``/sbin/poweroff``). Inside a VM ``poweroff`` / ``shutdown`` /
``halt`` power it off (its master and every process its user data started, found by the
``PILOTFACTORY_VMEMU_VM`` variable they all inherit, die; the instance is terminated) and
``iptables`` logs its arguments to the VM's ``iptables.log``. An image in ``bare_images`` has
no pool credential (no signing key, IDTOKENS only): it joins only with a token its user data
writes to ``/etc/condor/tokens.d``.

When an instance is stopped or terminated its VM dies at once (SIGKILL to the master and every
descendant: no graceful exit, ads linger until the collector expires them). When a VM powers
itself off (or its master exits by itself), the emulator ends the instance as EC2 would: by its
``InstanceInitiatedShutdownBehavior`` as moto reports it (``terminate``, or moto's default
``stop``, which is EC2's for an EBS-backed instance; a spot instance is terminated: EC2 will
not stop one of a one-time request), with EC2's state reason
``Client.InstanceInitiatedShutdown`` (``self_shutdown``). moto has no API for that reason: the
emulator sets it on moto's model when the server runs in this process (the tests'
``ThreadedMotoServer``); against a server in another process the instance ends through the
API, and says ``Client.UserInitiatedShutdown`` (the factory then sees someone else's end).
moto (5.2) ignores the shutdown behaviour of a fleet's launch template: a fleet's instance is
stopped. Chosen instances never join (no master at all: a broken image) or join late
(``join_delay``).
"""

from __future__ import annotations

import argparse
import base64
import calendar
import contextlib
import http.server
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("vmemu")

CONDOR_ETC = "/etc/condor"
CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class VM:
    """One emulated VM: the instance it stands for and its master process (if it booted)."""

    instance_id: str
    index: int
    root: Path
    image: str
    seen_at: float
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False
    user_data_rc: int | None = None
    events: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"vm{self.index}.pool.test"

    @property
    def address(self) -> str:
        return f"127.0.1.{self.index}"


def _children() -> dict[int, list[int]]:
    """Every process's children, read from /proc (the emulator kills whole trees by pid)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants: stop them first so none can fork away."""
    tree = _children()
    todo, found = [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(tree.get(p, ()))
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for p in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)


def stale_vm_masters(vm_dir: Path) -> list[int]:
    """condor_master processes of emulated VMs under ``vm_dir``'s parent, not ``vm_dir``'s."""
    prefix = f"CONDOR_CONFIG={vm_dir.parent}/vms-".encode()
    mine = f"CONDOR_CONFIG={vm_dir}/".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", "rb") as fh:
                if fh.read().strip() != b"condor_master":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if any(v.startswith(prefix) and not v.startswith(mine) for v in env):
            out.append(int(entry))
    return out


def image_config(vm: VM, cpus: int, memory: int, bare: bool = False) -> str:
    """What the emulated image bakes in: an execute node of the sandbox pool (``bare``: with
    no pool credential; only a token the user data writes lets it join)."""
    local = vm.root / "var"
    creds = ""
    if bare:
        creds = f"""\
# A bare image: no pool signing key, no host credential; IDTOKENS from its own directory only.
SEC_PASSWORD_DIRECTORY = {vm.root}/passwords.d
SEC_PASSWORD_FILE =
SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS
"""
    return (
        creds
        + f"""\
# The emulated image's HTCondor configuration (written by tests/integration/vmemu.py).
RELEASE_DIR = /usr
LOCAL_DIR = {local}
RUN = $(LOCAL_DIR)/run
LOG = $(LOCAL_DIR)/log
LOCK = $(LOCAL_DIR)/lock
SPOOL = $(LOCAL_DIR)/spool
EXECUTE = $(LOCAL_DIR)/execute
CRED_STORE_DIR = $(LOCAL_DIR)/cred_dir
ETC = {CONDOR_ETC}
BIN = $(RELEASE_DIR)/bin
LIB = $(RELEASE_DIR)/lib/condor
SBIN = $(RELEASE_DIR)/sbin
LIBEXEC = $(RELEASE_DIR)/libexec/condor
SHARE = $(RELEASE_DIR)/share/condor
use security:recommended_v9_0
use ROLE: Execute
CONDOR_HOST = 127.0.0.1
SEC_DEFAULT_AUTHENTICATION = REQUIRED
SEC_DEFAULT_INTEGRITY = REQUIRED
ALLOW_DAEMON = condor@$(UID_DOMAIN)
ALLOW_NEGOTIATOR = condor@$(UID_DOMAIN)
ALLOW_ADMINISTRATOR = root@$(UID_DOMAIN) condor@$(UID_DOMAIN)
ALLOW_WRITE = *
ALLOW_READ = *
SEC_USE_FAMILY_SESSION = False
UID_DOMAIN = pool.test
FILESYSTEM_DOMAIN = pool.test
TRUST_UID_DOMAIN = True
NETWORK_INTERFACE = {vm.address}
BIND_ALL_INTERFACES = False
ENABLE_IPV6 = False
NETWORK_HOSTNAME = {vm.host}
MOUNT_UNDER_SCRATCH =
USE_PID_NAMESPACES = False
RUNBENCHMARKS = 0
UPDATE_INTERVAL = 5
MASTER_UPDATE_INTERVAL = 5
STARTER_UPDATE_INTERVAL = 5
NUM_CPUS = {cpus}
MEMORY = {memory}
STARTD.MAXJOBRETIREMENTTIME = 3600
# The instance id, as an image's metadata lookup would advertise it.
EC2InstanceID = "{vm.instance_id}"
SEC_TOKEN_DIRECTORY = {vm.root}{CONDOR_ETC}/tokens.d
STARTD_ATTRS = $(STARTD_ATTRS) EC2InstanceID
MASTER_ATTRS = $(MASTER_ATTRS) EC2InstanceID
LOCAL_CONFIG_FILE =
LOCAL_CONFIG_DIR = {vm.root}{CONDOR_ETC}/config.d
"""
    )


METADATA_URL = "http://169.254.169.254"
VM_ENV = "PILOTFACTORY_VMEMU_VM"
POWER = ("poweroff", "shutdown", "halt")


def vm_path(vm: VM, text: str, metadata: str = "") -> str:
    """The VM's own /etc/condor and power-off: one chroot holds every VM, so the prefixes are
    rewritten; the metadata address becomes the VM's path on the emulator's server."""
    text = text.replace(CONDOR_ETC, f"{vm.root}{CONDOR_ETC}")
    for name in POWER:
        text = text.replace(f"/sbin/{name}", f"{vm.root}/bin/{name}")
    if metadata:
        text = text.replace(METADATA_URL, f"{metadata}/{vm.instance_id}")
    return text


def vm_pids(instance_id: str) -> list[int]:
    """Every process a VM started (they inherit ``VM_ENV`` from its user data and master)."""
    mark = f"{VM_ENV}={instance_id}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if mark in fh.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out


class Metadata(http.server.ThreadingHTTPServer):
    """The link-local metadata service of every VM: ``/<instance-id>/latest/...``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _MetadataHandler)
        self.notices: dict[str, dict[str, str]] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    server: Metadata

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metadata: " + format, *args)

    def _answer(self, code: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # IMDSv2: a session token
        self.server.requests.append(f"PUT {self.path}")
        ok = self.path.split("/", 2)[-1] == "latest/api/token"
        self._answer(200 if ok else 404, "emulated-imds-token" if ok else "")

    def do_GET(self) -> None:
        self.server.requests.append(f"GET {self.path}")
        _, iid, rest = (self.path.split("/", 2) + ["", ""])[:3]
        if rest == "latest/meta-data/instance-id":
            return self._answer(200, iid)
        if rest == "latest/meta-data/spot/instance-action" and iid in self.server.notices:
            return self._answer(200, json.dumps(self.server.notices[iid]))
        return self._answer(404, "Not Found")


class Emulator:
    """Watches one EC2 endpoint and keeps one emulated VM per running instance."""

    def __init__(
        self,
        client: Any,
        sandbox_root: Path,
        vm_dir: Path,
        *,
        never_join: Callable[[Mapping[str, Any]], bool] | None = None,
        join_delay: Callable[[Mapping[str, Any]], float] | None = None,
        cpus: int = 1,
        memory: int = 1024,
        interval: float = 0.5,
    ) -> None:
        self.client = client
        self.sandbox_root = sandbox_root
        self.vm_dir = vm_dir
        self.broken_images: set[str] = set()  # instances of these images never join
        self.bare_images: set[str] = set()  # images without a pool credential
        self.never_join = never_join or (lambda inst: inst.get("ImageId") in self.broken_images)
        self.join_delay = join_delay or (lambda inst: 0.0)
        self.cpus, self.memory, self.interval = cpus, memory, interval
        self.vms: dict[str, VM] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_index = 10  # 127.0.1.10 upwards
        self.metadata = Metadata()
        self._terminate_at: dict[str, float] = {}  # interrupted instances

    # ------------------------------------------------------------------ running

    def start(self) -> Emulator:
        """Start watching, after killing VMs an earlier emulator left behind (a killed test
        run): they would share this one's loopback addresses and take its payload."""
        for pid in stale_vm_masters(self.vm_dir):
            log.warning("killing an emulated VM left by an earlier run (pid %d)", pid)
            kill_tree(pid)
        threading.Thread(target=self.metadata.serve_forever, name="imds", daemon=True).start()
        self._thread = threading.Thread(target=self._loop, name="vmemu", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and kill every emulated VM (their ads expire from the collector)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self.lock:
            for vm in self.vms.values():
                self._kill(vm, "emulator stopped")
        self.metadata.shutdown()
        self.metadata.server_close()

    def interrupt(self, instance_id: str, after: float = 120) -> None:
        """A spot interruption: the notice appears at once in the instance's metadata, and
        the instance is terminated ``after`` seconds later, as the provider would."""
        at = time.time() + after
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        self.metadata.notices[instance_id] = {"action": "terminate", "time": stamp}
        with self.lock:
            self._terminate_at[instance_id] = calendar.timegm(
                time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
            )
        log.info("%s: interruption notice; terminated at %s", instance_id, stamp)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # keep emulating; the tests read .errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
                log.exception("vmemu step failed")
            self._stop.wait(self.interval)

    def instances(self) -> list[dict[str, Any]]:
        pages = self.client.get_paginator("describe_instances").paginate()
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def step(self) -> None:
        """One pass: boot what runs, kill what stopped, terminate what shut itself down."""
        now = time.time()
        with self.lock:
            due = [i for i, at in self._terminate_at.items() if at <= now]
            for iid in due:
                del self._terminate_at[iid]
                log.info("%s: interrupted: terminating", iid)
                self.client.terminate_instances(InstanceIds=[iid])
            for inst in self.instances():
                iid, state = inst["InstanceId"], inst["State"]["Name"]
                vm = self.vms.get(iid)
                if state == "running":
                    if vm is None:
                        vm = self._new_vm(inst, now)
                    if vm is not None and not vm.killed and (vm.root / "powered-off").exists():
                        self._kill(vm, "powered off from inside")
                        self.power_off(inst, "powered off")
                        continue
                    if vm.proc is None and not vm.killed:
                        if self.never_join(inst):
                            continue
                        if now - vm.seen_at >= self.join_delay(inst):
                            self._boot(vm)
                    elif vm.proc is not None and vm.proc.poll() is not None and not vm.killed:
                        vm.killed = True
                        for pid in vm_pids(iid):  # the VM is off: nothing it ran survives
                            kill_tree(pid)
                        vm.events.append(f"{now:.1f} master exited {vm.proc.returncode}")
                        self.power_off(inst, "master exited by itself")
                elif vm is not None and state in (
                    "stopping",
                    "stopped",
                    "shutting-down",
                    "terminated",
                ):
                    self._kill(vm, f"instance {state}")

    def power_off(self, inst: Mapping[str, Any], why: str) -> str:
        """The instance of a VM that powered itself off ends as EC2 ends it (see the module
        docstring); returns how (``terminate`` or ``stop``)."""
        iid = inst["InstanceId"]
        if inst.get("InstanceLifecycle") == "spot":
            how = "terminate"
        else:
            attr = self.client.describe_instance_attribute(
                InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior"
            )
            how = attr.get("InstanceInitiatedShutdownBehavior", {}).get("Value") or "stop"
        model = self._moto_instance(iid)
        if model is None:
            (self.client.terminate_instances if how == "terminate" else self.client.stop_instances)(
                InstanceIds=[iid]
            )
            log.warning("%s: %s: %s through the API (moto not in this process: no "
                        "InstanceInitiatedShutdown reason)", iid, why, how)  # fmt: skip
        else:
            from moto.ec2.models.instances import StateReason

            backend, instance = model
            (backend.terminate_instances if how == "terminate" else backend.stop_instances)([iid])
            instance.state_reason = StateReason(
                "Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                "Client.InstanceInitiatedShutdown",
            )
            log.info("%s: %s: %s", iid, why, how)
        vm = self.vms.get(iid)
        if vm is not None:
            vm.events.append(f"{time.time():.1f} {why}: {how}")
        return how

    def _moto_instance(self, iid: str) -> tuple[Any, Any] | None:
        """(backend, instance) of moto's in-process model, or None (another process)."""
        try:
            from moto.core.models import DEFAULT_ACCOUNT_ID
            from moto.ec2.models import ec2_backends
        except ImportError:
            return None
        backend = ec2_backends[DEFAULT_ACCOUNT_ID][self.client.meta.region_name]
        try:
            return backend, backend.get_instance(iid)
        except Exception:  # moto's InvalidInstanceIdError: not this process's server
            return None

    def _new_vm(self, inst: Mapping[str, Any], now: float) -> VM:
        iid = inst["InstanceId"]
        index = self._next_index
        self._next_index += 1
        vm = VM(iid, index, self.vm_dir / iid, inst.get("ImageId", ""), now)
        self.vms[iid] = vm
        return vm

    # ------------------------------------------------------------------ one VM

    def user_data(self, instance_id: str) -> str:
        attr = self.client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        raw = attr.get("UserData", {}).get("Value")
        return base64.b64decode(raw).decode() if raw else ""

    def _in_root(self, argv: list[str], env: Mapping[str, str]) -> list[str]:
        """argv run in the sandbox chroot with a clean environment (later keys win)."""
        clean = ["env", "-i", f"PATH={CHROOT_PATH}", "LANG=C.UTF-8"]
        clean += [f"{k}={v}" for k, v in env.items()]
        return [*clean, "chroot", str(self.sandbox_root), *argv]

    def _boot(self, vm: VM) -> None:
        etc = vm.root / CONDOR_ETC.lstrip("/")
        (etc / "config.d").mkdir(parents=True, exist_ok=True)
        for sub in ("run", "log", "lock", "spool", "execute", "cred_dir"):
            (vm.root / "var" / sub).mkdir(parents=True, exist_ok=True)
        # The daemons drop to the condor user: its directories are its own.
        subprocess.run(
            self._in_root(["chown", "-R", "condor:condor", str(vm.root / "var")], {}),
            check=True,
            stdin=subprocess.DEVNULL,
        )
        (vm.root / "var" / "execute").chmod(0o755)
        config = vm.root / "condor_config"
        bare = vm.image in self.bare_images
        config.write_text(image_config(vm, self.cpus, self.memory, bare))
        (vm.root / "passwords.d").mkdir(mode=0o700, exist_ok=True)
        (etc / "tokens.d").mkdir(mode=0o700, exist_ok=True)
        bindir = vm.root / "bin"
        bindir.mkdir(exist_ok=True)
        stubs = {
            "systemctl": 'echo "systemctl $*" >> "$D/systemctl.log"',
            "iptables": 'echo "iptables $*" >> "$D/iptables.log"',
            **{n: f'echo "{n} $*" >> "$D/powered-off"' for n in POWER},
        }
        for name, body in stubs.items():
            stub = bindir / name
            stub.write_text(f"#!/bin/sh\nD={vm.root}\n{body}\n")
            stub.chmod(0o755)
        vm.user_data_rc = self.apply_user_data(vm, self.user_data(vm.instance_id))
        env = {"CONDOR_CONFIG": str(config), VM_ENV: vm.instance_id}
        argv = ["/usr/sbin/condor_master", "-f", "-pidfile", str(vm.root / "master.pid")]
        out = open(vm.root / "master.out", "wb")  # noqa: SIM115 - the child keeps it
        vm.proc = subprocess.Popen(
            self._in_root(argv, env), stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        out.close()
        vm.events.append(f"{time.time():.1f} booted as {vm.host}")
        log.info("%s: booted as %s (%s)", vm.instance_id, vm.host, vm.address)

    def apply_user_data(self, vm: VM, text: str) -> int:
        """Run or apply the user data as cloud-init would; its exit status (0 when none)."""
        (vm.root / "user-data").write_text(text)
        if text.startswith("#cloud-config"):
            import yaml

            doc = yaml.safe_load(text) or {}
            for item in doc.get("write_files") or ():
                path = Path(vm_path(vm, str(item["path"])))
                if not str(path).startswith(str(vm.root)):
                    path = vm.root / "fs" / str(item["path"]).lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                content = item.get("content", "")
                if item.get("encoding") in ("b64", "base64"):
                    path.write_bytes(base64.b64decode(content))
                else:
                    path.write_text(vm_path(vm, content, self.metadata.url))
                if "permissions" in item:
                    path.chmod(int(str(item["permissions"]), 8))
            script = "\n".join(
                c if isinstance(c, str) else shlex.join(c) for c in doc.get("runcmd") or ()
            )
            if not script:
                return 0
            text = "#!/bin/sh\n" + script + "\n"
        elif not text.startswith("#!"):
            return 0  # data the VM's software would read; nothing runs it
        script_path = vm.root / "user-data.sh"
        script_path.write_text(vm_path(vm, text, self.metadata.url))
        script_path.chmod(0o755)
        # The image's own config is the default of every tool the user data runs; what it
        # leaves running carries VM_ENV, so the VM's power-off finds it.
        env = {
            "PATH": f"{vm.root}/bin:{CHROOT_PATH}",
            "HOME": "/root",
            "CONDOR_CONFIG": str(vm.root / "condor_config"),
            VM_ENV: vm.instance_id,
        }
        with open(vm.root / "user-data.log", "wb") as logf:
            rc = subprocess.run(
                self._in_root(["/bin/sh", str(script_path)], env),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                timeout=60,
                check=False,
                start_new_session=True,
            ).returncode
        if rc:
            self.errors.append(f"{vm.instance_id}: user data exited {rc}")
        return rc

    def _kill(self, vm: VM, why: str) -> None:
        if vm.killed:
            return
        vm.killed = True
        if vm.proc is not None and vm.proc.poll() is None:
            kill_tree(vm.proc.pid)
            vm.proc.wait(timeout=10)
        for pid in vm_pids(vm.instance_id):  # what the user data left running (a lease loop)
            kill_tree(pid)
        if vm.proc is not None:
            vm.events.append(f"{time.time():.1f} killed ({why})")
            log.info("%s: killed (%s)", vm.instance_id, why)

    # ------------------------------------------------------------------ for tests

    def running(self) -> list[VM]:
        with self.lock:
            return [v for v in self.vms.values() if v.proc is not None and not v.killed]

    def vm(self, instance_id: str) -> VM | None:
        with self.lock:
            return self.vms.get(instance_id)


def main(argv: list[str] | None = None) -> int:
    import boto3

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ec2", required=True, help="EC2 endpoint URL (a moto server)")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--sandbox-root", default=os.environ.get("PILOTFACTORY_SANDBOX_ROOT"))
    ap.add_argument("--vm-dir", default=None, help="where VM directories go (under the job dir)")
    ap.add_argument(
        "--never-join",
        action="append",
        default=[],
        metavar="AMI",
        help="instances of this image never start HTCondor (repeatable)",
    )
    ap.add_argument(
        "--bare-image",
        action="append",
        default=[],
        metavar="AMI",
        help="instances of this image have no pool credential (repeatable)",
    )
    ap.add_argument("--join-delay", type=float, default=0.0, help="seconds before a VM boots")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    if not args.sandbox_root:
        ap.error("--sandbox-root (or PILOTFACTORY_SANDBOX_ROOT from condor-sandbox env) is needed")
    jobdir = os.environ.get("PILOTFACTORY_SANDBOX_JOBDIR", "/tmp/pilotfactory-sandbox")
    vm_dir = Path(args.vm_dir or Path(jobdir) / f"vms-{os.getpid()}")  # "vms-": see start()
    client = boto3.client(
        "ec2",
        endpoint_url=args.ec2,
        region_name=args.region,
        aws_access_key_id="emulator",
        aws_secret_access_key="emulator",
    )
    emu = Emulator(
        client,
        Path(args.sandbox_root),
        vm_dir,
        join_delay=lambda inst: args.join_delay,
        cpus=args.cpus,
    )
    emu.broken_images.update(args.never_join)
    emu.bare_images.update(args.bare_image)
    emu.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
