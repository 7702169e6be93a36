"""The analysis queue (seed 004 ConcurrentAnalyzer) on a SimClock with a scripted analyst."""

from __future__ import annotations

import asyncio
import random
import uuid

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult
from tradeengine.clock import SimClock
from tradeengine.domain.enums import Decision
from tradeengine.runtime.analysis_queue import AnalysisQueue, AnalysisTask, Priority, QueueConfig


async def drive(clock: SimClock, queue: AnalysisQueue, limit_ms: int) -> None:
    """Advance simulated time deadline by deadline until the queue is idle."""
    while queue.depth or queue.in_flight:
        await clock.settle()
        deadline = clock.next_deadline_ms()
        if deadline is None:
            await asyncio.sleep(0)
            continue
        assert deadline <= limit_ms, "queue did not finish in time"
        await clock.advance_to_ms(deadline)


def _request(name: str) -> AnalysisRequest:
    return AnalysisRequest(
        correlation_id=name,
        user_id=uuid.uuid4(),
        trader_id=uuid.uuid4(),
        signal_id=uuid.uuid4(),
        symbol="BTC/USDT",
        ai_instructions=name,
        market_data={},
    )


class ScriptedAnalyst:
    """Answers after ``delay`` seconds of clock time; fails the first ``failures`` calls per request."""

    def __init__(
        self, clock: SimClock, *, delay: float = 0.0, failures: int = 0, gate: asyncio.Event | None = None
    ) -> None:
        self.clock = clock
        self.delay = delay
        self.failures = failures
        self.gate = gate
        self.calls: list[tuple[str, int]] = []
        self.running = 0
        self.max_running = 0
        self._seen: dict[str, int] = {}

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        self.calls.append((request.ai_instructions, self.clock.now_ms()))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await self.clock.sleep(self.delay)
            seen = self._seen.get(request.correlation_id, 0) + 1
            self._seen[request.correlation_id] = seen
            if seen <= self.failures:
                return AnalysisResult(Decision.NO_TRADE, "safe default", 0, error="upstream 503")
            return AnalysisResult(Decision.WATCH, "ok", 60)
        finally:
            self.running -= 1


class Sink:
    def __init__(self) -> None:
        self.results: list[tuple[str, AnalysisResult]] = []
        self.failures: list[tuple[str, str]] = []

    async def result(self, request: AnalysisRequest, result: AnalysisResult) -> None:
        self.results.append((request.ai_instructions, result))

    async def failure(self, request: AnalysisRequest, error: str) -> None:
        self.failures.append((request.ai_instructions, error))

    def task(self, name: str, priority: Priority = Priority.NEW_SIGNAL) -> AnalysisTask:
        return AnalysisTask(_request(name), priority, self.result, self.failure)


async def test_priority_order_with_one_worker() -> None:
    clock = SimClock(0)
    analyst, sink = ScriptedAnalyst(clock), Sink()
    queue = AnalysisQueue(analyst, clock, QueueConfig(concurrency=1, rate_per_minute=None))
    for name, priority in [
        ("watch-1", Priority.WATCHING),
        ("new-1", Priority.NEW_SIGNAL),
        ("pos-1", Priority.POSITION),
        ("new-2", Priority.NEW_SIGNAL),
    ]:
        assert queue.submit(sink.task(name, priority))
    queue.start()
    await queue.join()
    await queue.stop()
    assert [name for name, _ in analyst.calls] == ["pos-1", "new-1", "new-2", "watch-1"]
    assert queue.stats.completed == 4


async def test_at_most_four_in_flight() -> None:
    clock = SimClock(0)
    gate = asyncio.Event()
    analyst, sink = ScriptedAnalyst(clock, gate=gate), Sink()
    queue = AnalysisQueue(analyst, clock, QueueConfig(rate_per_minute=None))
    queue.start()
    for i in range(10):
        queue.submit(sink.task(f"t{i}"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert analyst.running == 4
    assert queue.in_flight == 4
    assert queue.depth == 6
    gate.set()
    await queue.join()
    await queue.stop()
    assert analyst.max_running == 4
    assert len(sink.results) == 10


async def test_rate_limit_spreads_starts_over_clock_minutes() -> None:
    clock = SimClock(0)
    analyst, sink = ScriptedAnalyst(clock), Sink()
    queue = AnalysisQueue(analyst, clock, QueueConfig(rate_per_minute=2))
    queue.start()
    for i in range(5):
        queue.submit(sink.task(f"t{i}"))
    await drive(clock, queue, 10 * 60_000)
    await queue.join()
    await queue.stop()
    assert [at for _, at in analyst.calls] == [0, 0, 60_000, 60_000, 120_000]
    assert queue.stats.rate_limited_waits >= 2


async def test_retries_with_backoff_then_success() -> None:
    clock = SimClock(0)
    analyst, sink = ScriptedAnalyst(clock, failures=2), Sink()
    queue = AnalysisQueue(analyst, clock, QueueConfig(rate_per_minute=None, backoff_base_s=1.0), rng=random.Random(7))
    queue.start()
    queue.submit(sink.task("flaky"))
    await drive(clock, queue, 60_000)
    await queue.join()
    await queue.stop()
    assert len(analyst.calls) == 3
    assert queue.stats.retries == 2
    assert sink.results[0][1].attempts == 3
    assert sink.results[0][1].error is None
    gaps = [b - a for (_, a), (_, b) in zip(analyst.calls, analyst.calls[1:], strict=False)]
    assert 500 <= gaps[0] <= 1500
    assert 1000 <= gaps[1] <= 3000


async def test_circuit_breaker_opens_after_consecutive_failures() -> None:
    clock = SimClock(0)
    analyst, sink = ScriptedAnalyst(clock, failures=100), Sink()
    config = QueueConfig(
        concurrency=1, rate_per_minute=None, max_attempts=1, breaker_threshold=2, breaker_cooldown_s=30
    )
    queue = AnalysisQueue(analyst, clock, config)
    queue.start()
    for i in range(3):
        queue.submit(sink.task(f"t{i}"))
    await drive(clock, queue, 120_000)
    await queue.join()
    await queue.stop()
    assert [at for _, at in analyst.calls] == [0, 0, 30_000]  # third waited out the cooldown
    assert queue.stats.breaker_opened >= 1
    assert len(sink.failures) == 3
    assert not sink.results


async def test_bounded_queue_drops_least_urgent_and_counts() -> None:
    clock = SimClock(0)
    analyst, sink = ScriptedAnalyst(clock), Sink()
    queue = AnalysisQueue(analyst, clock, QueueConfig(rate_per_minute=None, max_depth=2))
    assert queue.submit(sink.task("w1", Priority.WATCHING))
    assert queue.submit(sink.task("n1", Priority.NEW_SIGNAL))
    assert not queue.submit(sink.task("w2", Priority.WATCHING))  # full, not more urgent: refused
    assert queue.submit(sink.task("p1", Priority.POSITION))  # more urgent: evicts w1
    assert queue.stats.dropped == 2
    assert queue.depth == 2
    same = sink.task("dup")
    assert queue.submit(AnalysisTask(same.request, Priority.POSITION, sink.result))  # evicts n1
    assert queue.stats.dropped == 3
    queue.start()
    await queue.join()
    await queue.stop()
    assert sorted(name for name, _ in analyst.calls) == ["dup", "p1"]


async def test_same_signal_is_coalesced() -> None:
    clock = SimClock(0)
    analyst, sink = ScriptedAnalyst(clock), Sink()
    queue = AnalysisQueue(analyst, clock, QueueConfig(rate_per_minute=None))
    task = sink.task("once")
    assert queue.submit(task)
    assert not queue.submit(AnalysisTask(task.request, Priority.POSITION, sink.result))
    queue.start()
    await queue.join()
    await queue.stop()
    assert queue.stats.coalesced == 1
    assert len(analyst.calls) == 1


async def test_join_runs_queued_tasks_itself_in_worker_order() -> None:
    """``run_in_join``: the caller of join runs what is queued, in the order one worker would,
    with the same results and stats, and a handler that raises does not break the join."""
    names = [
        ("watch-1", Priority.WATCHING),
        ("new-1", Priority.NEW_SIGNAL),
        ("pos-1", Priority.POSITION),
        ("new-2", Priority.NEW_SIGNAL),
        ("boom", Priority.POSITION),
    ]
    runs: dict[bool, tuple[list[str], list[str], int]] = {}
    for run_in_join in (False, True):
        clock = SimClock(0)
        analyst, sink = ScriptedAnalyst(clock), Sink()
        config = QueueConfig(concurrency=1, rate_per_minute=None, run_in_join=run_in_join)
        queue = AnalysisQueue(analyst, clock, config)

        workers: set[bool] = set()

        async def result(
            request: AnalysisRequest, answer: AnalysisResult, sink: Sink = sink, workers: set[bool] = workers
        ) -> None:
            task = asyncio.current_task()
            workers.add(task is not None and task.get_name().startswith("analysis-worker"))
            if request.ai_instructions == "boom":
                raise RuntimeError("handler bug")
            await sink.result(request, answer)

        queue.start()
        for name, priority in names:
            assert queue.submit(AnalysisTask(_request(name), priority, result, sink.failure))
        await queue.join()
        assert not queue.depth and not queue.in_flight
        assert workers == {not run_in_join}  # who ran the handlers: the workers, or join's caller
        runs[run_in_join] = ([n for n, _ in analyst.calls], [n for n, _ in sink.results], queue.stats.completed)
        await queue.stop()
    assert runs[True] == runs[False]
    assert runs[True][0] == ["pos-1", "boom", "new-1", "new-2", "watch-1"]
