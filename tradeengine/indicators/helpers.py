"""The indicator helpers strategy code calls: one function per line of the seed's helper list.

``klines`` is a ``Klines`` view or a sequence of Binance rows ``[open_time, open, high, low,
close, volume, ...]``. A ``get_latest_*`` value equals the last element of the matching
full-series function in ``core`` on the same candles (NaN when there are too few candles).

Window-only helpers read just the newest window the value needs and run one compiled kernel over
it that returns numbers (``_kernels.last_*``; ROC and the price changes just read two closes):
SMA, WMA, Bollinger, STOCHF, CCI, WILLR, ROC, Donchian, AROON, volume, volume MA, volume change,
and the price-action helpers; their cost does not grow with the number of candles given. Most
give bit for bit what the full-series function gives when run on that window alone; CCI sums its
window in the full series' buffer order and is bit-identical to the full series over all the
candles. SMA, volume MA and Bollinger sum the window left to right (within a few ulp of the
exact mean) where the full series carries TA-Lib's running totals from the first candle (which
drift by up to ~100 ulp for closes over a long series, more for spiky volumes), so they agree
with it to ~1e-12 relative on the real files, and their value does not depend on where the
series starts. A NaN older than the window does not reach a window-only value (TA-Lib's running
sums would carry it on for ever).

Recursive indicators (EMA, RSI, MACD, ATR, ADX, Keltner) and the accumulating ones (OBV, VWAP)
run over all the candles given; their results for ``Klines`` inputs are cached (see ``_run``)
so many strategies asking for the same value in one tick pay once. A window-only helper costs
about what a cache lookup would, so it is not cached.

Kernels are called through their raw entry points (``_kernels._entry_point``), skipping numba's
per-call dispatch; ``_column`` makes sure only arrays those read correctly get there. A
``Klines`` view already holds validated 1-D columns, so ``core``'s argument checks are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np

from tradeengine.indicators import _kernels as _k
from tradeengine.indicators import core
from tradeengine.indicators.core import FloatArray, _begin, _period
from tradeengine.indicators.klines import Klines

KlinesInput: TypeAlias = Klines | Sequence[Sequence[Any]]
Pair: TypeAlias = tuple[float, float]
Triple: TypeAlias = tuple[float, float, float]

_NAN = math.nan
_INF = math.inf
_F8 = np.dtype(np.float64)
_UNIT_STRIDE = (8,)
_CACHE_LIMIT = 4096
# key -> (the view, kept alive so its id() cannot be reused while the entry exists; value)
_cache: dict[tuple[Any, ...], tuple[Klines, Any]] = {}


def _klines(klines: KlinesInput) -> Klines:
    if isinstance(klines, Klines):
        return klines
    if isinstance(klines, str | bytes | dict) or not isinstance(klines, Sequence | np.ndarray):
        raise ValueError(
            "klines must be a Klines view or a sequence of [open_time, open, high, low, close, volume] rows"
        )
    return Klines.from_rows(klines)


def _column(x: FloatArray) -> FloatArray:
    """``x`` as the kernels' entry points read it: 1-D, unit stride, float64.

    The kline store's columns (and those of ``Klines.from_rows``/``from_arrays``) already are;
    anything else (a strided or non-float64 column of a hand-built ``Klines``) is copied.
    """
    if x.strides == _UNIT_STRIDE and x.dtype is _F8:
        return x
    return core._array(x, "klines")


def _close(klines: KlinesInput) -> FloatArray:
    """``_column`` of the close column, in one call (the window helpers' per-call overhead is
    most of their cost)."""
    c = (klines if type(klines) is Klines else _klines(klines)).close
    return c if c.strides == _UNIT_STRIDE and c.dtype is _F8 else core._array(c, "klines")


def _volume(klines: KlinesInput) -> FloatArray:
    """``_column`` of the volume column, in one call."""
    v = (klines if type(klines) is Klines else _klines(klines)).volume
    return v if v.strides == _UNIT_STRIDE and v.dtype is _F8 else core._array(v, "klines")


def _hlc(klines: KlinesInput) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``_column`` of high, low and close, in one call."""
    k = klines if type(klines) is Klines else _klines(klines)
    return _column(k.high), _column(k.low), _column(k.close)


def _std_dev(value: Any) -> float:
    if type(value) is float and -_INF < value < _INF:  # the common case, kept cheap
        return value
    return core._number(value, "std_dev")


def clear_cache() -> None:
    """Drop all memoized helper results."""
    _cache.clear()


def _last(values: FloatArray) -> float:
    return values.item(-1) if len(values) else _NAN


def _run(
    name: str, params: tuple[Any, ...], klines: KlinesInput, compute: Callable[[Klines], Any], *, ranges: bool = False
) -> Any:
    """Return ``compute(klines)``, memoized for ``Klines`` inputs so a tick's many strategies pay once.

    Key: helper, parameters, the view's ``id``, and the newest candle's open time, close and
    volume (with ``ranges``, for helpers that read them, also its high and low). The kline store
    appends by shifting (the newest open time changes) and updates the still-open candle in
    place, so neither can return a stale value. The view, not one of its columns: two views
    built around the same close array may differ in every other column. Each entry keeps the
    view alive, so its ``id`` cannot be recycled by another view while the entry exists.
    """
    if type(klines) is not Klines:
        return compute(_klines(klines))
    close = klines.close
    if not len(close):
        return compute(klines)
    if ranges:
        key: tuple[Any, ...] = (
            name,
            params,
            id(klines),
            klines.open_time.item(-1),
            close.item(-1),
            klines.volume.item(-1),
            klines.high.item(-1),
            klines.low.item(-1),
        )
    else:
        key = (name, params, id(klines), klines.open_time.item(-1), close.item(-1), klines.volume.item(-1))
    hit = _cache.get(key)
    if hit is not None:
        return hit[1]
    value = compute(klines)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()  # cheap and bounded; entries only matter for about one tick anyway
    _cache[key] = (klines, value)
    return value


# --------------------------------------------------------------------------- trend


def get_latest_sma(klines: KlinesInput, period: int = 20) -> float:
    """Latest simple moving average of close."""
    period = _period(period, "period")
    c = _close(klines)
    if len(c) < period:
        return _NAN
    return _k.last_sum_entry(c, period) / period


def get_latest_ema(klines: KlinesInput, period: int = 20) -> float:
    """Latest exponential moving average of close (TA-Lib seeding, full series)."""
    period = _period(period, "period")
    k_ema = 2.0 / (period + 1)

    def compute(k: Klines) -> float:
        c = _column(k.close)
        if len(c) < period:
            return _NAN
        return _k.ema_entry(c, _begin(c), period, k_ema).item(-1)

    result: float = _run("ema", (period,), klines, compute)
    return result


def get_latest_wma(klines: KlinesInput, period: int = 20) -> float:
    """Latest weighted moving average of close."""
    period = _period(period, "period")
    c = _close(klines)
    if len(c) < period:
        return _NAN
    return _k.last_wma_entry(c, period)


def get_latest_vwap(klines: KlinesInput) -> float:
    """VWAP over all the candles given (typical price weighted by volume); NaN if no volume."""

    def compute(k: Klines) -> float:
        return _last(_k.vwap_entry(_column(k.high), _column(k.low), _column(k.close), _column(k.volume)))

    result: float = _run("vwap", (), klines, compute, ranges=True)
    return result


# --------------------------------------------------------------------------- momentum


def get_latest_rsi(klines: KlinesInput, period: int = 14) -> float:
    """Latest RSI (0..100, Wilder smoothing over the full series)."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        c = _column(k.close)
        if len(c) <= period:
            return _NAN
        return _k.rsi_entry(c, _begin(c), period).item(-1)

    result: float = _run("rsi", (period,), klines, compute)
    return result


def get_latest_macd(
    klines: KlinesInput, fast_period: int = 12, slow_period: int = 26, signal_period: int = 9
) -> Triple:
    """Latest (macd, signal, histogram); defaults 12/26/9."""
    fast_period = _period(fast_period, "fast_period")
    slow_period = _period(slow_period, "slow_period")
    signal_period = _period(signal_period, "signal_period")

    def compute(k: Klines) -> Triple:
        c = _column(k.close)
        fast, slow = (fast_period, slow_period) if fast_period <= slow_period else (slow_period, fast_period)
        if len(c) < slow + signal_period - 1:
            return _NAN, _NAN, _NAN
        line, signal, hist = _k.macd_entry(c, _begin(c), fast, slow, signal_period)
        return line.item(-1), signal.item(-1), hist.item(-1)

    result: Triple = _run("macd", (fast_period, slow_period, signal_period), klines, compute)
    return result


def get_latest_stochastic(klines: KlinesInput, k_period: int = 14, d_period: int = 3) -> Pair:
    """Latest fast stochastic (%K, %D)."""
    k_period = _period(k_period, "k_period")
    d_period = _period(d_period, "d_period")
    h, lo, c = _hlc(klines)
    if len(c) < k_period + d_period - 1:
        return _NAN, _NAN
    result: Pair = _k.last_stochf_entry(h, lo, c, k_period, d_period)
    return result


def get_latest_cci(klines: KlinesInput, period: int = 20) -> float:
    """Latest commodity channel index."""
    period = _period(period, "period")
    h, lo, c = _hlc(klines)
    if len(c) < period:
        return _NAN
    return _k.last_cci_entry(h, lo, c, period)


def get_latest_williams_r(klines: KlinesInput, period: int = 14) -> float:
    """Latest Williams %R (-100..0)."""
    period = _period(period, "period")
    h, lo, c = _hlc(klines)
    if len(c) < period:
        return _NAN
    return _k.last_willr_entry(h, lo, c, period)


def get_latest_roc(klines: KlinesInput, period: int = 10) -> float:
    """Latest rate of change of close, in percent."""
    period = _period(period, "period")
    c = _close(klines)
    if len(c) <= period:
        return _NAN
    now, then = c.item(-1), c.item(-1 - period)
    return ((now / then) - 1.0) * 100.0 if then != 0.0 else 0.0  # TA-Lib: a zero base gives 0


# --------------------------------------------------------------------------- volatility


def get_latest_bollinger_bands(klines: KlinesInput, period: int = 20, std_dev: float = 2.0) -> Triple:
    """Latest (upper, middle, lower) Bollinger bands: the mean of the last ``period`` closes ±
    ``std_dev`` × their population standard deviation."""
    period = _period(period, "period")
    std_dev = _std_dev(std_dev)
    c = _close(klines)
    if len(c) < period:
        return _NAN, _NAN, _NAN
    result: Triple = _k.last_bbands_entry(c, period, std_dev)
    return result


def get_latest_atr(klines: KlinesInput, period: int = 14) -> float:
    """Latest average true range."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        h, lo, c = _column(k.high), _column(k.low), _column(k.close)
        if len(c) <= period:
            return _NAN
        return _k.atr_entry(h, lo, c, _begin(h, lo, c), period).item(-1)

    result: float = _run("atr", (period,), klines, compute, ranges=True)
    return result


def get_latest_keltner_channels(
    klines: KlinesInput, period: int = 20, atr_period: int = 10, multiplier: float = 2.0
) -> Triple:
    """Latest (upper, middle, lower) Keltner channels: EMA(close) ± multiplier × ATR."""
    period = _period(period, "period")
    atr_period = _period(atr_period, "atr_period")
    multiplier = core._number(multiplier, "multiplier")

    def compute(k: Klines) -> Triple:
        h, lo, c = _column(k.high), _column(k.low), _column(k.close)
        if len(c) < period or len(c) <= atr_period:
            return _NAN, _NAN, _NAN
        upper, middle, lower = _k.keltner_entry(h, lo, c, _begin(c), _begin(h, lo, c), period, atr_period, multiplier)
        return upper.item(-1), middle.item(-1), lower.item(-1)

    result: Triple = _run("keltner", (period, atr_period, multiplier), klines, compute, ranges=True)
    return result


def get_latest_donchian_channels(klines: KlinesInput, period: int = 20) -> Triple:
    """Latest (upper, middle, lower) Donchian channels over the last ``period`` candles."""
    period = _period(period, "period")
    k = _klines(klines)
    if len(k) < period:
        return _NAN, _NAN, _NAN
    upper, lower = _k.last_max_min_entry(_column(k.high), _column(k.low), period)
    return upper, (upper + lower) / 2.0, lower


# --------------------------------------------------------------------------- volume


def get_latest_volume(klines: KlinesInput, period: int = 1) -> float:
    """Total volume of the last ``period`` candles (period 1: the newest candle's volume)."""
    period = _period(period, "period")
    v = (klines if type(klines) is Klines else _klines(klines)).volume
    if len(v) < period:
        return _NAN
    if period == 1:  # the default: one read, no kernel, so no column check either
        return 0.0 + v.item(-1)  # the sum of one value, formed as the kernel forms it
    return _k.last_sum_entry(_column(v), period)


def get_latest_volume_change(klines: KlinesInput, period: int = 20) -> float:
    """Percent change of the newest volume against the mean of the ``period`` candles before it."""
    period = _period(period, "period")
    v = _volume(klines)
    if len(v) <= period:
        return _NAN
    return _k.last_volume_change_entry(v, period)


def get_latest_obv(klines: KlinesInput) -> float:
    """Latest on-balance volume (accumulated from the first candle given)."""

    def compute(k: Klines) -> float:
        c, v = _column(k.close), _column(k.volume)
        return _last(_k.obv_entry(c, v, _begin(c, v)))

    result: float = _run("obv", (), klines, compute)
    return result


def get_latest_volume_ma(klines: KlinesInput, period: int = 20) -> float:
    """Latest simple moving average of volume."""
    period = _period(period, "period")
    v = _volume(klines)
    if len(v) < period:
        return _NAN
    return _k.last_sum_entry(v, period) / period


# --------------------------------------------------------------------------- trend strength


def get_latest_adx(klines: KlinesInput, period: int = 14) -> float:
    """Latest average directional index (0..100)."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        h, lo, c = _column(k.high), _column(k.low), _column(k.close)
        if len(c) < 2 * period:
            return _NAN
        return _k.adx_entry(h, lo, c, _begin(h, lo, c), period).item(-1)

    result: float = _run("adx", (period,), klines, compute, ranges=True)
    return result


def get_latest_aroon(klines: KlinesInput, period: int = 14) -> Pair:
    """Latest (aroon_up, aroon_down), each 0..100."""
    period = _period(period, "period")
    k = _klines(klines)
    if len(k) <= period:
        return _NAN, _NAN
    result: Pair = _k.last_aroon_entry(_column(k.high), _column(k.low), period)
    return result


# --------------------------------------------------------------------------- price action


def get_price_change(klines: KlinesInput, periods: int = 1) -> float:
    """``close[-1] - close[-1 - periods]``; NaN with too few candles."""
    periods = _period(periods, "periods")
    c = _close(klines)
    if len(c) <= periods:
        return _NAN
    return c.item(-1) - c.item(-1 - periods)


def get_price_change_percent(klines: KlinesInput, periods: int = 1) -> float:
    """``(close[-1] / close[-1 - periods] - 1) * 100``; NaN with too few candles or a zero base."""
    periods = _period(periods, "periods")
    c = _close(klines)
    if len(c) <= periods:
        return _NAN
    base = c.item(-1 - periods)
    if base == 0.0:
        return _NAN
    return (c.item(-1) / base - 1.0) * 100.0


def get_highest_high(klines: KlinesInput, periods: int = 20) -> float:
    """Highest high of the last ``periods`` candles (including the newest)."""
    periods = _period(periods, "periods")
    h = _column(_klines(klines).high)
    return _k.last_max_entry(h, periods) if len(h) >= periods else _NAN


def get_lowest_low(klines: KlinesInput, periods: int = 20) -> float:
    """Lowest low of the last ``periods`` candles (including the newest)."""
    periods = _period(periods, "periods")
    lo = _column(_klines(klines).low)
    return _k.last_min_entry(lo, periods) if len(lo) >= periods else _NAN


# --------------------------------------------------------------------------- columns


def get_closes(klines: KlinesInput) -> FloatArray:
    """Close prices, oldest first (a read-only float64 array)."""
    return _klines(klines).close


def get_opens(klines: KlinesInput) -> FloatArray:
    """Open prices, oldest first (a read-only float64 array)."""
    return _klines(klines).open


def get_highs(klines: KlinesInput) -> FloatArray:
    """High prices, oldest first (a read-only float64 array)."""
    return _klines(klines).high


def get_lows(klines: KlinesInput) -> FloatArray:
    """Low prices, oldest first (a read-only float64 array)."""
    return _klines(klines).low


def get_volumes(klines: KlinesInput) -> FloatArray:
    """Volumes (base asset), oldest first (a read-only float64 array)."""
    return _klines(klines).volume
