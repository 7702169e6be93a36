"""Timers on the injected Clock: fixed intervals aligned to UTC multiples of their period.

A timer runs its callback to completion before it sleeps again, so a slow callback can never make
runs pile up; boundaries that passed while it ran are skipped and counted. Candle-close timers
("5m_close") are not here: they fire from the feed's ``CandleClosed`` events (see ``tenant.py``),
which is exactly "the candle has closed and is in the store".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from loguru import logger

from tradeengine.clock import Clock, ms_to_datetime
from tradeengine.domain.timeframes import next_boundary_ms

TimerCallback = Callable[[], Awaitable[None]]


class Scheduler:
    """Named periodic timers; ``skipped`` counts boundaries missed because a run was still going."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.skipped = 0
        self.fired = 0

    def every(self, name: str, period_ms: int, callback: TimerCallback) -> None:
        """Run ``callback`` at every multiple of ``period_ms`` (replacing a timer of that name)."""
        if period_ms <= 0:
            raise ValueError(f"timer {name!r}: period must be positive")
        self.cancel(name)
        self._tasks[name] = asyncio.create_task(self._loop(name, period_ms, callback), name=f"timer:{name}")

    async def _loop(self, name: str, period_ms: int, callback: TimerCallback) -> None:
        due = next_boundary_ms(self._clock.now_ms(), period_ms)
        while True:
            await self._clock.sleep_until(ms_to_datetime(due))
            self.fired += 1
            try:
                busy = getattr(self._clock, "busy", None)
                if busy is not None:
                    # Simulated time must not move while the callback awaits real I/O.
                    async with busy():
                        await callback()
                else:
                    await callback()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("timer {} failed", name)
            now = self._clock.now_ms()
            following = next_boundary_ms(now, period_ms)
            missed = (following - due) // period_ms - 1
            if missed > 0:
                self.skipped += missed
            due = following

    def names(self) -> list[str]:
        return list(self._tasks)

    def cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def cancel_prefix(self, prefix: str) -> None:
        for name in [n for n in self._tasks if n.startswith(prefix)]:
            self.cancel(name)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
