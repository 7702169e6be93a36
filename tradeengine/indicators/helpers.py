"""The indicator helpers strategy code calls: one function per line of the seed's helper list.

``klines`` is a ``Klines`` view or a sequence of Binance rows ``[open_time, open, high, low,
close, volume, ...]``. A ``get_latest_*`` value equals the last element of the matching
full-series function in ``core`` on the same candles (NaN when there are too few candles).

Windowed indicators only look at the window the last value needs. Recursive ones (EMA, RSI,
MACD, ATR, ADX, Keltner) and the ones whose TA-Lib value depends on a running total from the
first candle (Bollinger, OBV) run over the whole series, calling the compiled kernels directly
(a ``Klines`` view already holds validated float64 columns, so ``core``'s argument checks are
skipped). Results for ``Klines`` inputs are cached (see ``_run``) so many strategies asking for
the same value in one tick pay once.
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
_CACHE_LIMIT = 4096
# key -> (close array kept alive so its id() cannot be reused while the entry exists, value)
_cache: dict[tuple[Any, ...], tuple[FloatArray, Any]] = {}


def _klines(klines: KlinesInput) -> Klines:
    if isinstance(klines, Klines):
        return klines
    if isinstance(klines, str | bytes | dict) or not isinstance(klines, Sequence | np.ndarray):
        raise ValueError(
            "klines must be a Klines view or a sequence of [open_time, open, high, low, close, volume] rows"
        )
    return Klines.from_rows(klines)


def clear_cache() -> None:
    """Drop all memoized helper results."""
    _cache.clear()


def _window_mean(column: FloatArray, period: int) -> float:
    """Mean of the last ``period`` values, summed left to right as TA-Lib does."""
    if len(column) < period:
        return _NAN
    total = 0.0
    for value in column[-period:].tolist():
        total += value
    return total / period


def _last(values: FloatArray) -> float:
    return values.item(-1) if len(values) else _NAN


def _run(name: str, params: tuple[Any, ...], klines: KlinesInput, compute: Callable[[Klines], Any]) -> Any:
    """Return ``compute(klines)``, memoized for ``Klines`` inputs so a tick's many strategies pay once.

    Key: helper, parameters, the close array's ``id`` and length, and the newest candle's open
    time, close and volume. The kline store appends by shifting (the newest open time changes)
    and updates the still-open candle in place (every trade adds volume), so neither can return
    a stale value. Each entry keeps the close array alive, so its ``id`` cannot be recycled by
    another array while the entry exists.
    """
    if type(klines) is not Klines:
        return compute(_klines(klines))
    close = klines.close
    n = len(close)
    if n == 0:
        return compute(klines)
    key = (name, params, id(close), n, klines.open_time.item(-1), close.item(-1), klines.volume.item(-1))
    hit = _cache.get(key)
    if hit is not None:
        return hit[1]
    value = compute(klines)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()  # cheap and bounded; entries only matter for about one tick anyway
    _cache[key] = (close, value)
    return value


# --------------------------------------------------------------------------- trend


def get_latest_sma(klines: KlinesInput, period: int = 20) -> float:
    """Latest simple moving average of close."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        return _window_mean(k.close, period)

    return float(_run("sma", (period,), klines, compute))


def get_latest_ema(klines: KlinesInput, period: int = 20) -> float:
    """Latest exponential moving average of close (TA-Lib seeding, full series)."""
    period = _period(period, "period")
    k_ema = 2.0 / (period + 1)

    def compute(k: Klines) -> float:
        c = k.close
        return _last(_k.ema(c, _begin(c), period, k_ema))

    return float(_run("ema", (period,), klines, compute))


def get_latest_wma(klines: KlinesInput, period: int = 20) -> float:
    """Latest weighted moving average of close."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        if len(k) < period:
            return _NAN
        c = k.close[-period:]
        return _last(_k.wma(c, _begin(c), period))

    return float(_run("wma", (period,), klines, compute))


def get_latest_vwap(klines: KlinesInput) -> float:
    """VWAP over all the candles given (typical price weighted by volume); NaN if no volume."""

    def compute(k: Klines) -> float:
        return _last(_k.vwap(k.high, k.low, k.close, k.volume))

    return float(_run("vwap", (), klines, compute))


# --------------------------------------------------------------------------- momentum


def get_latest_rsi(klines: KlinesInput, period: int = 14) -> float:
    """Latest RSI (0..100, Wilder smoothing over the full series)."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        c = k.close
        return _last(_k.rsi(c, _begin(c), period))

    return float(_run("rsi", (period,), klines, compute))


def get_latest_macd(
    klines: KlinesInput, fast_period: int = 12, slow_period: int = 26, signal_period: int = 9
) -> Triple:
    """Latest (macd, signal, histogram); defaults 12/26/9."""
    fast_period = _period(fast_period, "fast_period")
    slow_period = _period(slow_period, "slow_period")
    signal_period = _period(signal_period, "signal_period")

    def compute(k: Klines) -> Triple:
        c = k.close
        fast, slow = (fast_period, slow_period) if fast_period <= slow_period else (slow_period, fast_period)
        line, signal, hist = _k.macd(c, _begin(c), fast, slow, signal_period)
        return _last(line), _last(signal), _last(hist)

    result: Triple = _run("macd", (fast_period, slow_period, signal_period), klines, compute)
    return result


def get_latest_stochastic(klines: KlinesInput, k_period: int = 14, d_period: int = 3) -> Pair:
    """Latest fast stochastic (%K, %D)."""
    k_period = _period(k_period, "k_period")
    d_period = _period(d_period, "d_period")
    need = k_period + d_period - 1

    def compute(k: Klines) -> Pair:
        if len(k) < need:
            return _NAN, _NAN
        h, lo, c = k.high[-need:], k.low[-need:], k.close[-need:]
        kk, dd = _k.stochf(h, lo, c, _begin(h, lo, c), k_period, d_period)
        return _last(kk), _last(dd)

    result: Pair = _run("stochastic", (k_period, d_period), klines, compute)
    return result


def get_latest_cci(klines: KlinesInput, period: int = 20) -> float:
    """Latest commodity channel index."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        n = len(k)
        if n < period:
            return _NAN
        start = n - period
        if math.isnan(k.high[0]) or math.isnan(k.low[0]) or math.isnan(k.close[0]):
            # Leading NaNs shift TA-Lib's buffer slots; let the full series sort it out.
            return _last(core.cci(k.high, k.low, k.close, period))
        highs: list[float] = k.high[start:].tolist()
        lows: list[float] = k.low[start:].tolist()
        closes: list[float] = k.close[start:].tolist()
        typical = [(h + lo + c) / 3.0 for h, lo, c in zip(highs, lows, closes, strict=True)]
        # TA-Lib sums its circular buffer from slot 0, the value whose index is a multiple of
        # `period`; plain float loops keep that order (and so every digit) of the full series.
        first = (-start) % period
        ordered = typical[first:] + typical[:first]
        total = 0.0
        for value in ordered:
            total += value
        mean = total / period
        deviation = 0.0
        for value in ordered:
            deviation += abs(value - mean)
        deviation /= period
        delta = typical[-1] - mean
        level = abs(mean)
        if abs(delta) <= core._TA_EPSILON * level or abs(deviation) <= core._TA_EPSILON * level:
            return 0.0
        return delta / (0.015 * deviation)

    return float(_run("cci", (period,), klines, compute))


def get_latest_williams_r(klines: KlinesInput, period: int = 14) -> float:
    """Latest Williams %R (-100..0)."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        if len(k) < period:
            return _NAN
        h, lo, c = k.high[-period:], k.low[-period:], k.close[-period:]
        return _last(_k.willr(h, lo, c, _begin(h, lo, c), period))

    return float(_run("williams_r", (period,), klines, compute))


def get_latest_roc(klines: KlinesInput, period: int = 10) -> float:
    """Latest rate of change of close, in percent."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        if len(k) <= period:
            return _NAN
        now, then = k.close.item(-1), k.close.item(-1 - period)
        return ((now / then) - 1.0) * 100.0 if then != 0.0 else 0.0  # TA-Lib: a zero base gives 0

    return float(_run("roc", (period,), klines, compute))


# --------------------------------------------------------------------------- volatility


def get_latest_bollinger_bands(klines: KlinesInput, period: int = 20, std_dev: float = 2.0) -> Triple:
    """Latest (upper, middle, lower) Bollinger bands."""
    period = _period(period, "period")
    std_dev = core._number(std_dev, "std_dev")

    def compute(k: Klines) -> Triple:
        c = k.close
        upper, middle, lower = _k.bbands(c, _begin(c), period, std_dev)
        return _last(upper), _last(middle), _last(lower)

    result: Triple = _run("bollinger", (period, std_dev), klines, compute)
    return result


def get_latest_atr(klines: KlinesInput, period: int = 14) -> float:
    """Latest average true range."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        h, lo, c = k.high, k.low, k.close
        return _last(_k.atr(h, lo, c, _begin(h, lo, c), period))

    return float(_run("atr", (period,), klines, compute))


def get_latest_keltner_channels(
    klines: KlinesInput, period: int = 20, atr_period: int = 10, multiplier: float = 2.0
) -> Triple:
    """Latest (upper, middle, lower) Keltner channels: EMA(close) ± multiplier × ATR."""
    period = _period(period, "period")
    atr_period = _period(atr_period, "atr_period")
    multiplier = core._number(multiplier, "multiplier")

    def compute(k: Klines) -> Triple:
        h, lo, c = k.high, k.low, k.close
        upper, middle, lower = _k.keltner(h, lo, c, _begin(c), _begin(h, lo, c), period, atr_period, multiplier)
        return _last(upper), _last(middle), _last(lower)

    result: Triple = _run("keltner", (period, atr_period, multiplier), klines, compute)
    return result


def get_latest_donchian_channels(klines: KlinesInput, period: int = 20) -> Triple:
    """Latest (upper, middle, lower) Donchian channels over the last ``period`` candles."""
    period = _period(period, "period")

    def compute(k: Klines) -> Triple:
        if len(k) < period:
            return _NAN, _NAN, _NAN
        upper = float(k.high[-period:].max())
        lower = float(k.low[-period:].min())
        return upper, (upper + lower) / 2.0, lower

    result: Triple = _run("donchian", (period,), klines, compute)
    return result


# --------------------------------------------------------------------------- volume


def get_latest_volume(klines: KlinesInput, period: int = 1) -> float:
    """Total volume of the last ``period`` candles (period 1: the newest candle's volume)."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        if len(k) < period:
            return _NAN
        total = 0.0
        for value in k.volume[-period:].tolist():  # left to right, as TA-Lib's SUM
            total += value
        return total

    return float(_run("volume", (period,), klines, compute))


def get_latest_volume_change(klines: KlinesInput, period: int = 20) -> float:
    """Percent change of the newest volume against the mean of the ``period`` candles before it."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        return _last(_k.volume_change(k.volume[-(period + 1) :], period)) if len(k) > period else _NAN

    return float(_run("volume_change", (period,), klines, compute))


def get_latest_obv(klines: KlinesInput) -> float:
    """Latest on-balance volume (accumulated from the first candle given)."""

    def compute(k: Klines) -> float:
        c, v = k.close, k.volume
        return _last(_k.obv(c, v, _begin(c, v)))

    return float(_run("obv", (), klines, compute))


def get_latest_volume_ma(klines: KlinesInput, period: int = 20) -> float:
    """Latest simple moving average of volume."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        return _window_mean(k.volume, period)

    return float(_run("volume_ma", (period,), klines, compute))


# --------------------------------------------------------------------------- trend strength


def get_latest_adx(klines: KlinesInput, period: int = 14) -> float:
    """Latest average directional index (0..100)."""
    period = _period(period, "period")

    def compute(k: Klines) -> float:
        h, lo, c = k.high, k.low, k.close
        return _last(_k.adx(h, lo, c, _begin(h, lo, c), period))

    return float(_run("adx", (period,), klines, compute))


def get_latest_aroon(klines: KlinesInput, period: int = 14) -> Pair:
    """Latest (aroon_up, aroon_down), each 0..100."""
    period = _period(period, "period")

    def compute(k: Klines) -> Pair:
        if len(k) <= period:
            return _NAN, _NAN
        h, lo = k.high[-(period + 1) :], k.low[-(period + 1) :]
        up, down = _k.aroon(h, lo, _begin(h, lo), period)
        return _last(up), _last(down)

    result: Pair = _run("aroon", (period,), klines, compute)
    return result


# --------------------------------------------------------------------------- price action


def get_price_change(klines: KlinesInput, periods: int = 1) -> float:
    """``close[-1] - close[-1 - periods]``; NaN with too few candles."""
    periods = _period(periods, "periods")
    k = _klines(klines)
    if len(k) <= periods:
        return _NAN
    return float(k.close[-1] - k.close[-1 - periods])


def get_price_change_percent(klines: KlinesInput, periods: int = 1) -> float:
    """``(close[-1] / close[-1 - periods] - 1) * 100``; NaN with too few candles or a zero base."""
    periods = _period(periods, "periods")
    k = _klines(klines)
    if len(k) <= periods:
        return _NAN
    base = float(k.close[-1 - periods])
    if base == 0.0:
        return _NAN
    return (float(k.close[-1]) / base - 1.0) * 100.0


def get_highest_high(klines: KlinesInput, periods: int = 20) -> float:
    """Highest high of the last ``periods`` candles (including the newest)."""
    periods = _period(periods, "periods")
    k = _klines(klines)
    return float(k.high[-periods:].max()) if len(k) >= periods else _NAN


def get_lowest_low(klines: KlinesInput, periods: int = 20) -> float:
    """Lowest low of the last ``periods`` candles (including the newest)."""
    periods = _period(periods, "periods")
    k = _klines(klines)
    return float(k.low[-periods:].min()) if len(k) >= periods else _NAN


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
