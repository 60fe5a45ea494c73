"""EC2 / OpenStack: VMs the factory launches itself through the cloud port (no grid universe).

The worker id is the join key, and it is chosen *before* launch: one launch call per worker,
so each instance's tags and user data carry its own id, and its startd advertises
``PilotFactoryWorker = "<id>"`` from its first ad. (The instance id as worker id would only be
known after the launch call: the VM would have to look it up itself, and the worker tag would be
written after the fact, a step a crash between launch and tagging loses.) OpenStack creates one
server per call anyway; on EC2 it costs one RunInstances per VM, which the few VMs a cycle adds
afford. Retire acts on the startd as CondorEC2 does, and is recorded in the instance tags.

User data and provider settings: ``cloud_common.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar

from pilotfactory.factory.contract import (
    TAG_ENDED,
    TAG_FACTORY,
    TAG_LAUNCHED,
    TAG_QUEUE,
    TAG_RETIRE,
    TAG_RETIRE_MODE,
    TAG_UNRETIRED,
    TAG_WORKER,
    target_from,
)
from pilotfactory.factory.info import RetireMode, Worker, WorkerKind
from pilotfactory.factory.plugin import BatchSubmitPlugin, Env, QueueEnv, RetireGroup, SubmitError
from pilotfactory.factory.ports import (
    CloudError,
    CloudPort,
    CloudUnavailable,
    CondorError,
    CondorPort,
    LaunchSpec,
    World,
    error_class,
)
from pilotfactory.factory.probe import Probe, collector_probe
from pilotfactory.plugins.batchsubmit.cloud_common import (
    EC2_PARAMS,
    OPENSTACK_PARAMS,
    render_user_data,
    vm_params,
)
from pilotfactory.plugins.batchsubmit.cloud_launch import (
    FALL_THROUGH,
    LAUNCH_PARAMS,
    NETWORKS,
    SPOT_FALLBACK,
    STOP,
    Choice,
    ChoiceBackoff,
    Intent,
    choices,
    client_token,
    over_budget,
    split_flavors,
)
from pilotfactory.plugins.batchsubmit.condor_common import (
    SPOT_PRICE,
    retire_vms,
    unretire_vms,
)
from pilotfactory.plugins.batchsubmit.vmlife import (
    DEFAULT_METADATA_URL,
    LIFE_PARAMS,
    METADATA_URL,
    TOKEN_IDENTITY,
    TOKEN_SIGNING_KEY,
    WORKER_AUTHZ,
    VMContract,
    launch_times,
    token_lifetime,
)
from pilotfactory.plugins.cloudaccount import (
    TAG_PRICE,
    account_of,
    account_probe,
    censuses,
    count_launch,
    provider_key,
)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- the plugins


class CloudSubmit(BatchSubmitPlugin):
    """Launch, retire and terminate VMs of one queue on one cloud account."""

    WORKERS = WorkerKind.VM
    PROVIDER: ClassVar[str] = ""

    def __init__(self, params: Mapping[str, Any], env: Env, queue: QueueEnv) -> None:
        super().__init__(params, env, queue)
        self.target = target_from(params)
        self._cloud: CloudPort | None = None
        self._seq = itertools.count()
        self.choice_backoff = ChoiceBackoff(
            float(params.get("choice_backoff") or 300.0),
            float(params.get("choice_backoff_max") or 3600.0),
        )
        self.intents: dict[str, Intent] = {}
        self.stopped: tuple[float, str] | None = None  # (until, why): auth or invalid request

    @classmethod
    def preflight(cls, params: Mapping[str, Any], world: World) -> list[Probe]:
        """The cloud account it launches on and the collector it retires startds through."""
        return [
            account_probe(cls.PROVIDER, cls.namespaces()[0], params, world),
            collector_probe(world, target_from(params)),
        ]

    @property
    def cloud(self) -> CloudPort:
        if self._cloud is None:  # one client (and Keystone session) per plugin, not per call
            self._cloud = self.env.world.cloud(account_of(self.PROVIDER, self.params))
        return self._cloud

    @property
    def condor(self) -> CondorPort:
        return self.env.world.condor(self.target)

    @contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Cloud errors (quota, credentials, API) become SubmitError with the provider's text."""
        try:
            yield
        except CloudError as exc:
            raise SubmitError(f"queue {self.queue.queue}: {what}: {exc}") from exc

    def worker_ids(self, count: int) -> list[str]:
        """Unique without a registry (factory, queue, clock to the microsecond, sequence), and
        a function of the clock, so simulated runs repeat exactly."""
        q = self.queue.queue
        now = self.env.clock.now()
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", q)[:40]
        out = []
        for _ in range(count):
            seed = f"{self.env.factory_id}|{q}|{now:.6f}|{next(self._seq)}"
            out.append(f"{stem}-{hashlib.sha256(seed.encode()).hexdigest()[:12]}")
        return out

    def spec(self) -> LaunchSpec:
        p, q = self.params, self.queue.queue
        kind = f"batchsubmit.{self.NAME.lower()}"
        for key in ("image", "flavor"):
            if not p.get(key) or (key == "flavor" and not split_flavors(p[key])):
                raise SubmitError(f"queue {q}: {kind}.{key} is not set")
        return LaunchSpec(
            image=str(p["image"]),
            flavor=split_flavors(p["flavor"])[0],
            spot_price=p.get("spot_price"),
            key_name=p.get("key_name") or None,
            security_groups=tuple(p.get("security_groups") or ()),
            extra=dict(p.get("launch_options") or {}),
        )

    def choices(self, spec: LaunchSpec) -> list[Choice]:
        """The queue's launch choices in the order tried (``cloud_launch.choices``)."""
        p = self.params
        prices = {str(k): float(v) for k, v in (p.get("prices") or {}).items()}
        return choices(
            split_flavors(p.get("flavor")),
            list(p.get("availability_zones") or ()) or None,
            list(p.get("networks") or ()) or None,
            spec.spot_price is not None,
            bool(p.get("on_demand_fallback")),
            str(p.get("choice_order") or "listed"),
            prices,
        )

    def spec_for(self, spec: LaunchSpec, choice: Choice) -> LaunchSpec:
        """The launch request of one choice."""
        extra = dict(spec.extra)
        if choice.zone:
            extra["availability_zone"] = choice.zone
        if choice.network:
            extra["network_id"] = choice.network
        price = spec.spot_price if choice.spot else None
        return replace(spec, flavor=choice.flavor, spot_price=price, extra=extra)

    def template(self) -> str | None:
        path = self.params.get("user_data_file")
        if not path:
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read()
        except OSError as exc:
            raise SubmitError(f"queue {self.queue.queue}: user_data_file {path}: {exc}") from None

    def contract(self, worker_id: str, now: float, token: str = "") -> VMContract:
        """What one worker's user data is rendered from (the worker VM contract)."""
        t = launch_times(self.params, worker_id, now)
        return VMContract(
            worker_id,
            self.env.factory_id,
            self.queue.queue,
            self.target.collector,
            self.queue.wmsqueue,
            lease_until=t.lease_until,
            lease_grace=t.lease_grace,
            deadline=t.deadline,
            token=token,
            metadata_url=str(METADATA_URL.of(self.params) or DEFAULT_METADATA_URL),
        )

    def mint_token(self, worker_id: str) -> str:
        """A token for one worker, scoped to advertising a startd and a master and reading
        the collector, expiring with the lease (``token_lifetime``); empty without a
        ``token_signing_key``. Never logged."""
        key = TOKEN_SIGNING_KEY.of(self.params)
        if not key:
            return ""
        identity = TOKEN_IDENTITY.of(self.params) or None
        try:
            return self.condor.create_token(
                identity, WORKER_AUTHZ, token_lifetime(self.params), str(key)
            )
        except CondorError as exc:
            raise SubmitError(
                f"queue {self.queue.queue}: token for worker {worker_id} (token_signing_key "
                f"{key}): {exc}"
            ) from None

    def user_data(self, template: str | None, worker_id: str, now: float | None = None) -> str:
        """The worker's rendered user data (a token minted for it when the queue mints)."""
        now = self.env.clock.now() if now is None else now
        contract = self.contract(worker_id, now, self.mint_token(worker_id))
        try:
            return render_user_data(template, contract)
        except ValueError as exc:
            path = self.params.get("user_data_file")
            raise SubmitError(f"queue {self.queue.queue}: user_data_file {path} {exc}") from None

    def preview(self) -> str:
        """One launch request: the instance settings, the tags and the rendered user data (for
        a worker id written as ``<worker-id>`` and a token as ``<token>``; each VM gets its
        own)."""
        spec = self.spec()
        wid = "<worker-id>"
        head = [
            f"# launch request of queue {self.queue.queue} ({self.NAME})",
            f"image = {spec.image}",
            f"flavor = {', '.join(split_flavors(self.params.get('flavor')))}",
            "# launch choices, in the order tried",
            *(f"#   {c.label}" for c in self.choices(spec)),
        ]
        if spec.spot_price is not None:
            head.append(f"spot_price = {spec.spot_price:g}")
        if spec.key_name:
            head.append(f"key_name = {spec.key_name}")
        if spec.security_groups:
            head.append(f"security_groups = {', '.join(spec.security_groups)}")
        head.extend(f"{key} = {value}" for key, value in sorted(spec.extra.items()))
        tags = {
            TAG_FACTORY: self.env.factory_id,
            TAG_QUEUE: self.queue.queue,
            TAG_WORKER: wid,
            TAG_LAUNCHED: "<launch time>",
        }
        head.append("# tags")
        head.extend(f"{key} = {value}" for key, value in tags.items())
        head.append("# user data")
        token = "<token>" if TOKEN_SIGNING_KEY.of(self.params) else ""
        contract = self.contract(wid, self.env.clock.now(), token)
        try:
            text = render_user_data(self.template(), contract, check=False)
        except ValueError as exc:
            path = self.params.get("user_data_file")
            raise SubmitError(f"queue {self.queue.queue}: user_data_file {path} {exc}") from None
        return "\n".join(head) + "\n" + text

    def submit(self, count: int) -> list[str]:
        """Launch ``count`` workers, one launch per worker (its own tags, user data and client
        token); returns the worker ids. Open intents (launches whose outcome is unknown) are
        looked up first and retried, never doubled. Each worker goes to the first choice not
        backing off; a capacity, quota or throttling refusal backs that choice off and falls
        through to the next. When every choice is refused, or the outcome of a launch is
        unknown, the workers launched so far are kept and a SubmitError backs the queue off;
        credentials refused or an invalid request stop the queue (``stop_retry``)."""
        if count <= 0:
            return []
        q, now = self.queue.queue, self.env.clock.now()
        if self.stopped is not None:
            until, why = self.stopped
            if now < until:
                raise SubmitError(
                    f"queue {q}: stopped: {why} (fix the settings and reload; one more try in "
                    f"{until - now:.0f}s)"
                )
            self.stopped = None
        spec, template = self.spec(), self.template()
        order = self.choices(spec)
        launched: list[str] = []
        todo: list[tuple[str, dict[str, str], Choice | None]] = []
        if self.intents:
            todo.extend(self.open_intents(count))
        for wid in self.worker_ids(count - len(todo)):
            todo.append((wid, self.tags(wid, now), None))
        refused: list[str] = []
        for wid, tags, pinned in todo:
            try:
                if self.launch_one(spec, template, wid, tags, pinned, order, now, refused):
                    launched.append(wid)
                    continue
            except SubmitError:
                if launched:
                    log.warning("[%s] launched %d of %d VMs: %s", q, len(launched), count, launched)
                raise
            break  # every choice is backing off: none left this cycle
        if len(launched) < len(todo):
            if launched:
                log.warning("[%s] launched %d of %d VMs: %s", q, len(launched), count, launched)
            raise SubmitError(
                f"queue {q}: launched {len(launched)} of {len(todo)}: every launch choice "
                f"refused or backing off: {'; '.join(refused[-4:])}"
            )
        return launched

    def tags(self, wid: str, now: float) -> dict[str, str]:
        return {
            TAG_FACTORY: self.env.factory_id,
            TAG_QUEUE: self.queue.queue,
            TAG_WORKER: wid,
            TAG_LAUNCHED: str(int(now)),
        }

    def open_intents(self, count: int) -> list[tuple[str, dict[str, str], Choice | None]]:
        """Launches whose outcome was unknown: one list of the queue's instances settles them;
        a worker found there is done (its instance is already counted as supply), at most
        ``count`` of the others are retried on their own choice with their own token."""
        q = self.queue.queue
        with self.calling("look up launches of unknown outcome"):
            found = self.cloud.list({TAG_FACTORY: self.env.factory_id, TAG_QUEUE: q})
        present = {i.tags.get(TAG_WORKER) for i in found}
        out: list[tuple[str, dict[str, str], Choice | None]] = []
        for wid, intent in list(self.intents.items()):
            if wid in present:
                log.info("[%s] worker %s of an unknown launch exists; not launched again", q, wid)
                del self.intents[wid]
            elif len(out) < count:
                out.append((wid, dict(intent.tags), intent.choice))
        return out

    def launch_one(
        self,
        spec: LaunchSpec,
        template: str | None,
        wid: str,
        tags: dict[str, str],
        pinned: Choice | None,
        order: list[Choice],
        now: float,
        refused: list[str],
    ) -> bool:
        """One worker through the choices (an open intent only through its own); True when
        launched, False when every choice is backing off or refused it."""
        q = self.queue.queue
        user_data = self.user_data(template, wid)
        for choice in [pinned] if pinned is not None else order:
            if pinned is None and (why := self.choice_backoff.blocked(choice, now)):
                refused.append(why)
                continue
            if why := self.spend_block(choice):
                refused.append(f"{choice.label}: {why}")
                continue
            token = client_token(self.env.factory_id, q, wid, choice)
            one = replace(self.spec_for(spec, choice), user_data=user_data, client_token=token)
            price = self.price(choice)
            if price is not None:
                tags = {**tags, TAG_PRICE: f"{price:g}"}
            try:
                ids = self.cloud.launch(one, 1, tags)
            except CloudError as exc:
                kind = error_class(exc)
                if kind in STOP:
                    self.intents.pop(wid, None)
                    why = f"{kind} error on {choice.label}: {exc}"
                    self.stopped = (now + float(self.params.get("stop_retry") or 3600.0), why)
                    raise SubmitError(f"queue {q}: stopped: {why}") from exc
                if kind in FALL_THROUGH:
                    self.intents.pop(wid, None)  # refused: nothing was launched
                    st = self.choice_backoff.refused(choice, now, kind, str(exc))
                    refused.append(f"{choice.label}: {st.reason}")
                    log.warning("[%s] %s refused (%s); next choice", q, choice.label, kind)
                    if pinned is not None:
                        return False
                    continue
                # Unknown outcome (timeout, 5xx, an error the port cannot class): the worker
                # may exist; look it up before launching it again, with the same token.
                self.intents[wid] = Intent(wid, choice, tuple(tags.items()), token)
                unknown = "unknown outcome" if isinstance(exc, CloudUnavailable) else kind
                raise SubmitError(f"queue {q}: launch of {wid} ({unknown}): {exc}") from exc
            self.intents.pop(wid, None)
            self.choice_backoff.launched(choice)
            self.count_launch(price or 0.0)
            log.debug("[%s] launched worker %s as %s on %s", q, wid, ", ".join(ids), choice.label)
            return True
        return False

    def price(self, choice: Choice) -> float | None:
        """Price per hour of a choice: the queue's ``prices`` for its flavor, else (spot) the
        bid, the most it can cost; None when unknown."""
        prices = self.params.get("prices") or {}
        if choice.flavor in prices:
            return float(prices[choice.flavor])
        if choice.spot and self.params.get("spot_price") is not None:
            return float(self.params["spot_price"])
        return None

    def spend_block(self, choice: Choice) -> str | None:
        """Why buying one more VM on ``choice`` would break the factory-wide cap or a budget
        (the queue's, or the factory's from the status sources' census), or None. Budgets
        stop buying only: nothing is retired for them."""
        p, q = self.params, self.queue.queue
        seen = censuses(self.env.factory_id, self.env.clock.now())
        fleet = [c.totals() for c in seen]
        total = sum(n for n, _ in fleet)
        caps = [c.max_instances for c in seen if c.max_instances is not None]
        if caps and total + 1 > min(caps):
            return f"factory cap: {total} live instances, factory_max_instances={min(caps)}"
        queue_hour, queue_day = p.get("budget_per_hour"), p.get("budget_per_day")
        fac_hour = min((c.budget_per_hour for c in seen if c.budget_per_hour is not None),
                       default=None)  # fmt: skip
        fac_day = min((c.budget_per_day for c in seen if c.budget_per_day is not None),
                      default=None)  # fmt: skip
        if all(b is None for b in (queue_hour, queue_day, fac_hour, fac_day)):
            return None
        price = self.price(choice)
        if price is None:
            return f"budget set but no price for {choice.flavor}: set prices ({choice.flavor}=...)"
        rate = sum(c.totals(q)[1] for c in seen)
        why = over_budget(f"queue {q}", rate, price, queue_hour, queue_day)
        fac_rate = sum(r for _, r in fleet)
        return why or over_budget("the factory", fac_rate, price, fac_hour, fac_day)

    def count_launch(self, price: float) -> None:
        """Count a launch in this account's census until the next refresh sees it."""
        account = (self.PROVIDER, provider_key(self.PROVIDER, self.params))
        count_launch(self.env.factory_id, account, self.queue.queue, price)

    # ------------------------------------------------------------------ stopping

    def terminate(self, workers: Sequence[Worker], why: str) -> None:
        mine = self.own(workers)
        if not mine:
            return
        ids = [w.instance_id or w.id for w in mine]
        try:  # the mark that tells our own ends from someone else's (worker LOST)
            self.cloud.set_tags(ids, {TAG_ENDED: str(int(self.env.clock.now()))})
        except CloudError as exc:  # never in the way of a terminate
            log.warning(
                "[%s] could not mark %s as ended by the factory: %s", self.queue.queue, ids, exc
            )
        with self.calling(f"terminate ({why})"):
            self.cloud.terminate(ids)
        log.debug("[%s] %s: terminated %s", self.queue.queue, why, ids)

    def record(self, workers: Sequence[Worker], tags: Mapping[str, str], what: str) -> None:
        with self.calling(f"record {what} in tags"):
            self.cloud.set_tags([w.instance_id or w.id for w in workers], tags)

    def cancel(self, workers: Sequence[Worker]) -> None:
        self.terminate(workers, "cancel")

    def reap(self, workers: Sequence[Worker]) -> None:
        self.terminate(workers, "reap")

    def retire(self, workers: Sequence[Worker], mode: RetireMode) -> None:
        self.retire_groups([(workers, mode)])

    def retire_groups(self, groups: Sequence[RetireGroup]) -> None:
        """The shared VM retire routine; the record is one tag write per mode (request time
        and mode together)."""

        def record(joined: Sequence[RetireGroup]) -> None:
            stamp = str(int(self.env.clock.now()))
            for ws, mode in joined:
                self.record(ws, {TAG_RETIRE: stamp, TAG_RETIRE_MODE: str(mode)}, "retire")

        mine = [(self.own(ws), mode) for ws, mode in groups]
        retire_vms(self.condor, mine, self.queue.queue, record, self.terminate)

    def unretire(self, workers: Sequence[Worker]) -> None:
        def record(done: Sequence[Worker]) -> None:
            # Tags cannot be deleted everywhere (Nova merges): blank the request instead.
            stamp = str(int(self.env.clock.now()))
            self.record(done, {TAG_UNRETIRED: stamp, TAG_RETIRE: ""}, "un-retire")

        unretire_vms(self.condor, self.own(workers), self.queue.queue, record)


class EC2Submit(CloudSubmit):
    """VMs on EC2 or an EC2-compatible endpoint (boto3), on-demand or spot."""

    NAME = "EC2"
    PROVIDER = "ec2"
    PARAMS = (
        *EC2_PARAMS,
        *vm_params(("instance_type",)),
        SPOT_PRICE,
        SPOT_FALLBACK,
        *LAUNCH_PARAMS,
        *LIFE_PARAMS,
    )


class OpenStackSubmit(CloudSubmit):
    """VMs on OpenStack (python-novaclient, Keystone v3)."""

    NAME = "OpenStack"
    PROVIDER = "openstack"
    PARAMS = (*OPENSTACK_PARAMS, *vm_params(), NETWORKS, *LAUNCH_PARAMS, *LIFE_PARAMS)
