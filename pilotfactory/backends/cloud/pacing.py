"""API call pacing per credential: one token bucket per account, shared by every port on it.

Providers throttle per account (EC2's request buckets, an OpenStack deployment's rate limit),
and a throttled account stalls every queue on it; the factory's queues each hold their own port,
so the bucket is kept here, keyed by the account, not by the port. Every HTTP request a port
makes (paginator pages and botocore's own retries too, on EC2) takes one token first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; ``take`` waits for one."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    tokens: float = -1.0
    stamp: float = 0.0
    taken: int = 0
    waited: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)
        self.stamp = self.clock()

    def take(self) -> float:
        """Take one token, sleeping until there is one; returns the seconds waited."""
        with self.lock:  # callers queue up in order: the bucket is the account's, not a lane's
            now = self.clock()
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1.0
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
            self.taken += 1
            if wait > 0:
                self.waited += wait
                self.sleep(wait)
            return wait


_BUCKETS: dict[Hashable, TokenBucket] = {}
_LOCK = threading.Lock()


def bucket_for(account: Hashable, rate: float, burst: int) -> TokenBucket:
    """The bucket of one credential (the first rate configured for it wins, later queues on
    the same account share it)."""
    with _LOCK:
        found = _BUCKETS.get(account)
        if found is None:
            found = _BUCKETS[account] = TokenBucket(rate, burst)
        return found
