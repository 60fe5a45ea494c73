"""ClassAd constraints over many ids, as the schedd and the collector must evaluate them.

A schedd or collector evaluates a query's constraint against every ad it holds, so a
constraint naming thousands of jobs or VMs must be cheap per ad and shallow enough for the
ClassAd library to evaluate at all."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pilotfactory.factory.contract import classad_string


def any_of(terms: list[str], flat: int = 64) -> str:
    """``(a) || (b) || ...``, nested as a balanced tree past ``flat`` terms: the ClassAd library
    fails to evaluate a flat chain of about 400 or more (its depth grows with each ``||``),
    which made a recheck of that many workers read none of them, so no retire was ever sent
    (found by ``pilotfactory sim``'s 1,000-VM scenarios). Nested, the depth is logarithmic."""
    if len(terms) <= flat:
        return " || ".join(f"({t})" for t in terms)
    mid = len(terms) // 2
    return f"({any_of(terms[:mid], flat)}) || ({any_of(terms[mid:], flat)})"


LEAF = 16
"""Keys per leaf of ``among``'s decision tree: a leaf is one ``member`` list per condition."""


def among(attr: str, wanted: Mapping[int, str | None] | Mapping[str, str | None]) -> str:
    """A constraint selecting the ads whose ``attr`` is a key of ``wanted`` (and whose key's
    condition, if any, holds), as a balanced decision tree on ``attr``.

    A schedd or collector evaluates a constraint against every ad it holds: a few
    comparisons and one short list per ad here. On a real schedd with 40,000 jobs, 4,600 ids
    as one ``||`` term each took 23.9 s to query, as this tree 0.27 s. Strings compare
    exactly (``=?=``, ``identicalMember``); the tree's ``<`` ignores case as ClassAd's does,
    so keys that differ only in case share a leaf."""
    if not wanted:
        return "false"
    first = next(iter(wanted))
    text = isinstance(first, str)

    def lit(key: Any) -> str:
        return classad_string(key) if text else str(int(key))

    def fold(key: Any) -> Any:
        return key.lower() if text else key

    folds: dict[Any, list[Any]] = {}
    for key in wanted:
        folds.setdefault(fold(key), []).append(key)
    order = sorted(folds)
    eq, any_eq = ("=?=", "identicalMember") if text else ("==", "member")

    def leaf(part: Sequence[Any]) -> str:
        by_cond: dict[str | None, list[Any]] = {}
        for f in part:
            for key in folds[f]:
                by_cond.setdefault(wanted[key], []).append(key)
        terms = []
        for cond, keys in by_cond.items():
            if len(keys) == 1:
                test = f"{attr} {eq} {lit(keys[0])}"
            else:
                test = f"{any_eq}({attr}, {{{', '.join(lit(k) for k in keys)}}})"
            terms.append(test if cond is None else f"{test} && ({cond})")
        return terms[0] if len(terms) == 1 else " || ".join(f"({t})" for t in terms)

    def tree(lo: int, hi: int) -> str:
        if hi - lo <= LEAF:
            return leaf(order[lo:hi])
        mid = (lo + hi) // 2
        pivot = folds[order[mid]][0]
        return f"ifThenElse({attr} < {lit(pivot)}, {tree(lo, mid)}, {tree(mid, hi)})"

    return tree(0, len(order))


def job_ids_constraint(ids: Iterable[str]) -> str | None:
    """``among`` for job ids ``cluster.proc``: a tree on ClusterId, each cluster's procs its
    condition. None when no id is well formed."""
    procs: dict[int, list[int]] = {}
    for job in ids:
        cluster, _, proc = job.partition(".")
        if cluster.isdigit() and proc.isdigit():
            procs.setdefault(int(cluster), []).append(int(proc))
    if not procs:
        return None
    wanted = {
        c: f"ProcId == {ps[0]}"
        if len(ps) == 1
        else f"member(ProcId, {{{', '.join(map(str, sorted(ps)))}}})"
        for c, ps in procs.items()
    }
    return among("ClusterId", wanted)
