"""Market-data benchmark: replay throughput into the KlineStore, and the store's memory.

Run: ``.venv/bin/python bench/market.py``. Writes ``bench/results/market.json``.

* Replay: 5 symbols x 5m over the full real files (../shared/data/market), candle events per second
  into the store, through (a) the batch path (``batches`` + ``apply``), (b) ``run_batched`` on a
  SimClock, (c) the per-event ``run`` with one subscriber (what a runtime with handlers pays),
  (d) ``run`` with one row subscriber (``subscribe_rows``: what the backtest runner uses).
* Reference, measured in the same run: the seed design ported literally (a Python list of row
  lists per series, append or replace the last row, trim to 1,000), fed row by row.
* Memory: 100 symbols x 3 timeframes x 1,000 candles (array bytes and tracemalloc peak).
"""

from __future__ import annotations

import asyncio
import gc
import json
import platform
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tradeengine.clock import SimClock
from tradeengine.exchange.events import EventRow, MarketEvent
from tradeengine.exchange.kline_store import KlineStore
from tradeengine.exchange.replay import KIND_TICKER, ReplayFeed

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "market"
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT", "XRP/USDT"]
GOAL_EVENTS_PER_S = 500_000


def _feed() -> ReplayFeed:
    return ReplayFeed.from_directory(DATA, SYMBOLS, ["5m"], clock=SimClock(0), tickers=False)


def _best(samples: list[float]) -> float:
    return min(samples)


def bench_batches(repeats: int) -> dict[str, Any]:
    times = []
    events = 0
    for _ in range(repeats):
        feed = _feed()
        gc.collect()
        start = time.perf_counter()
        events = sum(feed.apply(batch) for batch in feed.batches(65_536))
        times.append(time.perf_counter() - start)
    return {"events": events, "seconds": _best(times), "events_per_s": events / _best(times)}


def bench_run_batched(repeats: int) -> dict[str, Any]:
    times = []
    events = 0
    for _ in range(repeats):
        feed = _feed()
        events = feed.candle_count()
        start = time.perf_counter()
        asyncio.run(feed.run_batched(max_rows=65_536))
        times.append(time.perf_counter() - start)
    return {"events": events, "seconds": _best(times), "events_per_s": events / _best(times)}


def _timed_runs(repeats: int, subscribe: Callable[[ReplayFeed, list[int]], None]) -> tuple[int, int, float]:
    """Run a fresh feed ``repeats`` times with the handler ``subscribe(feed, counter)`` attaches
    (it adds to ``counter[0]``); return (candles, the last run's count, best seconds)."""
    times = []
    candles = counted = 0
    for _ in range(repeats):
        feed = _feed()
        candles = feed.candle_count()
        counter = [0]
        subscribe(feed, counter)
        start = time.perf_counter()
        asyncio.run(feed.run())
        times.append(time.perf_counter() - start)
        counted = counter[0]
    return candles, counted, _best(times)


def bench_per_event(repeats: int) -> dict[str, Any]:
    def subscribe(feed: ReplayFeed, counter: list[int]) -> None:
        async def handler(_: MarketEvent) -> None:
            counter[0] += 1

        feed.subscribe(handler)

    candles, calls, seconds = _timed_runs(repeats, subscribe)
    return {"candles": candles, "handler_calls": calls, "seconds": seconds, "events_per_s": candles / seconds}


def bench_rows(repeats: int) -> dict[str, Any]:
    """``run`` with one row handler (``subscribe_rows``): what the backtest runner's runtime pays."""

    def subscribe(feed: ReplayFeed, counter: list[int]) -> None:
        async def handler(_: int, instant: list[EventRow]) -> None:
            counter[0] += len(instant)

        feed.subscribe_rows(handler)

    candles, rows, seconds = _timed_runs(repeats, subscribe)
    return {"candles": candles, "rows": rows, "seconds": seconds, "events_per_s": candles / seconds}


def bench_reference(repeats: int) -> dict[str, Any]:
    """The seed's KlineStore (map of row lists, replace-last or append, trim to 1,000), in Python."""
    feed = _feed()
    rows = [
        (feed.series[int(s)], int(t), *values)
        for s, t, kind, values in zip(
            feed._series_index, feed._open_time, feed._kind, feed._values.T.tolist(), strict=True
        )
        if kind != KIND_TICKER
    ]
    times = []
    for _ in range(repeats):
        data: dict[tuple[str, str], list[list[Any]]] = {}
        start = time.perf_counter()
        for key, open_time, o, h, lo, c, v in rows:
            klines = data.get(key)
            if klines is None:
                klines = data[key] = []
            if klines and klines[-1][0] == open_time:
                klines[-1] = [open_time, o, h, lo, c, v]
                continue
            klines.append([open_time, o, h, lo, c, v])
            if len(klines) > 1000:
                del klines[0]
        times.append(time.perf_counter() - start)
    return {"events": len(rows), "seconds": _best(times), "events_per_s": len(rows) / _best(times)}


def bench_memory() -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    store = KlineStore(capacity=1000)
    times = np.arange(1000, dtype=np.int64) * 60_000
    values = np.random.default_rng(1).random((5, 1000))
    for s in range(100):
        for timeframe in ("5m", "1h", "4h"):
            store.extend(f"S{s}/USDT", timeframe, times, *values)
    # Steady state after many single updates too (buffers compact on their own schedule).
    for s in range(100):
        for timeframe in ("5m", "1h", "4h"):
            for i in range(300):
                store.update(f"S{s}/USDT", timeframe, 1000 * 60_000 + i * 60_000, 1.0, 2.0, 0.5, 1.5, 3.0)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "series": 300,
        "capacity": 1000,
        "array_bytes": store.nbytes,
        "traced_current_bytes": current,
        "traced_peak_bytes": peak,
        "budget_bytes": 30 * 1024 * 1024,
        "within_budget": current <= 30 * 1024 * 1024,
    }


def main() -> None:
    repeats = 3
    build_start = time.perf_counter()
    feed = _feed()
    build_s = time.perf_counter() - build_start
    result = {
        "benchmark": "market",
        "machine": {
            "python": platform.python_version(),
            "cpu_count": __import__("os").cpu_count(),
            "note": "2 shared cores, other engineers' jobs running: numbers are noisy",
        },
        "dataset": {
            "symbols": SYMBOLS,
            "timeframe": "5m",
            "candles": feed.candle_count(),
            "load_and_merge_seconds": build_s,
        },
        "replay_batches_into_store": bench_batches(repeats),
        "replay_run_batched_simclock": bench_run_batched(repeats),
        "replay_per_event_with_handler": bench_per_event(1),
        "replay_rows_with_handler": bench_rows(repeats),
        "reference_seed_list_store_row_by_row": bench_reference(repeats),
        "kline_store_memory_100x3x1000": bench_memory(),
        "goal_events_per_s": GOAL_EVENTS_PER_S,
    }
    best = result["replay_batches_into_store"]["events_per_s"]  # type: ignore[index]
    reference = result["reference_seed_list_store_row_by_row"]["events_per_s"]  # type: ignore[index]
    result["speedup_vs_reference"] = best / reference
    result["goal_met"] = best >= GOAL_EVENTS_PER_S
    out = ROOT / "bench" / "results" / "market.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
