"""Tenant runtime benchmarks -> bench/results/runtime.json.

1. Candle close -> signal row committed (wall ms, p50/p99): 20 traders x 50 symbols replayed on a
   SimClock, live durability (every signal committed before the handler returns), SQLite and
   Postgres. Reference in the same run: one bare single-row commit on the same database.
2. Resident memory of a tenant with 20 (and 100) traders x 100 symbols x 3 timeframes x 500 candles.
3. Replay throughput through the whole runtime: 1 trader, 5 symbols, 5m, paper broker, offline
   analyst, SQLite (write-behind, as backtests run). Reference: the same ReplayFeed with a no-op handler.

Usage: .venv/bin/python bench/runtime.py [--days N] [--postgres-url URL] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
DATA = ROOT.parent / "shared" / "data" / "market"
RESULTS = ROOT / "bench" / "results" / "runtime.json"
T0 = 1_606_780_800_000
DAY = 86_400_000
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT", "XRP/USDT"]

DROP = """
def check_signal(symbol, ticker, klines):
    k = klines["5m"]
    if len(k.close) < 2:
        return False
    return k.close[-1] < k.open[-1] * THRESHOLD
"""


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_postgres() -> tuple[str, Any]:
    """A throwaway cluster (as user postgres when root), like tests/conftest.py does."""
    import socket

    work = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    root = os.geteuid() == 0
    if root:
        shutil.chown(work, user="postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]

    def run(*args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if root else list(args)
        subprocess.run(cmd, check=True, capture_output=True)

    run(str(pg_bin / "initdb"), "-D", str(work / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
    run(
        str(pg_bin / "pg_ctl"),
        "-D",
        str(work / "data"),
        "-l",
        str(work / "log"),
        "-w",
        "start",
        "-o",
        f"-p {port} -k {work} -c listen_addresses=127.0.0.1 -c fsync=off",
    )

    def stop() -> None:
        run(str(pg_bin / "pg_ctl"), "-D", str(work / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(work, ignore_errors=True)

    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", stop


def synthetic_data(n_symbols: int, timeframes: list[str], start: int, end: int) -> dict[tuple[str, str], Any]:
    """Real candles of the 5 files, reused under made-up names to reach ``n_symbols``."""
    from tradeengine.exchange.files import load_candles

    data: dict[tuple[str, str], Any] = {}
    for i in range(n_symbols):
        source = SYMBOLS[i % len(SYMBOLS)]
        for tf in timeframes:
            k = load_candles(DATA / f"{source.replace('/', '_')}-{tf}.json")
            mask = (k.open_time >= start - 600 * 300_000) & (k.open_time < end)
            from tradeengine.indicators.klines import Klines

            data[(f"S{i:03d}/USDT", tf)] = Klines.from_arrays(
                *(np.asarray(c)[mask] for c in (k.open_time, k.open, k.high, k.low, k.close, k.volume))
            )
    return data


async def bench_latency(url: str, days: float) -> dict[str, Any]:
    from fakes.runtime_world import make_runtime, seed_user

    from tradeengine.clock import SimClock
    from tradeengine.exchange.replay import ReplayFeed
    from tradeengine.store import migrations
    from tradeengine.store.batch import WriteBatch, commit_batch
    from tradeengine.store.engine import create_engine, create_session_factory

    await migrations.upgrade_async(url)
    engine = create_engine(url)
    factory = create_session_factory(engine)
    symbols = [f"S{i:03d}/USDT" for i in range(50)]
    traders = [
        {
            "name": f"t{i}",
            "signal_code": DROP.replace("THRESHOLD", f"{0.990 - i * 0.0005:.4f}"),
            "symbols": symbols,
            "max_open_positions": 50,
        }
        for i in range(20)
    ]
    user_id, _ = await seed_user(factory, traders)
    start, end = T0 + 3 * DAY, T0 + 3 * DAY + int(days * DAY)
    clock = SimClock(start)
    feed = ReplayFeed(synthetic_data(50, ["5m"], start, end), clock=clock, start_ms=start, end_ms=end, tickers=False)
    tmp = Path(tempfile.mkdtemp())
    rt = make_runtime(factory, user_id, clock, tmp, store=feed.store, settle=True)
    from tradeengine.ai.offline import OfflineAnalyst

    rt.queue._analyst = OfflineAnalyst()
    await rt.start()
    feed.subscribe(rt.on_event)
    began = time.perf_counter()
    await feed.run()
    await rt.flush()
    elapsed = time.perf_counter() - began
    # Reference: a bare one-row commit on the same database, same process.
    bare = []
    for _ in range(200):
        batch = WriteBatch("bench")
        batch.insert(
            "machine_events",
            id=uuid.uuid4(),
            user_id=user_id,
            kind="bench",
            message=None,
            payload={},
            created_at=clock.now(),
        )
        t = time.perf_counter()
        await commit_batch(factory, batch)
        bare.append((time.perf_counter() - t) * 1000)
    hist = rt.signal_latency_ms
    result = {
        "traders": 20,
        "symbols": 50,
        "days": days,
        "checks": rt.counters.checks,
        "signals": rt.counters.signals_created,
        "seconds": round(elapsed, 2),
        "p50_ms": hist.quantile(0.5),
        "p99_ms": hist.quantile(0.99),
        "max_ms": hist.quantile(1.0),
        "reference_bare_commit_p50_ms": float(np.percentile(bare, 50)),
        "reference_bare_commit_p99_ms": float(np.percentile(bare, 99)),
        "goal_p99_ms": 100,
    }
    await rt.shutdown()
    await rt.writer.close()
    await engine.dispose()
    return result


async def bench_memory(n_traders: int) -> dict[str, Any]:
    # Everything a tenant imports, before any data: the interpreter and libraries' share.
    import tradeengine.ai.offline
    import tradeengine.exchange.ccxt_feed
    import tradeengine.exchange.replay  # noqa: F401
    from tradeengine.clock import SimClock
    from tradeengine.exchange.kline_store import KlineStore
    from tradeengine.exchange.paper import PaperBroker
    from tradeengine.runtime.journal import DurableWriter, Journal
    from tradeengine.runtime.tenant import TenantRuntime
    from tradeengine.sandbox.strategy import compile_strategy
    from tradeengine.store import migrations
    from tradeengine.store.engine import create_engine, create_session_factory

    gc.collect()
    baseline = rss_mb()
    tmp = Path(tempfile.mkdtemp())
    url = f"sqlite+aiosqlite:///{tmp / 'mem.db'}"
    await migrations.upgrade_async(url)
    engine = create_engine(url)
    factory = create_session_factory(engine)
    from fakes.runtime_world import ScriptedAnalyst, seed_user

    symbols = [f"S{i:03d}/USDT" for i in range(100)]
    traders = [
        {
            "name": f"t{i}",
            "signal_code": DROP.replace("THRESHOLD", "0.99"),
            "symbols": symbols,
            "timeframes": ["5m", "1h", "4h"],
        }
        for i in range(n_traders)
    ]
    user_id, _ = await seed_user(factory, traders)
    store = KlineStore(capacity=500)
    rng = np.random.default_rng(1)
    for symbol in symbols:
        for tf, step in (("5m", 300_000), ("1h", 3_600_000), ("4h", 14_400_000)):
            times = T0 + np.arange(500, dtype=np.int64) * step
            close = 100 + np.cumsum(rng.normal(0, 1, 500))
            store.extend(symbol, tf, times, close, close + 1, close - 1, close, np.ones(500))
    clock = SimClock(T0)
    rt = TenantRuntime(
        user_id=user_id,
        clock=clock,
        store=store,
        broker=PaperBroker({"USDT": Decimal(10000)}),
        analyst=ScriptedAnalyst(),
        session_factory=factory,
        writer=DurableWriter(factory, Journal(tmp / "j.db"), clock),
        compile_strategy=lambda source: compile_strategy(source, time_limit_ms=50),
    )
    await rt.start()
    gc.collect()
    used = rss_mb() - baseline
    await rt.shutdown()
    await rt.writer.close()
    await engine.dispose()
    return {
        "traders": n_traders,
        "symbols": 100,
        "timeframes": 3,
        "candles": 500,
        "kline_store_mb": round(store.nbytes / 2**20, 1),
        "imports_rss_mb": round(baseline, 1),
        "data_and_state_rss_mb": round(used, 1),
        "process_rss_mb": round(rss_mb(), 1),
        "goal_mb": 256,
    }


def memory_in_subprocess(n_traders: int) -> dict[str, Any]:
    """A fresh process per measurement: RSS of one tenant, not of this benchmark's history."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-only", str(n_traders)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def bench_throughput(days: float, threshold: str = "0.99") -> dict[str, Any]:
    from fakes.runtime_world import make_runtime, seed_user

    from tradeengine.ai.offline import OfflineAnalyst
    from tradeengine.clock import SimClock
    from tradeengine.exchange.paper import PaperBroker
    from tradeengine.exchange.replay import ReplayFeed
    from tradeengine.runtime.heap import frozen_heap
    from tradeengine.store import migrations
    from tradeengine.store.engine import create_engine, create_session_factory

    start, end = T0 + 2 * DAY, T0 + 2 * DAY + int(days * DAY)
    # Reference: the replay feed alone, a no-op handler.
    clock = SimClock(start)
    feed = ReplayFeed.from_directory(DATA, SYMBOLS, ["5m"], clock=clock, start_ms=start, end_ms=end)

    async def nothing(_: Any) -> None:
        return None

    feed.subscribe(nothing)
    with frozen_heap():  # as the backtest runner replays (see tradeengine/runtime/heap.py)
        t = time.perf_counter()
        await feed.run()
    feed_only = feed.candle_count() / (time.perf_counter() - t)

    tmp = Path(tempfile.mkdtemp())
    url = f"sqlite+aiosqlite:///{tmp / 'tp.db'}"
    await migrations.upgrade_async(url)
    engine = create_engine(url)
    factory = create_session_factory(engine)
    user_id, _ = await seed_user(
        factory,
        [
            {
                "name": "drop",
                "signal_code": DROP.replace("THRESHOLD", threshold),
                "symbols": SYMBOLS,
                "max_open_positions": 5,
            }
        ],
    )
    clock = SimClock(start)
    feed = ReplayFeed.from_directory(DATA, SYMBOLS, ["5m"], clock=clock, start_ms=start, end_ms=end)
    rt = make_runtime(
        factory,
        user_id,
        clock,
        tmp,
        analyst=OfflineAnalyst(),
        broker=PaperBroker({"USDT": Decimal(10000)}),
        store=feed.store,
        write_behind=5000,
    )
    await rt.start()
    feed.subscribe(rt.on_event)
    with frozen_heap():
        t = time.perf_counter()
        await feed.run()
        await rt.flush()
        elapsed = time.perf_counter() - t
    candles = feed.candle_count()
    result = {
        "symbols": 5,
        "timeframe": "5m",
        "days": days,
        "candles": candles,
        "seconds": round(elapsed, 2),
        "candles_per_s": round(candles / elapsed),
        "reference_feed_only_candles_per_s": round(feed_only),
        "signals": rt.counters.signals_created,
        "decisions": rt.counters.decisions,
        "orders": rt.counters.orders_placed,
        "first_bar_candles_per_s": 50_000,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    await rt.shutdown()
    await rt.writer.close()
    await engine.dispose()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=float, default=2.0, help="replay window for the latency bench")
    parser.add_argument("--throughput-days", type=float, default=20.0)
    parser.add_argument("--postgres-url")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--memory-only", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["memory", "throughput"])
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    if args.memory_only:
        print(json.dumps(await bench_memory(args.memory_only)))
        return
    if args.only == "memory":  # refresh only these figures in an existing results file
        out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        out["memory_20_traders"] = memory_in_subprocess(20)
        out["memory_100_traders"] = memory_in_subprocess(100)
        print(out["memory_20_traders"], out["memory_100_traders"])
        RESULTS.write_text(json.dumps(out, indent=2, default=str))
        return
    if args.only == "throughput":
        out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        out["replay_throughput"] = await bench_throughput(args.throughput_days)
        out["replay_throughput_no_signals"] = await bench_throughput(args.throughput_days, threshold="0")
        print(out["replay_throughput"], out["replay_throughput_no_signals"])
        RESULTS.write_text(json.dumps(out, indent=2, default=str))
        return
    out: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
    }
    tmp = Path(tempfile.mkdtemp())
    out["signal_latency_sqlite"] = await bench_latency(f"sqlite+aiosqlite:///{tmp / 'lat.db'}", args.days)
    print("latency sqlite", out["signal_latency_sqlite"], flush=True)
    if not args.skip_postgres:
        stop = None
        url = args.postgres_url
        if url is None:
            url, stop = start_postgres()
        try:
            out["signal_latency_postgres"] = await bench_latency(url, args.days)
            print("latency postgres", out["signal_latency_postgres"], flush=True)
        finally:
            if stop is not None:
                stop()
    out["memory_20_traders"] = memory_in_subprocess(20)
    print("memory", out["memory_20_traders"], flush=True)
    out["memory_100_traders"] = memory_in_subprocess(100)
    print("memory", out["memory_100_traders"], flush=True)
    out["replay_throughput"] = await bench_throughput(args.throughput_days)
    print("throughput", out["replay_throughput"], flush=True)
    # The same replay with a strategy that never matches: detection alone, no analysis or orders.
    out["replay_throughput_no_signals"] = await bench_throughput(args.throughput_days, threshold="0")
    print("throughput (no signals)", out["replay_throughput_no_signals"], flush=True)
    out["machine"]["loadavg_at_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
