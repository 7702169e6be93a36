"""Quota and fairness for model calls.

* ``RateLimiter``: at most ``limit`` grants in any ``window_s`` (a sliding window log, so the bound
  holds for every window, not just aligned minutes). Waiters are served highest priority first.
  The window lives in a ``QuotaBackend``: ``MemoryQuota`` for one process (SQLite deployments),
  ``PostgresQuota`` for every process and machine sharing one Postgres (a row per limiter, updated
  under ``SELECT ... FOR UPDATE`` and timed by the database's clock, so machines' clock skew does
  not matter).
* ``UserConcurrency``: at most N analyses in flight per user.

Priority is honoured among the waiters of one process; across processes the database row is
first come, first served.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Float, cast, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tradeengine.store.models import AIRateLimit

PRIORITY_NORMAL = 0
PRIORITY_HIGH_CONFIDENCE = 50
PRIORITY_OPEN_POSITION = 100


@dataclass(frozen=True, slots=True)
class QuotaAttempt:
    granted: bool
    at: float  # the backend's clock, epoch seconds
    retry_after_s: float = 0.0
    key: float = 0.0  # what was stored for the grant: ``at`` plus any hold; pass it to ``release``


class QuotaBackend(Protocol):
    limit: int
    window_s: float

    async def try_acquire(self, hold_s: float = 0.0) -> QuotaAttempt:
        """Take one grant if the window has room; otherwise say when the next one frees up.

        ``hold_s`` keeps the grant in the window as if made ``hold_s`` later: a request in flight
        holds its slot until ``release`` (or, if its process died, until the hold runs out).
        """
        ...

    async def release(self, key: float) -> None:
        """The request of grant ``key`` has finished: its window now runs from the backend's now."""
        ...


class RateLimiter(Protocol):
    async def acquire(self, priority: int = PRIORITY_NORMAL) -> float:
        """Wait for a grant (higher priority first); return the grant time (epoch seconds)."""
        ...

    def permit(self, priority: int = PRIORITY_NORMAL, *, hold_s: float = 120.0) -> AbstractAsyncContextManager[float]:
        """``async with limiter.permit(p):`` hold a slot for one request; its window starts when it ends."""
        ...


class MemoryQuota:
    """A sliding window of grant times in this process."""

    def __init__(self, limit: int, window_s: float = 60.0, now: Callable[[], float] = time.time) -> None:
        if limit < 1:
            raise ValueError("limit: must be >= 1")
        if window_s <= 0:
            raise ValueError("window_s: must be > 0")
        self.limit = limit
        self.window_s = window_s
        self._now = now
        self._grants: list[float] = []

    async def try_acquire(self, hold_s: float = 0.0) -> QuotaAttempt:
        now = self._now()
        self._grants = [g for g in self._grants if g > now - self.window_s]
        if len(self._grants) < self.limit:
            self._grants.append(now + hold_s)
            return QuotaAttempt(True, now, key=now + hold_s)
        return QuotaAttempt(False, now, min(self._grants) + self.window_s - now)

    async def release(self, key: float) -> None:
        _release(self._grants, key, self._now())


class PostgresQuota:
    """The sliding window as a row of ``ai_rate_limits`` shared by every process on the database."""

    def __init__(self, engine: AsyncEngine, name: str = "gemini", *, limit: int, window_s: float = 60.0) -> None:
        if limit < 1:
            raise ValueError("limit: must be >= 1")
        if window_s <= 0:
            raise ValueError("window_s: must be > 0")
        self.engine = engine
        self.name = name
        self.limit = limit
        self.window_s = window_s
        self._ensured = False

    async def _ensure_row(self) -> None:
        statement = pg_insert(AIRateLimit).values(name=self.name, grants=[]).on_conflict_do_nothing()
        async with self.engine.begin() as conn:
            await conn.execute(statement)
        self._ensured = True

    async def try_acquire(self, hold_s: float = 0.0) -> QuotaAttempt:
        if not self._ensured:
            await self._ensure_row()
        async with self.engine.begin() as conn:
            # The row lock serialises every process's decision; the database's clock times it.
            row = (
                await conn.execute(
                    select(
                        AIRateLimit.grants,
                        cast(func.extract("epoch", func.clock_timestamp()), Float).label("now"),
                    )
                    .where(AIRateLimit.name == self.name)
                    .with_for_update()
                )
            ).one()
            now = float(row.now)
            kept = [float(g) for g in row.grants if float(g) > now - self.window_s]
            granted = len(kept) < self.limit
            if granted:
                kept.append(now + hold_s)
            await conn.execute(
                update(AIRateLimit).where(AIRateLimit.name == self.name).values(grants=kept, updated_at=func.now())
            )
        if granted:
            return QuotaAttempt(True, now, key=now + hold_s)
        return QuotaAttempt(False, now, min(kept) + self.window_s - now)

    async def release(self, key: float) -> None:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(
                        AIRateLimit.grants,
                        cast(func.extract("epoch", func.clock_timestamp()), Float).label("now"),
                    )
                    .where(AIRateLimit.name == self.name)
                    .with_for_update()
                )
            ).one()
            grants = [float(g) for g in row.grants]
            _release(grants, key, float(row.now))
            await conn.execute(update(AIRateLimit).where(AIRateLimit.name == self.name).values(grants=grants))


def _release(grants: list[float], key: float, now: float) -> None:
    """Restart grant ``key``'s window at ``now``; re-add it if its hold had already run out."""
    for i, value in enumerate(grants):
        if value == key:
            grants[i] = now
            return
    grants.append(now)


@dataclass(order=True)
class _Waiter:
    sort_key: tuple[int, int]
    cancelled: bool = field(default=False, compare=False)


class PriorityRateLimiter:
    """Serve waiters highest priority first (FIFO within a priority) against a ``QuotaBackend``."""

    def __init__(self, backend: QuotaBackend, *, max_sleep_s: float = 1.0) -> None:
        self.backend = backend
        self.max_sleep_s = max_sleep_s
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._changed = asyncio.Condition()
        self.granted = 0

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._heap if not w.cancelled)

    def _head(self) -> _Waiter | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    async def acquire(self, priority: int = PRIORITY_NORMAL) -> float:
        return (await self._acquire(priority, 0.0)).at

    async def _acquire(self, priority: int, hold_s: float) -> QuotaAttempt:
        waiter = _Waiter((-priority, next(self._seq)))
        async with self._changed:
            heapq.heappush(self._heap, waiter)
            self._changed.notify_all()
        try:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: self._head() is waiter)
                attempt = await self.backend.try_acquire(hold_s)
                if attempt.granted:
                    async with self._changed:
                        heapq.heappop(self._heap)
                        self.granted += 1
                        self._changed.notify_all()
                    return attempt
                # Sleep until the oldest grant leaves the window, but wake for a new head.
                sleep_s = max(0.001, min(attempt.retry_after_s, self.max_sleep_s))
                async with self._changed:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._changed.wait_for(lambda: self._head() is not waiter), timeout=sleep_s
                        )
        except BaseException:
            waiter.cancelled = True
            async with self._changed:
                self._changed.notify_all()
            raise

    @asynccontextmanager
    async def permit(self, priority: int = PRIORITY_NORMAL, *, hold_s: float = 120.0) -> AsyncIterator[float]:
        """Acquire, run the request, release. The slot is held while the request is in flight.

        The provider counts a request when it arrives, somewhere between our grant and its end;
        holding the slot until the end and restarting its window then means the provider can
        never see more than the quota, however long the request took to leave or to be answered.
        ``hold_s`` bounds the hold if this process dies mid-request (set it above the timeout).
        """
        attempt = await self._acquire(priority, hold_s)
        try:
            yield attempt.at
        finally:
            await asyncio.shield(self.backend.release(attempt.key))


class UserConcurrency:
    """At most ``limit`` concurrent analyses per user, in this process."""

    def __init__(self, limit: int = 4) -> None:
        if limit < 1:
            raise ValueError("limit: must be >= 1")
        self.limit = limit
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}

    def in_flight(self, user_id: str) -> int:
        entry = self._slots.get(user_id)
        return 0 if entry is None else self.limit - entry[0]._value

    @asynccontextmanager
    async def slot(self, user_id: str) -> AsyncIterator[None]:
        semaphore, users = self._slots.get(user_id, (asyncio.Semaphore(self.limit), 0))
        self._slots[user_id] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._slots[user_id]
            if users <= 1:
                del self._slots[user_id]
            else:
                self._slots[user_id] = (semaphore, users - 1)


def build_rate_limiter(
    *,
    limit: int,
    window_s: float = 60.0,
    engine: AsyncEngine | None = None,
    name: str = "gemini",
    margin: float = 0.0,
) -> PriorityRateLimiter:
    """Postgres-backed when given a Postgres engine, otherwise in-process.

    ``margin`` stretches the enforced window (``window_s * (1 + margin)``) for providers whose
    clock you do not trust; ``permit`` already restarts each grant's window when its request
    ends, which covers the skew between our grant and the provider's count.
    """
    effective = window_s * (1.0 + margin)
    backend: QuotaBackend
    if engine is not None and engine.dialect.name == "postgresql":
        backend = PostgresQuota(engine, name, limit=limit, window_s=effective)
    else:
        backend = MemoryQuota(limit, effective)
    return PriorityRateLimiter(backend)


def priority_for(*, position_open: bool, confidence: int | None = None, high_confidence: int = 70) -> int:
    """Open positions first, then signals whose last analysis was confident, then the rest."""
    if position_open:
        return PRIORITY_OPEN_POSITION
    if confidence is not None and confidence >= high_confidence:
        return PRIORITY_HIGH_CONFIDENCE
    return PRIORITY_NORMAL
