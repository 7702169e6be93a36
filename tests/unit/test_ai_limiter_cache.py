"""In-process quota, priority, per-user concurrency and the analyses cache."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal

import pytest
from fakes import ai_samples

from tradeengine.ai.analyst import AnalysisResult
from tradeengine.ai.cache import AnalysisCache
from tradeengine.ai.limiter import (
    PRIORITY_HIGH_CONFIDENCE,
    PRIORITY_NORMAL,
    PRIORITY_OPEN_POSITION,
    MemoryQuota,
    PriorityRateLimiter,
    UserConcurrency,
    priority_for,
)
from tradeengine.domain.enums import Decision


def max_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best = 0
    for i, start in enumerate(times):
        best = max(best, sum(1 for t in times[i:] if t < start + window))
    return best


async def test_sliding_window_never_exceeds_quota() -> None:
    limiter = PriorityRateLimiter(MemoryQuota(5, 0.5))
    started = time.monotonic()
    grants = await asyncio.gather(*(limiter.acquire() for _ in range(17)))
    elapsed = time.monotonic() - started
    assert max_in_any_window(grants, 0.5) == 5
    assert 1.4 < elapsed < 3.0  # 17 grants at 5 per 0.5 s need three refills, not more


async def test_waiters_are_served_by_priority() -> None:
    quota = MemoryQuota(1, 0.2)
    limiter = PriorityRateLimiter(quota)
    await limiter.acquire()  # the window is now full: everyone below has to queue
    order: list[str] = []

    async def ask(name: str, priority: int) -> None:
        await limiter.acquire(priority)
        order.append(name)

    tasks = [asyncio.create_task(ask(f"normal{i}", PRIORITY_NORMAL)) for i in range(2)]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(ask("confident", PRIORITY_HIGH_CONFIDENCE)))
    tasks.append(asyncio.create_task(ask("position", PRIORITY_OPEN_POSITION)))
    await asyncio.gather(*tasks)
    assert order == ["position", "confident", "normal0", "normal1"]


async def test_cancelled_waiter_does_not_block_the_queue() -> None:
    limiter = PriorityRateLimiter(MemoryQuota(1, 0.2))
    await limiter.acquire()
    doomed = asyncio.create_task(limiter.acquire(PRIORITY_OPEN_POSITION))
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.05)
    doomed.cancel()
    await asyncio.wait_for(waiting, 1.0)
    assert limiter.waiting == 0


async def test_user_concurrency_caps_in_flight_per_user() -> None:
    slots = UserConcurrency(4)
    peak = {"a": 0, "b": 0}
    live = {"a": 0, "b": 0}

    async def work(user: str) -> None:
        async with slots.slot(user):
            live[user] += 1
            peak[user] = max(peak[user], live[user])
            await asyncio.sleep(0.01)
            live[user] -= 1

    await asyncio.gather(*(work("a") for _ in range(10)), *(work("b") for _ in range(3)))
    assert peak == {"a": 4, "b": 3}
    assert slots.in_flight("a") == 0


def test_priority_for() -> None:
    assert priority_for(position_open=True) == PRIORITY_OPEN_POSITION
    assert priority_for(position_open=False, confidence=85) == PRIORITY_HIGH_CONFIDENCE
    assert priority_for(position_open=False, confidence=40) == PRIORITY_NORMAL


def result(error: str | None = None) -> AnalysisResult:
    return AnalysisResult(
        decision=Decision.WATCH, reasoning="r", confidence=50, metadata={"x": Decimal("1")}, error=error
    )


async def test_cache_expires_and_shares_in_flight_calls() -> None:
    clock = [0.0]
    cache = AnalysisCache(300, now=lambda: clock[0])
    request = ai_samples.request(md={}, candle_key=123)
    calls = 0

    async def compute() -> AnalysisResult:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return result()

    (first, a_cached), (second, b_cached) = await asyncio.gather(
        cache.get_or_compute(request, compute), cache.get_or_compute(request, compute)
    )
    assert calls == 1
    assert first is second
    assert (a_cached, b_cached) == (False, True)
    clock[0] = 299.0
    assert (await cache.get_or_compute(request, compute))[1] is True
    clock[0] = 300.0
    assert (await cache.get_or_compute(request, compute))[1] is False
    assert calls == 2


async def test_cache_keys_and_skips() -> None:
    cache = AnalysisCache(300)
    no_key = ai_samples.request(md={})
    assert (await cache.get_or_compute(no_key, lambda: asyncio.sleep(0, result())))[1] is False
    assert len(cache) == 0  # no candle key: never cached
    failed = ai_samples.request(md={}, candle_key=1)
    await cache.get_or_compute(failed, lambda: asyncio.sleep(0, result("boom")))
    assert len(cache) == 0  # safe defaults are not cached
    ids = {"user": uuid.uuid4(), "trader": uuid.uuid4(), "signal": uuid.uuid4()}
    plain = ai_samples.request(ids, md={}, candle_key=5)
    with_position = ai_samples.request(ids, md={}, candle_key=5, position=ai_samples.long_position(Decimal(1)))
    await cache.get_or_compute(plain, lambda: asyncio.sleep(0, result()))
    assert (await cache.get_or_compute(with_position, lambda: asyncio.sleep(0, result())))[1] is False


def test_cache_rejects_bad_ttl() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        AnalysisCache(0)


async def test_permit_holds_the_slot_until_the_request_ends() -> None:
    limiter = PriorityRateLimiter(MemoryQuota(1, 0.2))
    released: list[float] = []

    async def slow_request() -> None:
        async with limiter.permit():
            await asyncio.sleep(0.3)  # longer than the window: the slot must stay taken
        released.append(time.time())

    task = asyncio.create_task(slow_request())
    await asyncio.sleep(0.01)
    granted = await limiter.acquire()
    await task
    # The next grant waits for the end of the request plus a full window, not just a window.
    assert granted >= released[0] + 0.2 - 0.01
