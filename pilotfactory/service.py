"""What ``run`` does before its first cycle: whose privileges it keeps, and that it is the only
daemon of its factory id on this host.

Two daemons with one factory id would each see the other's workers as their own and submit,
retire and reap them twice; a lock file held with ``flock`` for the life of the process (the
kernel lets go when it dies, even by ``kill -9``) makes the second one exit, saying who holds it.
A factory talks to schedds, clouds and PanDA on the network: it does not keep root's
privileges unless told to (``allowRoot``), and, as APF does, switches to ``factoryUser`` when
started as root.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pilotfactory.factory.config import FactoryConfig


class ServiceError(Exception):
    """``run`` must not start: the message says why and what to do."""


def default_lock_path(factory_id: str) -> str:
    """``/run/pilotfactory`` when it exists and is ours to write (the shipped tmpfiles entry
    makes it), else ``$XDG_RUNTIME_DIR``, else a private directory under the temp dir."""
    name = f"{factory_id}.lock"
    if os.access("/run/pilotfactory", os.W_OK):
        return os.path.join("/run/pilotfactory", name)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return os.path.join(runtime, f"pilotfactory-{name}")
    return os.path.join(tempfile.gettempdir(), f"pilotfactory-{os.getuid()}", name)


class FactoryLock:
    """An exclusive ``flock`` on the lock file, kept until ``release`` or process exit. The
    file says who holds it (pid, host, start time, command), for the one refused."""

    def __init__(self, path: str, factory_id: str) -> None:
        self.path = path
        self.factory_id = factory_id
        self.fd: int | None = None

    def acquire(self) -> None:
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise ServiceError(f"lock file {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ServiceError(
                f"factory {self.factory_id} is already running ({holder}); lock {self.path}"
            ) from None
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "argv": sys.argv[:8],
        }
        os.write(fd, (json.dumps(info) + "\n").encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _holder(fd: int) -> str:
    try:
        info: Any = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "holder unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(info.get("since", 0))))
    return f"pid {info['pid']} on {info.get('host', '?')} since {since}"


def drop_root(fcfg: FactoryConfig) -> str | None:
    """As root: switch to ``factoryUser`` (what was done, for the log), stay root with
    ``allowRoot``, else refuse. Not root: nothing (None)."""
    if os.geteuid() != 0:
        return None
    if fcfg.factory_user:
        try:
            user = pwd.getpwnam(fcfg.factory_user)
        except KeyError:
            raise ServiceError(
                f"{fcfg.source}: [Factory] factoryUser {fcfg.factory_user!r}: no such user"
            ) from None
        if user.pw_uid == 0:
            if fcfg.allow_root:
                return "running as root (factoryUser is root, allowRoot = true)"
            raise ServiceError(f"{fcfg.source}: [Factory] factoryUser is root; set allowRoot")
        os.initgroups(user.pw_name, user.pw_gid)
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
        os.environ["HOME"] = user.pw_dir
        os.environ["USER"] = os.environ["LOGNAME"] = user.pw_name
        return f"switched from root to {user.pw_name} (uid {user.pw_uid})"
    if fcfg.allow_root:
        return "running as root (allowRoot = true)"
    raise ServiceError(
        "refusing to run as root: set factoryUser in [Factory] (run switches to that user), "
        "run it as an unprivileged user, or set allowRoot = true"
    )


class Notifier:
    """systemd's notify protocol (``Type=notify``, ``WatchdogSec``), spoken directly: one
    datagram per message to ``$NOTIFY_SOCKET`` (an ``@`` name is in the abstract namespace).
    Without the variable (not under systemd) every call does nothing."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or ""
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        """The watchdog interval systemd set (seconds), or None."""

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        message = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
        # systemd gone (or the socket refused): nothing to tell, nothing to fail
        with socket.socket(socket.AF_UNIX, kind) as sock, contextlib.suppress(OSError):
            sock.sendto(message, self.address)


class Health:
    """What the daemon tells systemd after each tick: READY once the first cycle ran, a
    one-line STATUS, and WATCHDOG only while a cycle succeeded within ``unhealthy_after``
    (a cycle succeeds when at least one queue did its work; one unreachable server must not
    get the whole factory restarted, a factory that can do nothing at all should be)."""

    def __init__(self, notifier: Notifier, unhealthy_after: float, now: float) -> None:
        self.notifier = notifier
        self.unhealthy_after = unhealthy_after
        self.ready = False
        self.last_ok = now
        self.cycles = 0

    def after_tick(self, traces: Sequence[Any], now: float) -> None:
        if traces:
            self.cycles += 1
            if any(not t.failed for t in traces):
                self.last_ok = now
        fields = []
        if not self.ready and traces:
            self.ready = True
            fields.append("READY=1")
        healthy = now - self.last_ok <= self.unhealthy_after
        failed = sum(1 for t in traces if t.failed)
        status = f"{self.cycles} cycles; last tick {len(traces)} queue(s), {failed} failed; " + (
            "healthy" if healthy else f"UNHEALTHY: no queue succeeded for {now - self.last_ok:.0f}s"
        )
        fields.append(f"STATUS={status}")
        if healthy and self.ready:
            fields.append("WATCHDOG=1")
        self.notifier.send(*fields)

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping")
