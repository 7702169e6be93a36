"""Benchmark: sandboxed strategy evaluations vs the same source as plain Python, same process.

Representative strategy: RSI on 1h, MACD on 4h and an inline custom indicator with a 10-step
loop (the seed's example). Data: 50 symbols x 2 timeframes x 500 real Binance candles (the five
symbols in ../shared/data/market, each at ten different points in history). Both variants run
interleaved in the same process, pinned to one core, and the best of several rounds counts.

Two indicator-cache regimes are measured, because the helpers memoize per tick:
  cold: the helper cache is cleared before every pass over the 50 symbols (one strategy per tick:
        every evaluation computes its RSI and MACD);
  warm: the cache stays (many strategies on the same tick: indicators are computed once).

Usage: .venv/bin/python bench/sandbox.py [--rounds 5] [--passes 10]
Writes bench/results/sandbox.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakes.sandbox_candles import SYMBOLS, klines_1h, klines_4h, ticker_for  # noqa: E402

from tradeengine.indicators import HELPERS, clear_cache  # noqa: E402
from tradeengine.sandbox import compile_strategy, freeze_klines, freeze_ticker  # noqa: E402

STRATEGY = """
def check_signal(symbol, ticker, klines):
    rsi = get_latest_rsi(klines["1h"], 14)
    macd, signal, _ = get_latest_macd(klines["4h"])

    def custom_momentum(k):
        closes = get_closes(k)
        if len(closes) < 11:
            return 0.0
        weighted_sum = 0.0
        weight_total = 0.0
        for i in range(10):
            weight = float(10 - i)
            change = (closes[len(closes) - 1 - i] - closes[len(closes) - 2 - i]) / closes[len(closes) - 2 - i]
            weighted_sum += change * weight
            weight_total += weight
        return weighted_sum / weight_total * 100

    momentum = custom_momentum(klines["1h"])
    return rsi < 30 and macd > signal and momentum > 0.5
"""

WINDOWS_PER_SYMBOL = 10  # 5 real symbols x 10 points in history = 50 symbols
CANDLES = 500


def build_market() -> list[tuple[str, dict[str, float], dict[str, Any]]]:
    market = []
    for symbol in SYMBOLS:
        for window in range(WINDOWS_PER_SYMBOL):
            k1 = klines_1h(symbol, CANDLES, offset=window * 400)
            k4 = klines_4h(symbol, CANDLES, offset=window * 80)
            market.append((f"{symbol}#{window}", ticker_for(k1), {"1h": k1, "4h": k4}))
    return market


def run_pass(check: Any, inputs: list[tuple[str, Any, Any]], cold: bool) -> float:
    if cold:
        clear_cache()
    started = time.perf_counter()
    for symbol, ticker, klines in inputs:
        check(symbol, ticker, klines)
    return time.perf_counter() - started


def measure(check: Any, inputs: list[tuple[str, Any, Any]], cold: bool, passes: int) -> float:
    """Seconds for ``passes`` passes over the market (cache cleared before each pass if cold)."""
    return sum(run_pass(check, inputs, cold) for _ in range(passes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sandbox.json")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core

    market = build_market()
    sandboxed = compile_strategy(STRATEGY)
    plain_namespace: dict[str, Any] = dict(HELPERS)
    exec(compile(STRATEGY, "<plain>", "exec"), plain_namespace)
    plain_check = plain_namespace["check_signal"]

    # The runtime freezes each symbol's ticker and klines once per tick and shares them among
    # strategies; freezing is timed separately below.
    frozen = [(s, freeze_ticker(t), freeze_klines(k)) for s, t, k in market]
    plain_inputs = market
    for (symbol, ticker, klines), (_, ft, fk) in zip(market, frozen, strict=True):
        assert sandboxed.check_signal(symbol, ft, fk) == plain_check(symbol, ticker, klines), symbol

    evaluations = len(market) * args.passes
    results: dict[str, Any] = {}
    for regime in ("cold", "warm"):
        cold = regime == "cold"
        sandbox_times, plain_times = [], []
        for _ in range(args.rounds):  # interleaved so both see the same machine state
            sandbox_times.append(measure(sandboxed.check_signal, frozen, cold, args.passes))
            plain_times.append(measure(plain_check, plain_inputs, cold, args.passes))
        sandbox_best, plain_best = min(sandbox_times), min(plain_times)
        results[regime] = {
            "sandbox_evals_per_s": round(evaluations / sandbox_best),
            "plain_evals_per_s": round(evaluations / plain_best),
            "sandbox_us_per_eval": round(sandbox_best / evaluations * 1e6, 2),
            "plain_us_per_eval": round(plain_best / evaluations * 1e6, 2),
            "ratio_sandbox_over_plain": round(sandbox_best / plain_best, 3),
            "ratio_median_rounds": round(
                sorted(sandbox_times)[len(sandbox_times) // 2] / sorted(plain_times)[len(plain_times) // 2], 3
            ),
        }

    started = time.perf_counter()
    for _ in range(args.passes):
        for _, ticker, klines in market:
            freeze_ticker(dict(ticker))
            freeze_klines(dict(klines))
    freeze_us = (time.perf_counter() - started) / evaluations * 1e6

    started = time.perf_counter()
    for _ in range(200):
        compile_strategy(STRATEGY)
    compile_ms = (time.perf_counter() - started) / 200 * 1000

    report = {
        "benchmark": "sandbox",
        "strategy": "RSI(14) on 1h, MACD(12,26,9) on 4h, 10-step custom momentum loop (seed example)",
        "symbols": len(market),
        "timeframes": 2,
        "candles_per_timeframe": CANDLES,
        "evaluations_per_round": evaluations,
        "rounds": args.rounds,
        "results": results,
        "freeze_inputs_us_per_symbol": round(freeze_us, 2),
        "compile_ms": round(compile_ms, 3),
        "goals": {"sandbox_evals_per_s": 20000, "max_ratio": 1.5},
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared, noisy), pinned to one core",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
