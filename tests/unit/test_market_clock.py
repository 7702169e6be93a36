"""SimClock and LiveClock: ordering, determinism, the inclusive/exclusive driver contract."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from tradeengine.clock import LiveClock, SimClock, datetime_to_ms, ms_to_datetime


def test_live_clock_is_aware_utc_and_agrees_with_ms() -> None:
    clock = LiveClock()
    now = clock.now()
    assert now.tzinfo is UTC
    assert abs(clock.now_ms() - datetime_to_ms(now)) < 1000


async def test_sleepers_wake_in_deadline_order_seeing_their_own_time() -> None:
    clock = SimClock(datetime(2021, 1, 1, tzinfo=UTC))
    seen: list[tuple[str, int]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        seen.append((name, clock.now_ms()))

    start = clock.now_ms()
    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 3), ("a", 1), ("b", 2), ("a2", 1))]
    await asyncio.sleep(0)
    assert clock.pending == 4
    await clock.advance(10)
    await asyncio.gather(*tasks)
    assert seen == [("a", start + 1000), ("a2", start + 1000), ("b", start + 2000), ("c", start + 3000)]
    assert clock.now_ms() == start + 10_000


async def test_periodic_timer_rearms_within_one_advance() -> None:
    clock = SimClock(0)
    ticks: list[int] = []

    async def every_second() -> None:
        while True:
            await clock.sleep(1)
            ticks.append(clock.now_ms())

    task = asyncio.create_task(every_second())
    await asyncio.sleep(0)
    await clock.advance_to_ms(10_000)
    task.cancel()
    assert ticks == [i * 1000 for i in range(1, 11)]


async def test_exclusive_advance_leaves_timers_due_at_target_asleep() -> None:
    clock = SimClock(0)
    woke: list[int] = []

    async def at(ms: int) -> None:
        await clock.sleep_until(ms_to_datetime(ms))
        woke.append(ms)

    tasks = [asyncio.create_task(at(ms)) for ms in (500, 1000)]
    await asyncio.sleep(0)
    await clock.advance_to_ms(1000, inclusive=False)
    assert woke == [500]
    assert clock.now_ms() == 1000
    await clock.advance_to_ms(1000)
    assert woke == [500, 1000]
    await asyncio.gather(*tasks)


async def test_busy_sections_hold_the_driver() -> None:
    clock = SimClock(0)
    order: list[str] = []

    async def worker() -> None:
        await clock.sleep(1)
        async with clock.busy():
            await asyncio.sleep(0.05)  # real I/O stand-in: the driver must wait for it
            order.append("work done")

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    await clock.advance(2)
    order.append("advanced")
    await task
    assert order == ["work done", "advanced"]


async def test_past_deadline_returns_immediately_and_time_never_goes_back() -> None:
    clock = SimClock(datetime(2021, 1, 1, tzinfo=UTC))
    await clock.sleep_until(clock.now() - timedelta(hours=1))
    before = clock.now_ms()
    await clock.advance_to_ms(before - 5000)
    assert clock.now_ms() == before
    assert clock.next_deadline_ms() is None


async def test_jump_moves_time_only_when_no_sleeper_is_due_before_the_target() -> None:
    clock = SimClock(1_000)
    assert clock.jump_to_ms(2_000) and clock.now_ms() == 2_000  # nobody sleeps
    woken: list[int] = []

    async def sleeper(at: int) -> None:
        await clock.sleep_until_ms(at)
        woken.append(clock.now_ms())

    task = asyncio.create_task(sleeper(3_000))
    await asyncio.sleep(0)
    assert clock.jump_to_ms(3_000) and clock.now_ms() == 3_000  # due at the target: stays asleep
    assert woken == [] and clock.pending == 1
    assert not clock.jump_to_ms(3_001) and clock.now_ms() == 3_000  # due before: refused, unchanged
    await clock.advance_to_ms(3_001, inclusive=False)
    await task
    assert woken == [3_000] and clock.now_ms() == 3_001
    assert clock.jump_to_ms(2_500) and clock.now_ms() == 3_001  # never back
    cancelled = asyncio.create_task(sleeper(4_000))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert clock.jump_to_ms(5_000) and clock.now_ms() == 5_000  # a cancelled sleeper is no one
