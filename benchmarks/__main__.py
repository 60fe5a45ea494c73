"""``make bench``: the performance figures, printed; targets are compared, never asserted.

Targets (from the elastic autoscalers' published figures, see elastic-lessons.md):
- one factory cycle at 1000 VMs / 10 000 jobs well under CA's 10 s for 1000 nodes;
- planner and chain per queue in milliseconds, so 100 queues fit in one tick;
- status queries per cycle constant in the number of queues (one per source);
- simulated hours per wall second high enough that the demo runs in seconds;
- the what-if table (``benchmarks/whatif.py``): the shipped configs against the elastiq-style
  baseline and the oracle, with the elastic example's goal printed as met or not.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from benchmarks import cases, scale, whatif


def timeit(fn: Callable[[], object], repeat: int = 5) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), min(runs)


def main() -> int:
    print(f"{'benchmark':<52} {'median':>10} {'best':>10}  figure")
    failed = 0
    for name, setup, target in cases.ALL:
        try:
            fn, figure = setup()
            median, best = timeit(fn)
        except Exception as exc:  # a benchmark that cannot run is reported, not hidden
            print(f"{name:<52} {'ERROR':>10} {'':>10}  {type(exc).__name__}: {exc}")
            failed += 1
            continue
        verdict = "ok" if target is None or median <= target else f"SLOWER than {target:g}s"
        print(f"{name:<52} {median * 1e3:>8.1f}ms {best * 1e3:>8.1f}ms  {figure()} [{verdict}]")
    print(flush=True)
    failed += whatif.drive()  # issue 17's table: shipped configs vs elastiq vs oracle
    failed += whatif.drive_chains()  # count-based vs time-based demand
    failed += scale.drive(sys.argv[1:])  # issue 13's table; --quick for the 20k-job sizes only
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
