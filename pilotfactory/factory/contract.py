"""The contract between the factory and what it creates: labels, recorded facts, tag names.

Submit plugins write these names into job ads and instance tags; status plugins, the backends
and the simulator read them back. They live here, below all of them, so no status plugin has to
import a submit plugin to know what a submit plugin wrote (DESIGN: the batch system is the
database, and this module is its schema).
"""

from __future__ import annotations

import enum
import re
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
"""A drain retire: its time (drain is the VM default, so it needs no mode)."""
RETIRE_MODE = "PilotFactoryRetireMode"
"""A retire in any other mode: ``"<mode> <time>"``, mode and time in one value, so recording
a retire or an un-retire is one edit whatever the mode (an edit sets one attribute). The newer
of the two records is the retire; a bare ``"<mode>"`` (written before 2026-12) goes with
``PilotFactoryRetireRequested``."""
UNRETIRED_AT = "PilotFactoryUnretiredAt"
"""An un-retire's time: it cancels every retire recorded at or before it."""


def mode_record(mode: str, now: float) -> str:
    """The ClassAd value of a ``RETIRE_MODE`` record (a string literal)."""
    return f'"{mode} {int(now)}"'


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

# The worker VM contract (issue 18): what a VM carries about its own life.
TAG_LEASE = "pilotfactory:lease_until"
"""Epoch seconds the VM's dead-man's lease ends; set at launch, renewed by the daemon; past it
(plus the grace) ``sweep`` terminates the instance even with no factory running."""
TAG_DEADLINE = "pilotfactory:deadline"
"""Epoch seconds the VM's life ends (launch + ``max_lifetime`` less its stagger); 0 = none."""
TAG_FINGERPRINT = "pilotfactory:fingerprint"
"""What the VM was launched as (image, flavours, template, contract settings): a VM whose
fingerprint is not its queue's current one has drifted."""
LEASE_ATTR = "PilotFactoryLeaseUntil"
DEADLINE_ATTR = "PilotFactoryDeadline"
INTERRUPTION_ATTR = "PilotFactoryInterruption"
"""Set by the VM's startd cron when the provider announces an interruption (epoch seconds of
the stated action time)."""
INTERRUPTION_ACTION_ATTR = "PilotFactoryInterruptionAction"
EXPECTED_RUNTIME_ATTR = "PilotFactoryExpectedRuntime"
"""A job's own estimate of its run time in seconds (else ``MaxWallTimeMins``): a VM's START
refuses a job that cannot finish before the VM's deadline."""
LEASE_AD_TYPE = "PilotFactoryLease"
"""``MyType`` of the collector ad the factory advertises per VM queue with a lease each cycle
(``Name = "<factory>/<queue>"``, ``PilotFactoryLeaseUntil``); the VMs renew their lease from it."""
FINGERPRINT_ATTR = "PilotFactoryFingerprint"
# Factory side's own additions to the contract (issue 18; not read by the VM).
TAG_LEASE_GRACE = "pilotfactory:lease_grace"
"""Seconds past ``pilotfactory:lease_until`` before ``sweep`` terminates the instance: tagged at
launch, so a sweep judges an instance of a queue no longer configured by its own grace."""
TAG_INTERRUPTED = "pilotfactory:interrupted_at"
"""Set when the factory vacates a VM the provider announced it will interrupt: its end (by the
provider) is then no failure of the queue (not LOST)."""
INTERRUPTED_AT = "PilotFactoryInterruptedAt"
"""The same record in a grid-universe VM's job ad."""

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


def target_text(target: CondorTarget) -> str:
    """A pool in words, for labels and messages: ``schedd NAME`` (or ``local schedd``), then
    ``collector HOST`` when one is named."""
    text = f"schedd {target.schedd}" if target.schedd else "local schedd"
    return f"{text} collector {target.collector}" if target.collector else text


# ---------------------------------------------------------------------------- quoting
# Everything the factory writes into a submit description, a ClassAd or a VM's HTCondor
# configuration goes through these: a value must never end its line (a continuation would
# become a new submit command or config line), nor expand a macro the factory did not write.

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SUBMIT_KEY = re.compile(r"^(?:[+]|[Mm][Yy]\.)?[A-Za-z_][A-Za-z0-9_.]*$")


class UnsafeValue(ValueError):
    """A value that cannot be written safely where it was going (the message says why)."""


def inert(value: str, what: str, macros: bool = False) -> str:
    """``value`` unchanged if it is safe on one line of a submit description or an HTCondor
    config file: no control character (tab excepted), and no ``$`` unless ``macros`` (the
    factory's own ``$(Cluster)``), since both languages expand ``$(...)``."""
    if _CONTROL.search(value):
        raise UnsafeValue(f"{what}: control character in {value[:60]!r}")
    if not macros and "$" in value:
        raise UnsafeValue(f"{what}: '$' would be expanded as a macro in {value[:60]!r}")
    return value


def classad_string(value: str, macros: bool = False) -> str:
    """A ClassAd string literal, safe in a submit description and an HTCondor config file
    (see ``inert``); backslashes and quotes escaped."""
    inert(value, "ClassAd string", macros)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def submit_key(key: str) -> str:
    """A submit description key: a command or a ``+Attr`` / ``MY.Attr`` custom attribute."""
    if not _SUBMIT_KEY.match(key.strip()):
        raise UnsafeValue(f"not a submit description key: {key[:60]!r}")
    return key


def submit_environment(pairs: Mapping[str, str]) -> str:
    """The new-syntax ``environment`` value: double-quoted; a value holding spaces or quotes
    single-quoted, ``'`` and ``"`` doubled as the submit language wants."""
    parts = []
    for name, value in pairs.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UnsafeValue(f"not an environment variable name: {name[:60]!r}")
        inert(value, f"environment {name}", macros=True)
        if value and not re.search(r"[\s'\"]", value):
            parts.append(f"{name}={value}")
        else:
            parts.append(f"{name}='{value.replace(chr(39), chr(39) * 2)}'".replace('"', '""'))
    return '"' + " ".join(parts) + '"'
