"""``pilotfactory demo``: the real factory, unchanged, against the simulated world.

The queues.conf is loaded exactly as ``run`` loads it; only the world (SimWorld instead of
RealWorld) and the clock (virtual) differ. File-based secrets the plugins insist on (EC2 key
files, x509 proxies) are pointed at generated dummies in a private temp directory, because
the simulated cloud needs none and the demo must run on a fresh machine.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.config import (
    ConfigError,
    FactoryConfig,
    QueueConfig,
    default_factory_config,
    load_factory_config,
    load_queues,
)
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.info import BatchQueueInfo, WorkerState
from pilotfactory.factory.trace import CycleTrace
from pilotfactory.sim.cloud import CloudConfig
from pilotfactory.sim.pool import PoolConfig
from pilotfactory.sim.workload import PRESETS, Workload, preset
from pilotfactory.sim.world import SimConfig, SimWorld

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: fixed so runs are reproducible
SECRET_PARAMS = ("access_key_id", "secret_access_key")


def _dummy_secrets(queues: Sequence[QueueConfig], workdir: str) -> list[QueueConfig]:
    out = []
    for q in queues:
        params = dict(q.batchsubmit.params)
        changed = False
        for key in SECRET_PARAMS:
            if key in params:
                path = os.path.join(workdir, f"{q.name}.{key}")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write("simulated\n")
                params[key] = path
                changed = True
        if params.get("proxy"):
            path = os.path.join(workdir, f"x509up_{os.path.basename(str(params['proxy']))}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
            params["proxy"] = path
            changed = True
        if changed:
            q = replace(q, batchsubmit=replace(q.batchsubmit, params=params))
        out.append(q)
    return out


def _makes_vms(q: QueueConfig) -> bool:
    """A VM queue (CondorEC2, EC2, OpenStack) brings its own startds: no static nodes."""
    return getattr(q.batchsubmit.cls, "WORKERS", "pilot") == "vm"


def pool_config(queues: Sequence[QueueConfig]) -> PoolConfig:
    """Pilots carry MATCH_APF_QUEUE = <queue name> and pull from the queue's site; without a VM
    queue to run them, they get a few static worker nodes."""
    return PoolConfig(
        pilot_sites={q.name: q.wmsqueue for q in queues if q.wmsstatus.name == "Panda"},
        static_nodes=0 if any(_makes_vms(q) for q in queues) else 8,
    )


def choose_workload(queues: Sequence[QueueConfig], name: str | Workload, seed: int) -> Workload:
    """Send the work where the configured queues look for it (a PanDA site or a pool label)."""
    if isinstance(name, Workload):
        return name
    sites = [q.wmsqueue for q in queues if q.wmsstatus.name == "Panda"]
    labels = [q.wmsqueue for q in queues if q.wmsstatus.name == "Condor"]
    if name == "auto":
        name = "panda" if sites else "burst"
    if name not in PRESETS:
        raise ConfigError(f"unknown workload {name!r} (known: auto, {', '.join(PRESETS)})")
    return preset(
        name,
        label=labels[0] if labels else "SIM_QUEUE",
        site=sites[0] if sites else "SIM_SITE",
        seed=seed,
    )


def _row(t: CycleTrace, start: float) -> str:
    minutes = int((t.time - start) // 60)
    clock = f"{minutes // 60:>2}:{minutes % 60:02d}"
    b = t.batch
    ready = str(t.wms.ready) if t.wms else "-"
    pending = running = retiring = "-"
    if b is not None:
        pending = str(b.pending)
        running = str(b.count(WorkerState.IDLE, WorkerState.BUSY, WorkerState.UNKNOWN))
        retiring = str(b.count(WorkerState.RETIRING, WorkerState.RETIRED))
    decision = t.decision()
    if t.results and not t.planned:
        decision += " (" + ", ".join(t.results) + ")"
    return (
        f"{clock}  {t.queue[:22]:<22} {ready:>6} {pending:>7} {running:>7} {retiring:>8}  "
        f"{t.n:>5}  {decision[:70]}"
    )


HEADER = (
    f"{'time':>5}  {'queue':<22} {'ready':>6} {'pending':>7} {'running':>7} {'retiring':>8}  "
    f"{'n':>5}  decision"
)


def run_demo(
    queue_paths: Sequence[str],
    factory_path: str | None = None,
    hours: float = 6.0,
    seed: int = 1,
    workload: str = "auto",
    every: int = 0,
    as_json: bool = False,
) -> int:
    if factory_path:
        fcfg, _ = load_factory_config(factory_path)
    else:
        fcfg = default_factory_config()
    result = load_queues(queue_paths, None, fcfg)
    for problem in result.problems:
        print(f"config: {problem}")
    if not result.queues:
        print("no usable queue to simulate")
        return 1
    with tempfile.TemporaryDirectory(prefix="pilotfactory-demo-") as workdir:
        fcfg = replace(
            fcfg,
            factory_id=fcfg.factory_id if factory_path else "demo",
            raw={**fcfg.raw, "baseLogDir": os.path.join(workdir, "logs")},
        )
        queues = _dummy_secrets(result.queues, workdir)
        summary = simulate(fcfg, queues, hours, seed, workload, every, not as_json)
    if as_json:
        print(json.dumps(summary, indent=2))
    return 0


def simulate(
    fcfg: FactoryConfig,
    queues: Sequence[QueueConfig],
    hours: float,
    seed: int,
    workload: str | Workload,
    every: int = 1,
    verbose: bool = True,
    observe: Callable[[SimWorld, Factory, list[CycleTrace]], None] | None = None,
) -> dict[str, Any]:
    """Run the factory for ``hours`` of simulated time; returns the summary (and prints).

    ``workload`` is a preset name or a ``Workload``; ``observe`` sees the world, the factory
    and the traces after every tick (tests check invariants there)."""
    wl = choose_workload(queues, workload, seed)
    sites = {q.wmsqueue: "online" for q in queues if q.wmsstatus.name == "Panda"}
    clock = VirtualClock(START)
    world = SimWorld(
        clock,
        SimConfig(
            seed=seed,
            pool=pool_config(queues),
            # Images built for pilotfactory set MAXJOBRETIREMENTTIME, so drain is safe.
            cloud=CloudConfig(default_retirement_time=86400.0),
            sites=sites,
            workload=wl,
        ),
    )
    factory = Factory(fcfg, queues, world, clock)
    step = min([fcfg.sleep, *(q.sleep for q in queues)]) or 30.0
    end = START + hours * 3600.0
    if verbose:
        print(
            f"simulating {hours:g} h of workload '{wl.name}' ({wl.total_jobs} jobs) on "
            f"{len(queues)} queue(s): {', '.join(q.name for q in queues)}"
        )
        print(HEADER)
    peak: dict[str, int] = {}
    grew_at: dict[str, float] = {}
    shrank_at: dict[str, float] = {}
    seen = 0
    while clock.now() < end:
        world.tick()
        traces = factory.cycle()
        if observe is not None:
            observe(world, factory, traces)
        for t in traces:
            supply = t.batch.supply if t.batch else 0
            if supply > peak.get(t.queue, 0):
                peak[t.queue] = supply
                grew_at[t.queue] = t.time
            if any(a.kind.value in ("retire", "cancel") for a in t.planned):
                shrank_at[t.queue] = t.time
            seen += 1
            if verbose and (t.planned or t.error or (every and seen % every == 0)):
                print(_row(t, START))
        clock.sleep(step)
    world.tick()
    sim = world.summary()
    final = {q.name: q.batch_source.info(q.name) for q in factory.queues.values()}
    summary: dict[str, Any] = {
        "hours": hours,
        "workload": wl.name,
        "jobs": wl.total_jobs,
        "queues": {
            name: {
                **q.counters,
                "peak_workers": peak.get(name, 0),
                "peak_at_h": round((grew_at.get(name, START) - START) / 3600, 2),
                "last_shrink_at_h": round((shrank_at[name] - START) / 3600, 2)
                if name in shrank_at
                else None,
                "final_workers": _supply(final[name]),
            }
            for name, q in factory.queues.items()
        },
        "world": sim,
        "timeline": timeline(world),
    }
    if verbose:
        print_summary(summary)
    return summary


def timeline(world: SimWorld, every: float = 900.0) -> list[dict[str, Any]]:
    """The world every ``every`` seconds: what waited and what was supplied, at a glance."""
    out: list[dict[str, Any]] = []
    next_t = START
    for snap in world.metrics.snapshots:
        if snap.t + 1e-6 < next_t:
            continue
        out.append(
            {
                "h": round((snap.t - START) / 3600, 2),
                "idle_jobs": snap.jobs_idle + snap.pilots_idle,
                "panda_activated": snap.panda_activated,
                "vms": snap.instances_running + snap.instances_pending,
                "cpus_busy": snap.cpus_busy,
                "cpus_total": snap.cpus_total,
            }
        )
        next_t = snap.t + every
    return out


def _supply(info: BatchQueueInfo | None) -> int | None:
    return info.supply if info is not None else None


def print_summary(s: dict[str, Any]) -> None:
    w = s["world"]
    print()
    print(f"summary: {s['hours']:g} simulated hours, workload '{s['workload']}', {s['jobs']} jobs")
    for name, q in s["queues"].items():
        print(
            f"  {name}: submitted {q['submitted']}, unretired {q['unretired']}, "
            f"cancelled {q['cancelled']}, retired {q['retired']}, reaped {q['reaped']}, "
            f"errors {q['errors']}, fail-closed cycles {q['failclosed']}; "
            f"peak {q['peak_workers']} workers at {q['peak_at_h']} h, "
            f"{q['final_workers']} at the end"
        )
    print(
        f"  payload: {w['payload_completed']} completed, {w['payload_killed']} killed; "
        f"wait mean {w['wait_mean']:.0f} s, p95 {w['wait_p95']:.0f} s"
    )
    print(
        f"  VMs: {w['instances_launched']} launched, {w['instances_terminated']} terminated, "
        f"{w['vm_hours']:.1f} VM-hours; pilots started {w['pilots_started']} "
        f"({w['pilots_without_payload']} found no payload)"
    )
    queries = ", ".join(f"{k} {v}" for k, v in w["queries"].items())
    print(f"  port calls: {queries}")
    rows = s.get("timeline") or []
    if rows:
        print("  timeline (every 15 min): waiting work | VMs | busy/total cpus")
        width = max(1, max(r["vms"] for r in rows))
        busy = [i for i, r in enumerate(rows) if r["vms"] or r["idle_jobs"] or r["panda_activated"]]
        quiet_from = busy[-1] + 2 if busy else 1
        for r in rows[:quiet_from]:
            waiting = r["idle_jobs"] + r["panda_activated"]
            bar = "#" * round(20 * r["vms"] / width)
            print(
                f"  {int(r['h']):>2}:{round(r['h'] % 1 * 60):02d}  {waiting:>6} waiting  "
                f"{r['vms']:>4} VMs {bar:<20}  {r['cpus_busy']:>4}/{r['cpus_total']:<4} cpus"
            )
        if quiet_from < len(rows):
            print(f"  ... no work and no VMs from then to {rows[-1]['h']:g} h")
