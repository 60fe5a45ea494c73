"""All queues of one factory: shared status sources, the cycle loop, signals and reload.

Status plugins are shared by every queue whose parameters give the same source key, and each
shared source is refreshed once per tick: cost grows with the number of jobs, not with
queues x jobs. A source that fails makes only its own queues fail closed.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from pilotfactory.factory import statefile
from pilotfactory.factory.clock import Clock
from pilotfactory.factory.config import FactoryConfig, QueueConfig, QueuesResult
from pilotfactory.factory.info import Worker, sum_totals
from pilotfactory.factory.metrics import FactoryMetrics, SourceLabels
from pilotfactory.factory.plugin import (
    BatchStatusPlugin,
    Env,
    StatusSource,
    WMSStatusPlugin,
)
from pilotfactory.factory.ports import CondorTarget, World
from pilotfactory.factory.queue import Queue, bounded
from pilotfactory.factory.trace import CycleTrace

log = logging.getLogger(__name__)

STATUS_HISTORY = 5
"""Cycles per queue the status file keeps (``status --daemon --last`` shows up to these)."""


@dataclass
class SourceState:
    source: StatusSource
    queues: list[str] = field(default_factory=list)
    error: str | None = None
    refreshed_at: float | None = None
    failures: int = 0
    labels: SourceLabels = ("", "", "")
    """Its metric labels (``FactoryMetrics.source_labels``)."""


class _Lane:
    """One lane's refreshes of one tick, on a daemon thread (a server that never answers must
    not keep the process alive after SIGTERM). ``results`` is filled by the thread, one
    entry per finished source; the main thread reads it only after the wait."""

    def __init__(
        self, states: list[SourceState], refresh: Callable[[SourceState], str | None]
    ) -> None:
        self.states = states
        self.results: dict[int, str | None] = {}
        self.started = time.monotonic()
        self.thread = threading.Thread(
            target=self._run, args=(refresh,), name="pilotfactory-refresh", daemon=True
        )

    def _run(self, refresh: Callable[[SourceState], str | None]) -> None:
        for state in self.states:
            self.results[id(state)] = refresh(state)


class Factory:
    def __init__(
        self,
        fcfg: FactoryConfig,
        queues: Iterable[QueueConfig],
        world: World,
        clock: Clock,
        dry_run: bool = False,
    ) -> None:
        self.fcfg = fcfg
        self.world = world
        self.clock = clock
        self.dry_run = dry_run
        self.env = Env(
            factory_id=fcfg.factory_id,
            world=world,
            clock=clock,
            factory_settings=dict(fcfg.raw),
        )
        self.sources: dict[Hashable, SourceState] = {}
        self.queues: dict[str, Queue] = {}
        self.setup_errors: dict[str, str] = {}
        self.orphans: dict[str, list[str]] = {}  # batch source -> what its reconcile reported
        self.unconfigured: dict[str, int] = {}
        """Workers per queue label that no configured queue owns (last cycle)."""
        self.cycles_run = 0
        self._stop = threading.Event()
        self._lanes: dict[Hashable, _Lane] = {}
        """The last refresh thread of each lane (kept while it runs past its cycle)."""
        self._reload_requested = False
        self.reload_hook: Callable[[], QueuesResult] | None = None
        """Reads the configuration again for SIGHUP (raises ConfigError when it cannot)."""
        self.reload_errors: dict[str, str] = {}
        """Queues whose new configuration was broken at the last reload: they run on their
        old one until a reload fixes them."""
        self.reload_refused: str | None = None
        """Why the last reload was refused as a whole (the old queues run on), or None."""
        self.metrics = FactoryMetrics(now=clock.now, snapshots=self._snapshot_times)
        for qcfg in queues:
            self._add_queue(qcfg)
        if fcfg.state_file and not dry_run:
            self.restore_state(fcfg.state_file)

    # ------------------------------------------------------------------ wiring

    def _source(self, spec_cls: type[Any], params: Any, queue: str) -> StatusSource:
        key = (spec_cls.KIND, spec_cls, spec_cls.source_key(params))
        state = self.sources.get(key)
        if state is None:
            state = SourceState(source=spec_cls(params, self.env))
            state.labels = self.metrics.source_labels(
                key, spec_cls.KIND, spec_cls.NAME, state.source.source_label()
            )
            self.sources[key] = state
        state.queues.append(queue)
        state.source.register(params)
        return state.source

    def _add_queue(self, qcfg: QueueConfig) -> None:
        try:
            wms = self._source(qcfg.wmsstatus.cls, qcfg.wmsstatus.params, qcfg.name)
            batch = self._source(qcfg.batchstatus.cls, qcfg.batchstatus.params, qcfg.name)
            assert isinstance(wms, WMSStatusPlugin) and isinstance(batch, BatchStatusPlugin)
            self.queues[qcfg.name] = Queue(qcfg, self.env, wms, batch)
        except Exception as exc:  # a queue that cannot be wired is disabled, not fatal
            self.setup_errors[qcfg.name] = f"{type(exc).__name__}: {bounded(str(exc))}"
            log.error("queue %s disabled: %s", qcfg.name, self.setup_errors[qcfg.name])
            for state in self.sources.values():
                if qcfg.name in state.queues:
                    state.queues.remove(qcfg.name)

    def _snapshot_times(self) -> list[tuple[SourceLabels, float | None]]:
        """Each source tried so far and when its newest snapshot was read (the plugin's
        ``snapshot_time``, else the last successful refresh; None: never): the snapshot age
        metric, read at each scrape on the metrics server's thread."""
        out: list[tuple[SourceLabels, float | None]] = []
        for s in list(self.sources.values()):  # a reload may swap the dict meanwhile
            if s.refreshed_at is not None or s.error is not None:
                taken = s.source.snapshot_time
                out.append((s.labels, s.refreshed_at if taken is None else taken))
        return out

    def _state_of(self, source: StatusSource) -> SourceState:
        for state in self.sources.values():
            if state.source is source:
                return state
        raise KeyError(source)

    # ------------------------------------------------------------------ one tick

    def due_queues(self, now: float) -> list[Queue]:
        return [q for q in self.queues.values() if q.next_run <= now]

    def cycle(self, force: bool = False) -> list[CycleTrace]:
        """Run every due queue once (all queues with ``force``).

        The cyclic garbage collector is paused for the cycle: a cycle allocates a few hundred
        thousand short-lived ads and workers, which reference counting frees, and each
        collection they would trigger walks the whole heap, which grows with the site
        (benchmarks/scale.py). What a cycle leaves in cycles is collected after it."""
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._cycle(force)
        finally:
            if paused:
                gc.enable()

    def _cycle(self, force: bool) -> list[CycleTrace]:
        started = self.clock.monotonic()
        now = self.clock.now()
        due = list(self.queues.values()) if force else self.due_queues(now)
        if not due:
            return []
        self.env.reads.new_cycle()
        needed: list[SourceState] = []
        for q in due:
            for src in (q.wms_source, q.batch_source):
                state = self._state_of(src)
                if state not in needed:
                    needed.append(state)
        if not self._refresh(needed, now):
            self.env.reads.end_cycle()
            return []  # stopped while sources were being read: act on nothing
        self.env.reads.end_cycle()
        self._report_unconfigured(needed)
        totals = self._totals()
        decided = [
            q.decide(
                self._state_of(q.wms_source).error,
                self._state_of(q.batch_source).error,
                totals,
                dry_run=self.dry_run,
            )
            for q in due
        ]
        for trace in decided:  # the factory's cycle number, for the queues' log lines
            trace.cycle = self.cycles_run + 1
        rechecked = self._recheck(due, decided)
        traces: list[CycleTrace] = []
        for q, trace in zip(due, decided, strict=True):
            current, error = rechecked.get(id(q.batch_source), ({}, None))
            traces.append(q.act(trace, current, error))
        if not self.dry_run:
            self._advertise_leases(due, self.clock.now())
        end = self.clock.now()
        for q in due:
            q.schedule(now, end)
        self.cycles_run += 1
        self.metrics.observe(traces)
        if self.fcfg.state_file and not self.dry_run:
            self.write_state(self.fcfg.state_file)
        if self.fcfg.status_file and not self.dry_run:
            self.write_status(self.fcfg.status_file)
        self.metrics.cycle_took(self.clock.monotonic() - started)
        return traces

    def _refresh(self, needed: Sequence[SourceState], now: float) -> bool:
        """One query per source per tick. Where the world's calls may block, lanes (see
        ``StatusSource.refresh_lane``) run on their own threads and the cycle waits at most
        ``refresh_timeout``: a source without an answer by then fails its own queues closed
        and the others go on; a lane still busy from an earlier tick is not asked again
        (never two refreshes of one source at once). False when the factory was asked to
        stop meanwhile (a SIGTERM is honoured within a fraction of a second, whatever a
        server does)."""
        budget = self.fcfg.refresh_timeout
        if budget <= 0 or not getattr(self.world, "blocking_io", False):
            for state in needed:  # all first: one cycle's answers alive at a time
                state.source.release()
            for state in needed:
                self._refreshed(state, now, self._refresh_one(state))
            return True
        lanes: dict[Hashable, list[SourceState]] = {}
        for state in needed:
            lanes.setdefault(state.source.refresh_lane(), []).append(state)
        started: list[_Lane] = []
        for key, states in lanes.items():
            busy = self._lanes.get(key)
            if busy is not None and busy.thread.is_alive():
                for state in states:
                    self._refreshed(
                        state,
                        now,
                        f"still refreshing: the previous refresh of its lane has run "
                        f"{time.monotonic() - busy.started:.0f}s (refresh_timeout={budget:g}s)",
                    )
                continue
            for state in states:
                state.source.release()
            started.append(_Lane(states, self._refresh_one))
            self._lanes[key] = started[-1]
        for lane in started:  # every snapshot let go before any new one is read
            lane.thread.start()
        deadline = time.monotonic() + budget
        while any(lane.thread.is_alive() for lane in started):
            if self._stop.is_set():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._stop.wait(min(0.05, left))
        for lane in started:
            for state in lane.states:
                self._refreshed(
                    state,
                    now,
                    lane.results.get(id(state), f"no answer within refresh_timeout={budget:g}s"),
                )
        return True

    @staticmethod
    def _refresh_one(state: SourceState) -> str | None:
        """Refresh one (released) source: None, or why it failed."""
        try:
            state.source.refresh()
        except Exception as exc:
            return f"{type(exc).__name__}: {bounded(str(exc))}"
        return None

    def _refreshed(self, state: SourceState, now: float, error: str | None) -> None:
        state.error = error
        if error is None:
            state.failures = 0
            state.refreshed_at = now
            return
        state.failures += 1
        self.metrics.source_failed(state.labels)
        log.warning(
            "%s source %s failed (%d in a row); its queues %s fail closed: %s",
            state.source.KIND,
            state.source.NAME,
            state.failures,
            ",".join(state.queues),
            error,
        )

    def _recheck(
        self, due: Sequence[Queue], decided: Sequence[CycleTrace]
    ) -> dict[int, tuple[Mapping[str, Worker] | None, str | None]]:
        """One re-read per batch system of every due queue's irreversible candidates (sources
        with one ``recheck_key`` share it), by id(source): (current workers, or None and the
        error when the re-read failed)."""
        groups: dict[Hashable, tuple[list[BatchStatusPlugin], list[Worker]]] = {}
        for q, trace in zip(due, decided, strict=True):
            if candidates := q.candidates(trace):
                src = q.batch_source
                sources, workers = groups.setdefault(src.recheck_key(), ([], []))
                if src not in sources:
                    sources.append(src)
                workers.extend(candidates)
        out: dict[int, tuple[Mapping[str, Worker] | None, str | None]] = {}
        for sources, workers in groups.values():
            reader = max(sources, key=lambda s: s.RECHECK_RANK)
            try:
                answer: tuple[Mapping[str, Worker] | None, str | None] = (
                    reader.recheck(workers),
                    None,
                )
            except Exception as exc:
                answer = (None, str(exc))
            for src in sources:
                out[id(src)] = answer
        return out

    def _advertise_leases(self, due: Sequence[Queue], now: float) -> None:
        """The lease ads of the queues that ran (issue 18), one advertise per collector for
        all its queues; a queue removed or a factory stopped advertises nothing and the
        collector expires the ad. A failure is logged: the VMs fall back to their tagged
        lease, and sweep is the backstop."""
        by_target: dict[Any, list[dict[str, Any]]] = {}
        for q in due:
            try:
                found = q.submitter.lease_ad(now)
            except Exception as exc:
                log.warning("queue %s: no lease ad: %s", q.name, exc)
                continue
            if found is not None:  # one call per collector, whatever the schedds
                target = CondorTarget(collector=found[0].collector)
                by_target.setdefault(target, []).append(found[1])
        for target, ads in by_target.items():
            try:
                self.env.world.condor(target).advertise(ads)
            except Exception as exc:
                log.warning(
                    "advertising %d lease ad(s) to %s failed: %s",
                    len(ads),
                    target.collector or "the local collector",
                    exc,
                )

    def _report_unconfigured(self, refreshed: Sequence[SourceState]) -> None:
        """Workers labelled with a queue this factory no longer has (a queue removed from
        queues.conf, or broken) are reported once when they appear, kept in the status, and
        never touched: no queue owns them."""
        found: dict[str, int] = {}
        for state in refreshed:
            if state.error is None and isinstance(state.source, BatchStatusPlugin):
                for queue, n in state.source.queues_seen().items():
                    if queue not in self.queues:
                        found[queue] = max(found.get(queue, 0), n)
        for queue in sorted(set(found) - set(self.unconfigured)):
            log.warning(
                "%d worker(s) of queue %s, which is not configured (or broken): reported, "
                "never touched",
                found[queue],
                queue,
            )
        self.unconfigured = found
        claims = {name: q.batch_source for name, q in self.queues.items()}
        orphans: dict[str, list[str]] = {}
        for state in refreshed:
            src = state.source
            if state.error is not None or not isinstance(src, BatchStatusPlugin):
                continue
            if notes := src.reconcile(claims, set(self.setup_errors), self.dry_run):
                orphans.setdefault(src.NAME, []).extend(notes)
        self.orphans = orphans

    def _status_head(self) -> dict[str, Any]:
        return {
            "factory_id": self.fcfg.factory_id,
            "time": self.clock.now(),
            "cycles": self.cycles_run,
            "sources": [
                {
                    "kind": s.source.KIND,
                    "plugin": s.source.NAME,
                    "queues": s.queues,
                    "error": s.error,
                    "failures_in_a_row": s.failures,
                    "refreshed_at": s.refreshed_at,
                }
                for s in self.sources.values()
            ],
            "setup_errors": dict(self.setup_errors),
            "reload_errors": dict(self.reload_errors),
            "reload_refused": self.reload_refused,
            "unconfigured_queues": dict(self.unconfigured),
            "orphans": {k: v[:50] for k, v in self.orphans.items()},
        }

    def status_json(self) -> str:
        """Each queue's recent decisions and rails, for ``pilotfactory status --daemon``: the
        last ``STATUS_HISTORY`` records per queue, each queue's part encoded once per cycle of
        that queue, so a tick that ran ten of a thousand queues re-encodes ten."""
        head = json.dumps(self._status_head())
        queues = ", ".join(
            f"{json.dumps(name)}: {q.status_json(STATUS_HISTORY)}"
            for name, q in self.queues.items()
        )
        return f'{head[:-1]}, "queues": {{{queues}}}}}'

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.status_json())
        return out

    def write_status(self, path: str) -> None:
        """Atomically (write + rename), so a reader never sees half a file; readable by the
        factory's user and group only."""
        try:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".status-", dir=directory)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.status_json())
            os.chmod(tmp, 0o640)  # error texts and names: the factory's group, not the world
            os.replace(tmp, path)
        except OSError as exc:  # a status file must never stop the factory
            log.warning("cannot write status file %s: %s", path, exc)

    def write_state(self, path: str) -> None:
        """What each queue must not forget across a restart (statefile.py), after every tick;
        each queue's part is encoded once per run of that queue."""
        parts = []
        for name, q in self.queues.items():
            if q.state_text is None:
                q.state_text = json.dumps(statefile.queue_state(q))
            parts.append((name, q.state_text))
        try:
            statefile.write(path, statefile.encode(self.fcfg.factory_id, self.clock.now(), parts))
        except OSError as exc:  # the factory goes on; a restart would start from scratch
            log.error("cannot write state file %s: %s", path, exc)

    def restore_state(self, path: str) -> None:
        """Restore what the queues learned before a restart; a bad file is logged and skipped
        (the factory starts from what the batch system shows, as on its first start)."""
        try:
            written, entries = statefile.read(path, self.fcfg.factory_id)
        except statefile.StateProblem as exc:
            log.error("%s; starting without it", exc)
            return
        now = self.clock.now()
        for name, entry in entries.items():
            q = self.queues.get(name)
            if q is None:
                continue  # a queue no longer configured: its workers are reported, not touched
            try:
                restored = statefile.restore(q, entry, written, now)
            except (ValueError, TypeError, OverflowError) as exc:
                log.error("%s: queue %s: state not restored: %s", path, name, bounded(str(exc)))
                continue
            log.info("queue %s: restored from %s: %s", name, path, ", ".join(restored))

    def _totals(self) -> Any:
        infos = []
        for q in self.queues.values():
            if self._state_of(q.batch_source).error is None:
                infos.append(q.batch_source.info(q.name))
        return sum_totals(infos, self.fcfg.maxperfactory)

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        self._stop.set()

    def install_signals(self) -> None:
        def _term(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping after this cycle", signum)
            self.stop()

        def _hup(signum: int, frame: FrameType | None) -> None:
            log.info("SIGHUP: reloading queues.conf before the next cycle")
            self._reload_requested = True

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        signal.signal(signal.SIGHUP, _hup)

    def reload(
        self, queues: Iterable[QueueConfig], broken: Mapping[str, str] | None = None
    ) -> bool:
        """Replace the queue set; queues whose config is unchanged keep their state whole, and
        changed ones keep what still applies (``Queue.carry_over``).

        A queue in ``broken`` (name -> why) that runs now keeps running on its old
        configuration, and says so in the log and the status: a typo must not drop a queue
        and the VMs it looks after. A reload that would leave no queue at all is refused
        (False) and everything runs on as before."""
        new = {q.name: q for q in queues}
        kept: dict[str, str] = {}
        for name, why in (broken or {}).items():
            if name in self.queues and name not in new:
                new[name] = self.queues[name].cfg
                kept[name] = why
                log.error("reload: queue %s keeps its old configuration: %s", name, why)
        if not new:
            self.reload_refused = "the new configuration has no usable queue"
            log.error("reload refused, the old queues run on: %s", self.reload_refused)
            return False
        self.reload_refused = None
        self.reload_errors = kept
        old = self.queues
        self.queues = {}
        self.sources = {}
        now = self.clock.now()
        for name, qcfg in new.items():
            self._add_queue(qcfg)
            if name in old and name in self.queues:
                if old[name].cfg == qcfg:
                    self.queues[name].carry_over(old[name])
                    continue
                fresh = self.queues[name].carry_over(old[name], now)
                log.info(
                    "reload: queue %s changed; kept its counters, history and planner memory%s",
                    name,
                    "; started afresh: " + ", ".join(fresh) if fresh else " and its rails",
                )
        return True

    def reload_from_hook(self) -> bool:
        """SIGHUP: read the configuration again; any failure keeps the old queues running."""
        if self.reload_hook is None:
            return False
        try:
            result = self.reload_hook()
        except Exception as exc:
            self.reload_refused = f"{type(exc).__name__}: {bounded(str(exc))}"
            log.error("reload failed, keeping the old queues: %s", self.reload_refused)
            return False
        broken: dict[str, str] = {}
        for problem in result.errors:
            if problem.section in result.broken:
                broken.setdefault(problem.section, str(problem))
        for name in result.broken:
            broken.setdefault(name, "broken")
        return self.reload(result.queues, broken)

    def run(self, cycles: int | None = None) -> None:
        """The daemon loop: tick every ``factory.sleep`` seconds until stopped."""
        limit = cycles if cycles is not None else self.fcfg.cycles
        while not self._stop.is_set():
            if self._reload_requested:
                self._reload_requested = False
                self.reload_from_hook()
                if self.fcfg.status_file and not self.dry_run:  # say at once what it did
                    self.write_status(self.fcfg.status_file)
            self.cycle()
            if limit is not None and self.cycles_run >= limit:
                break
            self._sleep_until_next()

    def _sleep_until_next(self) -> None:
        now = self.clock.now()
        nxt = min((q.next_run for q in self.queues.values()), default=now + self.fcfg.sleep)
        wait = max(0.0, min(self.fcfg.sleep, nxt - now)) or min(1.0, self.fcfg.sleep)
        step = 0.0
        while step < wait and not self._stop.is_set():
            chunk = min(1.0, wait - step)
            self.clock.sleep(chunk)
            step += chunk
