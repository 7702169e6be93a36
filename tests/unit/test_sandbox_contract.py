"""The strategy contract: compile once, check_signal(symbol, ticker, klines) -> bool, errors with lines."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fakes.sandbox_candles import SYMBOLS, klines_1h, klines_4h, ticker_for

from tradeengine.indicators import HELPERS, get_latest_macd, get_latest_rsi
from tradeengine.sandbox import (
    CompiledStrategy,
    StrategyCompileError,
    StrategyError,
    StrategyRuntimeError,
    compile_strategy,
    freeze_klines,
    freeze_ticker,
)

# The seed's Go example ("Custom Indicator Support"), written in Python with the seed's names.
SEED_EXAMPLE = """
def checkSignal(symbol, ticker, klines):
    rsi = getLatestRSI(klines["1h"], 14)
    macd, signal, _ = getLatestMACD(klines["4h"])

    def customMomentum(k):
        closes = getCloses(k)
        if len(closes) < 10:
            return 0
        weightedSum = 0.0
        weightTotal = 0.0
        for i in range(10):
            weight = float(10 - i)
            previous = closes[len(closes) - 2 - i]
            priceChange = (closes[len(closes) - 1 - i] - previous) / previous
            weightedSum += priceChange * weight
            weightTotal += weight
        return weightedSum / weightTotal * 100

    momentum = customMomentum(klines["1h"])
    return rsi < 30 and macd > signal and momentum > 0.5
"""


def _inputs(symbol: str = "BTC/USDT", offset: int = 0) -> tuple[dict[str, float], dict[str, object]]:
    k1 = klines_1h(symbol, 500, offset)
    return ticker_for(k1), {"1h": k1, "4h": klines_4h(symbol, 200, offset // 4)}


def _seed_reference(klines: dict[str, object], rsi_below: float = 30, momentum_above: float = 0.5) -> bool:
    """The same rule computed directly with the indicator functions, outside the sandbox."""
    k1, k4 = klines["1h"], klines["4h"]
    rsi = get_latest_rsi(k1, 14)  # type: ignore[arg-type]
    macd, signal, _ = get_latest_macd(k4)  # type: ignore[arg-type]
    closes = k1.close  # type: ignore[attr-defined]
    weights = np.arange(10, 0, -1, dtype=np.float64)
    changes = np.array([(closes[-1 - i] - closes[-2 - i]) / closes[-2 - i] for i in range(10)])
    momentum = float((changes * weights).sum() / weights.sum() * 100)
    return bool(rsi < rsi_below and macd > signal and momentum > momentum_above)


def test_seed_example_compiles_and_matches_a_direct_computation_on_real_candles() -> None:
    strategy = compile_strategy(SEED_EXAMPLE)
    # The seed's thresholds rarely fire together; a looser copy shows both outcomes agree too.
    looser = compile_strategy(SEED_EXAMPLE.replace("rsi < 30", "rsi < 60").replace("momentum > 0.5", "momentum > 0"))
    assert isinstance(strategy, CompiledStrategy)
    assert strategy.entry_point == "checkSignal"
    results = []
    for symbol in SYMBOLS:
        for offset in range(0, 3000, 100):  # walk back through history
            ticker, klines = _inputs(symbol, offset)
            assert strategy.check_signal(symbol, ticker, klines) is _seed_reference(klines)
            got = looser.check_signal(symbol, ticker, klines)
            assert got is _seed_reference(klines, rsi_below=60, momentum_above=0)
            results.append(got)
    assert True in results
    assert False in results


def test_issue_example_with_snake_case_helpers() -> None:
    source = (
        "def check_signal(symbol, ticker, klines):\n"
        '    rsi = get_latest_rsi(klines["1h"], 14)\n'
        '    macd, signal, _ = get_latest_macd(klines["4h"])\n'
        "    return rsi < 101 and macd == macd and ticker['last_price'] == ticker['lastPrice']\n"
    )
    ticker, klines = _inputs()
    assert compile_strategy(source).check_signal("BTC/USDT", ticker, klines) is True


def test_every_helper_is_injected_under_its_name() -> None:
    names = sorted(name for name in HELPERS if name != "Klines")
    body = "\n".join(f"    assert {name} is not None" for name in names)
    source = f"def check_signal(symbol, ticker, klines):\n{body}\n    return True\n"
    ticker, klines = _inputs()
    assert compile_strategy(source).check_signal("BTC/USDT", ticker, klines) is True
    assert {"get_latest_rsi", "getLatestRSI", "getCloses", "get_closes"} <= set(names)


def test_columns_behave_like_read_only_float_sequences() -> None:
    source = """
def check_signal(symbol, ticker, klines):
    k = klines["1h"]
    closes = k.close
    assert isinstance(closes[-1], float)
    assert len(closes) == len(k) == 500
    window = closes[-20:]
    assert len(window) == 20 and window[-1] == closes[-1]
    assert abs(window.mean() - sum(window) / 20) < 1e-6
    assert window.max() == max(window) and window.min() == min(window)
    assert k.tail(5).close.tolist() == closes[-5:].tolist()
    assert k.open_time[-1] == k.last_open_time
    assert [c for c in closes[-3:]] == closes.tolist()[-3:]
    return getCloses(k)[-1] == closes[-1]
"""
    ticker, klines = _inputs()
    assert compile_strategy(source).check_signal("ETH/USDT", ticker, klines) is True


def test_math_import_and_helper_functions_work() -> None:
    source = """
import math
from math import sqrt

def stdev(values):
    mean = sum(values) / len(values)
    return sqrt(sum([(v - mean) ** 2 for v in values]) / len(values))

def check_signal(symbol, ticker, klines):
    closes = klines["1h"].close[-30:]
    return abs(stdev(closes) - closes.std()) < 1e-6 and math.isfinite(ticker["last_price"])
"""
    ticker, klines = _inputs()
    assert compile_strategy(source).check_signal("BTC/USDT", ticker, klines) is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("True", True),
        ("False", False),
        ("1", True),
        ("0", False),
        ("0.5", True),
        ("None", False),
        ("[1]", True),
        ("[]", False),
    ],
)
def test_truthy_results_are_converted(value: str, expected: bool) -> None:
    source = f"def check_signal(symbol, ticker, klines):\n    return {value}\n"
    ticker, klines = _inputs()
    assert compile_strategy(source).check_signal("BTC/USDT", ticker, klines) is expected


@pytest.mark.parametrize("value", ["float('nan')", "klines['1h'].close", "klines", "len"])
def test_results_that_are_not_truth_values_are_errors(value: str) -> None:
    source = f"def check_signal(symbol, ticker, klines):\n    return {value}\n"
    ticker, klines = _inputs()
    with pytest.raises(StrategyRuntimeError) as info:
        compile_strategy(source).check_signal("BTC/USDT", ticker, klines)
    assert info.value.kind == "result"


@pytest.mark.parametrize(
    ("source", "line", "fragment"),
    [
        ("x = 1\ny = 2\nimport os\n", 3, "import of 'os' is not allowed"),
        ("def check_signal(s, t, k):\n    return os.getcwd()\n", 2, "name 'os' is not allowed"),
        ("def check_signal(s, t, k):\n    return (\n", 2, "syntax error"),
        ("def check_signal(s, t, k):\n    return k.__class__\n", 2, "__class__"),
        ("\n\ndef check_signal(s, t, k):\n    return get_lates_rsi(k['1h'])\n", 4, "name 'get_lates_rsi'"),
        ("def check_signal(s, t, k):\n    class A: pass\n    return True\n", 2, "class definitions"),
        ("cache = {}\ndef check_signal(s, t, k):\n    return True\n", 1, "mutable state"),
        ("def check_signal(s, t, k, acc=[]):\n    return True\n", 1, "mutable state"),
        ("def check(s, t, k):\n    return True\n", None, "must define a function check_signal"),
        ("def check_signal(s):\n    return True\n", 1, "three arguments"),
        ("x = 1 / 0\ndef check_signal(s, t, k):\n    return True\n", 1, "ZeroDivisionError"),
    ],
)
def test_compile_errors_name_the_line(source: str, line: int | None, fragment: str) -> None:
    with pytest.raises(StrategyCompileError) as info:
        compile_strategy(source)
    assert fragment in str(info.value)
    assert info.value.line == line
    if line is not None:
        assert str(info.value).startswith(f"line {line}:")
    assert isinstance(info.value, StrategyError)


def test_runtime_errors_carry_the_line_and_exception() -> None:
    source = "def check_signal(s, t, k):\n    x = 1\n    return x / 0\n"
    ticker, klines = _inputs()
    with pytest.raises(StrategyRuntimeError) as info:
        compile_strategy(source).check_signal("BTC/USDT", ticker, klines)
    assert info.value.line == 3
    assert info.value.kind == "error"
    assert str(info.value) == "line 3: ZeroDivisionError: division by zero"


def test_missing_timeframe_is_a_runtime_error_naming_the_key() -> None:
    source = "def check_signal(s, t, k):\n    return get_latest_rsi(k['15m']) < 30\n"
    ticker, klines = _inputs()
    with pytest.raises(StrategyRuntimeError, match="KeyError: '15m'"):
        compile_strategy(source).check_signal("BTC/USDT", ticker, klines)


def test_print_is_captured_and_capped() -> None:
    source = (
        "def check_signal(symbol, ticker, klines):\n"
        "    print('checking', symbol, klines['1h'].close[-1] > 0)\n"
        "    for i in range(1000):\n"
        "        print('x' * 50)\n"
        "    return True\n"
    )
    strategy = compile_strategy(source, max_output_chars=500)
    ticker, klines = _inputs()
    assert strategy.check_signal("BTC/USDT", ticker, klines) is True
    assert strategy.last_output.startswith("checking BTC/USDT True\n")
    assert strategy.last_output.endswith("[output truncated]\n")
    assert len(strategy.last_output) < 600


def test_output_belongs_to_one_call() -> None:
    source = (
        "def announce():\n    print('loading')\nannounce()\n"
        "def check_signal(symbol, ticker, klines):\n    if symbol == 'A':\n        print(symbol)\n"
    )
    strategy = compile_strategy(source + "    return True\n")
    ticker, klines = _inputs()
    strategy.check_signal("B", ticker, klines)
    assert strategy.last_output == ""  # not what the module body printed
    strategy.check_signal("A", ticker, klines)
    assert strategy.last_output == "A\n"
    strategy.check_signal("B", ticker, klines)
    assert strategy.last_output == ""
    failing = compile_strategy(source + "    return 1 / 0\n")
    with pytest.raises(StrategyRuntimeError):
        failing.check_signal("A", ticker, klines)
    assert failing.last_output == "A\n"  # kept for the author, not carried into the next call
    with pytest.raises(StrategyRuntimeError):
        failing.check_signal("B", ticker, klines)
    assert failing.last_output == ""


def test_print_goes_nowhere_near_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    strategy = compile_strategy("def check_signal(s, t, k):\n    print('hello from strategy')\n    return False\n")
    ticker, klines = _inputs()
    strategy.check_signal("BTC/USDT", ticker, klines)
    assert "hello" not in capsys.readouterr().out
    assert strategy.last_output == "hello from strategy\n"


def test_ticker_accepts_snake_camel_and_ticker_updated_spellings() -> None:
    from decimal import Decimal

    from tradeengine.exchange.events import TickerUpdated

    source = (
        "def check_signal(s, t, k):\n"
        "    return (t['last_price'], t['lastPrice'], t['volume_24h'], t['volume24h'],"
        " round(t['price_change_24h'], 6), round(t['priceChange24h'], 6))"
        " == (110.0, 110.0, 5.0, 5.0, 10.0, 10.0)\n"
    )
    strategy = compile_strategy(source)
    _, klines = _inputs()
    snake = {"last_price": 110, "volume_24h": 5, "price_change_24h": 10}
    camel = {"lastPrice": "110", "volume24h": "5", "priceChange24h": "10"}
    event = TickerUpdated(
        symbol="BTC/USDT",
        timestamp=0,
        last=Decimal("110"),
        volume_24h=Decimal("5"),
        quote_volume_24h=Decimal("550"),
        change_24h_percent=Decimal("10"),
    )
    for ticker in (snake, camel, event, freeze_ticker(snake)):
        assert strategy.check_signal("BTC/USDT", ticker, klines) is True


def test_bad_host_inputs_are_value_errors_naming_the_field() -> None:
    strategy = compile_strategy("def check_signal(s, t, k):\n    return True\n")
    ticker, klines = _inputs()
    with pytest.raises(ValueError, match="'volume_24h' is missing"):
        strategy.check_signal("BTC/USDT", {"last_price": 1, "price_change_24h": 0}, klines)
    with pytest.raises(ValueError, match="'last_price' must be a number"):
        strategy.check_signal("BTC/USDT", {"last_price": "x", "volume_24h": 1, "price_change_24h": 0}, klines)
    with pytest.raises(ValueError, match=r"klines\['1h'\] must be a Klines"):
        strategy.check_signal("BTC/USDT", ticker, {"1h": [[0, 1, 1, 1, 1, 1]]})
    with pytest.raises(ValueError, match="symbol"):
        strategy.check_signal(42, ticker, klines)  # type: ignore[arg-type]


def test_frozen_inputs_are_reused_as_they_are() -> None:
    ticker, klines = _inputs()
    frozen_ticker, frozen_klines = freeze_ticker(ticker), freeze_klines(klines)
    assert freeze_ticker(frozen_ticker) is frozen_ticker
    assert freeze_klines(frozen_klines) is frozen_klines
    strategy = compile_strategy("def check_signal(s, t, k):\n    return k['1h'].close[-1] == t['last_price']\n")
    assert strategy.check_signal("BTC/USDT", frozen_ticker, frozen_klines) is True


def test_calls_start_fresh_no_state_carries_over() -> None:
    source = """
def check_signal(symbol, ticker, klines):
    seen = []
    seen.append(symbol)
    return len(seen) == 1
"""
    strategy = compile_strategy(source)
    ticker, klines = _inputs()
    assert all(strategy.check_signal(s, ticker, klines) for s in SYMBOLS * 3)


async def test_async_variant_runs_off_the_event_loop() -> None:
    strategy = compile_strategy(SEED_EXAMPLE)
    ticker, klines = _inputs()
    results = await asyncio.gather(*(strategy.check_signal_async("BTC/USDT", ticker, klines) for _ in range(8)))
    assert results == [strategy.check_signal("BTC/USDT", ticker, klines)] * 8
    hostile = compile_strategy("def check_signal(s, t, k):\n    while True:\n        pass\n")
    with pytest.raises(StrategyRuntimeError):
        await hostile.check_signal_async("BTC/USDT", ticker, klines)


def test_calls_on_one_instance_take_turns() -> None:
    # The budget and the output buffer belong to the instance: concurrent callers must queue.
    inside: list[int] = []
    overlaps: list[int] = []
    guard = threading.Lock()

    def probe() -> float:
        with guard:
            inside.append(1)
            overlaps.append(len(inside))
        time.sleep(0.0005)  # lets the other threads run into the busy instance
        with guard:
            inside.pop()
        return 1.0

    source = "def check_signal(symbol, ticker, klines):\n    print(symbol)\n    return probe() == 1.0\n"
    strategy = compile_strategy(source, helpers={"probe": probe})
    ticker, klines = freeze_ticker(_inputs()[0]), freeze_klines(_inputs()[1])

    def worker(n: int) -> list[bool]:
        return [strategy.check_signal(f"S{n}", ticker, klines) for _ in range(25)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(worker, range(6)))
    assert results == [[True] * 25] * 6
    assert len(overlaps) == 150 and max(overlaps) == 1
    assert strategy.last_output in {f"S{n}\n" for n in range(6)}


def test_helper_arguments_bind_as_the_helper_declares_and_are_checked() -> None:
    source = """
def check_signal(symbol, ticker, klines):
    k = klines["1h"]
    rsi = get_latest_rsi(k)
    assert rsi == get_latest_rsi(k, 14) == get_latest_rsi(klines=k, period=14) == getLatestRSI(k, period=14)
    upper, middle, lower = get_latest_bollinger_bands(k, std_dev=2.0)
    assert (upper, middle, lower) == get_latest_bollinger_bands(k, 20, 2.0)
    return getCloses(k)[-1] == k.close[-1]
"""
    ticker, klines = _inputs()
    assert compile_strategy(source).check_signal("BTC/USDT", ticker, klines) is True
    for call, message in (
        ("get_latest_rsi(k, [14])", "get_latest_rsi() does not accept 'list' object arguments"),
        ("get_latest_rsi(k, period=(14,))", "get_latest_rsi() does not accept 'tuple' object arguments"),
        ("getLatestRSI(k.close)", "getLatestRSI() does not accept column arguments"),
        ("get_latest_rsi(ticker)", "get_latest_rsi() does not accept read-only mapping arguments"),
        ("get_latest_rsi(k, periods=14)", "get_latest_rsi() got an unexpected keyword argument 'periods'"),
        ("getLatestRSI()", "getLatestRSI() missing 1 required positional argument: 'klines'"),
        ("get_latest_rsi(k, 14, 1)", "get_latest_rsi() takes from 1 to 2 positional arguments but 3 were given"),
    ):
        strategy = compile_strategy(f"def check_signal(s, ticker, klines):\n    k = klines['1h']\n    return {call}\n")
        with pytest.raises(StrategyRuntimeError, match=re.escape(message)):
            strategy.check_signal("BTC/USDT", ticker, klines)


def test_helpers_with_variable_arguments_are_checked_too() -> None:
    helpers = {"count": lambda *values, **named: float(len(values) + len(named)), "pair": lambda: (1.0, np.float64(2))}
    ticker, klines = _inputs()
    source = "def check_signal(s, t, k):\n    return count(1, 2.0, k['1h'], x=None) == 4.0 and pair() == (1.0, 2.0)\n"
    assert compile_strategy(source, helpers=helpers).check_signal("BTC/USDT", ticker, klines) is True
    for call in ("count([1])", "count(1, x=[1])"):
        strategy = compile_strategy(f"def check_signal(s, t, k):\n    return {call}\n", helpers=helpers)
        with pytest.raises(StrategyRuntimeError, match=re.escape("count() does not accept 'list' object arguments")):
            strategy.check_signal("BTC/USDT", ticker, klines)


def test_unpacking_assignments() -> None:
    source = """
def check_signal(symbol, ticker, klines):
    a, b = [1, 2]
    c, *rest = (3, 4, 5)
    d, e = "de"
    f, g = {"f": 1, "g": 2}
    (h, i), j = ((6, 7), 8)
    k, l = klines["1h"].close[-2:]
    m, n = (x for x in range(2))
    total = 0
    for p, q in [(1, 2), (3, 4)]:
        total += p * q
    assert (a, b, c, rest, d, e, f, g, h, i, j, m, n, total) == (1, 2, 3, [4, 5], "d", "e", "f", "g", 6, 7, 8, 0, 1, 14)
    return l == klines["1h"].close[-1]
"""
    ticker, klines = _inputs()
    assert compile_strategy(source).check_signal("BTC/USDT", ticker, klines) is True
    for statement, message in (
        ("a, b = (1, 2, 3)", "too many values to unpack (expected 2)"),
        ("a, b, c = [1, 2]", "not enough values to unpack (expected 3, got 2)"),
        ("a, b = 1.5", "'float' object is not iterable"),
    ):
        strategy = compile_strategy(f"def check_signal(s, t, k):\n    {statement}\n    return True\n")
        with pytest.raises(StrategyRuntimeError, match=re.escape(message)):
            strategy.check_signal("BTC/USDT", ticker, klines)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="time_limit_ms"):
        compile_strategy("def check_signal(s, t, k):\n    return True\n", time_limit_ms=0)
    with pytest.raises(ValueError, match="memory_limit_mb"):
        compile_strategy("def check_signal(s, t, k):\n    return True\n", memory_limit_mb=-1)


def test_custom_helpers_replace_the_default_set() -> None:
    strategy = compile_strategy(
        "def check_signal(s, t, k):\n    return double(21) == 42\n", helpers={"double": lambda x: x * 2}
    )
    ticker, klines = _inputs()
    assert strategy.check_signal("BTC/USDT", ticker, klines) is True
    with pytest.raises(StrategyCompileError, match="get_latest_rsi"):
        compile_strategy("def check_signal(s, t, k):\n    return get_latest_rsi(k['1h'])\n", helpers={})
    assert math.isfinite(1.0)
