"""The values a strategy's ``signal_series`` sees: whole columns it combines with operators.

``signal_series(symbol, klines)`` (optional, beside ``check_signal``) answers for every candle
close of a replay at once; backtests use it to skip the per-close call where it says no (see
docs/sandbox.md, "The series form"). Strategy code gets ``Series`` objects, never numpy arrays:

* operators work element by element (``+ - * / **``, unary ``-``, ``abs``, comparisons, and
  ``& | ^ ~`` on true/false series) with another series of the same length or a number;
* ``shift(n)`` looks ``n`` candles back; the ``ta`` helpers compute rolling windows over past
  candles only.

Nothing reads one element, reduces a whole series or shifts forward, so a series form cannot
look ahead: value i depends on candles ``<= i`` only. Each ``ta`` value is also bit for bit what
the matching ``get_latest_*`` helper returns for the view ``check_signal`` gets at that close
(its newest ``window`` candles), so a faithful series form agrees with ``check_signal`` exactly.

Every result is as long as the input (a replay's candles), and each allocation is vetted by the
strategy's budget like any large allocation, so memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradeengine.indicators import _kernels as _k
from tradeengine.indicators.core import _period
from tradeengine.indicators.klines import Klines
from tradeengine.sandbox.limits import BIG_ITEMS, Budget
from tradeengine.sandbox.values import KLINES_COLUMNS, SafeModule

SERIES_METHODS = frozenset({"shift"})


class Series:
    """One value per candle (floats, or true/false), read-only, for ``signal_series``."""

    __slots__ = ("_budget", "_values", "_window")
    __hash__ = None  # type: ignore[assignment]  # == is element-wise

    def __init__(self, values: NDArray[Any], window: int, budget: Budget) -> None:
        values.flags.writeable = False
        self._values = values
        self._window = window
        self._budget = budget

    def _new(self, values: NDArray[Any]) -> Series:
        return Series(values, self._window, self._budget)

    def _operand(self, other: Any, op: str) -> Any:
        t = type(other)
        if t is Series:
            if len(other._values) != len(self._values):
                raise ValueError(f"{op}: series of {len(self._values)} and {len(other._values)} values")
            return other._values
        if t is float or t is bool:
            return other
        if t is int:
            return float(other)  # OverflowError for integers beyond a float, as float() gives
        raise TypeError(f"{op}: a series combines with another series or a number, not {_describe(other)}")

    def _vet(self) -> None:
        n = len(self._values)
        if n >= BIG_ITEMS:
            self._budget.big(n * 8)

    def _arith(self, other: Any, op: str, fn: Callable[[Any, Any], Any]) -> Series:
        right = self._operand(other, op)
        self._vet()
        left = self._values
        if left.dtype == np.bool_:
            left = left.astype(np.float64)
        with np.errstate(all="ignore"):
            return self._new(np.asarray(fn(left, right), dtype=np.float64))

    def _compare(self, other: Any, op: str, fn: Callable[[Any, Any], Any]) -> Series:
        right = self._operand(other, op)
        self._vet()
        with np.errstate(invalid="ignore"):
            return self._new(np.asarray(fn(self._values, right), dtype=np.bool_))

    def _logic(self, other: Any, op: str, fn: Callable[[Any, Any], Any]) -> Series:
        right = self._operand(other, op)
        if self._values.dtype != np.bool_ or not (
            type(right) is bool or (isinstance(right, np.ndarray) and right.dtype == np.bool_)
        ):
            raise TypeError(f"{op} combines true/false series (comparisons), not numbers")
        self._vet()
        return self._new(fn(self._values, right))

    def __add__(self, other: Any) -> Series:
        return self._arith(other, "+", np.add)

    def __radd__(self, other: Any) -> Series:
        return self._arith(other, "+", lambda a, b: np.add(b, a))

    def __sub__(self, other: Any) -> Series:
        return self._arith(other, "-", np.subtract)

    def __rsub__(self, other: Any) -> Series:
        return self._arith(other, "-", lambda a, b: np.subtract(b, a))

    def __mul__(self, other: Any) -> Series:
        return self._arith(other, "*", np.multiply)

    def __rmul__(self, other: Any) -> Series:
        return self._arith(other, "*", lambda a, b: np.multiply(b, a))

    def __truediv__(self, other: Any) -> Series:
        return self._arith(other, "/", np.true_divide)

    def __rtruediv__(self, other: Any) -> Series:
        return self._arith(other, "/", lambda a, b: np.true_divide(b, a))

    def __pow__(self, other: Any) -> Series:
        return self._arith(other, "**", np.power)

    def __rpow__(self, other: Any) -> Series:
        return self._arith(other, "**", lambda a, b: np.power(b, a))

    def __neg__(self) -> Series:
        return self._arith(0.0, "-", lambda a, _: np.negative(a))

    def __abs__(self) -> Series:
        return self._arith(0.0, "abs", lambda a, _: np.abs(a))

    def __lt__(self, other: Any) -> Series:
        return self._compare(other, "<", np.less)

    def __le__(self, other: Any) -> Series:
        return self._compare(other, "<=", np.less_equal)

    def __gt__(self, other: Any) -> Series:
        return self._compare(other, ">", np.greater)

    def __ge__(self, other: Any) -> Series:
        return self._compare(other, ">=", np.greater_equal)

    def __eq__(self, other: Any) -> Series:  # type: ignore[override]
        return self._compare(other, "==", np.equal)

    def __ne__(self, other: Any) -> Series:  # type: ignore[override]
        return self._compare(other, "!=", np.not_equal)

    def __and__(self, other: Any) -> Series:
        return self._logic(other, "&", np.logical_and)

    __rand__ = __and__

    def __or__(self, other: Any) -> Series:
        return self._logic(other, "|", np.logical_or)

    __ror__ = __or__

    def __xor__(self, other: Any) -> Series:
        return self._logic(other, "^", np.logical_xor)

    __rxor__ = __xor__

    def __invert__(self) -> Series:
        return self._logic(True, "~", lambda a, _: np.logical_not(a))

    def __len__(self) -> int:
        return len(self._values)

    def __bool__(self) -> bool:
        raise TypeError("a series has no single truth value: combine conditions with & | ~ (not and/or/not, not if)")

    def __iter__(self) -> Any:
        raise TypeError("a series is not iterable: it holds a value per candle; use its operators and ta helpers")

    def __getitem__(self, key: Any) -> Any:
        raise TypeError("a series has no single elements to read (that could look ahead); use shift(n) to look back")

    def __repr__(self) -> str:
        kind = "true/false" if self._values.dtype == np.bool_ else "float"
        return f"<{kind} series of {len(self._values)} values>"

    def shift(self, n: int = 1) -> Series:
        """The value ``n`` candles back (``n >= 0``); NaN (false for true/false series) before that."""
        if type(n) is not int or n < 0:
            raise ValueError("shift(n) needs a whole number n >= 0 (a negative shift would look ahead)")
        values = self._values
        self._vet()
        out = np.full(len(values), False if values.dtype == np.bool_ else math.nan, dtype=values.dtype)
        if n < len(values):
            out[n:] = values[: len(values) - n]
        return self._new(out)


class SeriesCandles:
    """One timeframe's candles for ``signal_series``: its columns as series (``candles.close``)."""

    __slots__ = ("_columns", "_length")

    def __init__(self, klines: Klines, window: int, budget: Budget) -> None:
        self._length = len(klines.close)
        self._columns = {
            name: Series(np.asarray(getattr(klines, name), dtype=np.float64), window, budget) for name in KLINES_COLUMNS
        }

    def column(self, name: str) -> Series:
        return self._columns[name]

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"<candles series of {self._length} values>"


def _describe(value: Any) -> str:
    return f"a {type(value).__name__}" if not isinstance(value, SeriesCandles) else "candles (pick a column)"


def _series(value: Any, helper: str, name: str = "series") -> Series:
    if type(value) is SeriesCandles:
        return value.column("close")
    if type(value) is not Series:
        raise TypeError(f"ta.{helper}() takes a series or candles as {name}, not {_describe(value)}")
    return value


def _float_input(series: Series) -> NDArray[np.float64]:
    values = series._values
    series._vet()
    return values if values.dtype == np.float64 else values.astype(np.float64)


def _all_nan(series: Series) -> Series:
    series._vet()
    return series._new(np.full(len(series._values), math.nan))


def _windowed(series: Series, period: int, kernel: Callable[[NDArray[np.float64], int], NDArray[np.float64]]) -> Series:
    # A view of fewer than ``period`` candles makes the newest-window helper NaN at every close.
    if period > series._window:
        return _all_nan(series)
    return series._new(kernel(_float_input(series), period))


def sma(series: Any, period: int = 20) -> Series:
    """Simple moving average per close (``get_latest_sma``; of volume, ``get_latest_volume_ma``)."""
    s = _series(series, "sma")
    period = _period(period, "period")
    return _windowed(s, period, lambda x, p: _k.window_sums(x, p) / p)


def rolling_sum(series: Any, period: int) -> Series:
    """Sum of the last ``period`` values per close (``get_latest_volume(candles, period)``)."""
    return _windowed(_series(series, "rolling_sum"), _period(period, "period"), _k.window_sums)


def highest(series: Any, period: int) -> Series:
    """Largest of the last ``period`` values per close (``get_highest_high`` on highs)."""
    return _windowed(_series(series, "highest"), _period(period, "period"), _k.window_max)


def lowest(series: Any, period: int) -> Series:
    """Smallest of the last ``period`` values per close (``get_lowest_low`` on lows)."""
    return _windowed(_series(series, "lowest"), _period(period, "period"), _k.window_min)


def bollinger_bands(series: Any, period: int = 20, std_dev: float = 2.0) -> tuple[Series, Series, Series]:
    """(upper, middle, lower) per close, as ``get_latest_bollinger_bands``."""
    s = _series(series, "bollinger_bands")
    period = _period(period, "period")
    if type(std_dev) is int:
        std_dev = float(std_dev)
    if type(std_dev) is not float or not math.isfinite(std_dev):
        raise ValueError("ta.bollinger_bands(): std_dev must be a finite number")
    if period > s._window:
        return _all_nan(s), _all_nan(s), _all_nan(s)
    x = _float_input(s)
    s._vet()  # three results, one vetted with the input
    s._vet()
    upper, middle, lower = _k.window_bbands(x, period, std_dev)
    return s._new(upper), s._new(middle), s._new(lower)


# EMA, RSI, MACD and ATR seed at the first candle they are given, so their value at a close
# depends on where check_signal's view starts: each close runs the recursion over its own view
# (``n x window`` steps against ``n`` for the window-only helpers above).


def ema(series: Any, period: int = 20) -> Series:
    """Exponential moving average per close, as ``get_latest_ema`` on ``check_signal``'s view."""
    s = _series(series, "ema")
    period = _period(period, "period")
    if period > s._window:  # every view is shorter than ``period``
        return _all_nan(s)
    return s._new(_k.window_ema(_float_input(s), s._window, period, 2.0 / (period + 1)))


def rsi(series: Any, period: int = 14) -> Series:
    """RSI per close, as ``get_latest_rsi`` on ``check_signal``'s view."""
    s = _series(series, "rsi")
    period = _period(period, "period")
    if period >= s._window:  # every view has ``period`` candles or fewer
        return _all_nan(s)
    return s._new(_k.window_rsi(_float_input(s), s._window, period))


def macd(
    series: Any, fast_period: int = 12, slow_period: int = 26, signal_period: int = 9
) -> tuple[Series, Series, Series]:
    """(macd, signal, histogram) per close, as ``get_latest_macd`` on ``check_signal``'s view."""
    s = _series(series, "macd")
    fast_period = _period(fast_period, "fast_period")
    slow_period = _period(slow_period, "slow_period")
    signal_period = _period(signal_period, "signal_period")
    fast, slow = sorted((fast_period, slow_period))  # as get_latest_macd
    if slow + signal_period - 1 > s._window:
        return _all_nan(s), _all_nan(s), _all_nan(s)
    x = _float_input(s)
    s._vet()  # three results, one vetted with the input
    s._vet()
    line, signal, hist = _k.window_macd(x, s._window, fast, slow, signal_period)
    return s._new(line), s._new(signal), s._new(hist)


def atr(candles: Any, period: int = 14) -> Series:
    """Average true range per close, as ``get_latest_atr`` on ``check_signal``'s view."""
    if type(candles) is not SeriesCandles:
        raise TypeError(f"ta.atr() takes candles (high, low and close), not {_describe(candles)}")
    period = _period(period, "period")
    close = candles.column("close")
    if period >= close._window:
        return _all_nan(close)
    high, low = _float_input(candles.column("high")), _float_input(candles.column("low"))
    return close._new(_k.window_atr(high, low, _float_input(close), close._window, period))


def crossed_above(left: Any, right: Any) -> Series:
    """True where ``left`` moved from <= ``right`` on the previous close to > on this one."""
    a, b, b_before = _crossing(left, right, "crossed_above")
    return (a > b) & (a.shift(1) <= b_before)


def crossed_below(left: Any, right: Any) -> Series:
    """True where ``left`` moved from >= ``right`` on the previous close to < on this one."""
    a, b, b_before = _crossing(left, right, "crossed_below")
    return (a < b) & (a.shift(1) >= b_before)


def _crossing(left: Any, right: Any, helper: str) -> tuple[Series, Series | float, Series | float]:
    """``left`` as a series, and ``right`` (a series or a number) now and one close before."""
    a = _series(left, helper, "left")
    if type(right) in (int, float):
        return a, float(right), float(right)
    b = _series(right, helper, "right")
    return a, b, b.shift(1)


TA = SafeModule(
    "ta",
    {
        "sma": sma,
        "rolling_sum": rolling_sum,
        "highest": highest,
        "lowest": lowest,
        "bollinger_bands": bollinger_bands,
        "ema": ema,
        "rsi": rsi,
        "macd": macd,
        "atr": atr,
        "crossed_above": crossed_above,
        "crossed_below": crossed_below,
    },
)


def series_klines(timeframe: str, klines: Klines, window: int, budget: Budget) -> dict[str, SeriesCandles]:
    """The ``klines`` argument of ``signal_series``: the one timeframe it decides on."""
    return {timeframe: SeriesCandles(klines, window, budget)}


def signal_mask(result: Any, length: int) -> NDArray[np.bool_]:
    """``signal_series``'s result as one bool per candle, or a clear error."""
    if type(result) is not Series:
        raise TypeError(f"signal_series must return a true/false series (a comparison), got {_describe(result)}")
    values = result._values
    if values.dtype != np.bool_:
        raise TypeError("signal_series must return a true/false series; compare the float series it returned")
    if len(values) != length:
        raise ValueError(f"signal_series returned {len(values)} values for {length} candles")
    return values
