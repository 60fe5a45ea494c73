"""The dead-man's lease, enforced from outside the VM (issue 18): instances of this factory
whose ``pilotfactory:lease_until`` plus its grace has passed are terminated, and so are its
stopped ones (a VM that powered itself off where the provider stops rather than terminates:
it does no work, and still holds its quota and volumes).

Shared by ``pilotfactory sweep`` (no daemon: every cloud account the config names, queues no
longer configured included) and the daemon's own sweep each cycle (the cloud status source's
``reconcile``, once per account). It lists by the factory's tag only, so an instance without
this factory's tag is never seen, and so never touched; one without a lease tag (launched with
no ``lease``) is never due.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pilotfactory.factory.contract import (
    TAG_ENDED,
    TAG_FACTORY,
    TAG_LEASE,
    TAG_LEASE_GRACE,
    TAG_QUEUE,
)
from pilotfactory.factory.params import Param
from pilotfactory.factory.ports import CloudError, CloudPort, Instance, World
from pilotfactory.plugins.cloudaccount import account_of, account_text, provider_key

log = logging.getLogger(__name__)
LEASE_GRACE = Param("lease_grace", float, 600.0)
"""Read as the submit plugins declare it (``vmlife.LEASE_GRACE``; a status-side module does
not import a submit plugin)."""

DEFAULT_GRACE = 600.0
"""``lease_grace``'s default: the grace of an instance whose queue is not configured and whose
launch predates the grace tag."""
LIVE_STATES = frozenset({"pending", "running", "stopping", "stopped", "error"})
"""States an instance still costs (or may come back) in (``stopping`` covers paused, suspended
and shelved ones too); one the factory has marked ended is shutting down already."""


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value > 0 and value != float("inf") else None


@dataclass(frozen=True)
class Due:
    """One instance whose lease and grace have passed."""

    instance_id: str
    queue: str
    lease_until: float
    grace: float

    def text(self, now: float) -> str:
        late = now - self.lease_until - self.grace
        return (
            f"{self.instance_id} (queue {self.queue or '?'}): lease ended "
            f"{now - self.lease_until:.0f}s ago, grace {self.grace:g}s, {late:.0f}s late"
        )


def due(
    instances: Iterable[Instance],
    factory_id: str,
    now: float,
    grace_of: Callable[[str], float | None] = lambda queue: None,
    default_grace: float = DEFAULT_GRACE,
) -> list[Due]:
    """The live instances of ``factory_id`` past lease + grace. The grace is the queue's
    configured one (``grace_of``), else the one tagged at launch, else ``default_grace``."""
    out = []
    for inst in instances:
        tags = inst.tags
        if tags.get(TAG_FACTORY) != factory_id or inst.state not in LIVE_STATES:
            continue
        if tags.get(TAG_ENDED):  # ended by the factory already (shutting down)
            continue
        lease = _number(tags.get(TAG_LEASE))
        if lease is None:
            continue
        queue = tags.get(TAG_QUEUE) or ""
        grace = grace_of(queue)
        if grace is None:
            grace = _number(tags.get(TAG_LEASE_GRACE))
        if grace is None:
            grace = default_grace
        if now > lease + grace:
            out.append(Due(inst.id, queue, lease, grace))
    return out


def stopped(
    instances: Iterable[Instance],
    factory_id: str,
    reap: Callable[[Instance], bool] = lambda inst: True,
) -> list[str]:
    """The ``stopped`` instances of ``factory_id`` that ``reap`` allows (the daemon leaves
    those its planner reaps as lost to it). The factory never stops an instance nor starts
    one again: a stopped one is over, and only costs."""
    return [
        inst.id
        for inst in instances
        if inst.state == "stopped" and inst.tags.get(TAG_FACTORY) == factory_id and reap(inst)
    ]


@dataclass
class SweepResult:
    """What one account's sweep saw and did."""

    account: str
    listed: int = 0
    due: list[Due] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    """Stopped instances (not already due), terminated in the same call."""
    terminated: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def targets(self) -> list[str]:
        """Every instance this sweep terminates (or, dry, would)."""
        return [d.instance_id for d in self.due] + self.stopped


def sweep_account(
    port: CloudPort,
    account: str,
    factory_id: str,
    now: float,
    grace_of: Callable[[str], float | None] = lambda queue: None,
    default_grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    instances: list[Instance] | None = None,
    reap_stopped: Callable[[Instance], bool] = lambda inst: True,
) -> SweepResult:
    """List the factory's instances on one account (unless ``instances`` are given), then mark
    and terminate the due and the stopped ones (``reap_stopped`` chooses among the latter) in
    one call each (a dry run only lists them)."""
    result = SweepResult(account)
    try:
        found = instances if instances is not None else port.list({TAG_FACTORY: factory_id})
    except CloudError as exc:
        result.error = f"list: {exc}"
        return result
    result.listed = len(found)
    result.due = due(found, factory_id, now, grace_of, default_grace)
    lapsed = {d.instance_id for d in result.due}
    result.stopped = [i for i in stopped(found, factory_id, reap_stopped) if i not in lapsed]
    ids = result.targets
    if dry_run or not ids:
        return result
    try:
        port.set_tags(ids, {TAG_ENDED: str(int(now))})
    except CloudError as exc:  # never in the way of the terminate
        log.warning("%s: could not mark %d instance(s) as ended: %s", account, len(ids), exc)
    try:
        port.terminate(ids)
    except CloudError as exc:
        result.error = f"terminate: {exc}"
        return result
    result.terminated = ids
    return result


def accounts(queues: Iterable[Any]) -> dict[Hashable, tuple[str, Any, str]]:
    """Every cloud account the queues' submit and status plugins reach, once each: key ->
    (provider, params, shown name)."""
    out: dict[Hashable, tuple[str, Any, str]] = {}
    for q in queues:
        for spec in (q.batchsubmit, q.batchstatus):
            provider = getattr(spec.cls, "PROVIDER", "")
            if provider not in ("ec2", "openstack"):
                continue
            key = (provider, provider_key(provider, spec.params))
            out.setdefault(key, (provider, spec.params, account_text(provider, spec.params)))
    return out


def sweep_all(
    queues: Sequence[Any],
    world: World,
    factory_id: str,
    now: float,
    default_grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
) -> list[SweepResult]:
    """``pilotfactory sweep``: each account the configured queues reach, each listed once;
    a queue's own ``lease_grace`` applies to its instances, the tagged or default one to the
    instances of queues no longer configured."""
    graces: dict[str, float] = {}
    for q in queues:
        if "lease_grace" in {p.name for p in q.batchsubmit.cls.PARAMS}:
            graces[q.name] = float(LEASE_GRACE.of(q.batchsubmit.params))
    results = []
    for provider, params, shown in accounts(queues).values():
        try:
            port = world.cloud(account_of(provider, params))
        except Exception as exc:  # a port that cannot be built (a credential file unreadable)
            results.append(SweepResult(shown, error=f"{type(exc).__name__}: {exc}"))
            continue
        results.append(
            sweep_account(port, shown, factory_id, now, graces.get, default_grace, dry_run)
        )
    return results
