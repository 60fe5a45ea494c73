"""Which cloud account a queue reaches: the settings shared by the cloud submit and status plugins.

Both kinds of plugin take the same provider settings, so a queue's submit and status plugins
reach the same account; they live here, beside neither, so a status plugin never imports a
submit plugin. ``account_of`` turns them into the typed account the cloud ports take: the
defaults are these tables', and nothing below parses a setting again.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pilotfactory.factory.params import Param, ParamValueError
from pilotfactory.factory.ports import CloudAccount, Ec2Account, OpenStackAccount, World
from pilotfactory.factory.probe import Finding, Probe, Result, cloud_probe
from pilotfactory.factory.text import redact_url

_API = (
    Param("timeout", float, 30.0, "seconds per API call", minimum=0.001, maximum=3600.0),
    Param("retries", int, 3, "API retries", minimum=0, maximum=100),
    Param(
        "api_rate",
        float,
        10.0,
        "API calls per second, per credential (token bucket)",
        minimum=0.01,
        maximum=10000.0,
    ),
    Param("api_burst", int, 10, "API calls allowed at once before pacing", minimum=1),
)
EC2_PARAMS: tuple[Param, ...] = (
    Param("endpoint_url", str, None, "EC2 endpoint (unset: AWS for the region)"),
    Param("region", str, None, "region (unset: us-east-1)"),
    Param(
        "access_key_id",
        str,
        None,
        "file holding the access key id (unset: boto3 chain)",
        secret=True,
    ),
    Param("secret_access_key", str, None, "file holding the secret access key", secret=True),
    *_API,
)
OPENSTACK_PARAMS: tuple[Param, ...] = (
    Param("auth_url", str, None, "Keystone URL (/v3 is added)"),
    Param("username", str, None, "user (with password_file and project_name)"),
    Param("password_file", str, None, "file holding the password (owner-only)", secret=True),
    Param("project_name", str, None, "project"),
    Param("user_domain_name", str, None, "user domain (unset: Default)"),
    Param("project_domain_name", str, None, "project domain (unset: Default)"),
    Param("application_credential_id", str, None, "instead of username/password"),
    Param("application_credential_secret_file", str, None, "file holding its secret", secret=True),
    Param("region", str, None, "region"),
    Param("interface", str, None, "endpoint interface (unset: public)"),
    Param("network_id", str, None, "network the VMs attach to"),
    Param("ca_bundle", str, None, "CA bundle for TLS to Keystone/Nova"),
    *_API,
)
PROVIDER_PARAMS: dict[str, tuple[Param, ...]] = {"ec2": EC2_PARAMS, "openstack": OPENSTACK_PARAMS}


def provider_key(provider: str, params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The settings that name one cloud account (paths, never secrets)."""
    return tuple((p.name, str(params.get(p.name))) for p in PROVIDER_PARAMS[provider])


def account_text(provider: str, params: Mapping[str, Any]) -> str:
    """An account in words, for labels and messages: where it is (endpoint, project, region),
    never who logs in nor with what."""
    get = params.get
    if provider == "ec2":
        parts = [provider, f"region {get('region') or 'us-east-1'}"]
        if get("endpoint_url"):
            parts.append(redact_url(str(get("endpoint_url"))))
    else:
        parts = [provider, redact_url(str(get("auth_url") or "(no auth_url)"))]
        parts += [f"{k} {get(k)}" for k in ("project_name", "region") if get(k)]
    return " ".join(parts)


ACCOUNT_TYPES: dict[str, type[Ec2Account] | type[OpenStackAccount]] = {
    "ec2": Ec2Account,
    "openstack": OpenStackAccount,
}


def account_of(provider: str, params: Mapping[str, Any]) -> CloudAccount:
    """The typed account of a queue's plugin params (``provider``: ec2 or openstack); blank
    text settings are unset, raw INI text is parsed by the table (ParamValueError)."""
    values: dict[str, Any] = {}
    for p in PROVIDER_PARAMS[provider]:
        value = p.of(params)
        if isinstance(value, str) and p.type is str:
            value = value.strip() or None
        elif isinstance(value, str):
            try:
                value = p.parse(value)
            except ParamValueError as exc:
                raise ParamValueError(f"{provider} setting {p.name}: {exc}") from None
        values[p.name] = value
    return ACCOUNT_TYPES[provider](**values)


def credential_settings(provider: str, namespace: str, params: Mapping[str, Any]) -> str:
    """The settings that hold a queue's cloud credentials, as a refusal names them."""
    if provider == "ec2":
        if params.get("access_key_id") or params.get("secret_access_key"):
            return f"{namespace}access_key_id / {namespace}secret_access_key"
        return "no key files set: boto3's default credential chain"
    if params.get("application_credential_id"):
        return (
            f"{namespace}application_credential_id / {namespace}application_credential_secret_file"
        )
    return f"{namespace}username / {namespace}password_file"


def account_probe(provider: str, namespace: str, params: Mapping[str, Any], world: World) -> Probe:
    """The pre-flight probe of a queue's cloud account (credentials and quota headroom)."""
    try:
        account = account_of(provider, params)
    except ParamValueError as exc:
        problem = str(exc)
        return Probe(
            ("cloud settings", provider, provider_key(provider, params)),
            f"{provider} account",
            lambda need: [Finding(Result.FAIL, problem)],
        )
    return cloud_probe(world, account, credential_settings(provider, namespace, params))


# ---------------------------------------------------------------------------- census

TAG_PRICE = "pilotfactory:price"
"""Price per hour an instance was bought at (the queue's ``prices``, or the spot bid), so a
budget can sum what the factory spends from the instances alone, whichever queue bought them."""
TAG_LAUNCHED_AS = "pilotfactory:launched_as"
"""What the instance was launched on (type, zone or network, market, price), written with the
launch; an EC2 Fleet's answer corrects it to the option the fleet chose."""

FACTORY_LIMIT_PARAMS: tuple[Param, ...] = (
    Param(
        "factory_max_instances",
        int,
        None,
        "cap on every live instance of this factory (all queues, all accounts)",
        minimum=0,
    ),
    Param("factory_budget_per_hour", float, None, "factory-wide spend per hour", minimum=0.0),
    Param("factory_budget_per_day", float, None, "factory-wide spend per day", minimum=0.0),
)


@dataclass
class Census:
    """What one account's status source saw of this factory at its last refresh, plus what
    was launched since (by any queue): the factory-wide cap and the budgets read it, so they
    cost no list of their own."""

    time: float
    by_queue: dict[str, tuple[int, float]]
    """queue -> (live instances, their price per hour)"""
    max_instances: int | None = None
    budget_per_hour: float | None = None
    budget_per_day: float | None = None
    added: list[tuple[str, float]] = field(default_factory=list)

    def totals(self, queue: str | None = None) -> tuple[int, float]:
        """(instances, price per hour) of one queue, or of all."""
        n = rate = 0.0
        for q, (count, price) in self.by_queue.items():
            if queue is None or q == queue:
                n, rate = n + count, rate + price
        for q, price in self.added:
            if queue is None or q == queue:
                n, rate = n + 1, rate + price
        return int(n), rate


_CENSUS: dict[tuple[str, Hashable], Census] = {}
_CENSUS_LOCK = threading.Lock()


def publish_census(factory_id: str, account: Hashable, census: Census) -> None:
    with _CENSUS_LOCK:
        _CENSUS[(factory_id, account)] = census


CENSUS_MAXAGE = 3600.0
"""A census older than this is from an account no queue reads any more: not counted."""


def censuses(factory_id: str, now: float) -> list[Census]:
    """Every account's recent census of this factory."""
    with _CENSUS_LOCK:
        return [
            c
            for (fid, _), c in _CENSUS.items()
            if fid == factory_id and now - c.time <= CENSUS_MAXAGE
        ]


def count_launch(factory_id: str, account: Hashable, queue: str, price: float) -> None:
    """A launch the account's next refresh will see: counted in its census until then."""
    with _CENSUS_LOCK:
        found = _CENSUS.get((factory_id, account))
        if found is not None:
            found.added.append((queue, price))
