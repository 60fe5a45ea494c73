"""A dict-based fake CondorPort for unit tests: honours ``match`` and projections, records
every call, ignores raw constraints (as a port may), and applies ``edit`` to its job dicts."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.plugin import Env
from pilotfactory.factory.ports import CondorTarget, SubmitResult
from pilotfactory.plugins.batchsubmit.vmlife import unsigned_token


def _select(
    ads: Sequence[Mapping[str, Any]], match: Mapping[str, Any], projection: Sequence[str]
) -> list[dict[str, Any]]:
    out = []
    for ad in ads:
        if all(ad.get(k) == v for k, v in match.items()):
            out.append({k: ad[k] for k in projection if k in ad})
    return out


def _literal(value: str) -> Any:
    if value == "undefined":
        return None
    return json.loads(value)


@dataclass
class FakeCondor:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    startds: list[dict[str, Any]] = field(default_factory=list)
    masters: list[dict[str, Any]] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)
    next_cluster: int = 100

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise self.fail[name]

    def count(self, name: str) -> int:
        return sum(1 for c in self.calls if c[0] == name)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]

    def query_jobs(
        self, match: Mapping[str, Any], projection: Sequence[str], constraint: str | None = None
    ) -> list[dict[str, Any]]:
        self._call("query_jobs", dict(match), tuple(projection), constraint)
        return _select(self.jobs, match, projection)

    def query_history(
        self, match: Mapping[str, Any], projection: Sequence[str], since: float, limit: int
    ) -> list[dict[str, Any]]:
        self._call("query_history", dict(match), tuple(projection), since, limit)
        return _select(self.history, match, projection)[:limit]

    def query_startds(
        self, match: Mapping[str, Any], projection: Sequence[str], constraint: str | None = None
    ) -> list[dict[str, Any]]:
        self._call("query_startds", dict(match), tuple(projection), constraint)
        return _select(self.startds, match, projection)

    def query_masters(
        self, match: Mapping[str, Any], projection: Sequence[str], constraint: str | None = None
    ) -> list[dict[str, Any]]:
        self._call("query_masters", dict(match), tuple(projection), constraint)
        return _select(self.masters, match, projection)

    def submit(self, description: Mapping[str, str], count: int) -> SubmitResult:
        self._call("submit", dict(description), count)
        self.next_cluster += 1
        return SubmitResult(self.next_cluster, count)

    def remove(self, job_ids: Sequence[str], reason: str) -> int:
        self._call("remove", list(job_ids), reason)
        return len(job_ids)

    def edit(self, job_ids: Sequence[str], attr: str, value: str) -> None:
        self._call("edit", list(job_ids), attr, value)
        for job in self.jobs:
            if f"{job['ClusterId']}.{job['ProcId']}" in job_ids:
                parsed = _literal(value)
                if parsed is None:
                    job.pop(attr, None)
                else:
                    job[attr] = parsed

    def retire_peaceful(self, machine: str) -> None:
        self._call("retire_peaceful", machine)

    def unretire(self, machine: str) -> None:
        self._call("unretire", machine)

    def drain(self, machine: str, reason: str) -> None:
        self._call("drain", machine, reason)

    def cancel_drain(self, machine: str) -> None:
        self._call("cancel_drain", machine)

    def vacate(self, machine: str, reason: str) -> None:
        self._call("vacate", machine, reason)

    def advertise(self, ads: Sequence[Mapping[str, Any]]) -> None:
        self._call("advertise", [dict(ad) for ad in ads])

    def create_token(
        self, identity: str | None, authz: Sequence[str], lifetime: int, key_file: str | None = None
    ) -> str:
        """An unsigned token whose claims say what was asked (``exp`` from the wall clock,
        as condor_token_create's)."""
        self._call("create_token", identity, tuple(authz), lifetime, key_file)
        claims = {
            "sub": identity or "condor@fake",
            "scope": " ".join(f"condor:/{a}" for a in authz),
            "iat": int(time.time()),
            "exp": int(time.time()) + int(lifetime),
            "jti": f"fake{self.count('create_token')}",
        }
        return unsigned_token(claims)


class FakeWorld:
    def __init__(self, port: FakeCondor) -> None:
        self.port = port
        self.targets: list[CondorTarget] = []

    def condor(self, target: CondorTarget) -> FakeCondor:
        self.targets.append(target)
        return self.port

    def cloud(self, account: Any) -> Any:
        raise NotImplementedError

    def panda(self, settings: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def site_status(self, settings: Mapping[str, Any]) -> Any:
        raise NotImplementedError


def make_env(
    port: FakeCondor, now: float = 1_700_000_000.0, settings: Mapping[str, str] | None = None
) -> tuple[Env, VirtualClock]:
    clock = VirtualClock(now)
    env = Env("f1", FakeWorld(port), clock, dict(settings or {}))
    return env, clock
