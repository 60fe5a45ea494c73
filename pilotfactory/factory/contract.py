"""The contract between the factory and what it creates: labels, recorded facts, tag names.

Submit plugins write these names into job ads and instance tags; status plugins, the backends
and the simulator read them back. They live here, below all of them, so no status plugin has to
import a submit plugin to know what a submit plugin wrote (DESIGN: the batch system is the
database, and this module is its schema).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from pilotfactory.factory.params import Param
from pilotfactory.factory.ports import CondorTarget

# ---------------------------------------------------------------------------- job ads

FACTORY_ID = "PilotFactoryId"
"""Every job's factory label: batch status queries are constrained on it."""
FACTORY_QUEUE = "PilotFactoryQueue"
APF_QUEUE = "APF_QUEUE"
WORKER_ID = "PilotFactoryWorker"
"""The worker id a direct-cloud VM's startd and master advertise (chosen before launch)."""

# Written when the factory retires / un-retires a VM (job ad attributes).
RETIRE_REQUESTED = "PilotFactoryRetireRequested"
RETIRE_MODE = "PilotFactoryRetireMode"
"""Recorded only when not ``drain``: a VM job with a retire request and no mode was drained."""
UNRETIRED_AT = "PilotFactoryUnretiredAt"


class JobStatus(enum.IntEnum):
    """HTCondor's ``JobStatus`` numbers."""

    UNEXPANDED = 0
    IDLE = 1
    RUNNING = 2
    REMOVED = 3
    COMPLETED = 4
    HELD = 5
    TRANSFERRING_OUTPUT = 6
    SUSPENDED = 7


RUNNING_STATUSES: frozenset[int] = frozenset({JobStatus.RUNNING, JobStatus.TRANSFERRING_OUTPUT})
QUEUED_STATUSES: frozenset[int] = frozenset({JobStatus.UNEXPANDED, JobStatus.IDLE})


class Universe(enum.IntEnum):
    """HTCondor's ``JobUniverse`` numbers the factory meets."""

    VANILLA = 5
    GRID = 9


# ---------------------------------------------------------------------------- cloud tags

# Direct-cloud instances (EC2 / OpenStack plugins): labels and the retire record.
KEEP_ATTR = "PilotFactoryKeep"
"""A slot attribute that protects its VM from retire (set by the VM's config, or by a running
job through ``STARTD_JOB_ATTRS``, which the rendered VM config lists it in); bounded by the
queue's ``keep_max``."""

TAG_FACTORY = "pilotfactory:factory"
TAG_QUEUE = "pilotfactory:queue"
TAG_WORKER = "pilotfactory:worker"
TAG_RETIRE = "pilotfactory:retire_requested_at"
TAG_RETIRE_MODE = "pilotfactory:retire_mode"
TAG_UNRETIRED = "pilotfactory:unretired_at"
TAG_LAUNCHED = "pilotfactory:launched_at"
"""The factory's clock at the launch call: ages of pending requests count from it, not from the
provider's stamp (moto stamps every spot request 2015-01-01; a skewed provider clock would
cancel requests at once)."""
TAG_ENDED = "pilotfactory:ended_at"
"""Set just before the factory terminates an instance: a terminated instance without it (and
without a retire) was ended by someone else, and its worker is LOST."""

# Grid-universe VMs (CondorEC2): the gridmanager copies these ec2_tag_* names onto the instance.
GRID_TAG_FACTORY = "pilotfactory_factory"
GRID_TAG_QUEUE = "pilotfactory_queue"

# ---------------------------------------------------------------------------- where the pool is

# APF's scheddhost / collectorhost (unset = the local pool); status and submit plugins alike.
TARGET_PARAMS: tuple[Param, ...] = (
    Param("scheddhost", str, None, "schedd name (unset: the local schedd)"),
    Param("collectorhost", str, None, "collector host[:port] (unset: the local pool)"),
)


def target_from(params: Mapping[str, Any]) -> CondorTarget:
    return CondorTarget(params.get("scheddhost") or None, params.get("collectorhost") or None)


def classad_string(value: str) -> str:
    """A ClassAd string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
