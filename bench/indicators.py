"""Benchmark tradeengine.indicators against TA-Lib on real Binance candles.

Times every full-series function at 500 and 100,000 candles and every ``get_latest_*`` helper
on a 500-candle window, against TA-Lib on the same input in the same run, and writes
``bench/results/indicators.json``. Run: ``.venv/bin/python bench/indicators.py``.

The first call of each compiled kernel costs a numba compile (or, with a warm on-disk cache, a
cache load); ``first_call`` reports both, measured in fresh interpreters, separately from the
steady-state medians below.

Helpers are timed twice: ``cached`` is the steady state when many strategies ask for the same
value in one tick (every call after the first hits the per-tick cache), ``uncached`` clears
the cache before every call, i.e. the cost the first strategy pays (in a backtest, every call:
each candle close is a new candle). Window-only helpers are not cached (a lookup would cost
about what they do), so for them both columns time the same call.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import talib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tradeengine import indicators as ind  # noqa: E402
from tradeengine.indicators import helpers as helper_module  # noqa: E402

MARKET = ROOT.parent / "shared" / "data" / "market"
RESULTS = ROOT / "bench" / "results" / "indicators.json"
Columns = dict[str, np.ndarray]


def load_columns(count: int) -> Columns:
    """``count`` candles: the 5m files concatenated (oldest symbol first) and cut."""
    rows: list[list[float]] = []
    for path in sorted(MARKET.glob("*_USDT-5m.json")):
        rows.extend(json.loads(path.read_text()))
        if len(rows) >= count:
            break
    table = np.array(rows[:count], dtype=np.float64)
    names = ("open_time", "open", "high", "low", "close", "volume")
    return {name: np.ascontiguousarray(table[:, i]) for i, name in enumerate(names)}


def _loops(func: Callable[[], Any]) -> int:
    func()
    start = time.perf_counter()
    func()
    return max(1, int(0.002 / max(time.perf_counter() - start, 1e-7)))


def paired_median_us(
    ours: Callable[[], Any], ref: Callable[[], Any], budget_s: float
) -> tuple[float, float, float, float]:
    """Median and minimum per-call µs of ``ours`` and ``ref``, sampled alternately so machine
    load hits both alike: (median ours, median TA-Lib, min ours, min TA-Lib). On a loaded shared
    machine the minimum is the steadier figure (a sample can only be slowed down by load)."""
    loops_a, loops_b = _loops(ours), _loops(ref)
    a: list[float] = []
    b: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(a) < 7 or (time.perf_counter() < deadline and len(a) < 41):
        for func, loops, samples in ((ours, loops_a, a), (ref, loops_b, b)):
            t0 = time.perf_counter()
            for _ in range(loops):
                func()
            samples.append((time.perf_counter() - t0) / loops * 1e6)
    return statistics.median(a), statistics.median(b), min(a), min(b)


FIRST_CALL = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
sys.path.insert(0, {root!r})
from tradeengine import indicators as ind
t1 = time.perf_counter()
rng = np.random.default_rng(1)
c = 100 + np.cumsum(rng.normal(size=500)); h = c + 1; lo = c - 1; v = rng.random(500)
for call in (lambda: ind.sma(c, 20), lambda: ind.ema(c, 20), lambda: ind.wma(c, 20),
             lambda: ind.rsi(c, 14), lambda: ind.macd(c), lambda: ind.stochastic(h, lo, c),
             lambda: ind.cci(h, lo, c), lambda: ind.williams_r(h, lo, c), lambda: ind.roc(c),
             lambda: ind.bollinger_bands(c), lambda: ind.atr(h, lo, c),
             lambda: ind.keltner_channels(h, lo, c), lambda: ind.donchian_channels(h, lo),
             lambda: ind.obv(c, v), lambda: ind.volume_change(v), lambda: ind.adx(h, lo, c),
             lambda: ind.aroon(h, lo), lambda: ind.vwap(h, lo, c, v)):
    call()
t2 = time.perf_counter()
print(json.dumps({{"import_s": round(t1 - t0, 3), "first_calls_s": round(t2 - t1, 3)}}))
"""


def first_call_costs() -> dict[str, Any]:
    """Import + first call of every full-series function, in fresh interpreters with an empty
    numba cache (compile) and then with that cache warm (load), as a deployment sees them."""
    code = FIRST_CALL.format(root=str(ROOT))
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
        for label in ("cold_cache_compile", "warm_cache_load"):
            run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            out[label] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def full_series_cases(c: Columns) -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    h, lo, cl, v = c["high"], c["low"], c["close"], c["volume"]
    return [
        ("sma(20)", lambda: ind.sma(cl, 20), lambda: talib.SMA(cl, 20)),
        ("ema(20)", lambda: ind.ema(cl, 20), lambda: talib.EMA(cl, 20)),
        ("wma(20)", lambda: ind.wma(cl, 20), lambda: talib.WMA(cl, 20)),
        ("rsi(14)", lambda: ind.rsi(cl, 14), lambda: talib.RSI(cl, 14)),
        ("macd(12,26,9)", lambda: ind.macd(cl), lambda: talib.MACD(cl)),
        (
            "stochastic(14,3)",
            lambda: ind.stochastic(h, lo, cl, 14, 3),
            lambda: talib.STOCHF(h, lo, cl, 14, 3, 0),
        ),
        ("cci(20)", lambda: ind.cci(h, lo, cl, 20), lambda: talib.CCI(h, lo, cl, 20)),
        ("williams_r(14)", lambda: ind.williams_r(h, lo, cl, 14), lambda: talib.WILLR(h, lo, cl, 14)),
        ("roc(10)", lambda: ind.roc(cl, 10), lambda: talib.ROC(cl, 10)),
        (
            "bollinger_bands(20,2)",
            lambda: ind.bollinger_bands(cl, 20, 2.0),
            lambda: talib.BBANDS(cl, 20, 2.0, 2.0, 0),
        ),
        ("atr(14)", lambda: ind.atr(h, lo, cl, 14), lambda: talib.ATR(h, lo, cl, 14)),
        ("obv", lambda: ind.obv(cl, v), lambda: talib.OBV(cl, v)),
        ("adx(14)", lambda: ind.adx(h, lo, cl, 14), lambda: talib.ADX(h, lo, cl, 14)),
        ("aroon(14)", lambda: ind.aroon(h, lo, 14), lambda: talib.AROON(h, lo, 14)),
        # No TA-Lib indicator: the reference is the TA-Lib composition computing the same thing.
        (
            "keltner_channels(20,10,2) ~ EMA+ATR",
            lambda: ind.keltner_channels(h, lo, cl, 20, 10, 2.0),
            lambda: (talib.EMA(cl, 20), talib.ATR(h, lo, cl, 10)),
        ),
        (
            "donchian_channels(20) ~ MAX+MIN",
            lambda: ind.donchian_channels(h, lo, 20),
            lambda: (talib.MAX(h, 20), talib.MIN(lo, 20)),
        ),
        ("volume_ma(20) ~ SMA", lambda: ind.volume_ma(v, 20), lambda: talib.SMA(v, 20)),
        ("volume_change(20) ~ SMA", lambda: ind.volume_change(v, 20), lambda: talib.SMA(v, 20)),
        (
            "vwap ~ TYPPRICE (no TA-Lib VWAP)",
            lambda: ind.vwap(h, lo, cl, v),
            lambda: talib.TYPPRICE(h, lo, cl),
        ),
    ]


def helper_cases(k: ind.Klines, c: Columns) -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    h, lo, cl, v = c["high"], c["low"], c["close"], c["volume"]
    return [
        ("get_latest_sma(20)", lambda: ind.get_latest_sma(k, 20), lambda: talib.SMA(cl, 20)),
        ("get_latest_ema(20)", lambda: ind.get_latest_ema(k, 20), lambda: talib.EMA(cl, 20)),
        ("get_latest_wma(20)", lambda: ind.get_latest_wma(k, 20), lambda: talib.WMA(cl, 20)),
        ("get_latest_vwap ~ TYPPRICE", lambda: ind.get_latest_vwap(k), lambda: talib.TYPPRICE(h, lo, cl)),
        ("get_latest_rsi(14)", lambda: ind.get_latest_rsi(k, 14), lambda: talib.RSI(cl, 14)),
        ("get_latest_macd", lambda: ind.get_latest_macd(k), lambda: talib.MACD(cl)),
        (
            "get_latest_stochastic(14,3)",
            lambda: ind.get_latest_stochastic(k, 14, 3),
            lambda: talib.STOCHF(h, lo, cl, 14, 3, 0),
        ),
        ("get_latest_cci(20)", lambda: ind.get_latest_cci(k, 20), lambda: talib.CCI(h, lo, cl, 20)),
        (
            "get_latest_williams_r(14)",
            lambda: ind.get_latest_williams_r(k, 14),
            lambda: talib.WILLR(h, lo, cl, 14),
        ),
        ("get_latest_roc(10)", lambda: ind.get_latest_roc(k, 10), lambda: talib.ROC(cl, 10)),
        (
            "get_latest_bollinger_bands(20,2)",
            lambda: ind.get_latest_bollinger_bands(k, 20, 2.0),
            lambda: talib.BBANDS(cl, 20, 2.0, 2.0, 0),
        ),
        ("get_latest_atr(14)", lambda: ind.get_latest_atr(k, 14), lambda: talib.ATR(h, lo, cl, 14)),
        (
            "get_latest_keltner_channels ~ EMA+ATR",
            lambda: ind.get_latest_keltner_channels(k, 20, 10, 2.0),
            lambda: (talib.EMA(cl, 20), talib.ATR(h, lo, cl, 10)),
        ),
        (
            "get_latest_donchian_channels ~ MAX+MIN",
            lambda: ind.get_latest_donchian_channels(k, 20),
            lambda: (talib.MAX(h, 20), talib.MIN(lo, 20)),
        ),
        ("get_latest_volume(20) ~ SUM", lambda: ind.get_latest_volume(k, 20), lambda: talib.SUM(v, 20)),
        (
            "get_latest_volume_change(20) ~ SMA",
            lambda: ind.get_latest_volume_change(k, 20),
            lambda: talib.SMA(v, 20),
        ),
        ("get_latest_obv", lambda: ind.get_latest_obv(k), lambda: talib.OBV(cl, v)),
        ("get_latest_volume_ma(20) ~ SMA", lambda: ind.get_latest_volume_ma(k, 20), lambda: talib.SMA(v, 20)),
        ("get_latest_adx(14)", lambda: ind.get_latest_adx(k, 14), lambda: talib.ADX(h, lo, cl, 14)),
        ("get_latest_aroon(14)", lambda: ind.get_latest_aroon(k, 14), lambda: talib.AROON(h, lo, 14)),
    ]


def main() -> None:
    started = time.perf_counter()
    big = load_columns(100_000)
    small = {name: np.ascontiguousarray(col[-500:]) for name, col in big.items()}
    results: dict[str, Any] = {
        "meta": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "talib": talib.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "numba": numba.__version__,
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "note": "median per-call time in microseconds; ratio = ours / TA-Lib (lower is better)",
        },
        "full_series": {},
        "helpers": {},
    }
    lines: list[str] = []
    first = first_call_costs()
    results["first_call"] = first
    lines += [
        "First use (fresh interpreter): import compiles or loads every kernel (warm-up at import),",
        "then each of the 18 full-series functions is called once on 500 candles",
        *(
            f"  {label:20s} import {v['import_s']:.2f} s, first calls {v['first_calls_s']:.2f} s"
            for label, v in first.items()
        ),
        "",
    ]
    header = (
        f"{'indicator':44s} {'n':>7s} {'ours µs':>10s} {'TA-Lib µs':>10s} {'ratio':>7s}"
        f" {'min ours':>9s} {'min TA':>9s} {'r min':>6s}"
    )
    lines += ["Full series (medians, then minimums)", header]
    for size, cols, budget in ((500, small, 0.15), (100_000, big, 0.6)):
        for name, ours, ref in full_series_cases(cols):
            ours_us, ref_us, ours_min, ref_min = paired_median_us(ours, ref, budget)
            entry = {
                "ours_us": round(ours_us, 2),
                "talib_us": round(ref_us, 2),
                "ratio": round(ours_us / ref_us, 2),
                "ours_min_us": round(ours_min, 2),
                "talib_min_us": round(ref_min, 2),
                "ratio_min": round(ours_min / ref_min, 2),
            }
            results["full_series"].setdefault(name, {})[str(size)] = entry
            lines.append(
                f"{name:44s} {size:7d} {ours_us:10.1f} {ref_us:10.1f} {ours_us / ref_us:7.2f}"
                f" {ours_min:9.1f} {ref_min:9.1f} {ours_min / ref_min:6.2f}"
            )
    klines = ind.Klines.from_arrays(
        small["open_time"].astype(np.int64),
        small["open"],
        small["high"],
        small["low"],
        small["close"],
        small["volume"],
    )
    lines += [
        "",
        "Helpers on 500 candles (TA-Lib: full series on the same 500)",
        f"{'helper':44s} {'cached':>10s} {'uncached':>10s} {'TA-Lib µs':>10s} {'r warm':>7s} {'r cold':>7s}"
        f" {'r cold min':>10s}",
    ]
    for name, ours, ref in helper_cases(klines, small):
        cached_us, ref_us, _, _ = paired_median_us(ours, ref, 0.15)

        def cold(call: Callable[[], Any] = ours) -> Any:
            helper_module.clear_cache()
            return call()

        uncached_us, _, cold_min, ref_min = paired_median_us(cold, ref, 0.15)
        results["helpers"][name] = {
            "cached_us": round(cached_us, 2),
            "uncached_us": round(uncached_us, 2),
            "talib_us": round(ref_us, 2),
            "ratio_cached": round(cached_us / ref_us, 2),
            "ratio_uncached": round(uncached_us / ref_us, 2),
            "uncached_min_us": round(cold_min, 2),
            "talib_min_us": round(ref_min, 2),
            "ratio_uncached_min": round(cold_min / ref_min, 2),
        }
        lines.append(
            f"{name:44s} {cached_us:10.1f} {uncached_us:10.1f} {ref_us:10.1f} "
            f"{cached_us / ref_us:7.2f} {uncached_us / ref_us:7.2f} {cold_min / ref_min:10.2f}"
        )
    elapsed = time.perf_counter() - started
    results["meta"]["elapsed_s"] = round(elapsed, 1)
    results["meta"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {RESULTS.relative_to(ROOT)} in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
