"""Fixed-interval timers on the SimClock: aligned firing and skip-if-running."""

from __future__ import annotations

import asyncio

from tradeengine.clock import LiveClock, SimClock
from tradeengine.runtime.scheduler import Scheduler


async def test_timer_fires_on_aligned_boundaries() -> None:
    clock = SimClock(1_000)  # not aligned: the first firing is at the next multiple of 5 s
    scheduler = Scheduler(clock)
    fired: list[int] = []

    async def tick() -> None:
        fired.append(clock.now_ms())

    scheduler.every("t", 5_000, tick)
    await clock.settle()  # let the timer task start and go to sleep
    await clock.advance_to_ms(21_000)
    await scheduler.stop()
    assert fired == [5_000, 10_000, 15_000, 20_000]
    assert scheduler.skipped == 0


async def test_slow_run_skips_boundaries_instead_of_piling_up() -> None:
    # Live clock: a run that outlasts several periods must not be followed by a burst of catch-up runs.
    clock = LiveClock()
    scheduler = Scheduler(clock)
    running = 0
    overlaps = 0
    runs = 0

    async def slow() -> None:
        nonlocal running, overlaps, runs
        runs += 1
        running += 1
        overlaps += running > 1
        await asyncio.sleep(0.35 if runs == 1 else 0)
        running -= 1

    scheduler.every("slow", 100, slow)
    await asyncio.sleep(1.0)
    await scheduler.stop()
    assert overlaps == 0
    assert scheduler.skipped >= 2  # the boundaries that passed during the 350 ms run
    assert runs <= 10 - scheduler.skipped + 1
