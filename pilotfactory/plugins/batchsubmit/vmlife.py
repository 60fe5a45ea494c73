"""The worker VM contract's settings and values (issue 18), shared by the VM side (the user
data a VM is rendered with) and the factory side (tags, lease renewal, lifetime, drift).

A VM's life is bounded three ways: a dead-man's lease (``lease``: the VM retires itself and
powers off when the factory stops renewing it, and ``sweep`` terminates it ``lease_grace``
later), a lifetime (``max_lifetime``, staggered per worker so a pool launched at once does not
retire at once), and drift (a VM launched from another image, flavour or template than the
queue's current one is replaced).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pilotfactory.factory.params import Param
from pilotfactory.factory.plugin import SubmitError
from pilotfactory.factory.ports import CondorError, CondorPort

DEFAULT_METADATA_URL = "http://169.254.169.254"

LEASE = Param(
    "lease",
    float,
    0.0,
    "dead-man's lease of each VM in seconds (0: none); renewed by the running daemon",
    minimum=0,
)
LEASE_GRACE = Param(
    "lease_grace",
    float,
    600.0,
    "seconds past the lease before the VM powers off hard and sweep terminates it",
    minimum=0,
)
MAX_LIFETIME = Param(
    "max_lifetime", float, 0.0, "retire each VM after this many seconds (0: never)", minimum=0
)
LIFETIME_STAGGER = Param(
    "lifetime_stagger",
    float,
    0.1,
    "fraction of max_lifetime by which VMs' deadlines are spread (per worker, deterministic)",
    minimum=0,
    maximum=1,
)
METADATA_URL = Param(
    "metadata_url", str, DEFAULT_METADATA_URL, "instance metadata base URL seen from the VM"
)
TOKEN_SIGNING_KEY = Param(
    "token_signing_key",
    str,
    None,
    "the pool's token signing key file: a short-lived, scoped token is minted per worker",
    secret=True,
)
TOKEN_IDENTITY = Param(
    "token_identity", str, None, "identity of the minted worker tokens (default: condor@<domain>)"
)
TOKEN_LIFETIME = Param(
    "token_lifetime",
    float,
    None,
    "seconds a minted token lives (default: lease + lease_grace, else 2 h)",
    minimum=60,
)

LIFE_PARAMS: tuple[Param, ...] = (
    LEASE,
    LEASE_GRACE,
    MAX_LIFETIME,
    LIFETIME_STAGGER,
    METADATA_URL,
    TOKEN_SIGNING_KEY,
    TOKEN_IDENTITY,
    TOKEN_LIFETIME,
)


@dataclass(frozen=True)
class VMContract:
    """Everything one worker's user data is rendered from (the placeholders of a template)."""

    worker_id: str
    factory_id: str
    queue: str
    collector: str | None
    label: str | None = None
    lease_until: int = 0
    lease_grace: int = 0
    deadline: int = 0
    token: str = ""
    metadata_url: str = DEFAULT_METADATA_URL


def stagger(worker_id: str) -> float:
    """A number in [0, 1) fixed by the worker id: spreads deadlines without any state."""
    digest = hashlib.sha256(worker_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class LaunchTimes:
    lease_until: int
    lease_grace: int
    deadline: int


def launch_times(params: Mapping[str, Any], worker_id: str, now: float) -> LaunchTimes:
    """The lease end and the deadline a worker launched ``now`` carries (0 = none)."""
    lease = float(LEASE.of(params) or 0)
    grace = float(LEASE_GRACE.of(params) or 0)
    life = float(MAX_LIFETIME.of(params) or 0)
    spread = float(LIFETIME_STAGGER.of(params) or 0)
    lease_until = int(now + lease) if lease > 0 else 0
    deadline = int(now + life * (1 - spread * stagger(worker_id))) if life > 0 else 0
    return LaunchTimes(lease_until, int(grace) if lease > 0 else 0, deadline)


def token_lifetime(params: Mapping[str, Any]) -> int:
    value = TOKEN_LIFETIME.of(params)
    if value:
        return int(value)
    lease = float(LEASE.of(params) or 0)
    return int(lease + float(LEASE_GRACE.of(params) or 0)) if lease > 0 else 7200


def fingerprint(image: str, flavors: Iterable[str], template: str | None, **settings: Any) -> str:
    """16 hex characters naming what a VM is launched as; any change marks older VMs drifted.
    Per-worker values (ids, tokens, times) are not part of it."""
    h = hashlib.sha256()
    for part in (image, ",".join(flavors), template or ""):
        h.update(part.encode())
        h.update(b"\0")
    for key in sorted(settings):
        h.update(f"{key}={settings[key]!r}".encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- tokens

WORKER_AUTHZ: tuple[str, ...] = ("ADVERTISE_STARTD", "ADVERTISE_MASTER", "READ")
"""What a worker's minted token may do: advertise its startd and master, read the collector
(the lease ad); nothing a stolen token could submit, negotiate or administer with."""

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def token_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT (an IDTOKEN), not verified: enough to see its expiry and scope;
    None when ``token`` is not one."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(body.encode("ascii")))
    except (ValueError, UnicodeError):
        return None
    return claims if isinstance(claims, dict) else None


def find_tokens(text: str) -> list[str]:
    """Every JWT-shaped string in ``text`` (a template, rendered user data)."""
    return [m.group(0) for m in _JWT.finditer(text) if token_claims(m.group(0)) is not None]


def unsigned_token(claims: Mapping[str, Any]) -> str:
    """A JWT-shaped token without a signature, for the simulator and tests' fakes of
    ``create_token`` (no daemon accepts it)."""

    def part(obj: Mapping[str, Any]) -> str:
        raw = json.dumps(dict(obj), separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def contract_of(
    params: Mapping[str, Any],
    worker_id: str,
    ids: tuple[str, str, str | None, str | None],
    now: float,
    token: str = "",
) -> VMContract:
    """The contract one launch renders its user data from; ``ids`` is (factory id, queue,
    collector, label). Shared by the cloud plugins (per worker) and CondorEC2 (per submit)."""
    t = launch_times(params, worker_id, now)
    factory_id, queue, collector, label = ids
    return VMContract(
        worker_id,
        factory_id,
        queue,
        collector,
        label,
        lease_until=t.lease_until,
        lease_grace=t.lease_grace,
        deadline=t.deadline,
        token=token,
        metadata_url=str(METADATA_URL.of(params) or DEFAULT_METADATA_URL),
    )


def mint_token(port: CondorPort, params: Mapping[str, Any], what: str) -> str:
    """A token scoped to advertising a startd and a master and reading the collector,
    expiring with the lease (``token_lifetime``); empty without a ``token_signing_key``. Never
    logged; a refusal is a ``SubmitError`` naming ``what`` and the key file."""
    key = TOKEN_SIGNING_KEY.of(params)
    if not key:
        return ""
    identity = TOKEN_IDENTITY.of(params) or None
    try:
        return port.create_token(identity, WORKER_AUTHZ, token_lifetime(params), str(key))
    except CondorError as exc:
        raise SubmitError(f"{what} (token_signing_key {key}): {exc}") from None
