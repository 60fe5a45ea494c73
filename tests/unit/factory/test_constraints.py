"""``any_of`` and ``among``: a recheck's constraint over many workers must still evaluate, and
select exactly those workers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfactory.factory.constraints import LEAF, among, any_of, job_ids_constraint

classad2 = pytest.importorskip("classad2")


@pytest.mark.parametrize("n", [1, 2, 3, 399, 1000, 5000])
def test_any_of_many_terms_evaluates_like_a_flat_or(n: int) -> None:
    terms = [f'PilotFactoryWorker =?= "w{i}"' for i in range(n)]
    expr = classad2.ExprTree(any_of(terms))
    for i in (0, n // 2, n - 1):
        assert expr.eval(classad2.ClassAd({"PilotFactoryWorker": f"w{i}"})) is True
    assert expr.eval(classad2.ClassAd({"PilotFactoryWorker": "other"})) is False


def test_a_flat_chain_of_1000_is_what_failed() -> None:
    flat = " || ".join(f'(PilotFactoryWorker =?= "w{i}")' for i in range(1000))
    with pytest.raises(Exception, match="failed to evaluate"):
        classad2.ExprTree(flat).eval(classad2.ClassAd({"PilotFactoryWorker": "x"}))


# ---------------------------------------------------------------------------- among


def _selects(text: str, ad: dict[str, object]) -> bool:
    return classad2.ExprTree(text).eval(classad2.ClassAd(ad)) is True


@settings(max_examples=60, deadline=None)
@given(
    wanted=st.sets(st.tuples(st.integers(1, 400), st.integers(0, 12)), min_size=1, max_size=300),
    probes=st.lists(st.tuples(st.integers(0, 401), st.integers(0, 13)), max_size=40),
)
def test_job_ids_constraint_selects_exactly_the_wanted_jobs(wanted, probes) -> None:
    text = job_ids_constraint(f"{c}.{p}" for c, p in wanted)
    assert text is not None
    expr = classad2.ExprTree(text)
    for c, p in [*list(wanted)[:40], *probes]:
        got = expr.eval(classad2.ClassAd({"ClusterId": c, "ProcId": p})) is True
        assert got == ((c, p) in wanted), (c, p)


def test_job_ids_constraint_is_a_shallow_tree_and_skips_ill_formed_ids() -> None:
    ids = [f"{c}.{p}" for c in range(10_000, 15_000) for p in (0, 3)]
    text = job_ids_constraint([*ids, "x.1", "2", "3.y"])
    assert text is not None and text.count("ifThenElse") < 2 * len(ids) // LEAF
    assert _selects(text, {"ClusterId": 12_345, "ProcId": 3})
    assert not _selects(text, {"ClusterId": 12_345, "ProcId": 1})
    assert not _selects(text, {"ProcId": 0})  # no ClusterId: undefined, not selected
    assert job_ids_constraint(["x.1", "", "1"]) is None


def test_among_strings_compare_exactly_even_when_keys_differ_only_in_case() -> None:
    keys = [f"i-{i:05x}" for i in range(200)] + ["I-000AA", "i-000aA"]
    text = among("EC2InstanceID", dict.fromkeys(keys))
    for k in keys:
        assert _selects(text, {"EC2InstanceID": k}), k
    for k in ("I-00001", "i-999999", "i-000AA"):
        assert not _selects(text, {"EC2InstanceID": k}), k
    assert not _selects(text, {"Name": "slot1@x"})
    assert among("EC2InstanceID", {}) == "false"


def test_among_with_conditions_per_key() -> None:
    text = among("ClusterId", {5: "ProcId == 1", 6: None, 7: "ProcId == 1"})
    assert _selects(text, {"ClusterId": 5, "ProcId": 1})
    assert not _selects(text, {"ClusterId": 5, "ProcId": 2})
    assert _selects(text, {"ClusterId": 6, "ProcId": 9})
    assert not _selects(text, {"ClusterId": 8, "ProcId": 1})
