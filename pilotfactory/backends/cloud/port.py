"""The cloud port: launch, list and terminate VMs on EC2 (boto3) or OpenStack (novaclient).

Every instance the factory launches carries its labels as tags (``pilotfactory:factory``,
``pilotfactory:queue``, ``pilotfactory:worker``); listing is always filtered on the factory's
own tag, so nothing the factory did not create is ever seen or touched. Retires are recorded
in tags too (``pilotfactory:retire_requested_at``, ``pilotfactory:retire_mode``,
``pilotfactory:unretired_at``): the instance is the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

TAG_FACTORY = "pilotfactory:factory"
TAG_QUEUE = "pilotfactory:queue"
TAG_WORKER = "pilotfactory:worker"
TAG_RETIRE = "pilotfactory:retire_requested_at"
TAG_RETIRE_MODE = "pilotfactory:retire_mode"
TAG_UNRETIRED = "pilotfactory:unretired_at"


class CloudError(Exception):
    """Base of the cloud port's errors, with the provider's message."""


class CloudQuotaError(CloudError):
    """Quota, capacity or spot stock-out: back off this queue."""


class CloudAuthError(CloudError):
    """Credentials refused or expired."""


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


@dataclass(frozen=True)
class Instance:
    id: str
    state: str
    """Provider-neutral: ``pending``, ``running``, ``stopping``, ``terminated``, ``error``."""
    launched_at: float
    tags: Mapping[str, str] = field(default_factory=dict)
    spot_request_id: str | None = None
    fault: str | None = None


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
