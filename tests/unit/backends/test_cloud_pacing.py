"""API pacing per credential (issue 19 item 5): a token bucket every port of an account
shares, taken once per HTTP request."""

from __future__ import annotations

from pilotfactory.backends.cloud.pacing import TokenBucket, bucket_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_burst_then_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, 5, clock=clock, sleep=clock.sleep)
    for _ in range(25):
        bucket.take()
    # 5 at once, then 20 more at 10 per second
    assert len(clock.slept) == 20
    assert abs(clock.now - 2.0) < 1e-9 and bucket.taken == 25
    clock.now += 10  # idle time refills the burst, not more
    before = clock.now
    for _ in range(5):
        bucket.take()
    assert clock.now == before
    bucket.take()
    assert abs(clock.now - before - 0.1) < 1e-9


def test_one_bucket_per_credential() -> None:
    a = bucket_for(("ec2", "http://x", "r1", "/keys/a"), 10.0, 10)
    assert bucket_for(("ec2", "http://x", "r1", "/keys/a"), 99.0, 1) is a
    assert bucket_for(("ec2", "http://x", "r1", "/keys/b"), 10.0, 10) is not a
