"""Backtest throughput: candles per second through the whole tenant runtime.

Run: ``.venv/bin/python bench/backtest.py [--days N]``. Writes ``bench/results/backtest.json``.

Workload (issue 10): 5 symbols x 5m over the full real files (../shared/data/market, ~330,000
candles), one strategy (the shipped Bollinger breakout example on 5m closes), SQLite, offline
analyst (rules policy). Measured: the replay phase (SimClock + replay feed + runtime: strategy in
the sandbox, signals, analyses, paper fills, every write committed to SQLite) and the whole run
including migrations, seeding and reading the results back.

Reference, measured in the same run: the same replay feed delivering the same rows to a no-op
handler (the floor any runtime pays for its input), so the runtime's own cost is the difference.
Targets: first bar >= 50,000 candles/s; goal >= 180,000 candles/s (Jesse's step mode, RPi 5).

``--repeat N`` (default 3) runs reference and runtime alternately N times and reports the best run
of each (timeit's rule: noise only ever adds time; on these shared VMs the same run varies by
+-20% within minutes), with every run's time alongside. Every repetition must trade identically.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from loguru import logger

from tradeengine.backtest.runner import BacktestConfig, TraderSpec, run_backtest
from tradeengine.clock import SimClock, ms_to_datetime
from tradeengine.examples import example
from tradeengine.exchange.events import EventRow
from tradeengine.exchange.replay import ReplayFeed

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "market"
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT", "XRP/USDT")
FIRST_BAR = 50_000
GOAL = 180_000
COMMON_END_MS = 1_626_555_600_000  # 2021-07-17 21:00 UTC: the last close every 5m file has


async def bench_feed_only(end_ms: int, start_ms: int | None) -> dict[str, Any]:
    feed = ReplayFeed.from_directory(DATA, SYMBOLS, ["5m"], clock=SimClock(0), start_ms=start_ms, end_ms=end_ms)
    count = 0

    async def handler(_: int, rows: list[EventRow]) -> None:
        nonlocal count
        count += len(rows)

    feed.subscribe_rows(handler)  # what the backtest runner subscribes the runtime with
    started = time.perf_counter()
    await feed.run()
    seconds = time.perf_counter() - started
    candles = feed.status().candles_closed
    return {
        "candles": candles,
        "rows": count,
        "seconds": round(seconds, 3),
        "candles_per_s": round(candles / seconds, 1),
    }


async def bench_runtime(end_ms: int, start_ms: int | None, signal_series: str, hold: bool = True) -> dict[str, Any]:
    spec = replace(TraderSpec.from_example(example("bollinger_breakout")), max_open_positions=len(SYMBOLS))
    config = BacktestConfig(
        traders=(spec,),
        data_dir=DATA,
        symbols=SYMBOLS,
        analyst="offline",
        start=ms_to_datetime(start_ms) if start_ms is not None else None,
        end=ms_to_datetime(end_ms),
        signal_series=signal_series,  # type: ignore[arg-type]  # argparse choices
        hold_quiet_rows=hold,
    )
    result = await run_backtest(config)
    s = result.summary
    return {
        "candles": result.candles,
        "replay_seconds": round(result.replay_seconds, 3),
        "total_seconds": round(result.total_seconds, 3),
        "candles_per_s": round(result.candles_per_second, 1),
        "candles_per_s_end_to_end": round(result.candles / result.total_seconds, 1),
        "signals": s.signals,
        "analyses": s.analyses,
        "trades": s.trades,
        "total_return": round(s.total_return, 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=None, help="Replay only the last N days (default: all).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each measurement; the best counts.")
    parser.add_argument(
        "--signal-series",
        choices=("use", "verify", "off"),
        default="use",
        help="How the strategy's series form is used (BacktestConfig.signal_series).",
    )
    parser.add_argument(
        "--deliver-every-row",
        action="store_true",
        help="Do not hold back quiet symbols' rows (BacktestConfig.hold_quiet_rows=False).",
    )
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    start_ms = None
    if args.days is not None:
        start_ms = COMMON_END_MS - int(timedelta(days=args.days).total_seconds() * 1000)
    feeds: list[dict[str, Any]] = []
    runtimes: list[dict[str, Any]] = []
    for _ in range(max(args.repeat, 1)):
        feeds.append(asyncio.run(bench_feed_only(COMMON_END_MS, start_ms)))
        runtimes.append(
            asyncio.run(bench_runtime(COMMON_END_MS, start_ms, args.signal_series, not args.deliver_every_row))
        )
    outcome = ("candles", "signals", "analyses", "trades", "total_return")
    if any(tuple(r[k] for k in outcome) != tuple(runtimes[0][k] for k in outcome) for r in runtimes):
        raise SystemExit(f"repetitions traded differently: {[{k: r[k] for k in outcome} for r in runtimes]}")
    feed = min(feeds, key=lambda r: r["seconds"])
    runtime = dict(min(runtimes, key=lambda r: r["replay_seconds"]))
    runtime["replay_seconds_all_runs"] = [r["replay_seconds"] for r in runtimes]
    runtime["candles_per_s_median"] = round(statistics.median(r["candles_per_s"] for r in runtimes), 1)
    feed = dict(feed, seconds_all_runs=[r["seconds"] for r in feeds])
    result = {
        "benchmark": "backtest",
        "workload": {
            "symbols": list(SYMBOLS),
            "timeframe": "5m",
            "strategy": "bollinger_breakout (example)",
            "signal_series": args.signal_series,
            "hold_quiet_rows": not args.deliver_every_row,
            "analyst": "offline rules",
            "database": "sqlite",
            "days": args.days or "full files",
            "repeat": max(args.repeat, 1),
        },
        "runtime": runtime,
        "reference_feed_only": feed,
        "runtime_share_of_feed_speed": round(runtime["candles_per_s"] / feed["candles_per_s"], 4),
        "first_bar_candles_per_s": FIRST_BAR,
        "goal_candles_per_s": GOAL,
        "meets_first_bar": runtime["candles_per_s"] >= FIRST_BAR,
        "meets_goal": runtime["candles_per_s"] >= GOAL,
        "machine": {
            "python": platform.python_version(),
            "interpreter": sys._base_executable,  # builds differ in speed (Makefile: PYTHON)
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
    }
    out = ROOT / "bench" / "results" / "backtest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
