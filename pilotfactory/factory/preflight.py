"""Run the pre-flight probes of a set of queues (``pilotfactory check --preflight``).

Every plugin of every queue names its endpoints (``Plugin.preflight``); probes with one key run
once, for all the queues that named them, one daemon thread per lane (``Probe.lane``: the
HTCondor ones share one; at most ``parallel`` lanes at a time), all within one ``deadline``:
a probe still running then is a FAIL ("no answer") and is left behind, never waited for, so a
black-holed address cannot hold ``check`` up past the deadline whatever its backend's own
timeouts are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from pilotfactory.factory.config import QueueConfig
from pilotfactory.factory.plugin import SchedPlugin
from pilotfactory.factory.ports import World
from pilotfactory.factory.probe import Finding, Need, Probe, Result, failed, worst

DEFAULT_DEADLINE = 60.0
PARALLEL = 8


@dataclass
class EndpointReport:
    endpoint: str
    queues: tuple[str, ...]
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def result(self) -> Result:
        return worst(self.findings)

    def to_dict(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "queues": list(self.queues),
            "result": self.result.label.lower(),
            "seconds": round(self.seconds, 3),
            "findings": [{"result": f.result.label.lower(), "what": f.what} for f in self.findings],
        }


def queue_maximum(queue: QueueConfig) -> int | None:
    """The tightest cap of the queue's scheduler chain, None when no step caps it."""
    caps = [
        cap
        for spec in queue.sched
        if issubclass(spec.cls, SchedPlugin) and (cap := spec.cls.cap(spec.params)) is not None
    ]
    return min(caps) if caps else None


def collect(queues: Sequence[QueueConfig], world: World) -> list[tuple[Probe, Need]]:
    """One probe per distinct endpoint, with what the queues naming it need of it."""
    probes: dict[Hashable, Probe] = {}
    users: dict[Hashable, dict[str, int | None]] = {}
    for q in queues:
        maximum = queue_maximum(q)
        for spec in (q.wmsstatus, q.batchstatus, q.batchsubmit):
            try:
                named = spec.cls.preflight(spec.params, world)
            except Exception as exc:  # a plugin's own bug must not hide the other endpoints
                where = ("plugin", spec.kind, spec.name, q.name)
                named = [_failing(where, f"{spec.kind} {spec.name}", failed(exc).what)]
            for probe in named:
                probes.setdefault(probe.key, probe)
                users.setdefault(probe.key, {})[q.name] = maximum
    out = []
    for key, probe in probes.items():
        maxima = users[key]
        unbounded = tuple(n for n, m in maxima.items() if m is None)
        total = None if unbounded else sum(m or 0 for m in maxima.values())
        out.append((probe, Need(tuple(maxima), total, unbounded)))
    return out


def _fail(text: str) -> Finding:
    return Finding(Result.FAIL, text)


def _failing(key: Hashable, endpoint: str, text: str) -> Probe:
    """A probe that can only fail: a plugin that could not even name its endpoints."""
    return Probe(key, endpoint, lambda need: [_fail(text)])


def run_preflight(
    queues: Sequence[QueueConfig],
    world: World,
    deadline: float = DEFAULT_DEADLINE,
    parallel: int = PARALLEL,
) -> list[EndpointReport]:
    """Every distinct endpoint probed once, all within ``deadline`` seconds; reports in the
    order the queues name them."""
    todo = collect(queues, world)
    reports = [EndpointReport(p.endpoint, need.queues) for p, need in todo]
    done = [threading.Event() for _ in todo]
    lanes: dict[Hashable, list[int]] = {}
    for i, (probe, _) in enumerate(todo):
        lanes.setdefault(("own", i) if probe.lane is None else probe.lane, []).append(i)
    slots = threading.Semaphore(max(1, parallel))
    lock = threading.Lock()

    def run(indices: list[int]) -> None:
        with slots:
            for i in indices:
                probe, need = todo[i]
                started = time.monotonic()
                try:
                    findings = probe.check(need)
                except Exception as exc:  # a port or plugin raising its own type
                    findings = [failed(exc)]
                with lock:
                    if done[i].is_set():  # the deadline passed: the rest of the lane too
                        return
                    reports[i].findings = findings or [Finding(Result.OK, "nothing to check")]
                    reports[i].seconds = time.monotonic() - started
                    done[i].set()

    end = time.monotonic() + deadline
    for n, indices in enumerate(lanes.values()):
        threading.Thread(target=run, args=(indices,), name=f"preflight-{n}", daemon=True).start()
    for i, event in enumerate(done):
        event.wait(max(0.0, end - time.monotonic()))
        with lock:
            if not event.is_set():  # left behind: a daemon thread does not hold the exit
                reports[i].findings = [_fail(f"no answer within the {deadline:g} s pre-flight")]
                reports[i].seconds = deadline
                event.set()
    return reports
