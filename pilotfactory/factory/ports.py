"""The ports: every outside system the engine and the plugins talk to, as protocols.

The engine is the floor: these protocols live here, and their real implementations live in
``pilotfactory.backends`` (htcondor2 / condor CLI, boto3, novaclient, requests), the simulated
ones in ``pilotfactory.sim``. Plugins get their ports from a ``World``, so the same queue code
runs against a production pool, the real sandbox pool in tests, and the simulator.

Condor: queries take an equality filter (``match``) that every implementation can honour
cheaply, plus an optional raw ClassAd ``constraint``; ads come back as plain dicts holding only
the projected attributes (missing ones are absent, never ``None``).
Cloud: every instance carries the factory's labels as tags (``pilotfactory.factory.contract``)
and listing is always filtered on the factory's own tag.
PanDA: job statistics and site status as plain mappings.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# ---------------------------------------------------------------------------- condor


class CondorError(Exception):
    """Base of every error the condor port raises; carries the daemon's own message."""

    def __init__(self, message: str, *, daemon: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.daemon = daemon
        self.detail = detail


class CondorUnreachable(CondorError):
    """The schedd / collector / startd could not be contacted (down, wrong host, timeout)."""


class CondorPermission(CondorError):
    """Authentication or authorization failed (token, identity, ADMINISTRATOR needed)."""


class CondorRejected(CondorError):
    """The daemon answered but refused the request (bad submit description, unknown job)."""


@dataclass(frozen=True)
class SubmitResult:
    cluster: int
    count: int

    @property
    def job_ids(self) -> list[str]:
        return [f"{self.cluster}.{proc}" for proc in range(self.count)]


@dataclass(frozen=True)
class CondorTarget:
    """Which pool to talk to: APF's ``scheddhost`` / ``collectorhost``; None means local."""

    schedd: str | None = None
    collector: str | None = None


def render_match(match: Mapping[str, Any]) -> str:
    """Render an equality filter as a ClassAd constraint (``true`` when empty)."""
    parts: list[str] = []
    for key, value in match.items():
        if isinstance(value, bool):
            parts.append(f"{key} =?= {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            parts.append(f"{key} == {value}")
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key} == "{escaped}"')
    return " && ".join(parts) if parts else "true"


def combine(match: Mapping[str, Any], constraint: str | None) -> str:
    base = render_match(match)
    if constraint:
        return f"({base}) && ({constraint})" if match else constraint
    return base


@runtime_checkable
class CondorPort(Protocol):
    """Schedd, collector and startd operations of one pool."""

    def query_jobs(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs in the schedd queue (one query)."""
        ...

    def query_history(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        since: float,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Jobs that left the queue after ``since`` (bounded by ``limit``, newest first)."""
        ...

    def query_startds(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        """Slot ads (``MyType == "Machine"``) from the collector."""
        ...

    def query_masters(
        self,
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None = None,
    ) -> list[dict[str, Any]]:
        """Master ads (``MyType == "DaemonMaster"``) from the collector."""
        ...

    def submit(self, description: Mapping[str, str], count: int) -> SubmitResult:
        """Submit ``count`` jobs of one description as one transaction (one cluster)."""
        ...

    def remove(self, job_ids: Sequence[str], reason: str) -> int:
        """Remove jobs by ``cluster.proc``; returns how many were removed."""
        ...

    def edit(self, job_ids: Sequence[str], attr: str, value: str) -> None:
        """Set ``attr`` to the ClassAd expression ``value`` on each job."""
        ...

    def retire_peaceful(self, machine: str) -> None:
        """``condor_off -peaceful -daemon startd -name <machine>``."""
        ...

    def unretire(self, machine: str) -> None:
        """``condor_on -daemon startd -name <machine>`` (the master restarts it after it exits)."""
        ...

    def drain(self, machine: str, reason: str) -> None:
        """Graceful drain that exits the startd when its last job ends."""
        ...

    def cancel_drain(self, machine: str) -> None:
        """Cancel a drain: running jobs untouched, slots take new jobs at once."""
        ...

    def vacate(self, machine: str, reason: str) -> None:
        """Quick drain (``condor_drain -quick``): every running job is vacated now, within its
        MaxVacateTime, ignoring MaxJobRetirementTime, and goes back to idle; no slot takes a
        new job. For a VM the provider is about to end (a spot notice)."""
        ...

    def ping_schedd(self) -> None:
        """Reach the schedd (located through the collector) with the cheapest authenticated
        query there is (one attribute of at most one job); raise a ``CondorError`` if not."""
        ...

    def ping_collector(self) -> None:
        """Reach the collector with one small query (its own ad); raise a ``CondorError``
        if not."""
        ...

    def advertise(self, ads: Sequence[Mapping[str, Any]]) -> None:
        """Send generic ads (each with ``MyType`` and ``Name``) to the collector in one update
        (``UPDATE_AD_GENERIC``): the factory's lease ads."""

    def create_token(
        self,
        identity: str | None,
        authz: Sequence[str],
        lifetime: int,
        key_file: str | None = None,
    ) -> str:
        """Mint an IDTOKEN for ``identity`` (None: ``condor@<UID_DOMAIN>``) limited to
        ``authz`` and expiring in ``lifetime`` seconds, signed with the key in ``key_file``
        (``condor_token_create``); the worker VM contract's join credential."""
        ...


# ---------------------------------------------------------------------------- cloud


class CloudError(Exception):
    """Base of the cloud port's errors, with the provider's message."""


class CloudQuotaError(CloudError):
    """Quota exceeded (and the base of capacity and throttling): back off, try another choice."""


class CloudCapacityError(CloudQuotaError):
    """No capacity for this instance type / zone, or the spot price is too low: another type
    or zone may work at once."""


class CloudThrottledError(CloudQuotaError):
    """The provider rate-limits us (RequestLimitExceeded, Throttling, HTTP 503 / 429)."""


class CloudAuthError(CloudError):
    """Credentials refused or expired: retrying every cycle cannot help."""


class CloudInvalidRequest(CloudError):
    """The provider refused the request as malformed (an unknown image, a bad parameter):
    the queue's settings must change, retrying cannot help."""


class CloudUnavailable(CloudError):
    """The provider did not answer usefully (5xx, timeout, connection lost): the outcome of a
    launch is unknown, so its worker is looked up before it is launched again."""


ERROR_CLASSES: tuple[tuple[type[CloudError], str], ...] = (
    (CloudCapacityError, "capacity"),
    (CloudThrottledError, "throttled"),
    (CloudQuotaError, "quota"),
    (CloudAuthError, "auth"),
    (CloudInvalidRequest, "invalid"),
    (CloudUnavailable, "unavailable"),
)


def error_class(exc: BaseException) -> str:
    """The class of a cloud error as a word for reasons and back-off keys (``error`` when the
    port could not tell)."""
    for cls, name in ERROR_CLASSES:
        if isinstance(exc, cls):
            return name
    return "error"


@dataclass(frozen=True)
class Ec2Account:
    """The EC2 account a cloud port reaches, typed. Built from the plugins' parameter table
    (``plugins/cloudaccount.py``), which holds the defaults: no field has one here. Key fields
    are paths of owner-only files, never the secrets themselves."""

    endpoint_url: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None
    timeout: float
    retries: int
    api_rate: float
    api_burst: int


@dataclass(frozen=True)
class OpenStackAccount:
    """The OpenStack project a cloud port reaches, typed (see ``Ec2Account``)."""

    auth_url: str | None
    username: str | None
    password_file: str | None
    project_name: str | None
    user_domain_name: str | None
    project_domain_name: str | None
    application_credential_id: str | None
    application_credential_secret_file: str | None
    region: str | None
    interface: str | None
    network_id: str | None
    ca_bundle: str | None
    timeout: float
    retries: int
    api_rate: float
    api_burst: int


CloudAccount = Ec2Account | OpenStackAccount


@dataclass(frozen=True)
class CloudQuota:
    """An account's instance quota as the provider states it (``CloudPort.quota``)."""

    used: int
    """Instances counted against the limit now (the whole account/project, not only ours)."""
    limit: int | None
    """None: the provider states no limit (Nova's -1)."""
    detail: str = ""
    """Other limits worth showing (cores), one short line."""


@dataclass(frozen=True)
class LaunchSpec:
    """What to launch: image, flavour, optional spot price, user data, key, security groups."""

    image: str
    flavor: str
    spot_price: float | None = None
    user_data: str | None = None
    key_name: str | None = None
    security_groups: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)
    client_token: str | None = None
    """Idempotency token (EC2 ``ClientToken``, at most 64 ASCII characters): the same token
    on a retry makes the provider return the first launch instead of a second one."""


@dataclass(frozen=True)
class Instance:
    id: str
    state: str
    """Provider-neutral: ``pending``, ``running``, ``stopping`` (shutting down, or paused /
    suspended / shelved), ``stopped`` (powered off, still holding its quota and volumes:
    the factory terminates it), ``terminated``, ``error``."""
    launched_at: float
    tags: Mapping[str, str] = field(default_factory=dict)
    spot_request_id: str | None = None
    fault: str | None = None
    placed: str | None = None
    """What the provider says the instance is, where it says it (EC2: type, zone, market)."""
    self_shutdown: bool = False
    """The provider says the VM ended because it powered itself off (EC2: state reason
    ``Client.InstanceInitiatedShutdown``; OpenStack: shut off with no stop from the factory,
    which never asks for one). The worker contract ends every VM that way, so such an end is
    no failure, whether the instance then terminated or only stopped."""


@runtime_checkable
class CloudPort(Protocol):
    def launch(self, spec: LaunchSpec, count: int, tags: Mapping[str, str]) -> list[str]:
        """Launch ``count`` instances (or spot requests) tagged ``tags``; returns their ids."""
        ...

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        """Instances (and open spot requests) whose tags include every pair in ``tags``."""
        ...

    def set_tags(self, instance_ids: Sequence[str], tags: Mapping[str, str]) -> None: ...

    def terminate(self, instance_ids: Sequence[str]) -> None: ...

    def quota(self) -> CloudQuota | None:
        """The account's instance quota and use (authenticated calls, so a refused credential
        raises ``CloudAuthError``); None when the provider does not say."""
        ...


@dataclass(frozen=True)
class FleetOption:
    """One way an EC2 Fleet may fill a request (an override): instance type, and zone or
    subnet."""

    flavor: str
    zone: str | None = None
    subnet: str | None = None


@dataclass(frozen=True)
class FleetResult:
    """What one instant fleet call did: the instance it launched (none when every option was
    refused), on which option and market, and the refusals it reported per option (``None``
    when an error names no option)."""

    instance_ids: tuple[str, ...] = ()
    option: FleetOption | None = None
    spot: bool = False
    errors: tuple[tuple[FleetOption | None, CloudError], ...] = ()
    template_left: bool = False
    """The launch's template could not be deleted: the next sweep deletes it."""


@runtime_checkable
class FleetPort(Protocol):
    """A cloud port that launches through EC2 Fleet (``Type = instant``): one worker per call,
    so its tags, user data and client token are its own."""

    def launch_fleet(
        self,
        spec: LaunchSpec,
        options: Sequence[FleetOption],
        spot: bool,
        tags: Mapping[str, str],
    ) -> FleetResult:
        """Launch one instance on the best of ``options`` (spot: price-capacity-optimized,
        bid ``spec.spot_price``; on-demand: lowest price); ``spec.client_token`` is the
        fleet's ``ClientToken``. Raises the port's errors when the call itself fails."""
        ...

    def sweep_templates(self, tags: Mapping[str, str], keep: Collection[str]) -> int:
        """Delete the launch templates tagged ``tags`` that no open launch needs (names not in
        ``keep``): those a crash left between template and fleet. Returns how many."""
        ...


def fleet_template_name(client_token: str) -> str:
    """The launch template of one fleet launch: named by its token, so a retry (same token)
    finds the template it made, and an open launch's template is known without a call."""
    return f"pf-{client_token[:60]}"


# ---------------------------------------------------------------------------- PanDA


# site -> jobStatus -> count
JobStats = Mapping[str, Mapping[str, int]]
# site -> resource_type -> prodSourceLabel -> jobStatus -> count
DetailedJobStats = Mapping[str, Mapping[str, Mapping[str, Mapping[str, int]]]]


class PandaError(Exception):
    """The server could not be read or answered something unusable (names the URL)."""


@runtime_checkable
class PandaPort(Protocol):
    def active_job_stats(self) -> JobStats:
        """``active_job_stats_by_site`` (one request)."""
        ...

    def active_job_detailed_stats(self) -> DetailedJobStats:
        """``active_job_detailed_stats_by_site`` (one request)."""
        ...


@runtime_checkable
class SiteStatusPort(Protocol):
    def site_status(self) -> Mapping[str, str]:
        """PanDA queue name -> status text (online / test / offline / brokeroff)."""
        ...


# ---------------------------------------------------------------------------- the world


class World(Protocol):
    """Where plugins get their ports. A world whose calls may stall on a server also has
    ``blocking_io = True`` (read with ``getattr``: the simulated world's never stall, and
    its virtual clock wants the sources read in order on one thread)."""

    def condor(self, target: CondorTarget) -> CondorPort: ...

    def cloud(self, account: CloudAccount) -> CloudPort:
        """The port on this account (its type says which provider)."""
        ...

    def panda(self, settings: Mapping[str, Any]) -> PandaPort:
        """``settings``: the Panda WMS plugin params (server URL, timeout, TLS, ...)."""
        ...

    def site_status(self, settings: Mapping[str, Any]) -> SiteStatusPort: ...
