"""Per-user token buckets for the expensive routes (generate, analyze), in process.

One control-plane process holds the buckets; with several replicas each enforces its own share,
and the model quota (the AI layer's limiter) still holds globally.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tradeengine.api.errors import RateLimitedError


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class UserRateLimiter:
    """``per_minute`` requests per key, with bursts up to ``burst`` (default: per_minute)."""

    def __init__(
        self,
        name: str,
        per_minute: int,
        *,
        burst: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"{name}: per_minute must be at least 1")
        self.name = name
        self._rate = per_minute / 60.0
        self._burst = float(burst if burst is not None else per_minute)
        self._now = monotonic
        self._buckets: dict[str, _Bucket] = {}
        self._max_keys = max_keys
        self.rejected = 0

    def check(self, key: str) -> None:
        """Take one token for ``key`` or raise ``RateLimitedError`` with the wait in Retry-After."""
        now = self._now()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict(now)
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            self.rejected += 1
            wait = (1.0 - bucket.tokens) / self._rate
            raise RateLimitedError(
                f"rate limit: too many {self.name} requests; retry in {wait:.0f} s", retry_after_s=wait
            )
        bucket.tokens -= 1.0

    def _evict(self, now: float) -> None:
        # Buckets that have refilled completely carry no state worth keeping.
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self._rate >= self._burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:
            self._buckets.clear()
