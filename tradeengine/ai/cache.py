"""Cache of analyses keyed by (trader, symbol, last closed candle, position), 5 minutes by default.

A strategy that fires again on the same closed candle, or a replay, gets the stored answer instead of
spending tokens twice. Concurrent requests for the same key share one model call. Only real answers
are cached: a safe default after a failure is not, so the next trigger tries the model again.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from uuid import UUID

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult

CacheKey = tuple[UUID, str, int, UUID | None]


def cache_key(request: AnalysisRequest) -> CacheKey | None:
    """None when the request has no candle key (nothing safe to share)."""
    if request.candle_key is None:
        return None
    position_id = request.position.position_id if request.position is not None else None
    return (request.trader_id, request.symbol, request.candle_key, position_id)


class AnalysisCache:
    def __init__(
        self, ttl_s: float = 300.0, *, max_entries: int = 10_000, now: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s: must be > 0")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._now = now
        self._entries: OrderedDict[CacheKey, tuple[float, AnalysisResult]] = OrderedDict()
        self._in_flight: dict[CacheKey, asyncio.Future[AnalysisResult]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> AnalysisResult | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, result = entry
        if self._now() - stored_at >= self.ttl_s:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return result

    def put(self, key: CacheKey, result: AnalysisResult) -> None:
        if result.error is not None:
            return
        self._entries[key] = (self._now(), result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get_or_compute(
        self, request: AnalysisRequest, compute: Callable[[], Awaitable[AnalysisResult]]
    ) -> tuple[AnalysisResult, bool]:
        """Return (result, was_cached). Callers with the same key wait for one computation."""
        key = cache_key(request)
        if key is None:
            return await compute(), False
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached, True
        pending = self._in_flight.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending), True
        self.misses += 1
        future: asyncio.Future[AnalysisResult] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            result = await compute()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: there may be no waiter
            raise
        finally:
            self._in_flight.pop(key, None)
        future.set_result(result)
        self.put(key, result)
        return result, False
