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
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar, NoReturn

from pilotfactory.factory.contract import (
    FACTORY_ID,
    FACTORY_QUEUE,
    LEASE_AD_TYPE,
    LEASE_ATTR,
    TAG_DEADLINE,
    TAG_ENDED,
    TAG_FACTORY,
    TAG_FINGERPRINT,
    TAG_INTERRUPTED,
    TAG_LAUNCHED,
    TAG_LEASE,
    TAG_LEASE_GRACE,
    TAG_QUEUE,
    TAG_RETIRE,
    TAG_RETIRE_MODE,
    TAG_UNRETIRED,
    TAG_WORKER,
    target_from,
)
from pilotfactory.factory.info import RetireMode, Worker, WorkerKind, WorkerSet, WorkerState
from pilotfactory.factory.plugin import BatchSubmitPlugin, Env, QueueEnv, RetireGroup, SubmitError
from pilotfactory.factory.ports import (
    CloudError,
    CloudInvalidRequest,
    CloudPort,
    CloudUnavailable,
    CondorError,
    CondorPort,
    CondorTarget,
    FleetOption,
    FleetPort,
    FleetResult,
    LaunchSpec,
    World,
    error_class,
    fleet_template_name,
)
from pilotfactory.factory.probe import Probe, collector_probe
from pilotfactory.factory.text import clip
from pilotfactory.plugins.batchsubmit.cloud_common import (
    EC2_PARAMS,
    OPENSTACK_PARAMS,
    render_user_data,
    vm_params,
)
from pilotfactory.plugins.batchsubmit.cloud_launch import (
    FALL_THROUGH,
    FLEET_PARAMS,
    LAUNCH_PARAMS,
    NETWORKS,
    SPOT_FALLBACK,
    STOP,
    Choice,
    ChoiceBackoff,
    Intent,
    choices,
    client_token,
    fleet_token,
    launched_as,
    market_groups,
    over_budget,
    split_flavors,
)
from pilotfactory.plugins.batchsubmit.condor_common import (
    SPOT_PRICE,
    retire_vms,
    unretire_vms,
)
from pilotfactory.plugins.batchsubmit.vmlife import (
    LEASE,
    LIFE_PARAMS,
    METADATA_URL,
    TOKEN_IDENTITY,
    TOKEN_SIGNING_KEY,
    VMContract,
    contract_of,
    fingerprint,
    launch_times,
    mint_token,
)
from pilotfactory.plugins.cloudaccount import (
    TAG_LAUNCHED_AS,
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

    def saved_state(self) -> dict[str, Any] | None:
        """The per-choice back-off: a restart must not retry a refused type or zone at once."""
        states = self.choice_backoff.to_json()
        return {"choice_backoff": states} if states else None

    def restore_state(self, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise ValueError("the submit plugin's state is not an object")
        self.choice_backoff.states = ChoiceBackoff.parse(data.get("choice_backoff", {}))

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
        zones = list(p.get("availability_zones") or ()) or None
        nets = list(p.get("networks") or p.get("subnets") or ()) or None
        if zones and p.get("subnets"):  # a subnet lies in one zone: the product is void
            kind = f"batchsubmit.{self.NAME.lower()}"
            raise SubmitError(
                f"queue {self.queue.queue}: set {kind}.subnets or {kind}.availability_zones, "
                "not both (each subnet is in one zone)"
            )
        return choices(
            split_flavors(p.get("flavor")),
            zones,
            nets,
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
            extra["subnet_id" if self.PROVIDER == "ec2" else "network_id"] = choice.network
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
        ids = (self.env.factory_id, self.queue.queue, self.target.collector, self.queue.wmsqueue)
        return contract_of(self.params, worker_id, ids, now, token)

    def mint_token(self, worker_id: str) -> str:
        """A token for one worker (``vmlife.mint_token``)."""
        return mint_token(
            self.condor, self.params, f"queue {self.queue.queue}: token for worker {worker_id}"
        )

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
        """The labels, and the VM contract's lease, deadline and fingerprint (issue 18), all
        written with the launch itself: no instance exists without them."""
        tags = {
            TAG_FACTORY: self.env.factory_id,
            TAG_QUEUE: self.queue.queue,
            TAG_WORKER: wid,
            TAG_LAUNCHED: str(int(now)),
        }
        times = launch_times(self.params, wid, now)
        if times.lease_until:
            tags[TAG_LEASE] = str(times.lease_until)
            tags[TAG_LEASE_GRACE] = str(times.lease_grace)
        if times.deadline:
            tags[TAG_DEADLINE] = str(times.deadline)
        if fp := self.fingerprint():
            tags[TAG_FINGERPRINT] = fp
        return tags

    # ------------------------------------------------------------------ the VM contract

    _fp_cache: tuple[Any, str] | None = None

    def fingerprint(self) -> str | None:
        """Image, flavours, the template's text and the settings rendered into every VM; the
        template file is read again only when its size or modification time changes."""
        p = self.params
        if not p.get("image") or not split_flavors(p.get("flavor")):
            return None
        path = p.get("user_data_file")
        stamp: Any = None
        if path:
            try:
                st = os.stat(path)
            except OSError:
                return None
            stamp = (path, st.st_mtime_ns, st.st_size)
        settings = {
            "collector": self.target.collector or "",
            "wmsqueue": self.queue.wmsqueue,
            "metadata_url": METADATA_URL.of(p),
            "token_identity": TOKEN_IDENTITY.of(p) or "",
        }
        key = (str(p["image"]), tuple(split_flavors(p["flavor"])), stamp, tuple(settings.items()))
        if self._fp_cache is not None and self._fp_cache[0] == key:
            return self._fp_cache[1]
        try:
            text = self.template()
        except SubmitError:
            return None
        fp = fingerprint(str(p["image"]), split_flavors(p["flavor"]), text, **settings)
        self._fp_cache = (key, fp)
        return fp

    def vacate(self, workers: Sequence[Worker]) -> None:
        """Record the interruption in the tags (so the provider's end is no failure), then
        vacate each joined VM's startd; every VM is tried, the first failure is raised."""
        mine = [w for w in self.own(workers) if w.instance_id]
        if not mine:
            return
        stamp = str(int(self.env.clock.now()))
        self.record(mine, {TAG_INTERRUPTED: stamp}, "interruption")
        first: CondorError | None = None
        for w in mine:
            if not w.machine:
                continue
            try:
                self.condor.vacate(w.machine, "pilotfactory: spot interruption notice")
            except CondorError as exc:
                log.warning("[%s] vacate %s: %s", self.queue.queue, w.machine, exc)
                first = first or exc
        if first is not None:
            raise SubmitError(f"queue {self.queue.queue}: vacate: {first}") from first

    WANTED = (
        WorkerState.PENDING,
        WorkerState.BOOTING,
        WorkerState.IDLE,
        WorkerState.BUSY,
        WorkerState.RETIRING,
        WorkerState.UNKNOWN,
    )
    """The workers whose lease the daemon renews: the ones it still wants, retiring ones
    included (a peaceful retire lets the last job finish, and the queue's lease ad keeps the
    VM itself alive meanwhile; a tag left to run out would have the daemon's own sweep
    terminate it with the job running); not retired, interrupted, held or lost ones."""

    def maintain(self, workers: Sequence[Worker], now: float) -> list[str]:
        """Renew the lease of every wanted worker once any of them has less than half its
        lease left: one tag write for all of them, so a queue writes about once per half
        lease, not once per VM, and their leases stay aligned."""
        lease = float(LEASE.of(self.params) or 0)
        if lease <= 0:
            return []
        ws = workers if isinstance(workers, WorkerSet) else WorkerSet(workers)
        wanted = [w for w in ws.in_states(*self.WANTED) if w.instance_id]
        due = [w for w in wanted if w.lease_until is None or w.lease_until - now < lease / 2]
        if not due:
            return []
        if self.ALIGN_RENEWALS:
            due = wanted
        until = str(int(now + lease))
        try:
            self.record(due, {TAG_LEASE: until}, "lease renewal")
        except SubmitError as exc:
            if len(due) == 1 or not isinstance(exc.__cause__, CloudInvalidRequest):
                raise
            # One id the provider refuses (an instance gone since the refresh) must not leave
            # every other lease to run out, and the sweep to end them: one by one, this once.
            failed = []
            for w in due:
                try:
                    self.record([w], {TAG_LEASE: until}, "lease renewal")
                except SubmitError as one:
                    failed.append(w.instance_id or w.id)
                    log.warning("[%s] %s", self.queue.queue, one)
            done = f"renewed the lease of {len(due) - len(failed)} to {until} one by one"
            return [done + (f"; refused for {', '.join(failed[:10])}" if failed else "")]
        return [f"renewed the lease of {len(due)} to {until}"]

    ALIGN_RENEWALS: ClassVar[bool] = True
    """Renew every kept worker once one is due: one call for the queue when the provider tags
    many instances in one call (EC2). Where each instance is its own call (Nova), only the due
    ones are renewed, so the calls spread over the cycles as the VMs' launches did."""

    def lease_ad(self, now: float) -> tuple[CondorTarget, dict[str, Any]] | None:
        lease = float(LEASE.of(self.params) or 0)
        if lease <= 0:
            return None
        fid, q = self.env.factory_id, self.queue.queue
        ad: dict[str, Any] = {
            "MyType": LEASE_AD_TYPE,
            "Name": f"{fid}/{q}",
            FACTORY_ID: fid,
            FACTORY_QUEUE: q,
            LEASE_ATTR: int(now + lease),
            "ClassAdLifetime": int(lease),
        }
        return self.target, ad

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
                if intent.group:  # a fleet launch: its template is no longer needed
                    self._sweep_due = True
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
        if self.params.get("launch_via") == "fleet":
            intent = self.intents.get(wid) if pinned is not None else None
            group = list(intent.group) if intent is not None and intent.group else None
            return self.launch_fleet_one(spec, template, wid, tags, group, order, now, refused)
        q = self.queue.queue
        user_data = self.user_data(template, wid, now)
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
            tags = {**tags, TAG_LAUNCHED_AS: self.launch_text(choice, price)}
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

    def launch_fleet_one(
        self,
        spec: LaunchSpec,
        template: str | None,
        wid: str,
        tags: dict[str, str],
        pinned: list[Choice] | None,
        order: list[Choice],
        now: float,
        refused: list[str],
    ) -> bool:
        """One worker through EC2 Fleet (``launch_via = fleet``): one instant fleet call per
        market (spot, then the on-demand fallback) over its choices not backing off, with the
        worker's own token, tags and user data. Each refusal the fleet reports in ``Errors``
        backs off the choice it names, with its class; a fleet that launched nothing falls
        through to the next market. An open intent retries only its own options."""
        q = self.queue.queue
        port = self.cloud
        if not isinstance(port, FleetPort):
            raise SubmitError(
                f"queue {q}: launch_via = fleet needs EC2 Fleet, which "
                f"{type(port).__name__} does not offer"
            )
        self.sweep_templates(port)
        user_data = self.user_data(template, wid, now)
        for group in [pinned] if pinned else market_groups(order):
            usable = []
            for c in group:
                if not pinned and (why := self.choice_backoff.blocked(c, now)):
                    refused.append(why)
                elif why := self.spend_block(c):
                    refused.append(f"{c.label}: {why}")
                else:
                    usable.append(c)
            if not usable:
                continue
            spot = usable[0].spot
            market = "spot" if spot else "on-demand"
            token = fleet_token(self.env.factory_id, q, wid, usable)
            one = replace(
                spec,
                spot_price=spec.spot_price if spot else None,
                user_data=user_data,
                client_token=token,
            )
            prices = [p for c in usable if (p := self.price(c)) is not None]
            flavors = ", ".join(dict.fromkeys(c.flavor for c in usable))
            sent = {**tags, TAG_LAUNCHED_AS: clip(f"fleet {market} over {flavors}", 250)}
            if prices:  # the dearest option until the answer says which: budgets never undercount
                sent[TAG_PRICE] = f"{max(prices):g}"
            label = f"fleet {market} ({len(usable)} options)"
            try:
                res = port.launch_fleet(one, [c.option for c in usable], spot, sent)
            except CloudError as exc:
                kind = error_class(exc)
                if kind in STOP:
                    self.stop(wid, f"{kind} error on {label}: {exc}", now, exc)
                if kind in FALL_THROUGH:
                    self.intents.pop(wid, None)
                    for c in usable:
                        st = self.choice_backoff.refused(c, now, kind, str(exc))
                    refused.append(f"{label}: {st.reason}")
                    log.warning("[%s] %s refused (%s); next choice", q, label, kind)
                    if pinned:
                        return False
                    continue
                self.intents[wid] = Intent(
                    wid, usable[0], tuple(tags.items()), token, tuple(usable)
                )
                unknown = "unknown outcome" if isinstance(exc, CloudUnavailable) else kind
                raise SubmitError(f"queue {q}: launch of {wid} ({unknown}): {exc}") from exc
            if res.template_left:
                self._sweep_due = True
            by_option = {c.option: c for c in usable}
            for opt, err in res.errors:
                kind = error_class(err)
                named = [by_option[opt]] if opt in by_option else []
                if not named and not res.instance_ids:
                    named = usable  # a refusal that names no option: the whole call's
                if kind in STOP and not res.instance_ids:
                    self.stop(wid, f"{kind} error on {label}: {err}", now, err)
                for c in named:
                    st = self.choice_backoff.refused(c, now, kind, str(err))
                    refused.append(f"{c.label}: {st.reason}")
                if named:
                    log.warning("[%s] fleet refused %s (%s)", q, ", ".join(c.label for c in named),
                                kind)  # fmt: skip
            if not res.instance_ids:
                self.intents.pop(wid, None)  # a definite answer: nothing was launched
                if not res.errors:
                    for c in usable:
                        st = self.choice_backoff.refused(c, now, "capacity", "fleet launched none")
                    refused.append(f"{label}: {st.reason}")
                if pinned:
                    return False
                continue
            self.fleet_launched(wid, res, by_option)
            return True
        return False

    def stop(self, wid: str, why: str, now: float, exc: Exception) -> NoReturn:
        """Credentials refused or an invalid request: the queue stops until ``stop_retry``."""
        self.intents.pop(wid, None)
        self.stopped = (now + float(self.params.get("stop_retry") or 3600.0), why)
        raise SubmitError(f"queue {self.queue.queue}: stopped: {why}") from exc

    def fleet_launched(
        self, wid: str, res: FleetResult, by_option: dict[FleetOption, Choice]
    ) -> None:
        """Record what the fleet chose: its tags corrected to that option and its price (a
        failure leaves the launch's: the options and the dearest price), counted once."""
        q = self.queue.queue
        opt = res.option or FleetOption("?")
        chosen = by_option.get(opt) or Choice(opt.flavor, opt.zone, opt.subnet, res.spot)
        if chosen.spot != res.spot:
            chosen = replace(chosen, spot=res.spot)
        price = self.price(chosen)
        exact = {TAG_LAUNCHED_AS: self.launch_text(chosen, price)}
        if price is not None:
            exact[TAG_PRICE] = f"{price:g}"
        try:
            self.cloud.set_tags(list(res.instance_ids), exact)
        except CloudError as exc:
            log.warning("[%s] %s launched on %s; its tags keep the options: %s", q, wid,
                        chosen.label, exc)  # fmt: skip
        self.intents.pop(wid, None)
        self.choice_backoff.launched(chosen)
        self.count_launch(price or 0.0)
        log.debug("[%s] launched worker %s as %s by fleet on %s", q, wid,
                  ", ".join(res.instance_ids), chosen.label)  # fmt: skip

    _sweep_due = True
    """Launch templates a crash (or a failed delete) left behind are swept once per plugin
    before its first fleet launch, and again after a delete failed."""

    def sweep_templates(self, port: FleetPort) -> None:
        if not self._sweep_due:
            return
        keep = {fleet_template_name(i.token) for i in self.intents.values() if i.group}
        try:
            n = port.sweep_templates(
                {TAG_FACTORY: self.env.factory_id, TAG_QUEUE: self.queue.queue}, keep
            )
        except CloudError as exc:
            log.warning("[%s] launch templates not swept (next launch tries again): %s",
                        self.queue.queue, exc)  # fmt: skip
            return
        self._sweep_due = False
        if n:
            log.info("[%s] deleted %d launch template(s) left by an earlier launch",
                     self.queue.queue, n)  # fmt: skip

    def launch_text(self, choice: Choice, price: float | None) -> str:
        """The ``launched_as`` tag of a choice (a spot price without a ``prices`` entry is the
        bid)."""
        bid = choice.spot and choice.flavor not in (self.params.get("prices") or {})
        return launched_as(choice, price, bid, market=self.PROVIDER == "ec2")

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
        *FLEET_PARAMS,
        *LIFE_PARAMS,
    )


class OpenStackSubmit(CloudSubmit):
    """VMs on OpenStack (python-novaclient, Keystone v3)."""

    NAME = "OpenStack"
    PROVIDER = "openstack"
    ALIGN_RENEWALS = False  # one metadata call per server: spread, not bunched
    PARAMS = (*OPENSTACK_PARAMS, *vm_params(), NETWORKS, *LAUNCH_PARAMS, *LIFE_PARAMS)
