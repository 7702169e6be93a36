"""The analysis queue (the seed's ConcurrentAnalyzer): priority, concurrency, rate limit, retries,
circuit breaker and a bounded queue with an explicit, counted drop policy.

Tasks carry an ``AnalysisRequest`` and a callback that receives the final ``AnalysisResult``.
A task whose analysis still fails after its retries is handed to ``on_failure`` instead: the
runtime leaves the signal as it was (re-analysis picks it up later) rather than recording the
analyst's safe default as if it were a decision.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from uuid import UUID

from loguru import logger

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult, Analyst
from tradeengine.clock import Clock
from tradeengine.runtime.metrics import Histogram


class Priority(IntEnum):
    """Lower runs first: protecting open positions beats new entries beats the watchlist."""

    POSITION = 0
    NEW_SIGNAL = 1
    WATCHING = 2


ResultHandler = Callable[[AnalysisRequest, AnalysisResult], Awaitable[None]]
FailureHandler = Callable[[AnalysisRequest, str], Awaitable[None]]


@dataclass(slots=True)
class AnalysisTask:
    request: AnalysisRequest
    priority: Priority
    on_result: ResultHandler
    on_failure: FailureHandler | None = None
    enqueued_ms: int = 0

    @property
    def key(self) -> UUID:
        """The signal's id: one analysis per signal is queued or running at a time. (Its text
        would cost a UUID formatting per lookup, several per task.)"""
        return self.request.signal_id


@dataclass(frozen=True, slots=True)
class QueueConfig:
    concurrency: int = 4
    rate_per_minute: int | None = 60  # None: no rate limit (offline analyst in backtests)
    max_attempts: int = 3
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    breaker_threshold: int = 5  # consecutive failed tasks that open the circuit
    breaker_cooldown_s: float = 60.0
    max_depth: int = 100
    # join() runs the queued tasks itself, one at a time in the order the workers would take them,
    # before it waits (replays with the offline analyst: the same order and results, without a
    # round trip through the event loop per task). Workers still take whatever join does not.
    run_in_join: bool = False


@dataclass(slots=True)
class QueueStats:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    retries: int = 0
    coalesced: int = 0  # same signal already queued or running
    dropped: int = 0  # evicted or refused because the queue was full
    rate_limited_waits: int = 0
    breaker_opened: int = 0
    latency_ms: Histogram = field(default_factory=Histogram)


class _Breaker:
    """Consecutive-failure circuit breaker on the clock: closed -> open -> half-open -> closed."""

    def __init__(self, clock: Clock, threshold: int, cooldown_s: float) -> None:
        self._clock = clock
        self._threshold = threshold
        self._cooldown_ms = int(cooldown_s * 1000)
        self.failures = 0
        self.open_until_ms: int | None = None

    @property
    def state(self) -> str:
        if self.open_until_ms is None:
            return "closed"
        return "open" if self._clock.now_ms() < self.open_until_ms else "half_open"

    def record(self, ok: bool) -> bool:
        """Return True when this outcome opened the circuit."""
        if ok:
            self.failures = 0
            self.open_until_ms = None
            return False
        self.failures += 1
        if self.failures >= self._threshold:
            self.open_until_ms = self._clock.now_ms() + self._cooldown_ms
            return True
        return False


class _RateLimiter:
    """At most ``per_minute`` starts in any sliding 60 s window of clock time."""

    def __init__(self, clock: Clock, per_minute: int | None) -> None:
        self._clock = clock
        self._per_minute = per_minute
        self._starts: deque[int] = deque()

    def wait_ms(self) -> int:
        if self._per_minute is None:
            return 0
        now = self._clock.now_ms()
        while self._starts and self._starts[0] <= now - 60_000:
            self._starts.popleft()
        if len(self._starts) < self._per_minute:
            return 0
        return self._starts[0] + 60_000 - now

    def take(self) -> None:
        if self._per_minute is not None:
            self._starts.append(self._clock.now_ms())


class AnalysisQueue:
    """Runs analyses through an ``Analyst`` with the seed's queueing guarantees."""

    def __init__(
        self,
        analyst: Analyst,
        clock: Clock,
        config: QueueConfig | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._analyst = analyst
        self._clock = clock
        self.config = config or QueueConfig()
        self._rng = rng or random.Random()  # jitter only; seeded in tests
        self._heap: list[tuple[int, int, AnalysisTask]] = []
        self._queued: dict[UUID, AnalysisTask] = {}
        self._running: set[UUID] = set()
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers: list[asyncio.Task[None]] = []
        self._breaker = _Breaker(clock, self.config.breaker_threshold, self.config.breaker_cooldown_s)
        self._limiter = _RateLimiter(clock, self.config.rate_per_minute)
        self._accepting = True
        self.stats = QueueStats()

    # -- introspection -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queued)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def breaker_state(self) -> str:
        return self._breaker.state

    def is_pending(self, signal_id: UUID) -> bool:
        return signal_id in self._queued or signal_id in self._running

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._workers:
            return
        self._accepting = True
        self._workers = [
            asyncio.create_task(self._worker(), name=f"analysis-worker-{i}") for i in range(self.config.concurrency)
        ]

    async def join(self) -> None:
        """Wait until nothing is queued or running (running queued tasks itself with ``run_in_join``)."""
        if self.config.run_in_join:
            while self._heap and self._breaker.state != "open" and self._limiter.wait_ms() <= 0:
                await self._work(self._take())
        while self._queued or self._running:
            self._idle.clear()
            await self._idle.wait()

    async def stop(self, *, drain: bool = True) -> None:
        """Stop accepting; finish queued work when ``drain`` (else only what is running), then stop."""
        self._accepting = False
        if not drain:
            self._heap.clear()
            self._queued.clear()
        if self._workers:
            await self.join()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    # -- submit --------------------------------------------------------------------------------
    def submit(self, task: AnalysisTask) -> bool:
        """Queue ``task``; return False when it was coalesced or dropped (both counted)."""
        if not self._accepting:
            self.stats.dropped += 1
            return False
        key = task.key
        if key in self._queued or key in self._running:
            self.stats.coalesced += 1
            return False
        if len(self._queued) >= self.config.max_depth:
            # Drop policy: the least urgent, newest task loses. If the newcomer is no more urgent
            # than the worst queued task it is the one refused; otherwise the worst is evicted.
            worst = max(self._heap, key=lambda entry: (entry[0], entry[1]))
            if task.priority >= worst[0]:
                self.stats.dropped += 1
                logger.warning("analysis queue full ({}): dropped signal {}", self.depth, key)
                return False
            self._heap.remove(worst)
            heapq.heapify(self._heap)
            self._queued.pop(worst[2].key, None)
            self.stats.dropped += 1
            logger.warning("analysis queue full: evicted signal {}", worst[2].key)
        task.enqueued_ms = self._clock.now_ms()
        heapq.heappush(self._heap, (int(task.priority), next(self._seq), task))
        self._queued[key] = task
        self.stats.submitted += 1
        self._idle.clear()
        self._wakeup.set()
        return True

    # -- workers -------------------------------------------------------------------------------
    async def _next_task(self) -> AnalysisTask:
        while True:
            while not self._heap:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._breaker.state == "open":
                assert self._breaker.open_until_ms is not None
                await self._clock.sleep((self._breaker.open_until_ms - self._clock.now_ms()) / 1000)
                continue
            wait = self._limiter.wait_ms()
            if wait > 0:
                self.stats.rate_limited_waits += 1
                await self._clock.sleep(wait / 1000)
                continue
            if not self._heap:
                continue
            return self._take()

    def _take(self) -> AnalysisTask:
        """Pop the most urgent task and mark it running."""
        _, _, task = heapq.heappop(self._heap)
        self._queued.pop(task.key, None)
        self._running.add(task.key)
        self._limiter.take()
        return task

    def _done(self, task: AnalysisTask) -> None:
        self._running.discard(task.key)
        if not self._queued and not self._running:
            self._idle.set()

    async def _worker(self) -> None:
        while True:
            await self._work(await self._next_task())

    async def _work(self, task: AnalysisTask) -> None:
        """Run a taken task to the end. A handler bug is logged, never raised: it must not kill a
        worker nor break the settle of a ``join`` that runs tasks itself."""
        try:
            await self._run(task)
        except Exception:
            logger.exception("analysis task for signal {} failed in its handler", task.key)
        finally:
            self._done(task)

    async def _run(self, task: AnalysisTask) -> None:
        error = "no attempt made"
        for attempt in range(1, self.config.max_attempts + 1):
            try:
                result = await self._analyst.analyze(task.request)
            except Exception as exc:  # the port says never raise; an adapter bug still must not
                result = None
                error = f"{type(exc).__name__}: {exc}"
            if result is not None and result.error is None:
                self.stats.latency_ms.observe(self._clock.now_ms() - task.enqueued_ms)
                self.stats.completed += 1
                self._breaker.record(True)
                if attempt > 1:
                    result = _with_attempts(result, attempt)
                await task.on_result(task.request, result)
                return
            if result is not None:
                error = result.error or error
            if attempt < self.config.max_attempts:
                self.stats.retries += 1
                delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
                if delay > 0:
                    await self._clock.sleep(delay * (0.5 + self._rng.random()))  # jitter around the delay
        self.stats.failed += 1
        if self._breaker.record(False):
            self.stats.breaker_opened += 1
            logger.warning("analysis circuit opened after {} consecutive failures", self._breaker.failures)
        logger.warning("analysis of signal {} failed after retries: {}", task.key, error)
        if task.on_failure is not None:
            await task.on_failure(task.request, error)


def _with_attempts(result: AnalysisResult, attempts: int) -> AnalysisResult:
    from dataclasses import replace

    return replace(result, attempts=attempts)
