"""The series form (``signal_series``): what it computes, what it refuses, and its limits.

Exactness is checked close by close against the per-close helpers on real candles; the refusals
are the ways hostile code could try to reach raw arrays, read ahead or allocate without bound.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tradeengine.examples import example
from tradeengine.exchange.files import data_path, load_candles
from tradeengine.indicators import (
    get_highest_high,
    get_latest_atr,
    get_latest_bollinger_bands,
    get_latest_ema,
    get_latest_macd,
    get_latest_rsi,
    get_latest_sma,
    get_latest_volume,
    get_latest_volume_ma,
    get_lowest_low,
)
from tradeengine.indicators.klines import Klines
from tradeengine.sandbox import StrategyCompileError, StrategyRuntimeError, compile_strategy
from tradeengine.sandbox.limits import Budget, SandboxLimits
from tradeengine.sandbox.series import (
    atr,
    bollinger_bands,
    ema,
    highest,
    lowest,
    macd,
    rolling_sum,
    rsi,
    series_klines,
    sma,
)
from tradeengine.sandbox.values import freeze_ticker

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"
WINDOW = 500
TICKER = freeze_ticker({"lastPrice": 1.0, "volume24h": 1.0, "priceChange24h": 0.0})


@pytest.fixture(scope="module")
def btc() -> Klines:
    return load_candles(data_path(DATA, "BTC/USDT", "5m"))


def view_at(k: Klines, i: int, window: int = WINDOW) -> Klines:
    """What check_signal's klines[tf] holds at the close of candle i (the runtime's view)."""
    columns = (k.open_time, k.open, k.high, k.low, k.close, k.volume)
    return Klines.window(columns, max(0, i + 1 - window), i + 1)


# Equivalence tests, not limit tests: a generous budget, so a collection of a big test-process
# heap during one of 65,000 calls cannot turn into a timeout.
GENEROUS_MS = 10_000


def per_close(strategy_source: str, k: Klines, indexes: range | list[int], window: int = WINDOW) -> list[bool]:
    strategy = compile_strategy(strategy_source, time_limit_ms=GENEROUS_MS)
    return [strategy.check_signal("BTC/USDT", TICKER, {"5m": view_at(k, i, window)}) for i in indexes]


def with_series(body: str) -> str:
    """A strategy whose check never matches and whose series form runs ``body`` (unindented)."""
    return PRELUDE + textwrap.indent(textwrap.dedent(body).strip("\n") + "\n", "    ")


PRELUDE = """def check_signal(symbol, ticker, klines):
    return False

def signal_series(symbol, klines):
"""


def series_of(source: str, k: Klines, window: int = WINDOW, timeframe: str = "5m") -> np.ndarray:
    return compile_strategy(source, time_limit_ms=GENEROUS_MS).signal_series("BTC/USDT", timeframe, k, window)


def test_bollinger_example_series_equals_check_signal_at_every_close(btc: Klines) -> None:
    source = example("bollinger_breakout").source
    mask = series_of(source, btc)
    checks = np.array(per_close(source, btc, range(len(btc.close))))
    # check_signal also refuses views under 30 candles; beyond that the two are the same function.
    assert not checks[:29].any()
    assert np.array_equal(mask[29:], checks[29:])
    assert 500 < int(mask.sum()) < 5000  # it does fire, and not everywhere


def test_rsi_example_series_equals_check_signal_at_every_close() -> None:
    k = load_candles(data_path(DATA, "SOL/USDT", "1h"))
    source = example("rsi_reversal").source
    mask = series_of(source, k, timeframe="1h")
    strategy = compile_strategy(source, time_limit_ms=GENEROUS_MS)
    checks = np.array([strategy.check_signal("SOL/USDT", TICKER, {"1h": view_at(k, i)}) for i in range(len(k.close))])
    # check_signal also refuses views under 50 candles; beyond that the two are the same function.
    assert not checks[:49].any()
    assert np.array_equal(mask[49:], checks[49:])
    assert 10 < int(mask.sum()) < 500  # it does fire (22 times on SOL), and not everywhere


@pytest.mark.parametrize("window", [WINDOW, 40, 15])
def test_ta_helpers_are_bit_identical_to_latest_helpers(btc: Klines, window: int) -> None:
    k = Klines(*(column[:3000] for column in (btc.open_time, btc.open, btc.high, btc.low, btc.close, btc.volume)))
    budget = Budget(SandboxLimits(time_limit_ms=600_000))
    budget.start()
    candles = series_klines("5m", k, window, budget)["5m"]
    got = {
        "sma": sma(candles.column("close"), 20)._values,
        "volume_ma": sma(candles.column("volume"), 20)._values,
        "volume_sum": rolling_sum(candles.column("volume"), 3)._values,
        "highest": highest(candles.column("high"), 14)._values,
        "lowest": lowest(candles.column("low"), 14)._values,
        "rsi": rsi(candles, 14)._values,
        "rsi_2": rsi(candles.column("open"), 2)._values,
        "ema": ema(candles, 12)._values,
        "atr": atr(candles, 14)._values,
        "macd": [part._values for part in macd(candles, 26, 12, 9)],  # swapped periods, as the helper takes them
        "bb": [band._values for band in bollinger_bands(candles, 20, 2.5)],
    }
    for i in range(len(k.close)):
        view = view_at(k, i, window)
        expected = {
            "sma": get_latest_sma(view, 20),
            "volume_ma": get_latest_volume_ma(view, 20),
            "volume_sum": get_latest_volume(view, 3),
            "highest": get_highest_high(view, 14),
            "lowest": get_lowest_low(view, 14),
            "rsi": get_latest_rsi(view, 14),
            "rsi_2": get_latest_rsi(Klines(view.open_time, *[view.open] * 4, view.volume), 2),
            "ema": get_latest_ema(view, 12),
            "atr": get_latest_atr(view, 14),
        }
        for name, value in expected.items():
            assert _same(got[name][i], value), (name, i)
        for band, value in zip(got["bb"], get_latest_bollinger_bands(view, 20, 2.5), strict=True):
            assert _same(band[i], value), ("bb", i)
        for part, value in zip(got["macd"], get_latest_macd(view, 26, 12, 9), strict=True):
            assert _same(part[i], value), ("macd", i)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b  # bit for bit, NaN where the helper is NaN


def test_operators_shift_and_crossings(btc: Klines) -> None:
    source = with_series("""
    c = klines["5m"]
    fast, slow = ta.sma(c.close, 5), ta.sma(c.close, 20)
    up = ta.crossed_above(fast, slow)
    manual = (fast > slow) & (fast.shift(1) <= slow.shift(1))
    same = (up == manual) | ~(up ^ manual)
    rising = (c.close - c.close.shift(3)) / c.close.shift(3) * 100 > 0.5
    return up & same & (rising | ~rising) & (2 * abs(-c.volume) >= c.volume + 0)
""")
    mask = series_of(source, btc)
    close = btc.close
    fast = np.array([get_latest_sma(view_at(btc, i), 5) for i in range(len(close))])
    slow = np.array([get_latest_sma(view_at(btc, i), 20) for i in range(len(close))])
    expected = np.zeros(len(close), dtype=bool)
    expected[1:] = (fast[1:] > slow[1:]) & (fast[:-1] <= slow[:-1])
    assert np.array_equal(mask, expected)
    assert mask.sum() > 100


REFUSED = [
    ("return klines['5m'].close._values > 0", StrategyCompileError, "_values"),
    ("return klines['5m'].close.base > 0", StrategyRuntimeError, "attribute 'base'"),
    ("return klines['5m'].close.tolist()", StrategyRuntimeError, "attribute 'tolist'"),
    ("return klines['5m'].close[0] > 0", StrategyRuntimeError, "no single elements"),
    ("return klines['5m'].close[-1:] > 0", StrategyRuntimeError, "no single elements"),
    ("return klines['5m'].close.shift(-1) > 0", StrategyRuntimeError, "look ahead"),
    ("return sum(klines['5m'].close) > 0", StrategyRuntimeError, "not iterable"),
    ("return max(klines['5m'].close) > 0", StrategyRuntimeError, "not iterable"),
    ("return [x for x in klines['5m'].close]", StrategyRuntimeError, "not iterable"),
    ("return klines['5m'].close > 0 and klines['5m'].volume > 0", StrategyRuntimeError, "no single truth"),
    ("return klines['5m'].close + [1.0] > 0", StrategyRuntimeError, "not a list"),
    ("return klines['5m'].close > 0 & klines['5m'].volume", StrategyRuntimeError, "true/false"),
    ("return klines['5m'].close", StrategyRuntimeError, "true/false series"),
    ("return 1.0", StrategyRuntimeError, "got a float"),
    ("return klines['1h'].close > 0", StrategyRuntimeError, "KeyError"),
    ("return ta.sma(klines['5m'].close, 0) > 0", StrategyRuntimeError, "period"),
    ("return get_latest_sma(klines['5m'], 20) > 0", StrategyRuntimeError, "does not accept"),
    ("return math.sqrt(klines['5m'].close) > 0", StrategyRuntimeError, "TypeError"),
    ("return klines['5m'].close + 2**2000 > 0", StrategyRuntimeError, "OverflowError"),
]


@pytest.mark.parametrize(("body", "error", "message"), REFUSED)
def test_series_refuses_what_could_escape_or_look_ahead(btc: Klines, body: str, error: type, message: str) -> None:
    source = with_series(body)
    with pytest.raises(error) as caught:
        series_of(source, btc)
    assert message in str(caught.value)


def test_series_memory_and_time_limits(btc: Klines) -> None:
    hoard = with_series("""
    kept = []
    for i in range(1000):
        kept.append(klines["5m"].close * i)
    return kept[0] > 0
""")
    with pytest.raises(StrategyRuntimeError) as caught:
        series_of(hoard, btc)
    assert caught.value.kind == "memory"
    spin = with_series("""
    while True:
        pass
""")
    strategy = compile_strategy(spin, time_limit_ms=5)
    with pytest.raises(StrategyRuntimeError) as caught:
        strategy.signal_series("BTC/USDT", "5m", btc, WINDOW)
    assert caught.value.kind == "timeout"
    # The budget is the per-call one again afterwards.
    assert strategy.check_signal("BTC/USDT", TICKER, {"5m": view_at(btc, 100)}) is False


def test_series_form_is_optional_and_checked_at_compile_time() -> None:
    plain = compile_strategy("def check_signal(symbol, ticker, klines):\n    return False\n")
    assert not plain.has_series
    with pytest.raises(ValueError, match="no signal_series"):
        plain.signal_series("BTC/USDT", "5m", Klines.empty(), WINDOW)
    with pytest.raises(StrategyCompileError, match="two arguments"):
        compile_strategy(
            "def check_signal(symbol, ticker, klines):\n    return False\n\n"
            "def signal_series(klines):\n    return klines\n"
        )
    camel = compile_strategy(
        "def checkSignal(symbol, ticker, klines):\n    return False\n\n"
        "def signalSeries(symbol, klines):\n    return klines['1h'].close > 0\n"
    )
    assert camel.has_series


def test_crossings_with_a_level(btc: Klines) -> None:
    source = with_series("""
    c = klines["5m"]
    return ta.crossed_below(c.close, 45000.5) | ta.crossed_above(c.close, 45000.5)
""")
    mask = series_of(source, btc)
    close = btc.close
    above = close > 45000.5
    expected = np.zeros(len(close), dtype=bool)
    expected[1:] = above[1:] != above[:-1]  # every crossing of the level, either way
    # (a close exactly at the level is neither above nor below: none in the data)
    assert not (close == 45000.5).any()
    assert np.array_equal(mask, expected) and 10 < mask.sum() < 1000
