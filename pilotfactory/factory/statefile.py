"""What a queue must not forget across a restart, kept in a small state file.

Most of what the factory knows is recomputed from the batch system each cycle: which workers
exist and in what state, which were asked to retire (the request is written into the job ad or
the instance tags), how many are on their way. A ``kill -9`` loses none of that. What cannot be
recomputed is what the factory learned over time: a submit back-off and the failure window
behind it (without them a restart loop resubmits to a failing schedd or cloud every time), the
circuit breaker's reference (last cycle's joined workers: without it the first cycle after a
restart cannot tell a partial collector answer from an empty pool), the planner's retire
confirmations and last scale-up (``scale_down_delay``), and the counters. Those are written
here, atomically, after every cycle.

A state file is advice, never a reason not to start: an unreadable, foreign or malformed one is
logged (naming the file and what is wrong) and the factory starts without it. Entries are
restored under the same rules as a reload (``Queue.carry_over``): the back-off (the queue's, and
what its submit plugin keeps: a cloud queue's per-choice back-off) only while the queue's
submit section is the same, the breaker only while its submit and status sections are
the same and the reference is recent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pilotfactory.factory.planner import PlannerMemory
from pilotfactory.factory.text import clip

if TYPE_CHECKING:
    from pilotfactory.factory.config import PluginSpec
    from pilotfactory.factory.queue import Queue

log = logging.getLogger(__name__)

FORMAT = 1
MAX_STATE_BYTES = 64 * 1024 * 1024
"""A state file larger than this is not ours to read (50,000 VMs' ids take a few MB)."""
BREAKER_MAX_AGE = 300.0
"""A breaker reference older than this (or five of the queue's intervals) is not "last cycle"."""


def spec_key(spec: PluginSpec) -> str:
    """A digest of a plugin section: tells whether it changed without keeping its values (they
    may hold secrets)."""
    text = json.dumps([spec.name, dict(spec.params)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def queue_state(q: Queue) -> dict[str, Any]:
    b, br, m = q.backoff, q.breaker, q.memory
    plugin = q.submitter.saved_state()
    return {
        **({"plugin": plugin} if plugin else {}),
        "submit": spec_key(q.cfg.batchsubmit),
        "status": spec_key(q.cfg.batchstatus),
        "counters": dict(q.counters),
        "memory": {
            "candidate_cycles": dict(m.candidate_cycles),
            "last_scale_up": m.last_scale_up,
        },
        "backoff": {
            "until": b.until,
            "reason": b.reason,
            "delay": b.delay,
            "failure_delay": b.failure_delay,
            "failed_since": b.failed_since,
            "endings": [[failed, why] for failed, why in b.endings],
        },
        "breaker": {
            "joined_ids": sorted(br.joined_ids),
            "pool_startds": br.pool_startds,
            "frozen_cycles": br.frozen_cycles,
        },
    }


def encode(factory_id: str, now: float, queues: Iterable[tuple[str, str]]) -> str:
    """The file's text from each queue's encoded state (encoded once per run of the queue)."""
    head = json.dumps({"format": FORMAT, "factory_id": factory_id, "time": now})
    body = ", ".join(f"{json.dumps(name)}: {text}" for name, text in queues)
    return f'{head[:-1]}, "queues": {{{body}}}}}'


def write(path: str, text: str) -> None:
    """Atomically (write, fsync, rename), owner-only: a crash leaves the old file or the new."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o750, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StateProblem(Exception):
    """The state file cannot be used (the message names the file and what is wrong)."""


def read(path: str, factory_id: str) -> tuple[float, dict[str, Any]]:
    """(when it was written, queue name -> entry); no file is an empty state."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return 0.0, {}
    except OSError as exc:
        raise StateProblem(f"{path}: cannot open the state file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not os.path.isfile(path):
            raise StateProblem(f"{path}: the state file is not a regular file")
        data = fh.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise StateProblem(f"{path}: the state file is larger than {MAX_STATE_BYTES} bytes")
    try:
        state = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateProblem(f"{path}: the state file is not JSON: {clip(str(exc), 200)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StateProblem(f"{path}: not a pilotfactory state file (format {FORMAT})")
    if state.get("factory_id") != factory_id:
        raise StateProblem(
            f"{path}: the state file belongs to factory "
            f"{clip(str(state.get('factory_id')), 80)!r}, not {factory_id!r}"
        )
    when, queues = state.get("time"), state.get("queues")
    if not isinstance(when, int | float) or not isinstance(queues, dict):
        raise StateProblem(f"{path}: the state file has no valid 'time' and 'queues'")
    return float(when), queues


def _num(value: Any, what: str, none: bool = False) -> Any:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is not a number")
    return float(value)


def restore(q: Queue, entry: Any, written: float, now: float) -> list[str]:
    """Put a queue's saved state back; return what was restored. Raises ValueError naming the
    part of ``entry`` that is malformed (the caller restores nothing of that queue then)."""
    if not isinstance(entry, Mapping):
        raise ValueError("the entry is not an object")
    counters = entry.get("counters")
    memory = entry.get("memory")
    backoff = entry.get("backoff")
    breaker = entry.get("breaker")
    if not all(isinstance(x, Mapping) for x in (counters, memory, backoff, breaker)):
        raise ValueError("counters, memory, backoff or breaker missing")
    assert isinstance(counters, Mapping) and isinstance(memory, Mapping)
    assert isinstance(backoff, Mapping) and isinstance(breaker, Mapping)
    # Parse everything first: a malformed part restores nothing.
    new_counters = {k: int(_num(counters.get(k, 0), f"counters.{k}")) for k in q.counters}
    cycles = memory.get("candidate_cycles")
    if not isinstance(cycles, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in cycles.items()
    ):
        raise ValueError("memory.candidate_cycles is not an object of counts")
    new_memory = PlannerMemory(
        candidate_cycles=dict(cycles),
        last_scale_up=_num(memory.get("last_scale_up"), "memory.last_scale_up", none=True),
    )
    endings = backoff.get("endings")
    if not isinstance(endings, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], bool) and isinstance(e[1], str)
        for e in endings
    ):
        raise ValueError("backoff.endings is not a list of [failed, why]")
    reason = backoff.get("reason")
    if not isinstance(reason, str):
        raise ValueError("backoff.reason is not text")
    back = {
        k: _num(backoff.get(k), f"backoff.{k}", none=k == "failed_since")
        for k in ("until", "delay", "failure_delay", "failed_since")
    }
    joined = breaker.get("joined_ids")
    if not isinstance(joined, list) or not all(isinstance(i, str) for i in joined):
        raise ValueError("breaker.joined_ids is not a list of ids")
    ads = breaker.get("pool_startds")
    if ads is not None and (isinstance(ads, bool) or not isinstance(ads, int)):
        raise ValueError("breaker.pool_startds is not a count")
    frozen = breaker.get("frozen_cycles")
    if isinstance(frozen, bool) or not isinstance(frozen, int):
        raise ValueError("breaker.frozen_cycles is not a count")

    same_submit = entry.get("submit") == spec_key(q.cfg.batchsubmit)
    plugin = entry.get("plugin")
    if same_submit and plugin is not None:  # parses all of it before it changes anything
        q.submitter.restore_state(plugin)

    restored = ["counters", "retire confirmations"]
    if same_submit and plugin is not None:
        restored.append("submit plugin state (per-choice back-off)")
    q.counters.update(new_counters)
    q.memory = new_memory
    if same_submit:
        b = q.backoff
        b.until, b.delay = back["until"], back["delay"]
        b.failure_delay, b.failed_since = back["failure_delay"], back["failed_since"]
        b.reason = clip(reason)
        b.endings = deque(
            ((bool(f), clip(w, 160)) for f, w in endings), maxlen=max(1, b.failure_limit)
        )
        restored.append("submit back-off")
    recent = now - written <= max(BREAKER_MAX_AGE, 5 * q.cfg.sleep)
    if same_submit and entry.get("status") == spec_key(q.cfg.batchstatus) and recent:
        br = q.breaker
        br.joined_ids, br.pool_startds, br.frozen_cycles = set(joined), ads, frozen
        restored.append("circuit breaker reference")
    return restored
