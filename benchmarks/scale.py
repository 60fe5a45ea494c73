"""Scale benchmark (issue 13): the real ``Factory.cycle()`` at 10-1,000 queues, 20k-200k jobs.

The workload (``build_workload``): Q queues on ONE schedd + collector and one factory id,
70 % pilot queues (CondorLocal submit, Condor batch status) and 30 % VM queues (CondorEC2
submit and batch status). Work per queue comes from an in-memory PanDA port (``Panda`` WMS
status, no network): 40 % of the sites have lots of waiting work, the rest none, a few are
offline. Pilot queues run ``Activated, Throttle`` (ATLAS style) or ``Ready, MaxPending,
MaxPerCycle, Throttle`` (which cancels pending pilots above its cap); VM queues run
``JobsPerVM, IdleShutdown, MaxPerCycle, MaxVMs`` with drain / peaceful retire, so the submit,
un-retire, cancel, retire and reap paths and their rechecks all run every cycle.

J job ads: pilots idle / running / held; VM jobs pending, starting (running, no instance yet),
booting (running, no startd), held, joined idle, joined busy, retiring (retire recorded in the
job ad, startd still there), retired (retire recorded, startd gone). S slot ads: a
partitionable slot plus dynamic slots per joined VM, joined by ``EC2InstanceID`` (and, for half
of the VMs, ``PilotFactoryWorker``), plus orphan startds that match no job; master ads for
joined VMs (and some retired / booting ones). A fraction of the queues is "troubled" (held past
``held_timeout``, VMs past ``boot_timeout``) and a few pilot queues are black holes for Throttle.
Ads hold exactly the attributes the plugins project (``JOB_ATTRS``, ``HISTORY_ATTRS``, the
startd and master projections); the ``PilotFactoryId`` label is the schedd store's partition.

The port (``CountingCondorPort``) answers every ``CondorPort`` call from memory, counts every
query (full reads vs by-id rechecks) and every write (submit / remove / edit and the startd
commands), per cycle and per queue, and returns fresh dicts like a real binding does. Writes
change nothing: the world is stationary, so every measured cycle sees the same pool. Every ad's
timestamps move with the virtual clock (between cycles, untimed), so ages stay what they were
generated as. The first (warm-up) cycle runs ``idle_time`` before the measured ones, as in a
daemon that has run for a while (IdleShutdown counts idleness from the first cycle that saw it).

Run:
    python -m benchmarks.scale                 # the six sizes, one subprocess each, a table
    python -m benchmarks.scale --quick         # the 20k-job sizes only, a few cycles each
    python -m benchmarks.scale --queues 1000 --jobs 200000 --slots 50000 --cycles 20 --profile
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import io
import itertools
import json
import logging
import operator
import os
import pstats
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pilotfactory.factory.clock import VirtualClock
from pilotfactory.factory.config import default_factory_config, load_queues
from pilotfactory.factory.contract import RETIRE_MODE, RETIRE_REQUESTED, UNRETIRED_AT
from pilotfactory.factory.factory import Factory
from pilotfactory.factory.ports import CondorRejected, CondorTarget, SubmitResult

FID = "scalebench"
NOW = 1_700_000_000
IDLE_TIME = 600
"""IdleShutdown's idle_time; the warm-up cycle runs this long before the measured ones."""
TICK = 60
"""Seconds between two measured cycles (apfqueue.sleep)."""
SIZES: tuple[tuple[int, int, int], ...] = (
    (10, 20_000, 5_000),
    (100, 20_000, 5_000),
    (1_000, 20_000, 5_000),
    (10, 200_000, 50_000),
    (100, 200_000, 50_000),
    (1_000, 200_000, 50_000),
)
MEMORY_CASE = (1_000, 200_000, 50_000)
"""The size whose memory is followed over ``--cycles`` (200) cycles."""

JOB_TIMES = (
    "QDate", "EnteredCurrentStatus", "JobStartDate", "CompletionDate", RETIRE_REQUESTED,
    UNRETIRED_AT,
)  # fmt: skip
HISTORY_TIMES = ("JobStartDate", "CompletionDate", "EnteredCurrentStatus")
SLOT_TIMES = ("EnteredCurrentActivity",)

# ============================================================================ ClassAd subset
# Enough of the ClassAd language for the constraints the plugins send: || && ! == != =?= =!=
# < <= > >=, literals (numbers, "strings", true, false, undefined), attribute references,
# parentheses, isUndefined() / isDefined(), member() / identicalMember() of a {literal list},
# ifThenElse(). A disjunction of equality or membership conjunctions (``ClusterId == 1 &&
# member(ProcId, {2, 3}) || ...``, ``EC2InstanceID =?= "i-1" || ...``, and such terms at the
# leaves of an ifThenElse tree, as ``batchstatus.common.among`` writes them) is evaluated
# as set membership and answered from an index, as a schedd / collector would. Anything else
# is refused with CondorRejected, so a new query shape shows up as an error, never as a wrong
# answer.


class ConstraintError(ValueError):
    pass


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "undefined"


UNDEF: Any = _Undefined()
Node = tuple[Any, ...]
Spec = tuple[tuple[str, bool], ...]
"""An index key: (attribute, case-folded) pairs."""
Plan = dict[Spec, set[tuple[Any, ...]]]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
    | (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<op>=\?=|=!=|==|!=|<=|>=|&&|\|\||[<>!(),{}-])
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)
_CMP = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _tokenize(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if not text[pos:].strip():
                break
            raise ConstraintError(f"cannot read {text[pos : pos + 30]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.i] if self.i < len(self.toks) else ("end", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok[0] == "end" or (value is not None and tok[1] != value):
            raise ConstraintError(f"expected {value or 'a term'}, got {tok[1] or 'the end'}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.or_()
        if self.i != len(self.toks):
            raise ConstraintError(f"unexpected {self.peek()[1]!r}")
        return node

    def _nary(self, kind: str, op: str, sub: Callable[[], Node]) -> Node:
        items = [sub()]
        while self.peek() == ("op", op):
            self.take()
            items.append(sub())
        flat: list[Node] = []
        for item in items:
            flat.extend(item[1] if item[0] == kind else [item])
        return flat[0] if len(flat) == 1 else (kind, flat)

    def or_(self) -> Node:
        return self._nary("or", "||", self.and_)

    def and_(self) -> Node:
        return self._nary("and", "&&", self.cmp)

    def cmp(self) -> Node:
        left = self.unary()
        kind, text = self.peek()
        if kind == "op" and (text in _CMP or text in ("=?=", "=!=")):
            self.take()
            return ("cmp", text, left, self.unary())
        return left

    def unary(self) -> Node:
        if self.peek() == ("op", "!"):
            self.take()
            return ("not", self.unary())
        if self.peek() == ("op", "-"):
            self.take()
            inner = self.unary()
            if inner[0] == "lit" and isinstance(inner[1], int | float):
                return ("lit", -inner[1])
            return ("neg", inner)
        return self.primary()

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            return ("lit", float(text) if any(c in text for c in ".eE") else int(text))
        if kind == "str":
            return ("lit", re.sub(r"\\(.)", r"\1", text[1:-1]))
        if kind == "name":
            low = text.lower()
            if low in ("true", "false"):
                return ("lit", low == "true")
            if low == "undefined":
                return ("lit", UNDEF)
            if self.peek() == ("op", "("):
                self.take()
                args: list[Node] = []
                if self.peek() != ("op", ")"):
                    args.append(self.or_())
                    while self.peek() == ("op", ","):
                        self.take()
                        args.append(self.or_())
                self.take(")")
                return ("call", low, args)
            return ("attr", text)
        if (kind, text) == ("op", "("):
            node = self.or_()
            self.take(")")
            return node
        if (kind, text) == ("op", "{"):  # a list of literals (read flat: lists are long)
            values: list[Any] = []
            while self.peek() != ("op", "}"):
                if values:
                    self.take(",")
                item = self.unary()
                if item[0] != "lit":
                    raise ConstraintError("a list of literals only")
                values.append(item[1])
            self.take("}")
            return ("list", values)
        raise ConstraintError(f"unexpected {text!r}")


def _identical(a: Any, b: Any) -> bool:
    if a is UNDEF or b is UNDEF:
        return a is b
    return type(a) is type(b) and a == b


def _compare(op: str, a: Any, b: Any) -> Any:
    if op == "=?=":
        return _identical(a, b)
    if op == "=!=":
        return not _identical(a, b)
    if a is UNDEF or b is UNDEF:
        return UNDEF
    if isinstance(a, str) != isinstance(b, str) or isinstance(a, bool) != isinstance(b, bool):
        return UNDEF  # an error in ClassAd terms: never selects
    if isinstance(a, str):
        a, b = a.lower(), b.lower()  # ClassAd string comparison ignores case
    return _CMP[op](a, b)


def _member_args(node: Node) -> tuple[str, bool, list[Any]] | None:
    """``member(Attr, {literals})`` / ``identicalMember(...)``: (attr, folded, values)."""
    if node[0] != "call" or node[1] not in ("member", "identicalmember") or len(node[2]) != 2:
        return None
    attr, values = node[2]
    if attr[0] != "attr" or values[0] != "list":
        return None
    # member() compares strings ignoring case; a list of numbers needs no folded index
    fold = node[1] == "member" and any(isinstance(v, str) for v in values[1])
    return attr[1], fold, values[1]


def _eq_conj(node: Node) -> list[tuple[str, bool, list[Any]]] | None:
    """An equality with a literal or a membership in a literal list, or a conjunction of
    them: [(attr, folded, values)]."""
    member = _member_args(node)
    if member is not None:
        attr, fold, values = member
        if any(v is UNDEF for v in values):
            return None
        return [(attr, fold, [v.lower() if fold and isinstance(v, str) else v for v in values])]
    if node[0] == "and":
        out: list[tuple[str, bool, list[Any]]] = []
        for child in node[1]:
            terms = _eq_conj(child)
            if terms is None:
                return None
            out += terms
        return out
    if node[0] == "cmp" and node[1] in ("==", "=?="):
        left, right = node[2], node[3]
        if left[0] == "lit":
            left, right = right, left
        if left[0] == "attr" and right[0] == "lit" and right[1] is not UNDEF:
            value = right[1]
            fold = node[1] == "==" and isinstance(value, str)
            return [(left[1], fold, [value.lower() if fold else value])]
    return None


def _eq_groups(node: Node) -> Plan | None:
    """A disjunction of equality conjunctions as {index spec: wanted keys}, else None."""
    children = node[1] if node[0] == "or" else [node]
    groups: Plan = {}
    for child in children:
        terms = _eq_conj(child)
        if terms is None:
            return None
        terms.sort(key=lambda t: (t[0], t[1]))
        spec = tuple((a, f) for a, f, _ in terms)
        groups.setdefault(spec, set()).update(itertools.product(*(vs for _, _, vs in terms)))
    return groups


def _key(ad: Mapping[str, Any], spec: Spec) -> tuple[Any, ...]:
    out = []
    for attr, fold in spec:
        value = ad.get(attr, UNDEF)
        out.append(value.lower() if fold and isinstance(value, str) else value)
    return tuple(out)


def _plans(node: Node) -> list[Plan]:
    """Index plans whose hits are a superset of what ``node`` selects (alternatives)."""
    groups = _eq_groups(node)
    if groups is not None:
        return [groups]
    if node[0] == "or":
        merged: Plan = {}
        for child in node[1]:
            alternatives = _plans(child)
            if not alternatives:
                return []
            best = min(alternatives, key=lambda p: sum(len(v) for v in p.values()))
            for spec, keys in best.items():
                merged.setdefault(spec, set()).update(keys)
        return [merged]
    if node[0] == "and":
        return [p for child in node[1] for p in _plans(child)]
    if node[0] == "call" and node[1] == "ifthenelse" and len(node[2]) == 3:
        return _plans(("or", node[2][1:]))  # either branch: a superset
    return []


Pred = Callable[[Any], Any]
"""A compiled constraint: ad (a mapping, or an ``_Overlay``) -> True / False / UNDEF."""


def _compile(node: Node) -> Pred:
    kind = node[0]
    if kind == "lit":
        value = node[1]
        return lambda ad: value
    if kind == "attr":
        name = node[1]
        return lambda ad: ad.get(name, UNDEF)
    if kind == "not":
        inner = _compile(node[1])

        def not_(ad: Mapping[str, Any]) -> Any:
            v = inner(ad)
            return (not v) if isinstance(v, bool) else UNDEF

        return not_
    if kind == "neg":
        inner = _compile(node[1])

        def neg(ad: Mapping[str, Any]) -> Any:
            v = inner(ad)
            return -v if isinstance(v, int | float) and not isinstance(v, bool) else UNDEF

        return neg
    if kind == "cmp":
        op, left, right = node[1], node[2], node[3]
        if left[0] == "lit":
            left, right = right, left
        if op in ("=?=", "=!=") and left[0] == "attr" and right == ("lit", UNDEF):
            name = left[1]  # the carriers test: an attribute is (not) defined
            if op == "=!=":
                return lambda ad: name in ad
            return lambda ad: name not in ad
        fl, fr = _compile(node[2]), _compile(node[3])
        return lambda ad: _compare(op, fl(ad), fr(ad))
    if kind == "or":
        groups = _eq_groups(node)
        if groups is not None:
            return _membership(groups)
    if kind in ("or", "and"):
        subs = [_compile(c) for c in node[1]]
        stop = kind == "or"  # the value that decides: True for ||, False for &&

        def junction(ad: Mapping[str, Any]) -> Any:
            undefined = False
            for sub in subs:
                v = sub(ad)
                if v is stop:
                    return stop
                if v is not (not stop):
                    undefined = True
            return UNDEF if undefined else (not stop)

        return junction
    if kind == "call" and _member_args(node) is not None:
        groups = _eq_groups(node)
        if groups is not None:
            return _membership(groups)
    if kind == "call" and node[1] == "ifthenelse" and len(node[2]) == 3:
        search = _search_tree(node)
        if search is not None:
            return search
        cond, then, other = (_compile(n) for n in node[2])

        def if_then_else(ad: Mapping[str, Any]) -> Any:
            c = cond(ad)
            if c is True:
                return then(ad)
            return other(ad) if c is False else UNDEF

        return if_then_else
    if kind == "call" and node[1] in ("isundefined", "isdefined") and len(node[2]) == 1:
        inner = _compile(node[2][0])
        want_undef = node[1] == "isundefined"
        return lambda ad: (inner(ad) is UNDEF) is want_undef
    raise ConstraintError(f"unsupported expression {node[0]} {node[1]!r}")


def _pivot(node: Node) -> tuple[str, Any] | None:
    """``Attr < literal`` (a number, or a string compared case-folded): (attr, key)."""
    if node[0] != "cmp" or node[1] != "<" or node[2][0] != "attr" or node[3][0] != "lit":
        return None
    value = node[3][1]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    return node[2][1], value.lower() if isinstance(value, str) else value


def _search_tree(node: Node) -> Pred | None:
    """An ``ifThenElse(A < p, left, right)`` tree on one attribute whose pivots, read in
    order, ascend (a search tree, as ``among`` writes): evaluated by bisection to its leaf,
    as one walk down the tree would, in one step instead of one call per level."""
    attr: str | None = None
    pivots: list[Any] = []
    leaves: list[Node] = []

    def walk(n: Node) -> bool:
        nonlocal attr
        if n[0] == "call" and n[1] == "ifthenelse" and len(n[2]) == 3:
            piv = _pivot(n[2][0])
            if piv is None or (attr is not None and piv[0] != attr):
                return False
            attr = piv[0]
            if not walk(n[2][1]):
                return False
            pivots.append(piv[1])
            return walk(n[2][2])
        leaves.append(n)
        return True

    if not walk(node) or attr is None:
        return None
    kinds = {type(p) is str for p in pivots}
    if len(kinds) != 1 or any(a >= b for a, b in itertools.pairwise(pivots)):
        return None
    text = kinds == {True}
    preds = [_compile(leaf) for leaf in leaves]
    name = attr

    def search(ad: Mapping[str, Any]) -> Any:
        v = ad.get(name, UNDEF)
        if text:
            if not isinstance(v, str):
                return UNDEF
            v = v.lower()
        elif isinstance(v, bool) or not isinstance(v, int | float):
            return UNDEF
        return preds[bisect.bisect_right(pivots, v)](ad)

    return search


def _membership(groups: Plan) -> Pred:
    tests: list[Pred] = []
    for spec, keys in groups.items():
        if len(spec) == 1 and not spec[0][1]:
            tests.append(_one_attr(spec[0][0], {k[0] for k in keys}))
        else:
            tests.append(_many_attrs(spec, keys))
    return lambda ad: any(t(ad) for t in tests)


def _one_attr(attr: str, values: set[Any]) -> Pred:
    return lambda ad: ad.get(attr, UNDEF) in values


def _many_attrs(spec: Spec, keys: set[tuple[Any, ...]]) -> Pred:
    return lambda ad: _key(ad, spec) in keys


def _attrs(node: Node) -> set[str]:
    if node[0] == "attr":
        return {node[1]}
    if node[0] in ("lit", "list"):
        return set()
    out: set[str] = set()
    for part in node[1:]:
        if isinstance(part, tuple):
            out |= _attrs(part)
        elif isinstance(part, list):
            for child in part:
                out |= _attrs(child)
    return out


@dataclass(frozen=True)
class Constraint:
    text: str
    pred: Pred
    plans: list[Plan]
    attrs: frozenset[str]


_COMPILED: dict[str, Constraint] = {}


def compile_constraint(text: str) -> Constraint:
    hit = _COMPILED.get(text)
    if hit is None:
        node = _Parser(text).parse()
        hit = Constraint(text, _compile(node), _plans(node), frozenset(_attrs(node)))
        # A recheck names thousands of ids and differs every cycle: kept, 64 of them held
        # 50-80 MB of the bench process (port memory, counted in its RSS) for nothing.
        if len(text) <= 4096:
            if len(_COMPILED) > 64:
                _COMPILED.clear()
            _COMPILED[text] = hit
    return hit


# ============================================================================ the port


class _Overlay:
    """An ad seen with its store's constant attributes (the partition label) added."""

    __slots__ = ("ad", "extra")

    def __init__(self, ad: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
        self.ad, self.extra = ad, extra

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.ad:
            return self.ad[key]
        return self.extra.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.ad or key in self.extra


ALL = None
"""``AdStore.select``: every ad."""


class AdStore:
    """Ads of one kind (jobs of one factory, history, slots, masters), with lazy indexes."""

    def __init__(
        self,
        ads: list[dict[str, Any]],
        times: Iterable[str] = (),
        constants: Mapping[str, Any] | None = None,
    ) -> None:
        self.ads = ads
        self.keys: set[str] = set().union(*ads) if ads else set()
        self.times = tuple(t for t in times if t in self.keys)
        self.constants = dict(constants or {})
        self._indexes: dict[Spec, dict[tuple[Any, ...], Any]] = {}
        self._selected: dict[tuple[Any, ...], list[int]] = {}

    def index(self, spec: Spec) -> dict[tuple[Any, ...], Any]:
        """key -> position (an int), or a list of positions when several ads share it."""
        idx = self._indexes.get(spec)
        if idx is None:
            idx = {}
            for pos, ad in enumerate(self.ads):
                key = _key(ad, spec)
                old = idx.get(key)
                if old is None:
                    idx[key] = pos
                elif isinstance(old, list):
                    old.append(pos)
                else:
                    idx[key] = [old, pos]
            self._indexes[spec] = idx
        return idx

    def _lookup(self, plan: Plan) -> list[int]:
        found: set[int] = set()
        for spec, keys in plan.items():
            idx = self.index(spec)
            for key in keys:
                hit = idx.get(key)
                if hit is None:
                    continue
                if isinstance(hit, list):
                    found.update(hit)
                else:
                    found.add(hit)
        return sorted(found)

    def select(
        self, match: Mapping[str, Any], constraint: str | None
    ) -> tuple[list[int] | None, bool]:
        """(positions or ALL, whether an index answered)."""
        rest = {k: v for k, v in match.items() if k not in self.constants}
        if any(self.constants[k] != v for k, v in match.items() if k in self.constants):
            return [], False
        if not rest and not constraint:
            return ALL, False
        cache_key = (tuple(sorted(rest.items())), constraint)
        cached = self._selected.get(cache_key)
        if cached is not None:
            return cached, False
        c = compile_constraint(constraint) if constraint else None
        indexed = False
        candidates: Sequence[int] = range(len(self.ads))
        if c is not None and c.plans:
            indexed = True
            candidates = min((self._lookup(p) for p in c.plans), key=len)
        ads = self.ads
        overlay = c is not None and bool(c.attrs & self.constants.keys())
        out = []
        for pos in candidates:
            ad = ads[pos]
            if any(ad.get(k, UNDEF) != v for k, v in rest.items()):
                continue
            if (
                c is not None
                and c.pred(_Overlay(ad, self.constants) if overlay else ad) is not True
            ):
                continue
            out.append(pos)
        static = not ({*rest, *(c.attrs if c else ())} & set(self.times))
        if not indexed and static:
            self._selected[cache_key] = out  # the pool does not change: a scan is answered once
        return out, indexed

    def fetch(
        self, positions: Sequence[int] | None, projection: Sequence[str], copy: bool
    ) -> list[dict[str, Any]]:
        ads = self.ads
        src: Iterable[dict[str, Any]] = ads if positions is ALL else map(ads.__getitem__, positions)
        if self.keys.issubset(projection):
            return list(map(dict, src)) if copy else list(src)
        wanted = tuple(projection)
        return [{k: ad[k] for k in wanted if k in ad} for ad in src]

    def shift(self, delta: int) -> None:
        """Move every timestamp by ``delta`` (0 means "never" and stays 0)."""
        if not delta or not self.times:
            return
        times = self.times
        for ad in self.ads:
            for attr in times:
                value = ad.get(attr)
                if value:
                    ad[attr] = value + delta
        for spec in [s for s in self._indexes if any(a in times for a, _ in s)]:
            del self._indexes[spec]


def _left_at(ad: Mapping[str, Any]) -> int:
    return int(ad.get("CompletionDate") or ad.get("EnteredCurrentStatus") or 0)


def _newest_first(ads: Sequence[Mapping[str, Any]]) -> list[int]:
    """History positions, newest first (a shift moves every ad alike: computed once)."""
    return sorted(range(len(ads)), key=lambda i: -_left_at(ads[i]))


SCHEDD_WRITES = ("submit", "remove", "edit")
STARTD_WRITES = ("drain", "cancel_drain", "retire_peaceful", "unretire")


class CountingCondorPort:
    """One schedd + collector in memory, counting every call (per cycle and per queue)."""

    def __init__(self, wl: Workload, copy: bool = True) -> None:
        part = {"PilotFactoryId": FID}
        self.jobs = {FID: AdStore(wl.jobs, JOB_TIMES, part)}
        self.history = {FID: AdStore(wl.history, HISTORY_TIMES, part)}
        self.slots = AdStore(wl.slots, SLOT_TIMES)
        self.masters = AdStore(wl.masters)
        self.history_order = {fid: _newest_first(s.ads) for fid, s in self.history.items()}
        self.machine_queue = wl.machine_queue
        self.copy = copy
        self.aligned = NOW
        self.next_cluster = 10_000_000
        self.seconds = 0.0
        self.queries: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.items: Counter[str] = Counter()
        self.queue_writes: Counter[tuple[str, str]] = Counter()
        self.queue_calls: Counter[tuple[str, str, str]] = Counter()
        """Writes by (queue, kind, what a call sets): two of one are two calls one could be."""

    # ------------------------------------------------------------------ bookkeeping

    def begin_cycle(self) -> None:
        self.seconds = 0.0
        self.queries.clear()
        self.writes.clear()
        self.items.clear()
        self.queue_writes.clear()
        self.queue_calls.clear()

    def align(self, now: float) -> None:
        """Keep the pool's ages: move every timestamp with the clock (untimed)."""
        delta = int(now) - self.aligned
        if delta:
            for store in (*self.jobs.values(), *self.history.values(), self.slots):
                store.shift(delta)
            self.aligned += delta

    def prepare(self) -> None:
        """Build the indexes the rechecks use now, so the base RSS includes them."""
        for store in self.jobs.values():
            store.index((("ClusterId", False), ("ProcId", False)))
        self.slots.index((("EC2InstanceID", False),))
        self.slots.index((("PilotFactoryWorker", False),))

    def _stores(self, stores: Mapping[str, AdStore], match: Mapping[str, Any]) -> list[AdStore]:
        fid = match.get("PilotFactoryId")
        if fid is None:
            return list(stores.values())
        return [stores[fid]] if fid in stores else []

    def _query(
        self,
        name: str,
        stores: Sequence[AdStore],
        match: Mapping[str, Any],
        projection: Sequence[str],
        constraint: str | None,
    ) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            out: list[dict[str, Any]] = []
            by_id = False
            for store in stores:
                try:
                    positions, indexed = store.select(match, constraint)
                except ConstraintError as exc:
                    raise CondorRejected(
                        f"scale benchmark port: cannot evaluate {constraint!r}: {exc}"
                    ) from None
                by_id = by_id or indexed
                out.extend(store.fetch(positions, projection, self.copy))
            self.queries[f"{name} {'by id' if by_id else 'full'}"] += 1
            return out
        finally:
            self.seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ queries

    def query_jobs(
        self, match: Mapping[str, Any], projection: Sequence[str], constraint: str | None = None
    ) -> list[dict[str, Any]]:
        return self._query("jobs", self._stores(self.jobs, match), match, projection, constraint)

    def query_history(
        self, match: Mapping[str, Any], projection: Sequence[str], since: float, limit: int
    ) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            out: list[dict[str, Any]] = []
            for fid, store in self.history.items():
                if "PilotFactoryId" in match and match["PilotFactoryId"] != fid:
                    continue
                selected, _ = store.select(match, None)
                allowed = None if selected is ALL else set(selected)
                picked: list[int] = []
                for pos in self.history_order[fid]:
                    ad = store.ads[pos]
                    if _left_at(ad) < since:
                        break  # newest first
                    if allowed is None or pos in allowed:
                        picked.append(pos)
                        if len(picked) >= limit:
                            break
                out.extend(store.fetch(picked, projection, self.copy))
            self.queries["history full"] += 1
            return out[:limit]
        finally:
            self.seconds += time.perf_counter() - t0

    def query_startds(
        self, match: Mapping[str, Any], projection: Sequence[str], constraint: str | None = None
    ) -> list[dict[str, Any]]:
        return self._query("startds", [self.slots], match, projection, constraint)

    def query_masters(
        self, match: Mapping[str, Any], projection: Sequence[str], constraint: str | None = None
    ) -> list[dict[str, Any]]:
        return self._query("masters", [self.masters], match, projection, constraint)

    # ------------------------------------------------------------------ writes (counted only)

    def _queue_of_job(self, job_id: str) -> str:
        cluster, _, proc = job_id.partition(".")
        if not (cluster.isdigit() and proc.isdigit()):
            return "?"
        for store in self.jobs.values():
            hit = store.index((("ClusterId", False), ("ProcId", False))).get(
                (int(cluster), int(proc))
            )
            if isinstance(hit, int):
                return str(store.ads[hit].get("PilotFactoryQueue", "?"))
        return "?"

    def _write(self, kind: str, queue: str, items: int, what: str = "") -> None:
        self.writes[kind] += 1
        self.items[kind] += items
        self.queue_writes[(queue, kind)] += 1
        self.queue_calls[(queue, kind, what)] += 1

    def submit(self, description: Mapping[str, str], count: int) -> SubmitResult:
        self._write("submit", description.get("+PilotFactoryQueue", "?").strip('"'), count)
        self.next_cluster += 1
        return SubmitResult(self.next_cluster, count)

    def remove(self, job_ids: Sequence[str], reason: str) -> int:
        m = re.search(r"\(queue (.+)\)$", reason)
        queue = m.group(1) if m else (self._queue_of_job(job_ids[0]) if job_ids else "?")
        self._write("remove", queue, len(job_ids))
        return len(job_ids)

    def edit(self, job_ids: Sequence[str], attr: str, value: str) -> None:
        queue = self._queue_of_job(job_ids[0]) if job_ids else "?"
        self._write("edit", queue, len(job_ids), attr)  # one call sets one attribute

    def _startd(self, kind: str, machine: str) -> None:
        self._write(kind, self.machine_queue.get(machine, "?"), 1)

    def retire_peaceful(self, machine: str) -> None:
        self._startd("retire_peaceful", machine)

    def unretire(self, machine: str) -> None:
        self._startd("unretire", machine)

    def drain(self, machine: str, reason: str) -> None:
        self._startd("drain", machine)

    def cancel_drain(self, machine: str) -> None:
        self._startd("cancel_drain", machine)


class StaticPanda:
    """PanDA job statistics and site status, in memory (the Panda WMS status plugin's port)."""

    def __init__(self, stats: Mapping[str, Mapping[str, int]], sites: Mapping[str, str]) -> None:
        self.stats = stats
        self.sites = sites
        self.requests = 0

    def active_job_stats(self) -> Mapping[str, Mapping[str, int]]:
        self.requests += 1
        return self.stats

    def active_job_detailed_stats(self) -> Mapping[str, Any]:
        self.requests += 1
        return {}

    def site_status(self) -> Mapping[str, str]:
        self.requests += 1
        return self.sites


class BenchWorld:
    def __init__(self, condor: CountingCondorPort, panda: StaticPanda) -> None:
        self._condor = condor
        self._panda = panda

    def condor(self, target: CondorTarget) -> CountingCondorPort:
        return self._condor  # one schedd, one collector

    def cloud(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the scale benchmark has no direct-cloud queues")

    def panda(self, settings: Mapping[str, Any]) -> StaticPanda:
        return self._panda

    def site_status(self, settings: Mapping[str, Any]) -> StaticPanda:
        return self._panda


# ============================================================================ the workload

PILOT_MIX = (("idle", 0.25), ("running", 0.72), ("held", 0.03))
VM_MIX = (
    ("pending", 0.08),
    ("starting", 0.01),
    ("booting", 0.06),
    ("held", 0.01),
    ("idle", 0.15),
    ("busy", 0.51),
    ("retiring", 0.12),
    ("retired", 0.06),
)
HOLD_REASONS = (
    "Error from slot1@wn: Failed to execute '/usr/libexec/pilotfactory/wrapper.sh'",
    "Job has gone over memory limit of 2048 megabytes.",
    "EC2 API error: InsufficientInstanceCapacity",
    "Failed to authenticate with the EC2 endpoint",
)


@dataclass
class QueueSpec:
    name: str
    kind: str
    """``pilot`` or ``vm``."""
    site: str
    weight: float
    chain: str
    """``activated`` / ``ready`` (pilots) or ``elastic`` (VMs)."""
    busy: bool
    """Its PanDA site has lots of waiting work."""
    troubled: bool
    """Held past held_timeout, VMs past boot_timeout: reaped as failures."""
    offline: bool
    blackhole: bool
    throttle: bool = True
    """Its chain ends with Throttle (pilot queues)."""
    counts: Counter[str] = field(default_factory=Counter)


@dataclass
class Workload:
    queues: list[QueueSpec]
    jobs: list[dict[str, Any]]
    history: list[dict[str, Any]]
    slots: list[dict[str, Any]]
    masters: list[dict[str, Any]]
    panda_stats: dict[str, dict[str, int]]
    site_status: dict[str, str]
    machine_queue: dict[str, str]
    states: Counter[str]

    def summary(self) -> dict[str, Any]:
        return {
            "pilot_queues": sum(1 for q in self.queues if q.kind == "pilot"),
            "throttle_queues": sum(1 for q in self.queues if q.kind == "pilot" and q.throttle),
            "vm_queues": sum(1 for q in self.queues if q.kind == "vm"),
            "jobs": len(self.jobs),
            "pilot_jobs": sum(v for k, v in self.states.items() if k.startswith("pilot ")),
            "vm_jobs": sum(v for k, v in self.states.items() if k.startswith("vm ")),
            "history": len(self.history),
            "slot_ads": len(self.slots),
            "master_ads": len(self.masters),
            "states": dict(sorted(self.states.items())),
        }


def _draw(rng: random.Random, mix: Sequence[tuple[str, float]], k: int) -> list[str]:
    return rng.choices([m[0] for m in mix], [m[1] for m in mix], k=k)


class _Ids:
    def __init__(self) -> None:
        self.instance = 0x0ABC0000000000000

    def vm(self) -> tuple[str, str]:
        self.instance += 1
        n = self.instance
        machine = f"ip-10-{(n >> 16) & 255}-{(n >> 8) & 255}-{n & 255}.ec2.internal"
        return f"i-{n:017x}", machine


def build_workload(
    n_queues: int, n_jobs: int, n_slots: int, seed: int = 13, throttle: float = 1.0
) -> Workload:
    """Q queues (70 % pilot, 30 % VM), J job ads, S slot ads; deterministic for a seed.

    ``throttle``: the share of pilot queues whose chain ends with Throttle (all by default)."""
    rng = random.Random(seed)
    n_vmq = max(1, round(n_queues * 0.3)) if n_queues > 1 else 0
    n_pq = n_queues - n_vmq
    queues: list[QueueSpec] = []
    for k in range(n_queues):
        kind = "pilot" if k < n_pq else "vm"
        idx = k if kind == "pilot" else k - n_pq
        name = f"{'ANALY' if kind == 'pilot' else 'CLOUD'}_SITE{idx:04d}"
        queues.append(
            QueueSpec(
                name=name,
                kind=kind,
                site=name,
                weight=rng.lognormvariate(0.0, 1.0),
                chain=("activated" if rng.random() < 0.6 else "ready")
                if kind == "pilot"
                else "elastic",
                busy=rng.random() < 0.4,
                troubled=rng.random() < 0.2,
                offline=rng.random() < 0.05,
                blackhole=False,
            )
        )
    pilot_qs = [q for q in queues if q.kind == "pilot"]
    vm_qs = [q for q in queues if q.kind == "vm"]
    for q in rng.sample(pilot_qs, max(1 if len(pilot_qs) >= 5 else 0, len(pilot_qs) * 3 // 100)):
        q.blackhole = True
    pick = random.Random(seed + 2)  # its own stream: the ads do not depend on it
    for q in pilot_qs:
        q.throttle = pick.random() < throttle

    # ---- VMs, drawn until their slot ads fill the slot budget (1 % are orphan startds)
    orphan_slots = max(1, n_slots // 100)
    vm_target = n_slots - orphan_slots
    vms: list[tuple[str, int]] = []
    slot_count = 0
    pool: list[str] = []
    while vm_qs and slot_count < vm_target:
        if not pool:
            pool = _draw(rng, VM_MIX, 4096)
        state = pool.pop()
        dslots = 0
        if state in ("busy", "retiring"):
            dslots = rng.randint(1 if state == "busy" else 0, 4)
        joined = state in ("idle", "busy", "retiring")
        vms.append((state, dslots))
        slot_count += (1 + dslots) if joined else 0
    if len(vms) > n_jobs:
        raise ValueError(f"{n_jobs} jobs cannot hold the {len(vms)} VMs that {n_slots} slots need")
    pilots = _draw(rng, PILOT_MIX, n_jobs - len(vms)) if pilot_qs else []
    per_queue: dict[str, list[tuple[str, int]]] = {q.name: [] for q in queues}
    if pilot_qs:
        for q, state in zip(
            rng.choices(pilot_qs, [q.weight for q in pilot_qs], k=len(pilots)), pilots, strict=True
        ):
            per_queue[q.name].append((state, 0))
    if vm_qs:
        for q, vm in zip(
            rng.choices(vm_qs, [q.weight for q in vm_qs], k=len(vms)), vms, strict=True
        ):
            per_queue[q.name].append(vm)

    # ---- clusters (one submit each), interleaved across queues like a real schedd queue
    clusters: list[tuple[QueueSpec, list[tuple[str, int]]]] = []
    for q in queues:
        ents = per_queue[q.name]
        i = 0
        while i < len(ents):
            size = rng.randint(1, 50 if q.kind == "pilot" else 20)
            clusters.append((q, ents[i : i + size]))
            i += size
    rng.shuffle(clusters)

    jobs: list[dict[str, Any]] = []
    slots: list[dict[str, Any]] = []
    masters: list[dict[str, Any]] = []
    machine_queue: dict[str, str] = {}
    states: Counter[str] = Counter()
    ids = _Ids()
    for n, (q, ents) in enumerate(clusters):
        cluster = 100_000 + n
        qdate = NOW - rng.randint(600, 172_800)
        for proc, (state, dslots) in enumerate(ents):
            states[f"{q.kind} {state}"] += 1
            q.counts[state] += 1
            if q.kind == "pilot":
                jobs.append(_pilot_ad(rng, q, cluster, proc, state, qdate))
            else:
                job, vslots, master = _vm_ads(rng, q, cluster, proc, state, dslots, qdate, ids)
                jobs.append(job)
                slots.extend(vslots)
                if master is not None:
                    masters.append(master)
                    machine_queue[master["Machine"]] = q.name
                for s in vslots:
                    machine_queue[s["Machine"]] = q.name
                if state in ("idle", "busy"):
                    q.counts["free_slots"] += 4 - dslots

    # ---- orphan startds: a join key that no job of this factory claims
    made = 0
    while made < orphan_slots:
        iid, machine = ids.vm()
        worker = f"{rng.randint(1, 99_999)}.0" if rng.random() < 0.5 else None
        busy = min(rng.randint(0, 2), orphan_slots - made - 1)
        ads = _startd_ads(rng, machine, iid, worker, busy, 86_400, None)
        slots.extend(ads)
        masters.append(_master_ad(machine, iid, worker))
        made += len(ads)
        states["orphan startds"] += 1
    rng.shuffle(slots)

    history = _history_ads(rng, pilot_qs, max(100, n_jobs // 20))
    panda_stats, site_status = _wms(rng, queues)
    return Workload(
        queues, jobs, history, slots, masters, panda_stats, site_status, machine_queue, states
    )


def _pilot_ad(
    rng: random.Random, q: QueueSpec, cluster: int, proc: int, state: str, qdate: int
) -> dict[str, Any]:
    ad: dict[str, Any] = {
        "ClusterId": cluster,
        "ProcId": proc,
        "JobUniverse": 5,
        "CompletionDate": 0,
        "PilotFactoryQueue": q.name,
        "APF_QUEUE": q.name,
    }
    if state == "idle":
        ad["JobStatus"] = 1
        entered = qdate
    elif state == "running":
        ad["JobStatus"] = 2
        entered = NOW - rng.randint(30, 172_000)
        ad["JobStartDate"] = entered
        ad["RemoteHost"] = (
            f"slot1_{rng.randint(1, 64)}@wn{rng.randint(0, 9999):04d}.{q.site.lower()}.example.org"
        )
    else:
        ad["JobStatus"] = 5
        entered = NOW - (rng.randint(3_700, 30_000) if q.troubled else rng.randint(60, 3_000))
        ad["HoldReason"] = HOLD_REASONS[rng.randrange(2)]
    ad["EnteredCurrentStatus"] = entered
    ad["QDate"] = min(qdate, entered)
    return ad


def _startd_ads(
    rng: random.Random,
    machine: str,
    iid: str,
    worker: str | None,
    dslots: int,
    mjrt: int,
    draining: str | None,
) -> list[dict[str, Any]]:
    """One 4-core VM's startd: a partitionable slot and ``dslots`` claimed dynamic slots."""
    common: dict[str, Any] = {
        "Machine": machine,
        "MaxJobRetirementTime": mjrt,
        "Draining": draining == "drain",
        "PilotFactoryId": FID,
        "EC2InstanceID": iid,
    }
    if worker is not None:
        common["PilotFactoryWorker"] = worker
    retiring = draining is not None
    pslot = {
        "Name": f"slot1@{machine}",
        "State": "Drained" if retiring and draining == "drain" else "Unclaimed",
        "Activity": "Retiring" if retiring else "Idle",
        "SlotType": "Partitionable",
        "Cpus": 4 - dslots,
        "EnteredCurrentActivity": NOW - rng.randint(300, 14_400),
        **common,
    }
    out = [pslot]
    for d in range(dslots):
        out.append(
            {
                "Name": f"slot1_{d + 1}@{machine}",
                "State": "Claimed",
                "Activity": "Retiring" if retiring else "Busy",
                "SlotType": "Dynamic",
                "Cpus": 1,
                "EnteredCurrentActivity": NOW - rng.randint(60, 30_000),
                **common,
            }
        )
    return out


def _master_ad(machine: str, iid: str, worker: str | None) -> dict[str, Any]:
    ad: dict[str, Any] = {"Name": machine, "Machine": machine, "EC2InstanceID": iid}
    if worker is not None:
        ad["PilotFactoryWorker"] = worker
    return ad


def _vm_ads(
    rng: random.Random,
    q: QueueSpec,
    cluster: int,
    proc: int,
    state: str,
    dslots: int,
    qdate: int,
    ids: _Ids,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """A grid-universe VM job, its startd's slot ads and its master ad."""
    job_id = f"{cluster}.{proc}"
    ad: dict[str, Any] = {
        "ClusterId": cluster,
        "ProcId": proc,
        "JobUniverse": 9,
        "CompletionDate": 0,
        "PilotFactoryQueue": q.name,
        "APF_QUEUE": q.name,
    }
    slots: list[dict[str, Any]] = []
    master = None
    if state == "pending":
        ad["JobStatus"] = 1
        entered = NOW - rng.randint(10, 900)
    elif state == "held":
        ad["JobStatus"] = 5
        entered = NOW - (rng.randint(3_700, 20_000) if q.troubled else rng.randint(60, 3_000))
        ad["HoldReason"] = HOLD_REASONS[2 + rng.randrange(2)]
    else:
        ad["JobStatus"] = 2
        if state == "starting":
            entered = NOW - rng.randint(5, 120)
        elif state == "booting":
            late = q.troubled and rng.random() < 0.3
            entered = NOW - (rng.randint(1_900, 5_000) if late else rng.randint(30, 1_500))
        else:
            entered = NOW - rng.randint(1_800, 172_800)
        ad["JobStartDate"] = entered
    ad["EnteredCurrentStatus"] = entered
    ad["QDate"] = min(qdate, entered - 30)
    if state in ("starting", "pending", "held"):
        return ad, slots, master

    iid, machine = ids.vm()
    ad["EC2InstanceName"] = iid
    worker = job_id if rng.random() < 0.5 else None
    mjrt = 86_400 if rng.random() < 0.8 else 0
    if state in ("retiring", "retired"):
        mode = "drain" if mjrt >= 3_600 else "peaceful"
        ad[RETIRE_REQUESTED] = NOW - (
            rng.randint(60, 3_600) if state == "retiring" else rng.randint(300, 7_200)
        )
        ad[RETIRE_MODE] = mode
    elif state == "busy" and rng.random() < 0.05:
        ad[RETIRE_MODE] = "drain"  # retired once, then un-retired
        ad[UNRETIRED_AT] = NOW - rng.randint(600, 7_200)
    if state in ("idle", "busy", "retiring"):
        draining = ad.get(RETIRE_MODE) if state == "retiring" else None
        slots = _startd_ads(rng, machine, iid, worker, dslots, mjrt, draining)
        master = _master_ad(machine, iid, worker)
    elif (state == "retired" and rng.random() < 0.5) or (state == "booting" and rng.random() < 0.1):
        master = _master_ad(machine, iid, worker)  # VM up, startd gone (or not yet there)
    return ad, slots, master


def _history_ads(rng: random.Random, pilot_qs: Sequence[QueueSpec], n: int) -> list[dict[str, Any]]:
    """Pilots that left the queue within the last hour (Throttle's window)."""
    if not pilot_qs:
        return []
    out = []
    owners = rng.choices(pilot_qs, [q.weight for q in pilot_qs], k=n)
    for i, q in enumerate(owners):
        started = NOW - rng.randint(60, 3_500)
        if q.blackhole and rng.random() < 0.8:
            ended = started + rng.randint(1, 8)
        else:
            ended = started + int((NOW - started) * rng.uniform(0.05, 1.0))
        removed = rng.random() < 0.1
        out.append(
            {
                "ClusterId": 50_000 + i // 20,
                "ProcId": i % 20,
                "JobStatus": 3 if removed else 4,
                "PilotFactoryQueue": q.name,
                "APF_QUEUE": q.name,
                "JobStartDate": started,
                "CompletionDate": 0 if removed else ended,
                "EnteredCurrentStatus": ended,
            }
        )
    return out


def _wms(
    rng: random.Random, queues: Sequence[QueueSpec]
) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """PanDA statistics per site: lots of activated jobs for busy sites, none for the rest."""
    stats: dict[str, dict[str, int]] = {}
    sites: dict[str, str] = {}
    for q in queues:
        c = q.counts
        pending = c["idle"] + c["held"] + c["pending"] + c["starting"] + c["booting"]
        activated = 0
        if q.busy and q.kind == "pilot":
            activated = pending + rng.randint(20, 600)
        elif q.busy:
            activated = c["free_slots"] + 4 * pending + rng.randint(8, 400)
        stats[q.site] = {
            "activated": activated,
            "running": c["running"] * 3 + c["busy"] * 4,
            "defined": rng.randint(0, 50),
            "holding": rng.randint(0, 20),
            "finished": rng.randint(0, 2_000),
        }
        sites[q.site] = "offline" if q.offline else "online"
    return stats, sites


def queues_conf(wl: Workload, tmp: str, seed: int = 13) -> str:
    """The generated queues.conf: per-queue caps sized from what each queue holds."""
    rng = random.Random(seed + 1)
    lines = [
        "[DEFAULT]",
        "enabled = True",
        f"apfqueue.sleep = {TICK}",
        "wmsstatusplugin = Panda",
        "wmsstatus.panda.baseurl = https://pandaserver.scale.invalid:25443/server/panda",
        f"wmsstatus.panda.sitestatus_file = {tmp}/sites.json",
        "boot_timeout = 1800",
        "held_timeout = 3600",
        "# writes change nothing: one confirmation keeps every cycle the same",
        "retire_confirm_cycles = 1",
        "batchsubmit.condorlocal.executable = /usr/libexec/pilotfactory/wrapper.sh",
        "batchsubmit.condorec2.gridresource = https://ec2.us-east-1.amazonaws.com/",
        "batchsubmit.condorec2.ami_id = ami-0a1b2c3d4e5f60718",
        "batchsubmit.condorec2.instance_type = m5.xlarge",
        f"batchsubmit.condorec2.access_key_id = {tmp}/ec2/access.key",
        f"batchsubmit.condorec2.secret_access_key = {tmp}/ec2/secret.key",
        "batchsubmit.condorec2.user_data = #cloud-config",
        "",
    ]
    for q in wl.queues:
        c = q.counts
        lines += [f"[{q.name}]", f"wmsqueue = {q.site}"]
        if q.kind == "pilot":
            pending = c["idle"] + c["held"]
            cap = max(10, round(pending * rng.uniform(0.8, 1.6)))
            lines += ["batchstatusplugin = Condor", "batchsubmitplugin = CondorLocal"]
            throttle = ", Throttle" if q.throttle else ""
            if q.chain == "activated":
                lines += [
                    f"schedplugin = Activated{throttle}",
                    "sched.activated.max_pilots_per_cycle = 50",
                    f"sched.activated.max_pilots_pending = {cap}",
                ]
            else:
                lines += [
                    f"schedplugin = Ready, MaxPending, MaxPerCycle{throttle}",
                    f"sched.maxpending.maximum = {cap}",
                    "sched.maxpercycle.maximum = 50",
                ]
        else:
            supply = sum(v for k, v in c.items() if k not in ("retired", "free_slots"))
            low, high = (0.95, 1.6) if q.busy else (1.0, 1.5)
            lines += [
                "batchstatusplugin = CondorEC2",
                "batchsubmitplugin = CondorEC2",
                "schedplugin = JobsPerVM, IdleShutdown, MaxPerCycle, MaxVMs",
                "sched.jobspervm.jobs = 4",
                f"sched.idleshutdown.idle_time = {IDLE_TIME}",
                "sched.maxpercycle.maximum = 20",
                f"sched.maxvms.maximum = {max(1, round(supply * rng.uniform(low, high)))}",
                "retire_mode = drain",
                "expected_job_length = 3600",
                "max_retire_per_cycle = 20%%",
            ]
        lines.append("")
    return "\n".join(lines)


def bare_pass(jobs: Sequence[Mapping[str, Any]], slots: Sequence[Mapping[str, Any]]) -> int:
    """The reference: one plain pass over the job and slot ads, counting by queue and status."""
    counts: dict[tuple[Any, Any], int] = {}
    for ad in jobs:
        key = (ad["PilotFactoryQueue"], ad["JobStatus"])
        counts[key] = counts.get(key, 0) + 1
    for ad in slots:
        key = (ad["SlotType"], ad["State"])
        counts[key] = counts.get(key, 0) + 1
    return len(counts)


# ============================================================================ one case


class _LogCounter(logging.Handler):
    """Counts warnings and errors (instead of printing them) and keeps a few samples."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if len(self.samples) < 8 and str(record.msg) not in self.samples:
            self.samples[str(record.msg)] = record.getMessage()[:200]


def rss_mb() -> tuple[float, float]:
    """(peak, current) resident set size in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return peak, pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Bench:
    wl: Workload
    port: CountingCondorPort
    panda: StaticPanda
    clock: VirtualClock
    factory: Factory
    status_file: str
    logs: _LogCounter
    status_seconds: float = 0.0


def setup(wl: Workload, tmp: str, copy: bool = True) -> Bench:
    os.makedirs(f"{tmp}/ec2", exist_ok=True)
    for name in ("access.key", "secret.key"):
        path = f"{tmp}/ec2/{name}"
        with open(path, "w") as fh:
            fh.write("AKIASCALEBENCH\n")
        os.chmod(path, 0o600)
    with open(f"{tmp}/sites.json", "w") as fh:
        json.dump(wl.site_status, fh)
    conf = f"{tmp}/queues.conf"
    with open(conf, "w") as fh:
        fh.write(queues_conf(wl, tmp))
    loaded = load_queues([conf])
    if loaded.errors or len(loaded.queues) != len(wl.queues):
        raise RuntimeError(
            "generated queues.conf does not load: " + "; ".join(map(str, loaded.errors[:3]))
        )
    port = CountingCondorPort(wl, copy=copy)
    port.prepare()
    panda = StaticPanda(wl.panda_stats, wl.site_status)
    clock = VirtualClock(float(NOW - IDLE_TIME))
    status_file = f"{tmp}/status.json"
    fcfg = replace(
        default_factory_config(),
        factory_id=FID,
        base_log_dir=f"{tmp}/logs",
        raw={"baseLogDir": f"{tmp}/logs", "statusFile": status_file},
        status_file=status_file,
    )
    logs = _LogCounter()
    root = logging.getLogger()
    root.addHandler(logs)
    root.setLevel(logging.WARNING)
    factory = Factory(fcfg, loaded.queues, BenchWorld(port, panda), clock)  # type: ignore[arg-type]
    bench = Bench(wl, port, panda, clock, factory, status_file, logs)
    write_status = factory.write_status

    def timed_write_status(path: str) -> None:
        t0 = time.perf_counter()
        write_status(path)
        bench.status_seconds += time.perf_counter() - t0

    factory.write_status = timed_write_status  # type: ignore[method-assign]
    return bench


def one_cycle(b: Bench, profiler: cProfile.Profile | None = None) -> dict[str, Any]:
    """One real ``Factory.cycle()`` (all queues), with what it asked and did."""
    b.port.align(b.clock.now())
    b.port.begin_cycle()
    b.panda.requests = 0
    b.status_seconds = 0.0
    logs_before = Counter(b.logs.counts)
    t0 = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    traces = b.factory.cycle(force=True)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - t0
    planned: Counter[str] = Counter()
    planned_workers: Counter[str] = Counter()
    for t in traces:
        for a in t.planned:
            planned[a.kind.value] += 1
            planned_workers[a.kind.value] += a.size()
    per_queue: Counter[str] = Counter()
    for (queue, kind), n in b.port.queue_writes.items():
        if kind in SCHEDD_WRITES:
            per_queue[queue] += n
    schedd_kind = [n for (_, kind), n in b.port.queue_writes.items() if kind in SCHEDD_WRITES]
    logs = b.logs.counts - logs_before
    return {
        "ms": seconds * 1e3,
        "port_ms": b.port.seconds * 1e3,
        "status_ms": b.status_seconds * 1e3,
        "queues": len(traces),
        "errors": sum(1 for t in traces if t.error),
        "failed_actions": sum(1 for t in traces for r in t.results if " failed:" in r),
        "queries": sum(b.port.queries.values()),
        "queries_by": dict(b.port.queries),
        "writes": sum(b.port.writes[k] for k in SCHEDD_WRITES),
        "startd": sum(b.port.writes[k] for k in STARTD_WRITES),
        "writes_by": dict(b.port.writes),
        "write_items": dict(b.port.items),
        "max_writes_queue": max(per_queue.values(), default=0),
        "max_writes_queue_kind": max(schedd_kind, default=0),
        "max_writes_queue_call": max(
            (n for (_, kind, _), n in b.port.queue_calls.items() if kind in SCHEDD_WRITES),
            default=0,
        ),
        "panda_requests": b.panda.requests,
        "planned": dict(planned),
        "planned_workers": dict(planned_workers),
        "warnings": logs["WARNING"],
        "log_errors": logs["ERROR"] + logs["CRITICAL"],
    }


def _mean_counts(cycles: Sequence[Mapping[str, Any]], key: str) -> dict[str, float]:
    total: Counter[str] = Counter()
    for c in cycles:
        total.update(c[key])
    return {k: round(v / len(cycles), 1) for k, v in sorted(total.items())}


def _profile_text(profiler: cProfile.Profile, top: int) -> str:
    out = io.StringIO()
    for order in ("cumulative", "tottime"):
        out.write(f"---- top {top} by {order}\n")
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(top)
    return out.getvalue()


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """Build the workload, then: warm-up cycle, measured cycles, bare passes, the long run."""
    tag = f"[scale {args.queues}q/{args.jobs}j/{args.slots}s]"

    def say(msg: str) -> None:
        print(f"  {tag} {msg}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    result: dict[str, Any] = {"queues": args.queues, "jobs": args.jobs, "slots": args.slots}
    with tempfile.TemporaryDirectory(prefix="pf-scale-") as tmp:
        t0 = time.perf_counter()
        wl = build_workload(args.queues, args.jobs, args.slots, args.seed, args.throttle)
        b = setup(wl, tmp, copy=not args.shared_ads)
        result["workload"] = wl.summary()
        result["build_s"] = round(time.perf_counter() - t0, 2)
        result["rss_base_mb"] = round(rss_mb()[1], 1)
        say(f"workload built in {result['build_s']} s, base RSS {result['rss_base_mb']} MB")

        first = one_cycle(b)
        result["warmup_ms"] = round(first["ms"], 1)
        result["rss_peak_1"], result["rss_cur_1"] = (round(x, 1) for x in rss_mb())
        say(f"warm-up cycle {first['ms']:.0f} ms")
        b.clock.advance(IDLE_TIME)  # the daemon has run idle_time since the warm-up

        bare = []
        for _ in range(5):
            t = time.perf_counter()
            bare_pass(wl.jobs, wl.slots)
            bare.append(time.perf_counter() - t)
        result["bare_ms"] = round(statistics.median(bare) * 1e3, 2)

        measured: list[dict[str, Any]] = []
        for i in range(args.measure):
            if i:
                b.clock.advance(TICK)
            measured.append(one_cycle(b))
        done = 1 + len(measured)
        cycle_ms = statistics.median(c["ms"] for c in measured)
        result["cycle_ms"] = round(cycle_ms, 1)
        result["cycle_ms_all"] = [round(c["ms"], 1) for c in measured]
        result["ratio"] = round(cycle_ms / result["bare_ms"], 1)
        # The factory's own share: the cycle less the in-memory port's time (its constraint
        # parser is Python, where a schedd's is C++), side by side with the whole cycle.
        own_ms = statistics.median(c["ms"] - c["port_ms"] for c in measured)
        result["own_ms"] = round(own_ms, 1)
        result["own_ratio"] = round(own_ms / result["bare_ms"], 1)
        for key in ("port_ms", "status_ms"):
            result[key] = round(statistics.median(c[key] for c in measured), 1)
        for key in (
            "queries", "writes", "startd", "panda_requests", "errors", "failed_actions",
            "warnings", "log_errors",
        ):  # fmt: skip
            result[key] = round(statistics.mean(c[key] for c in measured), 1)
        for key in ("max_writes_queue", "max_writes_queue_kind", "max_writes_queue_call"):
            result[key] = max(c[key] for c in measured)
        for key in ("queries_by", "writes_by", "write_items", "planned", "planned_workers"):
            result[key] = _mean_counts(measured, key)
        result["queries_range"] = [
            min(c["queries"] for c in measured),
            max(c["queries"] for c in measured),
        ]
        say(f"measured {args.measure} cycles: median {cycle_ms:.0f} ms")

        if args.profile:
            b.clock.advance(TICK)
            profiler = cProfile.Profile()
            one_cycle(b, profiler)
            done += 1
            result["profile"] = _profile_text(profiler, args.profile_top)

        budget_hit = False
        stopped = ""
        long_started = time.perf_counter()
        last = measured[-1]["ms"] / 1e3
        tail: list[float] = []
        while done < args.cycles:
            spent = time.perf_counter() - long_started
            if args.budget and spent + last > args.budget:
                budget_hit, stopped = True, f"time budget {args.budget:g} s"
                break
            if args.rss_cap and rss_mb()[1] > args.rss_cap:
                budget_hit, stopped = True, f"RSS cap {args.rss_cap:g} MB"
                break
            b.clock.advance(TICK)
            c = one_cycle(b)
            last = c["ms"] / 1e3
            tail.append(c["ms"])
            done += 1
            if done % 25 == 0:
                say(f"{done} cycles, last {c['ms']:.0f} ms, RSS {rss_mb()[1]:.0f} MB")
        result["rss_peak_n"], result["rss_cur_n"] = (round(x, 1) for x in rss_mb())
        result["cycles_run"] = done
        result["cycles_asked"] = args.cycles
        result["budget_hit"] = budget_hit
        result["stopped_by"] = stopped
        result["last_cycle_ms"] = round(tail[-1] if tail else measured[-1]["ms"], 1)
        result["status_kb"] = round(os.path.getsize(b.status_file) / 1024, 1)
        result["log_samples"] = list(b.logs.samples.values())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


# ============================================================================ the driver

HEADER = (
    f"{'queues':>6} {'jobs':>7} {'slots':>6} | {'cycle ms':>9} {'bare ms':>8} {'ratio':>6} "
    f"{'own ms':>7} {'own/b':>6} | "
    f"{'queries/c':>9} {'writes/c':>8} {'max/q/kind':>10} {'startd/c':>8} | "
    f"{'RSS MB @1 peak/cur':>18} {'RSS MB @N peak/cur':>18} {'N':>8}"
)


def row(r: Mapping[str, Any]) -> str:
    n = f"{r['cycles_run']}/{r['cycles_asked']}" if r["budget_hit"] else f"{r['cycles_run']}"
    return (
        f"{r['queues']:>6} {r['jobs']:>7} {r['slots']:>6} | {r['cycle_ms']:>9.1f} "
        f"{r['bare_ms']:>8.1f} {r['ratio']:>5.1f}x {r['own_ms']:>7.1f} {r['own_ratio']:>5.1f}x | "
        f"{r['queries']:>9.1f} {r['writes']:>8.1f} "
        f"{r['max_writes_queue_kind']:>10} {r['startd']:>8.1f} | "
        f"{r['rss_peak_1']:>8.0f} / {r['rss_cur_1']:<7.0f} {r['rss_peak_n']:>8.0f} / "
        f"{r['rss_cur_n']:<7.0f} {n:>8}"
    )


def details(r: Mapping[str, Any]) -> list[str]:
    w = r["workload"]
    states = ", ".join(f"{k} {v}" for k, v in w["states"].items())
    out = [
        f"{r['queues']} queues / {r['jobs']} jobs / {r['slots']} slots: "
        f"{w['pilot_queues']} pilot ({w['throttle_queues']} with Throttle) + {w['vm_queues']} VM "
        f"queues; {w['pilot_jobs']} pilot + "
        f"{w['vm_jobs']} VM jobs, {w['history']} history, {w['slot_ads']} slot ads, "
        f"{w['master_ads']} master ads",
        f"    states: {states}",
        f"    cycle: warm-up {r['warmup_ms']:.0f} ms, measured {r['cycle_ms_all']} ms "
        f"(port {r['port_ms']:.0f} ms, status file {r['status_ms']:.0f} ms, "
        f"{r['status_kb']:.0f} KB at the end); cycle {r['cycles_run']} (the last): "
        f"{r['last_cycle_ms']:.0f} ms",
        f"    queries/cycle {r['queries']:g} {r['queries_by']} (+{r['panda_requests']:g} PanDA)",
        f"    writes/cycle {r['writes']:g} schedd + {r['startd']:g} startd {r['writes_by']}; "
        f"ads touched {r['write_items']}; max schedd writes by one queue in a cycle: "
        f"{r['max_writes_queue']} (one kind: {r['max_writes_queue_kind']}; one kind setting one "
        f"attribute, what one call can do: {r['max_writes_queue_call']})",
        f"    planned/cycle: actions {r['planned']}, workers {r['planned_workers']}",
        f"    RSS base (pool in memory, before the factory) {r['rss_base_mb']:.0f} MB; "
        f"queue errors/cycle {r['errors']:g}, failed actions {r['failed_actions']:g}, "
        f"warnings {r['warnings']:g}, logged errors {r['log_errors']:g}; wall {r['wall_s']} s",
    ]
    if r.get("log_samples"):
        out.append("    log samples: " + " | ".join(r["log_samples"][:3]))
    return out


def _child(
    q: int, j: int, s: int, cycles: int, measure: int, budget: float, extra: Sequence[str]
) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable, "-m", "benchmarks.scale", "--queues", str(q), "--jobs", str(j),
        "--slots", str(s), "--cycles", str(cycles), "--measure", str(measure),
        "--budget", str(budget), "--json", *extra,
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=root, stdout=subprocess.PIPE, text=True, timeout=budget * 2 + 3_600, check=False
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("SCALE-JSON ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stdout[-500:]}")
    return dict(json.loads(lines[-1][len("SCALE-JSON ") :]))


def drive(argv: Sequence[str] = ()) -> int:
    """Every size in a fresh subprocess (peak RSS per case); prints the table. Returns failures."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    p.add_argument("--quick", action="store_true", help="only the 20k-job sizes, few cycles")
    p.add_argument("--cycles", type=int, default=200, help="memory run at 1,000 q / 200k jobs")
    p.add_argument("--budget", type=float, default=600.0, help="s for that run (0: no limit)")
    p.add_argument("--measure", type=int, default=5, help="measured cycles per size")
    p.add_argument("--rss-cap", type=float, default=8192.0, help="MB: stop the memory run")
    p.add_argument("--throttle", type=float, default=1.0, help="share of pilot queues w/ Throttle")
    args, _ = p.parse_known_args(list(argv))
    sizes = [s for s in SIZES if s[1] <= 20_000] if args.quick else list(SIZES)
    measure = min(args.measure, 3) if args.quick else args.measure
    print(
        "scale (issue 13): real Factory.cycle(), one schedd + collector in memory, counting port; "
        "70 % pilot / 30 % VM queues"
    )
    print(
        "targets at 1,000 q / 200k jobs / 50k slots: cycle <= 1,000 ms and <= 3x bare; peak RSS "
        "<= 600 MB, flat over 200 cycles; one query per source + one recheck per schedd / "
        "collector; <= 1 schedd write per queue per kind (max/q/kind; a cycle that drains some "
        "VMs and retires others peacefully records two values, two edits)"
    )
    print(HEADER, flush=True)
    results, failed = [], 0
    for q, j, s in sizes:
        long_run = not args.quick and (q, j, s) == MEMORY_CASE
        cycles = max(args.cycles, 1 + measure) if long_run else 1 + measure
        try:
            budget = args.budget if long_run else 0.0
            extra = ["--rss-cap", str(args.rss_cap), "--throttle", str(args.throttle)]
            r = _child(q, j, s, cycles, measure, budget, extra)
        except Exception as exc:  # a size that cannot run is reported, not hidden
            print(f"{q:>6} {j:>7} {s:>6} | ERROR {type(exc).__name__}: {exc}", flush=True)
            failed += 1
            continue
        results.append(r)
        print(row(r), flush=True)
    print()
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(HEADER)  # again, whole, without the progress lines in between
    for r in results:
        print(row(r))
    for r in results:
        if r["budget_hit"]:
            print(
                f"note: {r['queues']} q / {r['jobs']} jobs: memory followed over "
                f"{r['cycles_run']} of {r['cycles_asked']} cycles (stopped by {r['stopped_by']})"
            )
    print()
    for r in results:
        print("\n".join(details(r)))
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__.split("\n")[0]
    )
    p.add_argument("--queues", type=int)
    p.add_argument("--jobs", type=int, default=200_000)
    p.add_argument("--slots", type=int, default=50_000)
    p.add_argument("--cycles", type=int, default=200, help="cycles in all (warm-up included)")
    p.add_argument("--measure", type=int, default=5, help="cycles timed after the warm-up")
    p.add_argument("--budget", type=float, default=600.0, help="s for the cycles after those")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--throttle", type=float, default=1.0, help="share of pilot queues w/ Throttle")
    p.add_argument("--json", action="store_true", help="one JSON line (for the driver)")
    p.add_argument("--profile", action="store_true", help="cProfile one more cycle")
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--shared-ads", action="store_true", help="port returns its ads, not copies")
    p.add_argument("--rss-cap", type=float, default=8192.0, help="MB: stop the long run there")
    p.add_argument("--quick", action="store_true", help="driver: the 20k-job sizes only")
    args, _ = p.parse_known_args(argv)
    if args.queues is None:
        return 1 if drive(argv) else 0
    args.cycles = max(args.cycles, 1 + args.measure)
    r = run_case(args)
    if args.json:
        if "profile" in r:
            print(r.pop("profile"), file=sys.stderr)
        print("SCALE-JSON " + json.dumps(r), flush=True)
    else:
        print(HEADER)
        print(row(r))
        print("\n".join(details(r)))
        if args.profile:
            print(r["profile"])
    return 1 if r["errors"] or r["log_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
