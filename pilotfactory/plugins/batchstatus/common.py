"""What every batch status plugin shares: one read per refresh into a snapshot that each queue's
``info()`` slices, fail-closed when the snapshot is missing or older than ``maxage``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pilotfactory.factory.info import BatchQueueInfo, WorkerSet
from pilotfactory.factory.plugin import BatchStatusPlugin, Env

log = logging.getLogger(__name__)


def timestamp(value: Any) -> float | None:
    """A positive timestamp, else None (0 means "never" in job ads, absent tags are None).

    Called several times per job per cycle, so absent values and numbers take the shortest
    path."""
    if value is None:
        return None
    kind = type(value)
    if kind is float or kind is int:
        return float(value) if value > 0 else None
    if kind is str:
        try:
            number = float(value) if value else 0.0
        except ValueError:
            return None
        return number if number > 0 else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)  # an int or float subclass (an IntEnum, a binding's number)
    return None


def retire_active(requested: float | None, unretired: float | None) -> bool:
    """A retire the factory recorded and has not un-retired since."""
    return requested is not None and (unretired is None or unretired <= requested)


def by_queue(ads: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Job ads grouped by the queue label they carry (one pass; unlabelled ones dropped)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for ad in ads:
        queue = ad.get("PilotFactoryQueue") or ad.get("APF_QUEUE")
        if queue:
            group = out.get(queue)
            if group is None:
                out[queue] = [ad]
            else:
                group.append(ad)
    return out


@dataclass
class Snapshot:
    time: float
    infos: dict[str, BatchQueueInfo] = field(default_factory=dict)
    unmatched: tuple[str, ...] = ()
    pool_startds: int | None = None
    pool_left: int = 0
    seen: Mapping[str, int] = field(default_factory=dict)
    """Jobs per queue label in the answer (all labels, configured or not)."""
    build: Callable[[str], BatchQueueInfo | None] | None = None
    """Builds a queue's info on first ask: a source serving pilot and VM queues of one schedd
    sees every job, but turns only its own queues' ads into workers."""


class SnapshotStatus(BatchStatusPlugin):
    """Base of the built-in batch status plugins: ``observe`` reads the world once, ``info``
    answers every queue from that snapshot."""

    def __init__(self, params: Mapping[str, Any], env: Env) -> None:
        super().__init__(params, env)
        self._windows: dict[str, float] = {}
        self._snap: Snapshot | None = None

    def want_history(self, queue: str, window: float) -> None:
        self._windows[queue] = max(window, self._windows.get(queue, 0.0))

    def observe(self, now: float) -> Snapshot:
        raise NotImplementedError

    def release(self) -> None:
        self._snap = None

    def queues_seen(self) -> Mapping[str, int]:
        return self._snap.seen if self._snap is not None else {}

    def refresh(self) -> None:
        now = self.env.clock.now()
        self._snap = self.observe(now)
        self.snapshot_time = now

    def info(self, queue: str) -> BatchQueueInfo | None:
        snap = self._snap
        maxage = float(self.MAXAGE.of(self.params))
        if snap is None or self.env.clock.now() - snap.time > maxage:
            log.warning("[%s] no batch status (snapshot missing or older than %gs)", queue, maxage)
            return None
        hit = snap.infos.get(queue)
        if hit is None and snap.build is not None:
            hit = snap.build(queue)
            if hit is not None:
                snap.infos[queue] = hit
        if hit is not None:
            return hit
        history = () if queue in self._windows else None
        return BatchQueueInfo(
            queue,
            snap.time,
            WorkerSet(),
            history,
            snap.unmatched,
            snap.pool_startds,
            snap.pool_left,
        )
