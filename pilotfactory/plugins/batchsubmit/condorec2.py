"""CondorEC2: VMs started through HTCondor's grid universe (``ec2`` grid resource).

The gridmanager owns the instance: removing the VM job terminates it (or cancels the spot
request). Retiring a VM acts on its startd instead, so running payload finishes: ``drain``
(cancellable) where the slots' MaxJobRetirementTime covers a job, else ``peaceful``
(``condor_off -peaceful``). Every retire and un-retire is recorded in the job ad, because the
batch status plugin must tell "retired by us" from "vanished" after a restart.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from pilotfactory.factory.contract import (
    FINGERPRINT_ATTR,
    GRID_TAG_FACTORY,
    GRID_TAG_QUEUE,
    INTERRUPTED_AT,
    RETIRE_MODE,
    RETIRE_REQUESTED,
    UNRETIRED_AT,
    classad_string,
    mode_record,
)
from pilotfactory.factory.info import RetireMode, Worker, WorkerKind
from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import Env, QueueEnv, RetireGroup, SubmitError
from pilotfactory.factory.ports import CondorError
from pilotfactory.plugins.batchsubmit.cloud_common import render_user_data
from pilotfactory.plugins.batchsubmit.condor_common import (
    COMMON_SUBMIT_PARAMS,
    SPOT_PRICE,
    CondorSubmitBase,
    retire_vms,
    unretire_vms,
)
from pilotfactory.plugins.batchsubmit.vmlife import (
    LIFE_PARAMS,
    VMContract,
    contract_of,
    fingerprint,
    mint_token,
)
from pilotfactory.secretfiles import SecretFileError, check_private

log = logging.getLogger(__name__)


class CondorEC2Submit(CondorSubmitBase):
    """EC2 (or EC2-compatible) VMs as grid-universe jobs; retire acts on their startds."""

    NAME = "CondorEC2"
    WORKERS = WorkerKind.VM
    PARAMS = (
        *COMMON_SUBMIT_PARAMS,
        Param(
            "gridresource", str, None, "EC2 endpoint URL (grid_resource = ec2 <url>)", required=True
        ),
        Param("ami_id", str, None, "image id", required=True),
        Param("instance_type", str, None, "instance type", required=True),
        SPOT_PRICE,
        Param("user_data", str, None, "user data (one line; else use user_data_file)"),
        Param("user_data_file", str, None, "user data template, rendered per submit (etc/worker/)"),
        Param("security_groups", list, None, "security group names"),
        Param("keypair_file", str, None, "where the gridmanager writes the key pair"),
        Param(
            "access_key_id", str, None, "file holding the access key id", required=True, secret=True
        ),
        Param(
            "secret_access_key",
            str,
            None,
            "file holding the secret access key",
            required=True,
            secret=True,
        ),
        Param("peaceful", bool, None, "APF legacy key; the queue's retire_mode decides"),
        *LIFE_PARAMS,
    )

    def __init__(self, params: Mapping[str, Any], env: Env, queue: QueueEnv) -> None:
        super().__init__(params, env, queue)
        self._seq = itertools.count()
        if params.get("peaceful") is not None:
            log.info(
                "[%s] batchsubmit.condorec2.peaceful is an APF key and is ignored: the queue's "
                "retire_mode decides how VMs retire (drain, peaceful or kill)",
                queue.queue,
            )

    def credential(self, key: str) -> str:
        """A credential file must be a regular file that only its owner can access."""
        q = self.queue.queue
        path = self.params.get(key)
        if not path:
            raise SubmitError(f"queue {q}: batchsubmit.condorec2.{key} is not set")
        if self.previewing:  # show: the path is what is sent; check judges the file
            return str(path)
        try:
            return str(check_private(str(path), f"{key} file"))
        except SecretFileError as exc:
            # This plugin's long-standing wording when group/others can read the file.
            if exc.mode is not None and exc.mode & (stat.S_IRGRP | stat.S_IROTH):
                raise SubmitError(
                    f"queue {q}: {key} file {path} is readable by group/others "
                    f"(mode {exc.mode:o}); chmod 600 it"
                ) from None
            raise SubmitError(f"queue {q}: {exc}") from None

    def template(self) -> dict[str, str]:
        q = self.queue.queue
        p = self.params
        for key in ("gridresource", "ami_id", "instance_type"):
            if not p.get(key):
                raise SubmitError(f"queue {q}: batchsubmit.condorec2.{key} is not set")
        desc = {
            "universe": "grid",
            "grid_resource": f"ec2 {p['gridresource']}",
            "executable": q,
            "ec2_access_key_id": self.credential("access_key_id"),
            "ec2_secret_access_key": self.credential("secret_access_key"),
            "ec2_ami_id": p["ami_id"],
            "ec2_instance_type": p["instance_type"],
            "ec2_tag_names": f"{GRID_TAG_FACTORY}, {GRID_TAG_QUEUE}",
            f"ec2_tag_{GRID_TAG_FACTORY}": self.env.factory_id,
            f"ec2_tag_{GRID_TAG_QUEUE}": q,
        }
        if p.get("spot_price") is not None:
            desc["ec2_spot_price"] = f"{p['spot_price']:g}"
        if p.get("user_data"):
            if "\n" in p["user_data"]:
                raise SubmitError(f"queue {q}: user_data spans lines; use user_data_file")
            desc["ec2_user_data"] = p["user_data"]
        if p.get("user_data_file"):
            desc["ec2_user_data_file"] = p["user_data_file"]  # rendered by description()
        if p.get("security_groups"):
            desc["ec2_security_groups"] = ", ".join(p["security_groups"])
        if p.get("keypair_file"):
            desc["ec2_keypair_file"] = p["keypair_file"]
        return desc

    # ------------------------------------------------------------------ user data

    def description(self, now: float | None = None, create: bool = True) -> dict[str, str]:
        """The submit description; ``user_data_file`` is a template rendered once per submit
        (one cluster: no worker id is known before the grid jobs exist, so ``{worker_id}`` is
        empty and the VM joins by its ``EC2InstanceID``) into an owner-only file beside the
        queue's logs, owned like the queue's key files (the gridmanager reads both as the job
        owner). A preview shows the template's path and renders nothing.

        Each VM job carries the fingerprint (``+PilotFactoryFingerprint``): the status plugin
        reads it back from the job ad, so a change of image, type or user data marks older VMs
        drifted."""
        now = self.env.clock.now() if now is None else now
        desc = super().description(now, create)
        if fp := self.fingerprint():
            desc[f"+{FINGERPRINT_ATTR}"] = classad_string(fp)
        if not self.params.get("user_data_file") or not create or self.previewing:
            return desc
        desc["ec2_user_data_file"] = self.render_user_data(desc["initialdir"], now)
        return desc

    def contract(self, now: float, token: str = "") -> VMContract:
        ids = (self.env.factory_id, self.queue.queue, self.target.collector, self.queue.wmsqueue)
        return contract_of(self.params, "", ids, now, token)

    def mint_token(self) -> str:
        """One token for the batch (see ``CloudSubmit.mint_token``); empty without a key."""
        return mint_token(self.port, self.params, f"queue {self.queue.queue}: token")

    def render_user_data(self, directory: str, now: float) -> str:
        q, path = self.queue.queue, str(self.params["user_data_file"])
        try:
            with open(path, encoding="utf-8") as fh:
                template = fh.read()
        except OSError as exc:
            raise SubmitError(f"queue {q}: user_data_file {path}: {exc}") from None
        try:
            text = render_user_data(template, self.contract(now, self.mint_token()))
        except ValueError as exc:
            raise SubmitError(f"queue {q}: user_data_file {path} {exc}") from None
        out = os.path.join(directory, f"user-data.{int(now)}.{os.getpid()}.{next(self._seq)}")
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            owner = os.stat(str(self.params["access_key_id"]))
            if os.geteuid() == 0 and owner.st_uid != 0:
                os.chown(out, owner.st_uid, owner.st_gid)
        except OSError as exc:
            raise SubmitError(f"queue {q}: rendered user data {out}: {exc}") from None
        return out

    # ------------------------------------------------------------------ retire / unretire

    def retire(self, workers: Sequence[Worker], mode: RetireMode) -> None:
        self.retire_groups([(workers, mode)])

    def retire_groups(self, groups: Sequence[RetireGroup]) -> None:
        """The shared VM retire routine. The record is one edit per mode retired this cycle:
        the drained VMs' request time (drain, the VM default, needs no mode), the others'
        mode with its time in one value (``mode_record``). So a cycle that retires in one mode
        edits once; one that drains some VMs and retires others peacefully, twice (htcondor2's
        edit sets one value per call)."""

        def record(joined: Sequence[RetireGroup]) -> None:
            now = self.env.clock.now()
            by_mode: dict[RetireMode, list[str]] = {}
            for ws, mode in joined:
                by_mode.setdefault(mode, []).extend(w.id for w in ws)
            for mode, ids in by_mode.items():
                if mode is RetireMode.DRAIN:
                    self.port.edit(ids, RETIRE_REQUESTED, str(int(now)))
                else:
                    self.port.edit(ids, RETIRE_MODE, mode_record(mode, now))

        mine = [(self.own(ws), mode) for ws, mode in groups]
        retire_vms(self.port, mine, self.queue.queue, record, self.remove)

    def unretire(self, workers: Sequence[Worker]) -> None:
        def record(done: Sequence[Worker]) -> None:
            # One edit: the later un-retire time cancels every retire recorded before it
            # (retire_active), and a mode left behind is older than any later retire's record.
            self.port.edit([w.id for w in done], UNRETIRED_AT, str(int(self.env.clock.now())))

        unretire_vms(self.port, self.own(workers), self.queue.queue, record)

    # ------------------------------------------------------------------ the VM contract
    # (issue 18, factory side; kept apart from the user data rendering above)

    _ud_cache: tuple[tuple[int, int], str] | None = None

    def fingerprint(self) -> str | None:
        """The image, instance type, user data and collector the grid jobs launch with."""
        p = self.params
        if not p.get("ami_id") or not p.get("instance_type"):
            return None
        text = p.get("user_data") or ""
        path = p.get("user_data_file")
        if path:  # read again only when it changed (asked every cycle)
            try:
                st = os.stat(path)
                if self._ud_cache is None or self._ud_cache[0] != (st.st_mtime_ns, st.st_size):
                    with open(path, encoding="utf-8") as fh:
                        self._ud_cache = ((st.st_mtime_ns, st.st_size), fh.read())
            except OSError:
                return None
            text = self._ud_cache[1]
        return fingerprint(
            str(p["ami_id"]),
            [str(p["instance_type"])],
            text,
            collector=p.get("collectorhost") or "",
            wmsqueue=self.queue.wmsqueue,
        )

    def vacate(self, workers: Sequence[Worker]) -> None:
        """Record the interruption in the job ads (one edit), then vacate each startd."""
        mine = [w for w in self.own(workers) if w.machine]
        if not mine:
            return
        self.port.edit([w.id for w in mine], INTERRUPTED_AT, str(int(self.env.clock.now())))
        first: CondorError | None = None
        for w in mine:
            try:
                self.port.vacate(str(w.machine), "pilotfactory: spot interruption notice")
            except CondorError as exc:
                log.warning("[%s] vacate %s: %s", self.queue.queue, w.machine, exc)
                first = first or exc
        if first is not None:
            raise SubmitError(f"queue {self.queue.queue}: vacate: {first}") from first
