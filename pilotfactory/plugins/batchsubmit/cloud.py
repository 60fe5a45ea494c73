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
from pilotfactory.factory.ports import CloudError, CloudPort, CondorPort, LaunchSpec, World
from pilotfactory.factory.probe import Probe, collector_probe
from pilotfactory.plugins.batchsubmit.cloud_common import (
    EC2_PARAMS,
    OPENSTACK_PARAMS,
    condor_config,
    render_user_data,
    vm_params,
)
from pilotfactory.plugins.batchsubmit.condor_common import (
    SPOT_PRICE,
    retire_vms,
    unretire_vms,
)
from pilotfactory.plugins.cloudaccount import account_of, account_probe

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
            if not p.get(key):
                raise SubmitError(f"queue {q}: {kind}.{key} is not set")
        return LaunchSpec(
            image=str(p["image"]),
            flavor=str(p["flavor"]),
            spot_price=p.get("spot_price"),
            key_name=p.get("key_name") or None,
            security_groups=tuple(p.get("security_groups") or ()),
            extra=dict(p.get("launch_options") or {}),
        )

    def template(self) -> str | None:
        path = self.params.get("user_data_file")
        if not path:
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read()
        except OSError as exc:
            raise SubmitError(f"queue {self.queue.queue}: user_data_file {path}: {exc}") from None

    def user_data(self, template: str | None, worker_id: str) -> str:
        fid, q, collector = self.env.factory_id, self.queue.queue, self.target.collector
        values = {
            "worker_id": worker_id,
            "factory_id": fid,
            "queue": q,
            "collector": collector or "",
            "condor_config": condor_config(worker_id, fid, q, collector, self.queue.wmsqueue),
        }
        try:
            return render_user_data(template, values)
        except ValueError as exc:
            path = self.params.get("user_data_file")
            raise SubmitError(f"queue {q}: user_data_file {path} {exc}") from None

    def preview(self) -> str:
        """One launch request: the instance settings, the tags and the rendered user data (for
        a worker id written as ``<worker-id>``; each VM gets its own)."""
        spec = self.spec()
        wid = "<worker-id>"
        head = [
            f"# launch request of queue {self.queue.queue} ({self.NAME})",
            f"image = {spec.image}",
            f"flavor = {spec.flavor}",
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
        return "\n".join(head) + "\n" + self.user_data(self.template(), wid)

    def submit(self, count: int) -> list[str]:
        """One launch per worker (its own tags and user data); returns the worker ids. A
        failure after some launches raises all the same (they are tagged and found next
        cycle): quota and capacity errors must back the queue off."""
        if count <= 0:
            return []
        q = self.queue.queue
        spec, template = self.spec(), self.template()
        launched: list[str] = []
        for wid in self.worker_ids(count):
            tags = {
                TAG_FACTORY: self.env.factory_id,
                TAG_QUEUE: q,
                TAG_WORKER: wid,
                TAG_LAUNCHED: str(int(self.env.clock.now())),
            }
            one = replace(spec, user_data=self.user_data(template, wid))
            try:
                with self.calling(f"launch {len(launched) + 1} of {count}"):
                    ids = self.cloud.launch(one, 1, tags)
            except SubmitError:
                if launched:
                    log.warning("[%s] launched %d of %d VMs: %s", q, len(launched), count, launched)
                raise
            launched.append(wid)
            log.debug("[%s] launched worker %s as %s", q, wid, ", ".join(ids))
        return launched

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
    )


class OpenStackSubmit(CloudSubmit):
    """VMs on OpenStack (python-novaclient, Keystone v3)."""

    NAME = "OpenStack"
    PROVIDER = "openstack"
    PARAMS = (*OPENSTACK_PARAMS, *vm_params())
