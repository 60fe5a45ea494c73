"""How a cloud queue launches: its choices in order, their back-offs, tokens and open intents.

A queue may list several instance types (``flavor = m5.large, m5a.large``), zones
(``availability_zones``), networks (``networks``, OpenStack) and, for spot, an on-demand
fallback. Each combination is a ``Choice``; a capacity, quota or throttling refusal backs off
that choice alone (the class in the reason) and the launch falls through to the next one in the
same cycle. Credentials refused or a malformed request stop the queue instead: retrying every
cycle cannot help and floods the provider's log.

Idempotency: each launch carries a token derived from (factory, queue, worker, choice), known
before the call. A launch whose outcome is unknown (timeout, 5xx) stays an open ``Intent``:
before the worker is launched again, the queue's instances are listed and a worker found there
is not launched twice; otherwise it is retried with the same choice and token, which EC2 honours
server-side (``ClientToken``) even where a list lags.

EC2 Fleet (``launch_via = fleet``): still one worker per call, so each keeps its own id, tags,
token and user data. A fleet takes no user data of its own, so each launch makes a launch
template named by its token (the worker's user data), runs an ``instant`` fleet of capacity 1 on
it, and deletes it; a template a crash left is swept before the plugin's first fleet launch.
The options of one call are the market's choices not backing off: spot ones chosen by AWS
(``price-capacity-optimized``), then, with ``on_demand_fallback``, an on-demand fleet in the
queue's order (``prioritized``): EC2 Fleet itself never turns spot into on-demand. The token
covers the options too (EC2 refuses a token reused with other parameters), and an open intent
retries its own options.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pilotfactory.factory.params import Param
from pilotfactory.factory.ports import FleetOption
from pilotfactory.factory.rails import next_delay
from pilotfactory.factory.text import clip

LAUNCH_PARAMS: tuple[Param, ...] = (
    Param("availability_zones", list, None, "zones tried in order (capacity falls through)"),
    Param("choice_order", str, "listed", "listed, or price (cheapest first)", (),
          ("listed", "price")),
    Param("prices", dict, {}, "price per hour by flavor (m5.large=0.096, ...): order, budgets"),
    Param("choice_backoff", float, 300.0, "first back-off (s) of a refused choice, doubling",
          minimum=1.0),
    Param("choice_backoff_max", float, 3600.0, "longest back-off (s) of one choice", minimum=1.0),
    Param("budget_per_hour", float, None, "queue spend per hour (needs prices)", minimum=0.0),
    Param("budget_per_day", float, None, "queue spend per day (needs prices)", minimum=0.0),
    Param("stop_retry", float, 3600.0,
          "after credentials refused or an invalid request: seconds before one more try",
          minimum=60.0),
)  # fmt: skip
SPOT_FALLBACK = Param(
    "on_demand_fallback", bool, False, "spot queue: launch on-demand when spot is refused"
)
NETWORKS = Param("networks", list, None, "networks tried in order (unset: the account's)")
FLEET_PARAMS: tuple[Param, ...] = (
    Param("launch_via", str, "run_instances",
          "run_instances (one choice a call), or fleet: EC2 Fleet (instant) over the choices",
          (), ("run_instances", "fleet")),
    Param("subnets", list, None, "subnets tried in order, each in its own zone (a fleet's "
          "options); set these or availability_zones"),
)  # fmt: skip

FALL_THROUGH = frozenset({"capacity", "quota", "throttled"})
"""Refusals that say nothing about the other choices: try the next one now."""
STOP = frozenset({"auth", "invalid"})
"""Refusals no retry fixes: the queue stops until ``stop_retry`` or a reload."""


@dataclass(frozen=True)
class Choice:
    """One way to launch a worker: instance type, zone, network, spot or on-demand."""

    flavor: str
    zone: str | None = None
    network: str | None = None
    spot: bool = False

    @property
    def label(self) -> str:
        parts = [self.flavor, self.zone or "-", self.network or "-"]
        return "/".join(parts) + ("/spot" if self.spot else "")

    @property
    def option(self) -> FleetOption:
        """As an EC2 Fleet override (on EC2 the network is a subnet)."""
        return FleetOption(self.flavor, self.zone, self.network)


def launched_as(choice: Choice, price: float | None, bid: bool, market: bool = True) -> str:
    """What a worker was launched on, for its tag and ``status --workers``: type, zone or
    network, market, and the price per hour where known (a spot bid is the most it costs)."""
    parts = [choice.flavor, *[w for w in (choice.zone, choice.network) if w]]
    if market:
        parts.append("spot" if choice.spot else "on-demand")
    if price is not None:
        parts.append(f"<={price:g}/h (bid)" if bid else f"{price:g}/h")
    return " ".join(parts)


def market_groups(order: Sequence[Choice]) -> list[list[Choice]]:
    """The choices of one fleet call each: runs of one market in the order tried (a spot
    queue's spot choices, then its on-demand fallback)."""
    groups: list[list[Choice]] = []
    for c in order:
        if groups and groups[-1][0].spot == c.spot:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def fleet_token(factory_id: str, queue: str, worker: str, group: Sequence[Choice]) -> str:
    """A fleet launch's token names its options too: EC2 refuses a token reused with other
    parameters (IdempotentParameterMismatch), and a retry sends the same options."""
    seed = "|".join([factory_id, queue, worker, "fleet", *(c.label for c in group)])
    return hashlib.sha256(seed.encode()).hexdigest()


def split_flavors(value: object) -> list[str]:
    """``flavor`` as written: one name or a comma list (instance type names have no comma)."""
    items = value if isinstance(value, list | tuple) else str(value or "").split(",")
    return [str(f).strip() for f in items if str(f).strip()]


def choices(
    flavors: list[str],
    zones: list[str] | None,
    networks: list[str] | None,
    spot: bool,
    on_demand_fallback: bool,
    order: str = "listed",
    prices: dict[str, float] | None = None,
) -> list[Choice]:
    """Every choice, in the order tried: flavor-major (a zone of the preferred type before
    another type), spot ones before the on-demand fallback; ``price`` sorts by the configured
    price per hour (unpriced last, listed order among equals)."""
    out: list[Choice] = []
    markets = [True, False] if spot and on_demand_fallback else [spot]
    zs: list[str | None] = [*zones] if zones else [None]
    ns: list[str | None] = [*networks] if networks else [None]
    for market in markets:
        for f in flavors:
            out.extend(Choice(f, z, n, market) for z in zs for n in ns)
    if order == "price":
        known = prices or {}
        big = float("inf")
        out.sort(key=lambda c: (not c.spot if spot else False, known.get(c.flavor, big)))
    return out


def client_token(factory_id: str, queue: str, worker: str, choice: Choice) -> str:
    """At most 64 ASCII characters (EC2's limit), a function of what it names only: the same
    worker on the same choice always sends the same token."""
    seed = f"{factory_id}|{queue}|{worker}|{choice.label}"
    return hashlib.sha256(seed.encode()).hexdigest()


@dataclass
class ChoiceState:
    until: float = 0.0
    delay: float = 0.0
    reason: str = ""


@dataclass
class ChoiceBackoff:
    """Back-off per choice (instance type, zone / network, market), with the error class."""

    initial: float = 300.0
    maximum: float = 3600.0
    states: dict[str, ChoiceState] = field(default_factory=dict)

    def blocked(self, choice: Choice, now: float) -> str | None:
        st = self.states.get(choice.label)
        if st is None or now >= st.until:
            return None
        return f"{choice.label} backing off {st.until - now:.0f}s: {st.reason}"

    def refused(self, choice: Choice, now: float, kind: str, message: str) -> ChoiceState:
        st = self.states.setdefault(choice.label, ChoiceState())
        st.delay = next_delay(st.delay, self.initial, self.maximum)
        st.until = now + st.delay
        st.reason = clip(f"{kind}: {message}", 300)
        return st

    def launched(self, choice: Choice) -> None:
        self.states.pop(choice.label, None)

    def to_json(self) -> dict[str, list[Any]]:
        """For the state file: a restart keeps refused choices backing off."""
        return {k: [st.until, st.delay, st.reason] for k, st in sorted(self.states.items())}

    @staticmethod
    def parse(data: Any) -> dict[str, ChoiceState]:
        """States from ``to_json``; ValueError naming what is malformed (nothing is kept)."""
        if not isinstance(data, Mapping):
            raise ValueError("choice_backoff is not an object")
        out: dict[str, ChoiceState] = {}
        for label, v in data.items():
            ok = isinstance(v, list) and len(v) == 3 and isinstance(v[2], str)
            nums = ok and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v[:2])
            if not (isinstance(label, str) and nums):
                raise ValueError(
                    f"choice_backoff.{clip(str(label), 80)} is not [until, delay, why]"
                )
            out[label] = ChoiceState(float(v[0]), float(v[1]), clip(v[2], 300))
        return out


@dataclass(frozen=True)
class Intent:
    """A launch whose outcome is unknown: its worker, choice, tags and token are reused."""

    worker: str
    choice: Choice
    tags: tuple[tuple[str, str], ...]
    token: str
    group: tuple[Choice, ...] = ()
    """A fleet launch's options (its template is named by ``token``)."""


def over_budget(
    what: str, rate: float, price: float, per_hour: float | None, per_day: float | None
) -> str | None:
    """Why one more VM at ``price`` per hour would take ``rate`` (what runs now, per hour)
    past a budget; a day's spend is the rate held for 24 hours."""
    after = rate + price
    if per_hour is not None and after > per_hour + 1e-9:
        return (
            f"{what} spends {rate:g}/h; one more VM at {price:g}/h would exceed "
            f"budget_per_hour={per_hour:g}"
        )
    if per_day is not None and after * 24 > per_day + 1e-9:
        return (
            f"{what} spends {rate * 24:g}/day; one more VM at {price:g}/h would exceed "
            f"budget_per_day={per_day:g}"
        )
    return None
