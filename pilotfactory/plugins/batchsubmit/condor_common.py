"""What CondorLocal and CondorEC2 share: target, labels, log layout, the submit description.

The submit description is plain data (a dict handed to the condor port), built in three steps:
the plugin's own template, the labels the factory finds its jobs by, then APF's
``condor_attributes`` as the merge step. Labels the factory depends on cannot be overridden:
a job without them would be invisible to the factory (and never cleaned up).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pilotfactory.factory.contract import (
    TARGET_PARAMS,
    UnsafeValue,
    classad_string,
    submit_environment,
    target_from,
)
from pilotfactory.factory.info import RetireMode, Worker, WorkerKind
from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import (
    BatchSubmitPlugin,
    Env,
    PluginError,
    QueueEnv,
    RetireGroup,
    SubmitError,
)
from pilotfactory.factory.ports import CondorError, CondorPort, World
from pilotfactory.factory.probe import Probe, collector_probe, schedd_probe

log = logging.getLogger(__name__)

DEFAULT_BASE_LOG_DIR = "/var/log/pilotfactory"

SPOT_PRICE = Param(
    "spot_price", float, None, "spot bid; unset = on-demand", ("ec2_spot_price",), minimum=0.0
)
"""Both VM submit plugins' spot bid (APF spells it ``ec2_spot_price`` too)."""

# APF: "a submit plugin also reads its parent's keys under its own prefix".
COMMON_SUBMIT_PARAMS: tuple[Param, ...] = (
    *TARGET_PARAMS,
    Param("condor_attributes", dict, {}, "extra submit keys: k1=v1, k2=v2 (\\, escapes)"),
    Param("environ", str, None, "extra environment: A=1 B=2"),
    Param("submitargs", str, None, "condor_submit arguments (accepted; not used by the port)"),
)

# Labels the factory reads back to find its own jobs: never overridable.
PROTECTED = ("+PilotFactoryId", "+PilotFactoryQueue", "+FACTORY_JOBID")


def retire_startds(
    port: CondorPort, workers: Sequence[Worker], mode: RetireMode, queue: str
) -> list[CondorError]:
    """Drain or peacefully retire each worker's startd; one refusal does not stop the rest."""
    errors: list[CondorError] = []
    for w in workers:
        assert w.machine is not None
        try:
            if mode is RetireMode.DRAIN:
                port.drain(w.machine, "pilotfactory")
            else:
                port.retire_peaceful(w.machine)
            log.debug("[%s] retire %s on %s (%s)", queue, w.id, w.machine, mode)
        except CondorError as exc:
            log.error("[%s] retire %s on %s (%s) failed: %s", queue, w.id, w.machine, mode, exc)
            errors.append(exc)
    return errors


def unretire_startds(
    port: CondorPort, workers: Sequence[Worker], queue: str
) -> tuple[list[Worker], list[CondorError]]:
    """Cancel the drain or restart the startd, as it was retired; returns (done, errors)."""
    done: list[Worker] = []
    errors: list[CondorError] = []
    for w in workers:
        if w.machine is None or w.retire_mode not in (RetireMode.DRAIN, RetireMode.PEACEFUL):
            log.warning(
                "[%s] cannot un-retire %s (machine %s, retire mode %s)",
                queue,
                w.id,
                w.machine,
                w.retire_mode,
            )
            continue
        try:
            if w.retire_mode is RetireMode.DRAIN:
                port.cancel_drain(w.machine)
            else:
                port.unretire(w.machine)
        except CondorError as exc:
            log.error("[%s] un-retire %s on %s failed: %s", queue, w.id, w.machine, exc)
            errors.append(exc)
            continue
        log.debug("[%s] un-retired %s on %s (%s)", queue, w.id, w.machine, w.retire_mode)
        done.append(w)
    return done, errors


Record = Callable[[Sequence[RetireGroup]], None]
Stop = Callable[[Sequence[Worker], str], None]


def retire_vms(
    port: CondorPort,
    groups: Sequence[RetireGroup],
    queue: str,
    record: Record,
    stop: Stop,
) -> None:
    """The one retire routine of every VM plugin (grid-universe and direct cloud), for all of a
    cycle's retires at once: one record, at most one stop, then the startd commands.

    Record first, then act: a recorded retire that failed still shows as RETIRING (and can be
    un-retired), while an unrecorded one would look like a vanished VM. A VM without a startd
    can run no work: it is stopped (job removed / instance terminated) instead, as are VMs
    retired in ``kill`` mode.
    """
    unjoined = [
        w for ws, mode in groups if mode is not RetireMode.KILL for w in ws if w.machine is None
    ]
    skip = {id(w) for w in unjoined}
    joined = [(g, mode) for ws, mode in groups if (g := [w for w in ws if id(w) not in skip])]
    for w in unjoined:
        log.debug("[%s] %s has no startd (no work possible): stopping it", queue, w.id)
    if joined:
        record(joined)
    killed = [w for ws, mode in joined if mode is RetireMode.KILL for w in ws]
    if unjoined or killed:
        stop(unjoined + killed, "retire (kill)" if killed else "retire (not joined)")
    errors: list[Exception] = []
    total = 0
    for ws, mode in joined:
        if mode is not RetireMode.KILL:
            total += len(ws)
            errors += retire_startds(port, ws, mode, queue)
    if errors:
        raise PluginError(
            f"queue {queue}: retire failed for {len(errors)} of {total} worker(s): {errors[0]}"
        ) from errors[0]


def unretire_vms(
    port: CondorPort,
    workers: Sequence[Worker],
    queue: str,
    record: Callable[[Sequence[Worker]], None],
) -> None:
    """Act first, then record: a failed un-retire must keep looking retired."""
    done, errors = unretire_startds(port, workers, queue)
    if done:
        record(done)
    if errors:
        raise PluginError(
            f"queue {queue}: un-retire failed for {len(errors)} of {len(workers)} worker(s): "
            f"{errors[0]}"
        ) from errors[0]


def labels(factory_id: str, queue: str) -> dict[str, str]:
    """The labels stamped on every job (contract: MATCH_APF_QUEUE ... PilotFactoryQueue)."""
    return {
        "+MATCH_APF_QUEUE": classad_string(queue),
        "+APF_QUEUE": classad_string(queue),
        "+FACTORY_JOBID": classad_string(f"{factory_id}#$(Cluster).$(Process)", macros=True),
        "+PilotFactoryId": classad_string(factory_id),
        "+PilotFactoryQueue": classad_string(queue),
    }


def environment(factory_id: str, queue: str, environ: str | None) -> str:
    """New-syntax environment: the APF variables pilot wrappers read, then ``environ``."""
    pairs = {"APFFID": factory_id, "APFCID": "$(Cluster).$(Process)", "FACTORYQUEUE": queue}
    for part in (environ or "").split():
        name, eq, value = part.partition("=")
        if not eq:
            raise UnsafeValue(f"environ: {part[:60]!r} is not NAME=value")
        pairs[name] = value
    return submit_environment(pairs)


def _norm(key: str) -> str:
    low = key.strip().lower()
    return "+" + low[3:] if low.startswith("my.") else low


def merge_attributes(
    description: dict[str, str], extra: Mapping[str, Any], queue: str
) -> dict[str, str]:
    """Apply ``condor_attributes`` (case-insensitive keys, ``MY.x`` == ``+x``); labels win."""
    out = dict(description)
    protected = {_norm(k) for k in PROTECTED}
    for key, value in extra.items():
        norm = _norm(key)
        if norm in protected:
            log.warning("[%s] condor_attributes may not override %s; ignored", queue, key)
            continue
        for old in [k for k in out if _norm(k) == norm]:
            del out[old]
        out[key.strip()] = str(value)
    return out


def log_dir(base: str, queue: str, now: float) -> str:
    """``<baseLogDir>/<YYYY-MM-DD>/<queue>`` (UTC day of ``now``)."""
    return os.path.join(base, time.strftime("%Y-%m-%d", time.gmtime(now)), queue)


class CondorSubmitBase(BatchSubmitPlugin):
    """Description building and removal shared by the two HTCondor submit plugins."""

    def __init__(self, params: Mapping[str, Any], env: Env, queue: QueueEnv) -> None:
        super().__init__(params, env, queue)
        self.target = target_from(params)
        self.previewing = False
        """Set while ``preview`` builds the description: files it names are not opened."""
        if params.get("submitargs"):
            log.warning(
                "[%s] submitargs=%r accepted but not used: the condor port submits a "
                "description, not a command line; use condor_attributes",
                self.queue.queue,
                params["submitargs"],
            )

    @classmethod
    def preflight(cls, params: Mapping[str, Any], world: World) -> list[Probe]:
        """The schedd it submits to (a VM queue's retire also reaches the collector)."""
        target = target_from(params)
        probes = [schedd_probe(world, target)]
        if cls.WORKERS is WorkerKind.VM:
            probes.append(collector_probe(world, target))
        return probes

    @property
    def port(self) -> CondorPort:
        return self.env.world.condor(self.target)

    def template(self) -> dict[str, str]:
        """The plugin's own keys (universe, executable, ...)."""
        raise NotImplementedError

    def description(self, now: float | None = None, create: bool = True) -> dict[str, str]:
        """The full submit description; creates today's log directory (unless ``create`` is
        False: a preview touches nothing)."""
        q = self.queue.queue
        now = self.env.clock.now() if now is None else now
        base = self.env.factory_settings.get("baseLogDir") or DEFAULT_BASE_LOG_DIR
        ldir = log_dir(base, q, now)
        try:
            if create:
                os.makedirs(ldir, exist_ok=True)
        except OSError as exc:
            raise SubmitError(f"queue {q}: cannot create log directory {ldir}: {exc}") from exc
        desc = self.template()
        desc.update(
            {
                "output": os.path.join(ldir, "$(Cluster).$(Process).out"),
                "error": os.path.join(ldir, "$(Cluster).$(Process).err"),
                "log": os.path.join(ldir, f"{q}.log"),
                # The job's working directory must exist where it runs; the factory's own cwd
                # (often / for a daemon) is no place for a pilot's files.
                "initialdir": ldir,
                "environment": environment(self.env.factory_id, q, self.params.get("environ")),
            }
        )
        desc.update(labels(self.env.factory_id, q))
        return merge_attributes(desc, self.params.get("condor_attributes") or {}, q)

    def preview(self) -> str:
        """The submit description of one worker, as a submit file would hold it."""
        self.previewing = True
        try:
            desc = self.description(create=False)
        except UnsafeValue as exc:
            raise SubmitError(f"queue {self.queue.queue}: {exc}") from None
        finally:
            self.previewing = False
        lines = [f"{key} = {value}" for key, value in desc.items()]
        return "\n".join([*lines, "queue 1"]) + "\n"

    def submit(self, count: int) -> list[str]:
        if count <= 0:
            return []
        try:
            desc = self.description()
        except UnsafeValue as exc:
            raise SubmitError(f"queue {self.queue.queue}: {exc}") from None
        try:
            result = self.port.submit(desc, count)
        except CondorError as exc:
            raise SubmitError(f"queue {self.queue.queue}: submit of {count} failed: {exc}") from exc
        log.debug("[%s] submitted %d job(s) in cluster %d", self.queue.queue, count, result.cluster)
        return result.job_ids

    def remove(self, workers: Sequence[Worker], why: str) -> None:
        ids = [w.id for w in self.own(workers)]
        if not ids:
            return
        n = self.port.remove(ids, f"pilotfactory: {why} (queue {self.queue.queue})")
        log.debug("[%s] %s: removed %d of %d job(s): %s", self.queue.queue, why, n, len(ids), ids)

    def cancel(self, workers: Sequence[Worker]) -> None:
        self.remove(workers, "cancel")

    def reap(self, workers: Sequence[Worker]) -> None:
        self.remove(workers, "reap")

    def cancel_and_reap(self, cancel: Sequence[Worker], reap: Sequence[Worker]) -> None:
        """One removal for both (one schedd transaction per queue per cycle)."""
        why = " and ".join(what for what, ws in (("cancel", cancel), ("reap", reap)) if ws)
        self.remove([*cancel, *reap], why)
