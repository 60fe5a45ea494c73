"""OpenStack cloud port on python-novaclient (compute API 2.1) with a Keystone v3 session.

Nova server metadata is the tag store. Nova cannot filter on metadata reliably server-side, so
``list`` pages through every server of the project and filters here: a server without the
factory's tags is never returned, and so never touched. Servers are created one call per server
(not ``min_count``/``max_count``), because a multi-create answers with the first id only and
the factory needs every id it launched. Secrets are read from owner-only files and never logged.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from pilotfactory.backends.cloud.pacing import TokenBucket, bucket_for
from pilotfactory.backends.cloud.settings import clip, read_secret, redact_url
from pilotfactory.factory.contract import TAG_FACTORY, TAG_QUEUE, TAG_WORKER
from pilotfactory.factory.ports import (
    CloudAuthError,
    CloudError,
    CloudInvalidRequest,
    CloudPort,
    CloudQuota,
    CloudQuotaError,
    CloudThrottledError,
    CloudUnavailable,
    Instance,
    LaunchSpec,
    OpenStackAccount,
)

log = logging.getLogger(__name__)

API_VERSION = "2.1"
# Transient admin states of a live VM (reboot, resize, migrate, ...) count as running.
# fmt: off
_STATES = {
    "BUILD": "pending", "ERROR": "error", "UNKNOWN": "error",
    "DELETED": "terminated", "SOFT_DELETED": "terminated",
    "ACTIVE": "running", "REBOOT": "running", "HARD_REBOOT": "running", "PASSWORD": "running",
    "REBUILD": "running", "RESCUE": "running", "RESIZE": "running", "VERIFY_RESIZE": "running",
    "REVERT_RESIZE": "running", "MIGRATING": "running",
    "SHUTOFF": "stopped", "STOPPED": "stopped", "PAUSED": "stopping", "SUSPENDED": "stopping",
    "SHELVED": "stopping", "SHELVED_OFFLOADED": "stopping",
}
# fmt: on
_EXTRA = frozenset({"network_id", "availability_zone"})


def _auth(account: OpenStackAccount, auth_url: str) -> Any:
    """Application credential if configured (scoped and revocable), else user password."""
    cred_id = account.application_credential_id
    if cred_id is not None:
        secret_file = account.application_credential_secret_file
        if secret_file is None:
            raise CloudAuthError(
                "application_credential_id needs application_credential_secret_file"
            )
        secret = read_secret(secret_file, "application_credential_secret_file")
        return v3.ApplicationCredential(
            auth_url=auth_url,
            application_credential_id=cred_id,
            application_credential_secret=secret,
        )
    username, password_file = account.username, account.password_file
    project = account.project_name
    if username is None or password_file is None or project is None:
        raise CloudAuthError(
            "set username, password_file and project_name "
            "(or application_credential_id and application_credential_secret_file)"
        )
    return v3.Password(
        auth_url=auth_url,
        username=username,
        password=read_secret(password_file, "password_file"),
        project_name=project,
        user_domain_name=account.user_domain_name or "Default",
        project_domain_name=account.project_domain_name or "Default",
    )


def _error_of(code: Any, message: str, text: str) -> CloudError:
    """Nova's HTTP answers as error classes: 403 naming a quota (Nova's quota refusal) and 413
    are quota, 429 and 503 throttling, other 401/403 credentials, 400/404 a bad request, other
    5xx an unavailable service."""
    quota = "quota" in message.lower() or "exceeded" in message.lower()
    if code == 413 or (code == 403 and quota):
        return CloudQuotaError(text)
    if code in (429, 503):
        return CloudThrottledError(text)
    if code in (401, 403):
        return CloudAuthError(text)
    if code in (400, 404):
        return CloudInvalidRequest(text)
    if isinstance(code, int) and code >= 500:
        return CloudUnavailable(text)
    return CloudError(text)


class OpenStackCloud(CloudPort):
    """CloudPort on one OpenStack project and region."""

    def __init__(
        self,
        nova: Any,
        where: str,
        network_id: str | None = None,
        pace: TokenBucket | None = None,
    ) -> None:
        self.nova = nova
        self.where = where
        self.network_id = network_id
        self.pace = pace
        self.calls: dict[str, int] = {}
        self._resolved: dict[tuple[str, str], str] = {}
        self._seq = itertools.count(int(time.time()))

    @classmethod
    def from_settings(cls, account: OpenStackAccount) -> OpenStackCloud:
        """Password (username + password_file + project_name) or application credential auth;
        nothing is contacted until the first call."""
        auth_url = account.auth_url
        if auth_url is None:
            raise CloudError("setting auth_url (Keystone) is not set")
        auth_url = auth_url.rstrip("/")
        if not auth_url.endswith("/v3"):
            auth_url += "/v3"
        session = ks_session.Session(
            auth=_auth(account, auth_url), timeout=account.timeout, verify=account.ca_bundle or True
        )
        region = account.region
        nova = nova_client.Client(
            API_VERSION,
            session=session,
            region_name=region,
            endpoint_type=account.interface or "public",
            connect_retries=account.retries,
        )
        shown = redact_url(auth_url)
        where = f"{shown} region {region}" if region else shown
        who = (account.username, account.project_name, account.application_credential_id)
        pace = bucket_for(("openstack", auth_url, region, who), account.api_rate, account.api_burst)
        return cls(nova, where, account.network_id, pace)

    def __repr__(self) -> str:
        return f"OpenStackCloud({self.where!r})"

    @contextmanager
    def _calling(self, op: str) -> Iterator[None]:
        """Turn Nova and Keystone failures into the port's errors, with code and message;
        each call waits for its account's pacing token first."""
        where = f"OpenStack {self.where} {op}"
        verb = op.split(" ", 1)[0]
        self.calls[verb] = self.calls.get(verb, 0) + 1
        if self.pace is not None:
            self.pace.take()
        try:
            yield
        except (nova_exc.ClientException, ks_exc.HttpError) as exc:
            code = getattr(exc, "code", None) or getattr(exc, "http_status", None)
            message = clip(str(getattr(exc, "message", "") or exc))
            text = f"{where}: HTTP {code}: {message}"
            raise _error_of(code, message, text) from exc
        except ks_exc.ConnectionError as exc:
            raise CloudUnavailable(f"{where}: {type(exc).__name__}: {clip(str(exc))}") from exc
        except (ks_exc.ClientException, nova_exc.NoUniqueMatch) as exc:
            raise CloudError(f"{where}: {type(exc).__name__}: {clip(str(exc))}") from exc

    def _image(self, name_or_id: str) -> str:
        """An image id as is; a name through Glance (the catalog must list an image service)."""
        try:
            return str(uuid.UUID(name_or_id))
        except ValueError:
            pass
        key = ("image", name_or_id)
        if key not in self._resolved:
            with self._calling(f"find image {name_or_id!r}"):
                self._resolved[key] = self.nova.glance.find_image(name_or_id).id
        return self._resolved[key]

    def _flavor(self, name_or_id: str) -> str:
        """A flavor id, tried as an id first and then as a name (as the nova CLI does)."""
        key = ("flavor", name_or_id)
        if key not in self._resolved:
            with self._calling(f"find flavor {name_or_id!r}"):
                try:
                    self._resolved[key] = self.nova.flavors.get(name_or_id).id
                except nova_exc.NotFound:
                    self._resolved[key] = self.nova.flavors.find(name=name_or_id).id
        return self._resolved[key]

    def launch(self, spec: LaunchSpec, count: int, tags: Mapping[str, str]) -> list[str]:
        """One create per server, named ``pf-<worker id>`` (``pf-<queue>-<n>`` without one). Nova
        has no client token: a retry is safe because the caller looks the worker up by
        metadata first (``CloudSubmit``). If a later create fails after some
        succeeded, the ids so far are returned (they carry the tags) and the error is logged; it
        will surface on the next launch."""
        if count <= 0:
            return []
        if spec.spot_price is not None:
            raise CloudError("OpenStack has no spot market: unset spot_price for this queue")
        unknown = set(spec.extra) - _EXTRA
        if unknown:
            raise CloudError(f"unsupported OpenStack launch option(s): {sorted(unknown)}")
        image, flavor = self._image(spec.image), self._flavor(spec.flavor)
        network = spec.extra.get("network_id") or self.network_id
        queue = tags.get(TAG_QUEUE) or tags.get(TAG_FACTORY) or "pilot"
        worker = tags.get(TAG_WORKER) if count == 1 else None
        ids: list[str] = []
        for _ in range(count):
            # One worker's server is named by it, so an operator (and a retry's look-up by
            # metadata) finds it under one name.
            name = f"pf-{worker}" if worker else f"pf-{queue}-{next(self._seq)}"
            try:
                with self._calling("create server"):
                    server = self.nova.servers.create(
                        name=name,
                        image=image,
                        flavor=flavor,
                        meta={str(k): str(v) for k, v in tags.items()},
                        userdata=spec.user_data,
                        key_name=spec.key_name,
                        security_groups=list(spec.security_groups) or None,
                        nics=[{"net-id": network}] if network else None,
                        availability_zone=spec.extra.get("availability_zone"),
                    )
            except CloudError as exc:
                if not ids:
                    raise
                log.warning("launched %d of %d servers, then: %s", len(ids), count, exc)
                break
            ids.append(server.id)
        return ids

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        """Every page of the project's servers, kept if their metadata holds all ``tags``."""
        if not tags.get(TAG_FACTORY):
            raise ValueError(f"list() needs the {TAG_FACTORY} tag, so it sees only our servers")
        with self._calling("list servers"):
            servers = self.nova.servers.list(detailed=True, limit=-1)
        wanted = {str(k): str(v) for k, v in tags.items()}
        out = []
        for server in servers:
            meta = getattr(server, "metadata", None) or {}
            if all(meta.get(k) == v for k, v in wanted.items()):
                out.append(self._instance(server, meta))
        return out

    @staticmethod
    def _instance(server: Any, meta: Mapping[str, str]) -> Instance:
        """A server as an instance. One shut off with no task under way and Nova's ``stopped``
        vm_state powered itself off: Nova answers a guest's poweroff by calling its own stop
        API, so the server record cannot tell it from an operator's ``server stop``, and the
        factory never stops a server; only the instance-action log (a call per server) could."""
        state = _STATES.get(str(getattr(server, "status", "")).upper(), "error")
        task = getattr(server, "OS-EXT-STS:task_state", None)
        if task == "deleting" and state != "terminated":
            state = "stopping"
        vm_state = getattr(server, "OS-EXT-STS:vm_state", None)
        self_off = state == "stopped" and task is None and vm_state in (None, "stopped")
        fault = getattr(server, "fault", None)
        message = fault.get("message") if isinstance(fault, Mapping) else None
        try:
            launched = datetime.fromisoformat(str(server.created)).timestamp()
        except (AttributeError, ValueError):
            launched = 0.0
        return Instance(
            id=str(server.id),
            state=state,
            launched_at=launched,
            tags=dict(meta),
            fault=clip(str(message)) if message else None,
            self_shutdown=self_off,
        )

    def set_tags(self, instance_ids: Sequence[str], tags: Mapping[str, str]) -> None:
        """Merge ``tags`` into each server's metadata; a server already gone is skipped."""
        meta = {str(k): str(v) for k, v in tags.items()}
        for server_id in instance_ids:
            with self._calling(f"set metadata on {server_id}"):
                try:
                    self.nova.servers.set_meta(server_id, meta)
                except nova_exc.NotFound:
                    log.info("server %s is gone; not tagged", server_id)

    def terminate(self, instance_ids: Sequence[str]) -> None:
        """Delete every server (404 = already gone); one failure does not spare the rest, the
        first error is raised at the end."""
        errors: list[CloudError] = []
        for server_id in instance_ids:
            try:
                with self._calling(f"delete {server_id}"), suppress(nova_exc.NotFound):
                    self.nova.servers.delete(server_id)
            except CloudError as exc:
                errors.append(exc)
        for later in errors[1:]:
            log.warning("%s", later)
        if errors:
            raise errors[0]

    def quota(self) -> CloudQuota | None:
        """Nova's absolute limits of the project: ``maxTotalInstances`` against
        ``totalInstancesUsed`` (-1 means unlimited), cores shown beside them."""
        with self._calling("get limits"):
            limits = self.nova.limits.get()
        absolute = {str(a.name): a.value for a in getattr(limits, "absolute", ())}
        if "maxTotalInstances" not in absolute:
            return None

        def number(name: str) -> int | None:
            value = absolute.get(name)
            if value is None:
                return None
            try:
                out = int(value)
            except (TypeError, ValueError):
                raise CloudError(
                    f"OpenStack {self.where} get limits: {name} is {clip(str(value), 40)!r}, "
                    "not a number"
                ) from None
            return None if out < 0 else out

        limit = number("maxTotalInstances")
        used = number("totalInstancesUsed") or 0
        cores, cores_used = number("maxTotalCores"), number("totalCoresUsed")
        detail = ""
        if cores is not None:
            detail = f"cores {cores_used or 0} of {cores} used"
        return CloudQuota(used=used, limit=limit, detail=detail)
