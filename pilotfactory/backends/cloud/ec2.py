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
from collections.abc import Collection, Iterator, Mapping, Sequence
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
    FleetOption,
    FleetResult,
    Instance,
    LaunchSpec,
    fleet_template_name,
)

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
# fmt: off
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity", "SpotMaxPriceTooLow", "Unsupported",
    "InsufficientFreeAddressesInSubnet", "UnfulfillableCapacity", "InsufficientCapacityOnHost",
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
_STATES.update({"shutting-down": "stopping", "stopping": "stopping", "stopped": "stopped"})
_SPOT = {"open": "pending", "failed": "error", "cancelled": "terminated", "closed": "terminated"}
_SPOT_WAITING = frozenset({"pending-evaluation", "pending-fulfillment"})
_SELF_SHUTDOWN = "Client.InstanceInitiatedShutdown"
_NORMAL_SHUTDOWN = frozenset({"Client.UserInitiatedShutdown", _SELF_SHUTDOWN})
SHUTDOWN_BEHAVIOR = "terminate"
"""``InstanceInitiatedShutdownBehavior`` of every launch: the worker contract ends a VM by
powering it off, and EC2's default for an EBS-backed instance (``stop``) would keep it stopped,
holding its volumes, for ever. RequestSpotInstances takes no such field: should one of its
instances stop all the same, the status source terminates it (as any stopped instance of ours)."""
_CHUNK = 500
_PAGE = 1000  # the most one Describe* page may hold: a list of 1,000 VMs is one call
_TEMPLATE_PAGE = 200  # DescribeLaunchTemplates' largest page
_TEMPLATE_EXISTS = "InvalidLaunchTemplateName.AlreadyExistsException"
_TEMPLATE_GONE = ("InvalidLaunchTemplateName.NotFoundException", "InvalidLaunchTemplateId.NotFound")


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


def fleet_template_data(spec: LaunchSpec, placement: Mapping[str, Any]) -> dict[str, Any]:
    """The launch template of one fleet launch: what RunInstances would get, less what the
    fleet's overrides choose (type, zone, subnet), plus the worker's own user data (base64,
    as launch templates take it) and the shutdown behaviour (``SHUTDOWN_BEHAVIOR``)."""
    data = {
        k: v for k, v in placement.items() if k not in ("InstanceType", "SubnetId", "Placement")
    }
    if spec.user_data:
        data["UserData"] = base64.b64encode(spec.user_data.encode()).decode("ascii")
    data["InstanceInitiatedShutdownBehavior"] = SHUTDOWN_BEHAVIOR
    return data


def fleet_request(
    spec: LaunchSpec,
    options: Sequence[FleetOption],
    spot: bool,
    tags: Mapping[str, str],
    template: str,
    placement: Mapping[str, Any],
) -> dict[str, Any]:
    """CreateFleet of one worker: ``instant`` (one synchronous answer, nothing left to
    maintain), capacity 1, one override per option. Spot chooses by price and capacity
    (``price-capacity-optimized``) and bids ``spot_price`` on each override; on-demand keeps
    the queue's order (``prioritized``). A ``subnet_id`` / ``availability_zone`` of
    ``launch_options`` applies to options that name neither."""
    if not options:
        raise ValueError("a fleet launch needs at least one option")
    default_zone = (placement.get("Placement") or {}).get("AvailabilityZone")
    default_subnet = placement.get("SubnetId")
    overrides = []
    for rank, opt in enumerate(options):
        o: dict[str, Any] = {"InstanceType": opt.flavor}
        subnet = opt.subnet or (None if opt.zone else default_subnet)
        zone = opt.zone or (None if opt.subnet else default_zone)
        if subnet:
            o["SubnetId"] = subnet
        if zone:
            o["AvailabilityZone"] = zone
        if spot and spec.spot_price is not None:
            o["MaxPrice"] = f"{spec.spot_price:.6f}"
        elif not spot:
            o["Priority"] = float(rank)
        overrides.append(o)
    market = "spot" if spot else "on-demand"
    capacity: dict[str, Any] = {"TotalTargetCapacity": 1, "DefaultTargetCapacityType": market}
    capacity["SpotTargetCapacity" if spot else "OnDemandTargetCapacity"] = 1
    req: dict[str, Any] = {
        "Type": "instant",
        "ClientToken": spec.client_token,
        "LaunchTemplateConfigs": [
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateName": template,
                    "Version": "$Latest",
                },
                "Overrides": overrides,
            }
        ],
        "TargetCapacitySpecification": capacity,
        "TagSpecifications": [{"ResourceType": "instance", "Tags": _tag_list(tags)}],
    }
    if spot:
        req["SpotOptions"] = {
            "AllocationStrategy": "price-capacity-optimized",
            "InstanceInterruptionBehavior": "terminate",
        }
    else:
        req["OnDemandOptions"] = {"AllocationStrategy": "prioritized"}
    return req


def _option_of(
    overrides: Mapping[str, Any] | None, options: Sequence[FleetOption]
) -> FleetOption | None:
    """The option an answer's override names: same type, and the same subnet / zone where
    both say one."""
    if not overrides or not overrides.get("InstanceType"):
        return None
    found = [o for o in options if o.flavor == overrides["InstanceType"]]
    for key, attr in (("SubnetId", "subnet"), ("AvailabilityZone", "zone")):
        value = overrides.get(key)
        if value and any(getattr(o, attr) == value for o in found):
            found = [o for o in found if getattr(o, attr) in (value, None)]
    return found[0] if found else None


def fleet_outcome(
    reply: Mapping[str, Any], options: Sequence[FleetOption], spot: bool, where: str
) -> FleetResult:
    """An instant fleet's answer: the instance launched and its option and market, and each
    refusal in ``Errors`` as the port's error (classed like RunInstances' codes), tied to the
    option it names."""
    errors: list[tuple[FleetOption | None, CloudError]] = []
    for err in reply.get("Errors") or ():
        code = clip(str(err.get("ErrorCode") or ""), 80)
        over = (err.get("LaunchTemplateAndOverrides") or {}).get("Overrides")
        opt = _option_of(over, options)
        named = f" on {opt.flavor}/{opt.subnet or opt.zone or '-'}" if opt else ""
        text = f"{where}{named}: {code or 'error'}: {clip(str(err.get('ErrorMessage') or ''))}"
        errors.append((opt, error_of(code, None, text)))
    for item in reply.get("Instances") or ():
        ids = tuple(str(i) for i in item.get("InstanceIds") or ())
        if not ids:
            continue
        over = dict((item.get("LaunchTemplateAndOverrides") or {}).get("Overrides") or {})
        over.setdefault("InstanceType", item.get("InstanceType"))
        opt = _option_of(over, options) or FleetOption(
            str(item.get("InstanceType") or options[0].flavor),
            over.get("AvailabilityZone"),
            over.get("SubnetId"),
        )
        lifecycle = item.get("Lifecycle")
        return FleetResult(ids, opt, lifecycle == "spot" if lifecycle else spot, tuple(errors))
    return FleetResult(errors=tuple(errors))


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
            params["InstanceInitiatedShutdownBehavior"] = SHUTDOWN_BEHAVIOR
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

    def launch_fleet(
        self,
        spec: LaunchSpec,
        options: Sequence[FleetOption],
        spot: bool,
        tags: Mapping[str, str],
    ) -> FleetResult:
        """One worker through EC2 Fleet: CreateLaunchTemplate (the worker's user data; a
        fleet takes none of its own), CreateFleet (``instant``), DeleteLaunchTemplate. The
        template is named by the client token, so a retry reuses it; it is kept while the
        fleet's outcome is unknown (the retry needs it) and swept later if a delete fails."""
        placement = self._placement(spec)
        if spot and spec.spot_price is not None and spec.spot_price <= 0:
            raise CloudError(f"spot_price {spec.spot_price!r} must be > 0")
        if not spec.client_token:
            raise CloudError("a fleet launch needs its client token (ClientToken)")
        name = fleet_template_name(spec.client_token)
        req = fleet_request(spec, options, spot, tags, name, placement)
        self._create_template(name, fleet_template_data(spec, placement), tags, spec)
        try:
            with self._calling("CreateFleet"):
                reply = self.client.create_fleet(**req)
        except CloudError as exc:
            if not isinstance(exc, CloudUnavailable) and type(exc) is not CloudError:
                self._delete_template(name)  # refused: nothing to retry with it
            raise
        result = fleet_outcome(reply, options, spot, f"EC2 {self.endpoint} CreateFleet")
        if not self._delete_template(name):
            result = FleetResult(
                result.instance_ids, result.option, result.spot, result.errors, True
            )
        return result

    def _create_template(
        self, name: str, data: Mapping[str, Any], tags: Mapping[str, str], spec: LaunchSpec
    ) -> None:
        """Tagged like the worker (the sweep finds it by the factory's tags); one left by an
        earlier try of the same launch (same name) is used as it is."""
        token = {"ClientToken": spec.client_token} if spec.client_token else {}
        try:
            with self._calling("CreateLaunchTemplate"):
                self.client.create_launch_template(
                    **token,
                    LaunchTemplateName=name,
                    LaunchTemplateData=dict(data),
                    TagSpecifications=[
                        {"ResourceType": "launch-template", "Tags": _tag_list(tags)}
                    ],
                )
        except CloudInvalidRequest as exc:
            if _TEMPLATE_EXISTS not in str(exc):
                raise

    def _delete_template(self, name: str) -> bool:
        """True when it is gone (or was already); a failure is logged, never raised: the
        launch's outcome is what matters, the template is swept later."""
        try:
            with self._calling("DeleteLaunchTemplate"):
                self.client.delete_launch_template(LaunchTemplateName=name)
        except CloudError as exc:
            if any(code in str(exc) for code in _TEMPLATE_GONE):
                return True
            log.warning("launch template %s not deleted (swept later): %s", name, exc)
            return False
        return True

    def sweep_templates(self, tags: Mapping[str, str], keep: Collection[str]) -> int:
        """Delete this factory's launch templates (by its tags, ``pf-`` names only) that no
        open launch needs."""
        if not tags.get(TAG_FACTORY):
            raise ValueError(f"sweep_templates() needs the {TAG_FACTORY} tag")
        filters = [{"Name": f"tag:{k}", "Values": [str(v)]} for k, v in tags.items()]
        names: list[str] = []
        with self._calling("DescribeLaunchTemplates"):
            pages = self.client.get_paginator("describe_launch_templates")
            for page in pages.paginate(
                Filters=filters, PaginationConfig={"PageSize": _TEMPLATE_PAGE}
            ):
                for t in page.get("LaunchTemplates", []):
                    name = str(t.get("LaunchTemplateName") or "")
                    if name.startswith("pf-") and name not in keep:
                        names.append(name)
        return sum(self._delete_template(n) for n in names)

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
        where = (raw.get("Placement") or {}).get("AvailabilityZone")
        market = "spot" if raw.get("InstanceLifecycle") == "spot" or spot_id else "on-demand"
        placed = " ".join(str(w) for w in (raw.get("InstanceType"), where, market) if w)
        return Instance(
            id=raw["InstanceId"],
            state=state,
            launched_at=_epoch(raw.get("LaunchTime")),
            tags=_tag_dict(raw.get("Tags")),
            spot_request_id=spot_id,
            fault=fault,
            placed=clip(placed, 120) if raw.get("InstanceType") else None,
            self_shutdown=state != "running" and reason.get("Code") == _SELF_SHUTDOWN,
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
