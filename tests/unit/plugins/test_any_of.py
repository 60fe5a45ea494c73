"""``any_of``: a recheck's constraint over many workers must still evaluate."""

from __future__ import annotations

import pytest

from pilotfactory.plugins.batchstatus.common import any_of

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
