"""Full-series indicators over float64 arrays, aligned with the input.

Every function returns arrays as long as its input with NaN during the warm-up, never mutates
its arguments, and raises ``ValueError`` naming the argument for bad arguments.

Where TA-Lib has the indicator the result equals TA-Lib's (same warm-up, same conventions for
flat series and zero ranges, leading NaNs skipped like the ``talib`` Python wrapper does). The
arithmetic runs in the compiled loops of ``_kernels``, which repeat TA-Lib's C code operation
for operation: results are bit-identical to TA-Lib (Bollinger's deviation: to a few ulp) at C
speed. This module validates arguments and hands plain float64 arrays to those loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradeengine.indicators import _kernels as _k

FloatArray = NDArray[np.float64]
ArrayLike = FloatArray | Sequence[float]

# TA-Lib (C library 0.6.x, bundled with ta-lib 0.6+) treats |v| < 1e-14 as zero.
_TA_EPSILON = 1e-14


# --------------------------------------------------------------------------- validation


def _array(values: Any, name: str) -> FloatArray:
    """``values`` as a read-only, C-contiguous float64 1-D array (no copy when it already is).

    One array type for every kernel means one compiled specialization each, loaded once at
    import (``_kernels.warm_up``), so no call ever pays a compile (``Klines`` columns are
    already read-only; other arrays get a read-only view, never a copy).
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D sequence of numbers: {exc}") from exc
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def _same_length(first: FloatArray, **others: FloatArray) -> None:
    for name, array in others.items():
        if len(array) != len(first):
            raise ValueError(f"{name} must have the same length as the first series ({len(first)}), got {len(array)}")


# Periods beyond this are clamped to it. No series is that long, so the result (all NaN) is the
# same; but the kernels do int64 arithmetic on periods (``slow + signal - 1``, ``2 * period``),
# and near 2**62 that overflows into out-of-bounds indexing: a segfault, not an error.
MAX_PERIOD = 2**31 - 1


def _period(value: Any, name: str, minimum: int = 1) -> int:
    if type(value) is int and minimum <= value <= MAX_PERIOD:  # the common case, kept cheap for the helpers
        return value
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return min(int(value), MAX_PERIOD)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _begin(*arrays: FloatArray) -> int:
    """Index of the first position where no input is NaN (the talib wrapper skips leading NaNs)."""
    n = len(arrays[0])
    if n == 0:
        return 0
    for a in arrays:  # the common case, kept cheap for the helpers: no leading NaN
        first = a.item(0)
        if first != first:
            break
    else:
        return 0
    bad = np.isnan(arrays[0])
    for array in arrays[1:]:
        bad = bad | np.isnan(array)
    good = np.flatnonzero(~bad)
    return int(good[0]) if len(good) else n


def _hlc(high: ArrayLike, low: ArrayLike, close: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    h, lo, c = _array(high, "high"), _array(low, "low"), _array(close, "close")
    _same_length(h, low=lo, close=c)
    return h, lo, c


# --------------------------------------------------------------------------- moving averages


def sma(close: ArrayLike, period: int = 20) -> FloatArray:
    """Simple moving average (TA-Lib SMA)."""
    x = _array(close, "close")
    period = _period(period, "period")
    return _k.sma(x, _begin(x), period)


def ema(close: ArrayLike, period: int = 20) -> FloatArray:
    """Exponential moving average, k = 2 / (period + 1), seeded with the SMA (TA-Lib EMA)."""
    x = _array(close, "close")
    period = _period(period, "period")
    return _k.ema(x, _begin(x), period, 2.0 / (period + 1))


def wma(close: ArrayLike, period: int = 20) -> FloatArray:
    """Linearly weighted moving average, newest weight ``period`` (TA-Lib WMA)."""
    x = _array(close, "close")
    period = _period(period, "period")
    return _k.wma(x, _begin(x), period)


def vwap(high: ArrayLike, low: ArrayLike, close: ArrayLike, volume: ArrayLike) -> FloatArray:
    """Volume-weighted average price, cumulative from the first candle given.

    ``vwap[t] = sum(tp[0..t] * volume[0..t]) / sum(volume[0..t])`` with typical price
    ``tp = (high + low + close) / 3``; NaN while the cumulative volume is 0. The anchor is
    the start of the window you pass (e.g. the day's candles for a session VWAP).
    """
    h, lo, c = _hlc(high, low, close)
    v = _array(volume, "volume")
    _same_length(h, volume=v)
    return _k.vwap(h, lo, c, v)


def volume_ma(volume: ArrayLike, period: int = 20) -> FloatArray:
    """Simple moving average of volume (same arithmetic as ``sma``)."""
    return sma(_array(volume, "volume"), period)


# --------------------------------------------------------------------------- momentum


def rsi(close: ArrayLike, period: int = 14) -> FloatArray:
    """Relative strength index with Wilder smoothing (TA-Lib RSI, unstable period 0).

    A flat series (no gains, no losses) gives 0, as in TA-Lib.
    """
    x = _array(close, "close")
    period = _period(period, "period")
    return _k.rsi(x, _begin(x), period)


def macd(
    close: ArrayLike, fast_period: int = 12, slow_period: int = 26, signal_period: int = 9
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """MACD line, signal line and histogram (TA-Lib MACD).

    As in TA-Lib the fast EMA is seeded at the same bar as the slow one, and all three
    outputs start at index ``slow - 1 + signal - 1``.
    """
    x = _array(close, "close")
    fast_period = _period(fast_period, "fast_period")
    slow_period = _period(slow_period, "slow_period")
    signal_period = _period(signal_period, "signal_period")
    if slow_period < fast_period:  # TA-Lib swaps them
        fast_period, slow_period = slow_period, fast_period
    return _k.macd(x, _begin(x), fast_period, slow_period, signal_period)


def stochastic(
    high: ArrayLike, low: ArrayLike, close: ArrayLike, k_period: int = 14, d_period: int = 3
) -> tuple[FloatArray, FloatArray]:
    """Fast stochastic (TA-Lib STOCHF): %K raw, %D the SMA of %K; both start at k-1 + d-1.

    A zero high-low range gives %K = 0, as in TA-Lib.
    """
    h, lo, c = _hlc(high, low, close)
    k_period = _period(k_period, "k_period")
    d_period = _period(d_period, "d_period")
    return _k.stochf(h, lo, c, _begin(h, lo, c), k_period, d_period)


def cci(high: ArrayLike, low: ArrayLike, close: ArrayLike, period: int = 20) -> FloatArray:
    """Commodity channel index (TA-Lib CCI): (tp - mean) / (0.015 * mean deviation).

    Sums follow TA-Lib's circular-buffer order, so a CCI near zero keeps its last digits.
    Zero deviation gives 0, as in TA-Lib.
    """
    h, lo, c = _hlc(high, low, close)
    period = _period(period, "period")
    return _k.cci(h, lo, c, _begin(h, lo, c), period)


def williams_r(high: ArrayLike, low: ArrayLike, close: ArrayLike, period: int = 14) -> FloatArray:
    """Williams %R in [-100, 0] (TA-Lib WILLR); a zero range gives 0, as in TA-Lib."""
    h, lo, c = _hlc(high, low, close)
    period = _period(period, "period")
    return _k.willr(h, lo, c, _begin(h, lo, c), period)


def roc(close: ArrayLike, period: int = 10) -> FloatArray:
    """Rate of change in percent, ``(close / close[t - period] - 1) * 100`` (TA-Lib ROC).

    A zero reference price gives 0, as in TA-Lib.
    """
    x = _array(close, "close")
    period = _period(period, "period")
    return _k.roc(x, _begin(x), period)


# --------------------------------------------------------------------------- volatility


def bollinger_bands(
    close: ArrayLike, period: int = 20, std_dev: float = 2.0
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Upper, middle (SMA), lower: middle ± std_dev × population std (TA-Lib BBANDS, SMA)."""
    x = _array(close, "close")
    period = _period(period, "period")
    std_dev = _number(std_dev, "std_dev")
    return _k.bbands(x, _begin(x), period, std_dev)


def atr(high: ArrayLike, low: ArrayLike, close: ArrayLike, period: int = 14) -> FloatArray:
    """Average true range with Wilder smoothing, first value the SMA of TR (TA-Lib ATR)."""
    h, lo, c = _hlc(high, low, close)
    period = _period(period, "period")
    return _k.atr(h, lo, c, _begin(h, lo, c), period)


def keltner_channels(
    high: ArrayLike,
    low: ArrayLike,
    close: ArrayLike,
    period: int = 20,
    atr_period: int = 10,
    multiplier: float = 2.0,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Keltner channels: middle = EMA(close, period), upper/lower = middle ± multiplier × ATR(atr_period).

    EMA and ATR are the TA-Lib-exact ``ema`` and ``atr`` above; NaN until both are defined.
    """
    h, lo, c = _hlc(high, low, close)
    multiplier = _number(multiplier, "multiplier")
    period = _period(period, "period")
    atr_period = _period(atr_period, "atr_period")
    return _k.keltner(h, lo, c, _begin(c), _begin(h, lo, c), period, atr_period, multiplier)


def donchian_channels(high: ArrayLike, low: ArrayLike, period: int = 20) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Donchian channels over the last ``period`` candles including the current one.

    upper = max(high), lower = min(low), middle = (upper + lower) / 2; a NaN in the window
    gives NaN.
    """
    h, lo = _array(high, "high"), _array(low, "low")
    _same_length(h, low=lo)
    period = _period(period, "period")
    upper, lower = _k.window_extremes(h, lo, period)
    return upper, (upper + lower) / 2.0, lower


# --------------------------------------------------------------------------- volume


def obv(close: ArrayLike, volume: ArrayLike) -> FloatArray:
    """On-balance volume starting at volume[0] (TA-Lib OBV)."""
    c, v = _array(close, "close"), _array(volume, "volume")
    _same_length(c, volume=v)
    return _k.obv(c, v, _begin(c, v))


def volume_change(volume: ArrayLike, period: int = 20) -> FloatArray:
    """Percent change of each candle's volume against the mean volume of the ``period`` candles before it.

    ``(volume[t] / mean(volume[t-period .. t-1]) - 1) * 100``; NaN when that mean is 0.
    """
    v = _array(volume, "volume")
    period = _period(period, "period")
    return _k.volume_change(v, period)


# --------------------------------------------------------------------------- trend strength


def adx(high: ArrayLike, low: ArrayLike, close: ArrayLike, period: int = 14) -> FloatArray:
    """Average directional index (TA-Lib ADX, Wilder smoothing, first value at 2 * period - 1)."""
    h, lo, c = _hlc(high, low, close)
    period = _period(period, "period")
    return _k.adx(h, lo, c, _begin(h, lo, c), period)


def aroon(high: ArrayLike, low: ArrayLike, period: int = 14) -> tuple[FloatArray, FloatArray]:
    """Aroon up and down in [0, 100] over ``period + 1`` candles, ties to the newest (TA-Lib AROON)."""
    h, lo = _array(high, "high"), _array(low, "low")
    _same_length(h, low=lo)
    period = _period(period, "period")
    return _k.aroon(h, lo, _begin(h, lo), period)
