"""The one clock seam: every component reads time and sleeps through a ``Clock``.

``LiveClock`` is the wall clock. ``SimClock`` is simulated time for replays, backtests and tests:
it never reads the wall clock and jumps straight to the next deadline, so the live code path runs
at CPU speed and deterministically.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Protocol


def ms_to_datetime(ms: int) -> datetime:
    """Convert Unix epoch milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def datetime_to_ms(when: datetime) -> int:
    """Convert an aware datetime to Unix epoch milliseconds."""
    if when.tzinfo is None:
        raise ValueError("datetime must be timezone-aware (UTC)")
    return round(when.timestamp() * 1000)


class Clock(Protocol):
    """Current time and sleeping; the only way our code may observe time."""

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        ...

    def now_ms(self) -> int:
        """Return the current time as Unix epoch milliseconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend for ``seconds`` of this clock's time."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Suspend until this clock reaches ``when`` (returns at once if already past)."""
        ...


class LiveClock:
    """The wall clock (UTC) and ``asyncio.sleep``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    async def sleep_until(self, when: datetime) -> None:
        await asyncio.sleep(max((when - self.now()).total_seconds(), 0.0))


class SimClock:
    """Simulated time that only moves when a driver calls ``advance_to``/``advance``.

    Contract:

    * ``sleep``/``sleep_until`` park the caller on a heap of waiters keyed by (deadline, arrival
      order); nothing ever wakes because wall time passed.
    * ``advance_to(t)`` wakes waiters in deadline order. Before waking each one it sets ``now`` to
      that waiter's deadline, so a timer that fires at 10:00:01 sees 10:00:01, not ``t``. After
      each wake it lets the event loop run until no callbacks are ready and no ``busy()`` section
      is open, so woken coroutines finish their step (and may re-arm for a deadline <= ``t``,
      which is then honoured in the same call) before time moves again. Then ``now`` becomes ``t``.
    * Waiters with equal deadlines wake in the order they went to sleep: runs are deterministic.
    * A woken coroutine that awaits real I/O (a database, a socket) should wrap that work in
      ``async with clock.busy():`` so the driver waits for it instead of racing ahead.
    * Time never goes backwards: ``advance_to`` with a past time is a no-op for ``now``.

    The ``ReplayFeed`` is the usual driver: it advances the clock to each candle's close time and
    only then delivers the candle, so timers due before a candle always run before it.
    """

    # Bounded so a coroutine that spins on sleep(0) cannot hang the driver forever.
    _MAX_SETTLE_ROUNDS = 10_000

    def __init__(self, start: datetime | int = 0) -> None:
        self._now_ms: int = start if isinstance(start, int) else datetime_to_ms(start)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._now_cached = (self._now_ms, ms_to_datetime(self._now_ms))

    def now(self) -> datetime:
        # Asked many times per simulated instant (every row written carries it); datetimes are
        # immutable, so one per instant serves them all.
        cached_ms, cached = self._now_cached
        if cached_ms != self._now_ms:
            cached = ms_to_datetime(self._now_ms)
            self._now_cached = (self._now_ms, cached)
        return cached

    def now_ms(self) -> int:
        return self._now_ms

    async def sleep(self, seconds: float) -> None:
        await self._sleep_until_ms(self._now_ms + max(round(seconds * 1000), 0))

    async def sleep_until(self, when: datetime) -> None:
        await self._sleep_until_ms(datetime_to_ms(when))

    async def sleep_until_ms(self, deadline_ms: int) -> None:
        """Suspend until simulated time reaches ``deadline_ms``."""
        await self._sleep_until_ms(deadline_ms)

    async def _sleep_until_ms(self, deadline_ms: int) -> None:
        if deadline_ms <= self._now_ms:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (deadline_ms, next(self._order), future))
        await future

    @property
    def pending(self) -> int:
        """Number of coroutines currently sleeping on this clock."""
        return sum(1 for _, _, future in self._waiters if not future.done())

    def next_deadline_ms(self) -> int | None:
        """Earliest pending deadline, or None when nobody sleeps."""
        self._drop_cancelled()
        return self._waiters[0][0] if self._waiters else None

    @asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        """Mark a section of real (non-clock) awaiting; ``advance_to`` waits until it ends."""
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def advance(self, seconds: float) -> None:
        """Advance simulated time by ``seconds``, waking every sleeper due on the way."""
        await self.advance_to_ms(self._now_ms + round(seconds * 1000))

    async def advance_to(self, when: datetime) -> None:
        """Advance simulated time to ``when``, waking every sleeper due on the way."""
        await self.advance_to_ms(datetime_to_ms(when))

    def jump_to_ms(self, target_ms: int) -> bool:
        """Set the time to ``target_ms`` when no sleeper is due before it, without awaiting
        anything (a replay's common case: most instants wake nobody). Returns False, changing
        nothing, when one is: then ``await advance_to_ms(target_ms, inclusive=False)``."""
        self._drop_cancelled()
        if self._waiters and self._waiters[0][0] < target_ms:
            return False
        if target_ms > self._now_ms:
            self._now_ms = target_ms
        return True

    async def advance_to_ms(self, target_ms: int, *, inclusive: bool = True) -> None:
        """Advance simulated time to ``target_ms`` (see the class contract).

        With ``inclusive=False`` sleepers due exactly at ``target_ms`` stay asleep: a driver uses it
        to deliver data stamped ``target_ms`` before the timers of that same instant run.
        """
        while True:
            self._drop_cancelled()
            if not self._waiters:
                break
            due = self._waiters[0][0]
            if due > target_ms or (due == target_ms and not inclusive):
                break
            deadline, _, future = heapq.heappop(self._waiters)
            if deadline > self._now_ms:
                self._now_ms = deadline
            future.set_result(None)
            await self.settle()
        if target_ms > self._now_ms:
            self._now_ms = target_ms

    async def run_until_idle(self, limit_ms: int | None = None) -> None:
        """Keep jumping to the next deadline until nobody sleeps (or ``limit_ms`` is reached)."""
        while True:
            deadline = self.next_deadline_ms()
            if deadline is None or (limit_ms is not None and deadline > limit_ms):
                return
            await self.advance_to_ms(deadline)

    async def settle(self) -> None:
        """Yield to the event loop until no callbacks are ready and no busy section is open."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)  # CPython's run queue; absent on other loops
        for _ in range(self._MAX_SETTLE_ROUNDS):
            await asyncio.sleep(0)
            if self._busy:
                await self._idle.wait()
                continue
            if ready is None:
                # Not CPython's loop: no run queue to inspect, so give a fixed number of rounds.
                for _ in range(20):
                    await asyncio.sleep(0)
                return
            if not ready:
                # One more round: a callback scheduled by the last one may just have run.
                await asyncio.sleep(0)
                if not ready:
                    return

    def _drop_cancelled(self) -> None:
        while self._waiters and self._waiters[0][2].done():
            heapq.heappop(self._waiters)
