"""EC2 cloud port on boto3 (AWS, moto, or any EC2-compatible endpoint).

Tags are the only state: every call is scoped by tag filters, so the factory never sees or
touches an instance it did not launch. Spot requests are tagged at creation; AWS does not copy a
request's tags to the instance that fulfils it, so ``launch`` and ``list`` copy them, otherwise a
fulfilled spot VM would be invisible to tag filters and leak. Credentials come from files (APF
convention) or boto3's default chain; their contents never reach a log, an error or a ``repr``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from pilotfactory.backends.cloud.pacing import TokenBucket, bucket_for
from pilotfactory.backends.cloud.settings import clip, read_secret, redact_url
from pilotfactory.factory.contract import TAG_FACTORY
from pilotfactory.factory.ports import (
    CloudAuthError,
    CloudCapacityError,
    CloudError,
    CloudInvalidRequest,
    CloudPort,
    CloudQuota,
    CloudQuotaError,
    CloudThrottledError,
    CloudUnavailable,
    Ec2Account,
    Instance,
    LaunchSpec,
)

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
# fmt: off
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity", "SpotMaxPriceTooLow", "Unsupported",
    "InsufficientFreeAddressesInSubnet",
})
THROTTLE_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
    "SlowDown", "ServiceUnavailable", "Unavailable",
})
QUOTA_CODES = frozenset({
    "InstanceLimitExceeded", "MaxSpotInstanceCountExceeded", "VcpuLimitExceeded",
    "MaxSpotFleetRequestCountExceeded", "ResourceLimitExceeded",
})
AUTH_CODES = frozenset({
    "AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "ExpiredToken", "OptInRequired", "Blocked", "PendingVerification",
})
# fmt: on
_STATES = {"pending": "pending", "running": "running", "terminated": "terminated"}
_STATES.update({name: "stopping" for name in ("shutting-down", "stopping", "stopped")})
_SPOT = {"open": "pending", "failed": "error", "cancelled": "terminated", "closed": "terminated"}
_SPOT_WAITING = frozenset({"pending-evaluation", "pending-fulfillment"})
_NORMAL_SHUTDOWN = frozenset({"Client.UserInitiatedShutdown", "Client.InstanceInitiatedShutdown"})
_CHUNK = 500
_PAGE = 1000  # the most one Describe* page may hold: a list of 1,000 VMs is one call


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]


def _tag_dict(raw: Any) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in raw or ()}


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else 0.0


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield list(ids[i : i + _CHUNK])


def error_of(code: str, status: int | None, text: str) -> CloudError:
    """The port's error for an EC2 error code (or, without a known code, its HTTP status)."""
    if code in CAPACITY_CODES:
        return CloudCapacityError(text)
    if code in THROTTLE_CODES or status in (429, 503):
        return CloudThrottledError(text)
    if code in QUOTA_CODES:
        return CloudQuotaError(text)
    if code in AUTH_CODES or status in (401, 403):
        return CloudAuthError(text)
    if code.startswith(("Invalid", "Missing", "Unknown")) or code in (
        "IdempotentParameterMismatch",
        "DryRunOperation",
    ):
        return CloudInvalidRequest(text)
    if (status is not None and status >= 500) or code in ("InternalError", "InternalFailure"):
        return CloudUnavailable(text)
    return CloudError(text)


class Ec2Cloud(CloudPort):
    """CloudPort on one EC2 endpoint and region; every request waits for its account's
    ``pace`` token (``pacing.py``), and ``calls`` counts requests by operation."""

    def __init__(self, client: Any, pace: TokenBucket | None = None) -> None:
        self.client = client
        self.endpoint = redact_url(str(client.meta.endpoint_url))  # for messages
        self.pace = pace
        self.calls: dict[str, int] = {}
        client.meta.events.register("before-send.ec2", self._before_send)

    def _before_send(self, event_name: str = "", **_: Any) -> None:
        """Per HTTP attempt (botocore's retries too): count it and wait for a token."""
        op = event_name.rsplit(".", 1)[-1]
        self.calls[op] = self.calls.get(op, 0) + 1
        if self.pace is not None:
            self.pace.take()

    @classmethod
    def from_settings(cls, account: Ec2Account) -> Ec2Cloud:
        """Without the key files boto3's default chain (env, profile, IMDS) is used."""
        key_file, secret_file = account.access_key_id, account.secret_access_key
        if (key_file is None) != (secret_file is None):
            raise CloudAuthError(
                "set both access_key_id and secret_access_key (files), or neither to use the "
                "default boto3 credential chain"
            )
        keys: dict[str, str] = {}
        if key_file is not None and secret_file is not None:
            keys["aws_access_key_id"] = read_secret(key_file, "access_key_id")
            keys["aws_secret_access_key"] = read_secret(secret_file, "secret_access_key")
        config = Config(
            connect_timeout=account.timeout,
            read_timeout=account.timeout,
            retries={"total_max_attempts": account.retries + 1, "mode": "standard"},
        )
        region = account.region or DEFAULT_REGION
        try:
            session = boto3.session.Session(region_name=region, **keys)
            client = session.client("ec2", endpoint_url=account.endpoint_url, config=config)
        except (BotoCoreError, ValueError) as exc:
            raise CloudError(f"EC2 client for region {region!r}: {clip(str(exc))}") from None
        pace = bucket_for(
            ("ec2", account.endpoint_url, region, key_file), account.api_rate, account.api_burst
        )
        return cls(client, pace)

    def __repr__(self) -> str:
        return f"Ec2Cloud({self.endpoint!r})"

    @contextmanager
    def _calling(self, op: str) -> Iterator[None]:
        """Turn botocore failures into the port's errors, naming endpoint, code and message."""
        where = f"EC2 {self.endpoint} {op}"
        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = clip(str(err.get("Code") or ""), 80)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            shown = code or f"HTTP {status}"
            text = f"{where}: {shown}: {clip(str(err.get('Message') or exc))}"
            raise error_of(code, status if isinstance(status, int) else None, text) from exc
        except NoCredentialsError as exc:
            raise CloudAuthError(f"{where}: {clip(str(exc))}") from exc
        except (ReadTimeoutError, ConnectionClosedError, EndpointConnectionError) as exc:
            text = f"{where}: {type(exc).__name__}: {clip(str(exc))}"
            raise CloudUnavailable(text) from exc
        except (BotoCoreError, ResponseParserError) as exc:
            raise CloudError(f"{where}: {type(exc).__name__}: {clip(str(exc))}") from exc

    def _placement(self, spec: LaunchSpec) -> dict[str, Any]:
        """Parameters shared by RunInstances and a spot LaunchSpecification."""
        params: dict[str, Any] = {"ImageId": spec.image, "InstanceType": spec.flavor}
        if spec.key_name:
            params["KeyName"] = spec.key_name
        ids = [g for g in spec.security_groups if g.startswith("sg-")]
        names = [g for g in spec.security_groups if not g.startswith("sg-")]
        if ids:
            params["SecurityGroupIds"] = ids
        if names:
            params["SecurityGroups"] = names
        extra = dict(spec.extra)
        unknown = set(extra) - {"subnet_id", "availability_zone", "iam_instance_profile"}
        if unknown:
            raise CloudError(f"unsupported EC2 launch option(s): {', '.join(sorted(unknown))}")
        if extra.get("subnet_id"):
            params["SubnetId"] = extra["subnet_id"]
        if extra.get("availability_zone"):
            params["Placement"] = {"AvailabilityZone": extra["availability_zone"]}
        profile = extra.get("iam_instance_profile")
        if profile:
            params["IamInstanceProfile"] = {
                "Arn" if profile.startswith("arn:") else "Name": profile
            }
        return params

    def launch(self, spec: LaunchSpec, count: int, tags: Mapping[str, str]) -> list[str]:
        """On-demand: all ``count`` or nothing. Spot: one-time requests; fulfilled ones return
        their instance id, the others their ``sir-`` id."""
        if count <= 0:
            return []
        params = self._placement(spec)
        if spec.spot_price is None:
            if spec.user_data:
                params["UserData"] = spec.user_data  # botocore base64-encodes it for RunInstances
            params["TagSpecifications"] = [{"ResourceType": "instance", "Tags": _tag_list(tags)}]
            if spec.client_token:
                params["ClientToken"] = spec.client_token
            with self._calling("RunInstances"):
                reply = self.client.run_instances(MinCount=count, MaxCount=count, **params)
            return [i["InstanceId"] for i in reply.get("Instances", [])]
        if spec.spot_price <= 0:
            raise CloudError(f"spot_price {spec.spot_price!r} must be > 0")
        if spec.user_data:
            params["UserData"] = base64.b64encode(spec.user_data.encode()).decode("ascii")
        token = {"ClientToken": spec.client_token} if spec.client_token else {}
        with self._calling("RequestSpotInstances"):
            reply = self.client.request_spot_instances(
                **token,
                SpotPrice=f"{spec.spot_price:.6f}",
                InstanceCount=count,
                Type="one-time",
                LaunchSpecification=params,
                TagSpecifications=[
                    {"ResourceType": "spot-instances-request", "Tags": _tag_list(tags)}
                ],
            )
        requests = reply.get("SpotInstanceRequests", [])
        ids = [r.get("InstanceId") or r["SpotInstanceRequestId"] for r in requests]
        fulfilled = [r["InstanceId"] for r in requests if r.get("InstanceId")]
        if fulfilled:
            try:
                self.set_tags(fulfilled, tags)
            except CloudError as exc:  # list() copies the request's tags later
                log.warning("tagging new spot instances failed (list will retry): %s", exc)
        return ids

    def _instances(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._calling("DescribeInstances"):
            pages = self.client.get_paginator("describe_instances")
            for page in pages.paginate(Filters=filters, PaginationConfig={"PageSize": _PAGE}):
                for reservation in page.get("Reservations", []):
                    out.extend(reservation.get("Instances", []))
        return out

    def _spot_requests(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._calling("DescribeSpotInstanceRequests"):
            pages = self.client.get_paginator("describe_spot_instance_requests")
            for page in pages.paginate(Filters=filters, PaginationConfig={"PageSize": _PAGE}):
                out.extend(page.get("SpotInstanceRequests", []))
        return out

    def list(self, tags: Mapping[str, str]) -> list[Instance]:
        """Tagged instances plus spot requests that have no instance yet.

        Filters are tag filters only: moto answers 500 to ``instance-lifecycle`` and
        ``spot-instance-request-id`` on DescribeInstances. A fulfilled request whose instance is
        still untagged gets the request's tags copied here (see the module docstring).
        """
        if not tags.get(TAG_FACTORY):
            raise ValueError(f"list() needs the {TAG_FACTORY} tag, so it sees only our instances")
        filters = [{"Name": f"tag:{k}", "Values": [str(v)]} for k, v in tags.items()]
        found = {i["InstanceId"]: i for i in self._instances(filters)}
        requests = self._spot_requests(filters)
        spot_of = {r["InstanceId"]: r for r in requests if r.get("InstanceId")}
        untagged = [iid for iid in spot_of if iid not in found]
        if untagged:
            for raw in self._instances([{"Name": "instance-id", "Values": untagged}]):
                request_tags = _tag_dict(spot_of[raw["InstanceId"]].get("Tags"))
                if raw.get("State", {}).get("Name") != "terminated":
                    self.set_tags([raw["InstanceId"]], request_tags)
                raw["Tags"] = _tag_list({**_tag_dict(raw.get("Tags")), **request_tags})
                found[raw["InstanceId"]] = raw
        out = [self._instance(raw, spot_of.get(iid)) for iid, raw in found.items()]
        out.extend(self._request(r) for r in requests if not r.get("InstanceId"))
        return out

    @staticmethod
    def _instance(raw: Mapping[str, Any], request: Mapping[str, Any] | None) -> Instance:
        state = _STATES.get(raw.get("State", {}).get("Name", ""), "error")
        reason = raw.get("StateReason") or {}
        fault = None
        if state != "running" and reason.get("Code") and reason["Code"] not in _NORMAL_SHUTDOWN:
            fault = clip(f"{reason['Code']}: {reason.get('Message', '')}")
        spot_id = raw.get("SpotInstanceRequestId") or (request or {}).get("SpotInstanceRequestId")
        return Instance(
            id=raw["InstanceId"],
            state=state,
            launched_at=_epoch(raw.get("LaunchTime")),
            tags=_tag_dict(raw.get("Tags")),
            spot_request_id=spot_id,
            fault=fault,
        )

    @staticmethod
    def _request(raw: Mapping[str, Any]) -> Instance:
        """An unfulfilled spot request; a stuck one (price-too-low, no capacity) keeps
        ``pending`` but carries the reason in ``fault``."""
        state = _SPOT.get(raw.get("State", ""), "error")
        status = raw.get("Status") or {}
        fault = None
        code = status.get("Code")
        if code and (state == "error" or (state == "pending" and code not in _SPOT_WAITING)):
            fault = clip(f"{code}: {status.get('Message', '')}")
        return Instance(
            id=raw["SpotInstanceRequestId"],
            state=state,
            launched_at=_epoch(raw.get("CreateTime")),
            tags=_tag_dict(raw.get("Tags")),
            spot_request_id=raw["SpotInstanceRequestId"],
            fault=fault,
        )

    def set_tags(self, instance_ids: Sequence[str], tags: Mapping[str, str]) -> None:
        for chunk in _chunks(instance_ids):
            with self._calling("CreateTags"):
                self.client.create_tags(Resources=chunk, Tags=_tag_list(tags))

    def terminate(self, instance_ids: Sequence[str]) -> None:
        """Terminate ``i-`` ids and cancel ``sir-`` ids; gone already is fine.

        A request fulfilled before its cancel took effect has an instance that would run on
        untracked, so requests are looked up before and after the cancel and their instances
        terminated too.
        """
        bad = [i for i in instance_ids if not i.startswith(("i-", "sir-"))]
        if bad:
            raise ValueError(f"not EC2 instance or spot request ids: {bad}")
        targets = [i for i in instance_ids if i.startswith("i-")]
        sirs = [i for i in instance_ids if i.startswith("sir-")]
        if sirs:
            by_id = [{"Name": "spot-instance-request-id", "Values": sirs}]
            before = self._spot_requests(by_id)
            live = [
                r["SpotInstanceRequestId"] for r in before if r.get("State") in ("open", "active")
            ]
            if live:
                with self._calling("CancelSpotInstanceRequests"):
                    self.client.cancel_spot_instance_requests(SpotInstanceRequestIds=live)
            for r in before + self._spot_requests(by_id):
                if r.get("InstanceId") and r["InstanceId"] not in targets:
                    targets.append(r["InstanceId"])
        for chunk in _chunks(targets):
            self._terminate(chunk)

    def _terminate(self, ids: Sequence[str]) -> None:
        with self._calling("TerminateInstances"):
            try:
                self.client.terminate_instances(InstanceIds=ids)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidInstanceID.NotFound":
                    raise
                if len(ids) > 1:  # one unknown id fails the batch: retry the others alone
                    for one in ids:
                        self._terminate([one])

    def quota(self) -> CloudQuota | None:
        """``max-instances`` (DescribeAccountAttributes) against the account's pending and
        running instances in this region, every one of them, not only ours: they all count
        against the limit. None when the endpoint states no such attribute."""
        with self._calling("DescribeAccountAttributes"):
            reply = self.client.describe_account_attributes(AttributeNames=["max-instances"])
        limit: int | None = None
        for attr in reply.get("AccountAttributes", []):
            if attr.get("AttributeName") != "max-instances":
                continue
            for value in attr.get("AttributeValues", []):
                try:
                    limit = int(str(value.get("AttributeValue")))
                except ValueError:
                    raise CloudError(
                        f"EC2 {self.endpoint} DescribeAccountAttributes: max-instances is "
                        f"{clip(str(value.get('AttributeValue')), 40)!r}, not a number"
                    ) from None
        live = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        used = len(self._instances(live))
        return None if limit is None else CloudQuota(used=used, limit=limit)
