"""The scale bench's in-memory port answers the constraints the plugins send exactly as the
ClassAd library would (a wrong answer would skew the bench silently), and from its indexes."""

from __future__ import annotations

import random

import pytest

from benchmarks.scale import AdStore, compile_constraint
from pilotfactory.factory.constraints import among, any_of, job_ids_constraint

classad2 = pytest.importorskip("classad2")


def _jobs(rng: random.Random) -> list[dict[str, object]]:
    return [
        {"ClusterId": c, "ProcId": p} for c in range(100, 400) for p in range(rng.randint(1, 6))
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_job_id_trees_select_what_classad_selects_via_the_index(seed: int) -> None:
    rng = random.Random(seed)
    ads = _jobs(rng)
    wanted = rng.sample([f"{a['ClusterId']}.{a['ProcId']}" for a in ads], 150)
    text = job_ids_constraint([*wanted, "999.0"])
    assert text is not None
    store = AdStore(ads)
    positions, indexed = store.select({}, text)
    assert indexed
    expr = classad2.ExprTree(text)
    truth = [i for i, ad in enumerate(ads) if expr.eval(classad2.ClassAd(ad)) is True]
    assert positions == truth and len(truth) == len(wanted)
    # answered from one index on the job id, as the bench prepares it (a second, case-folded
    # index of every job cost ~90 MB at 200,000 jobs)
    assert list(store._indexes) == [(("ClusterId", False), ("ProcId", False))]


def test_string_trees_and_their_union_select_what_classad_selects() -> None:
    ads = [{"EC2InstanceID": f"i-{i:04x}"} for i in range(300)] + [
        {"PilotFactoryWorker": f"w{i}"} for i in range(300)
    ]
    text = any_of(
        [
            among("EC2InstanceID", dict.fromkeys(f"i-{i:04x}" for i in range(0, 300, 7))),
            among("PilotFactoryWorker", dict.fromkeys(f"w{i}" for i in range(0, 300, 11))),
        ]
    )
    pred = compile_constraint(text).pred
    expr = classad2.ExprTree(text)
    for ad in ads:
        assert (pred(ad) is True) == (expr.eval(classad2.ClassAd(ad)) is True), ad
    positions, indexed = AdStore(ads).select({}, text)
    assert indexed and len(positions) == len(range(0, 300, 7)) + len(range(0, 300, 11))
