"""Compiled loops behind ``core``: TA-Lib's C algorithms, operation for operation.

Each kernel is a sequential loop written in the same order of floating-point operations as
TA-Lib's C code, compiled by numba, so results are bit-identical to TA-Lib at C speed. Kernels
are private: they take float64 arrays and plain numbers, do no validation, and return new arrays
(NaN during the warm-up). ``b`` is the index of the first candle after leading NaNs (the talib
wrapper skips those); everything before ``b`` stays NaN.

Compiled code is cached on disk (``cache=True``): in ``__pycache__`` next to this file, or,
when the package is installed read-only, under ``NUMBA_CACHE_DIR`` (set below to a temp
directory if unset; the Docker image sets ``NUMBA_CACHE_DIR=/tmp/numba``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# numba reads NUMBA_CACHE_DIR when it is first imported; without a writable cache directory
# `cache=True` fails at the first call, so pick one before importing it.
if "NUMBA_CACHE_DIR" not in os.environ and not os.access(Path(__file__).parent, os.W_OK):
    os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "numba")

import math
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar, cast

import numpy as np
from numba import njit, types
from numba.extending import intrinsic
from numpy.typing import NDArray

FloatArray: TypeAlias = NDArray[np.float64]
IntArray: TypeAlias = NDArray[np.int64]
Pair: TypeAlias = tuple[FloatArray, FloatArray]
Triple: TypeAlias = tuple[FloatArray, FloatArray, FloatArray]
Quad: TypeAlias = tuple[FloatArray, FloatArray, FloatArray, FloatArray]

# TA-Lib's TA_IS_ZERO: |v| < 1e-14.
EPS = 1e-14
_F = TypeVar("_F", bound=Callable[..., Any])
_njit = njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


def _jit(func: _F) -> _F:
    """Compile ``func`` (numba is untyped; this keeps the kernel's annotated signature)."""
    return cast(_F, _njit(func))


# The newest-window kernels keep the GIL: each runs for a fraction of a microsecond, less than
# releasing and retaking it costs (~0.1 µs, a quarter of such a call).
_njit_short = njit(cache=True, fastmath=False, error_model="numpy")


def _jit_short(func: _F) -> _F:
    """Compile a short kernel that keeps the GIL (see above)."""
    return cast(_F, _njit_short(func))


@intrinsic
def _fma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """``a * b + c`` with one rounding (LLVM's fma intrinsic).

    The TA-Lib C library in the ``ta-lib`` wheel is compiled with floating-point contraction, so
    its recursive updates (``(x - y) * k + y``, ``y * (p - 1) + x``) are fused multiply-adds;
    using the same fused operation is what makes these kernels bit-identical to it.
    """
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fma(*args)

    return sig, codegen


fma = cast(Callable[[float, float, float], float], _fma)


@_jit
def sma(x: FloatArray, b: int, period: int) -> FloatArray:
    """TA-Lib SMA: ``total += x[t]; out = total / p; total -= x[t - p + 1]``."""
    n = len(x)
    out = np.full(n, np.nan)
    start = b + period - 1
    if start >= n:
        return out
    total = 0.0
    for i in range(b, start):
        total += x[i]
    trailing = b
    for i in range(start, n):
        total += x[i]
        value = total
        total -= x[trailing]
        trailing += 1
        out[i] = value / period
    return out


@_jit
def ema(x: FloatArray, b: int, period: int, k: float) -> FloatArray:
    """TA-Lib INT_EMA: seed = SMA of the first ``period`` values, then ``(x - y) * k + y``."""
    n = len(x)
    out = np.full(n, np.nan)
    start = b + period - 1
    if start >= n:
        return out
    total = 0.0
    for i in range(b, start + 1):
        total += x[i]
    prev = total / period
    out[start] = prev
    for i in range(start + 1, n):
        prev = fma(x[i] - prev, k, prev)
        out[i] = prev
    return out


@_jit
def wma(x: FloatArray, b: int, period: int) -> FloatArray:
    """TA-Lib WMA; this TA-Lib build restarts its running totals every ``8 * period`` outputs."""
    n = len(x)
    out = np.full(n, np.nan)
    first = b + period - 1
    if first >= n:
        return out
    if period == 1:
        for i in range(b, n):
            out[i] = x[i]
        return out
    divider = float(period * (period + 1) // 2)
    interval = 8 * period
    seg_start = first  # output index where the current fresh start begins
    seg_end = min(first + interval - 1, n)  # the first segment is one output shorter
    while seg_start < n:
        trailing = seg_start - period + 1
        period_sub = 0.0
        period_sum = 0.0
        w = 1
        for i in range(trailing, seg_start):
            value = x[i]
            period_sub += value
            period_sum += value * w
            w += 1
        trailing_value = 0.0
        for i in range(seg_start, seg_end):
            value = x[i]
            period_sub += value
            period_sub -= trailing_value
            period_sum += value * period
            trailing_value = x[trailing]
            trailing += 1
            out[i] = period_sum / divider
            period_sum -= period_sub
        seg_start = seg_end
        seg_end = min(seg_start + interval, n)
    return out


@_jit
def rsi(x: FloatArray, b: int, period: int) -> FloatArray:
    """TA-Lib RSI (classic Wilder, unstable period 0); ``gain + loss ~ 0`` gives 0."""
    n = len(x)
    out = np.full(n, np.nan)
    start = b + period
    if start >= n:
        return out
    gain, loss = _rsi_seed(x, b, period)
    out[start] = _rsi_value(gain, loss)
    keep = float(period - 1)
    for i in range(start + 1, n):
        gain, loss = _rsi_smooth(gain, loss, x[i] - x[i - 1], period, keep)
        out[i] = _rsi_value(gain, loss)
    return out


@_jit
def _rsi_seed(x: FloatArray, b: int, period: int) -> tuple[float, float]:
    """Wilder's seed: the average gain and loss of the ``period`` changes after ``x[b]``."""
    prev_value = x[b]
    gain = 0.0
    loss = 0.0
    for i in range(b + 1, b + period + 1):
        value = x[i]
        diff = value - prev_value
        prev_value = value
        if diff < 0.0:
            loss -= diff
        else:
            gain += diff
    return gain / period, loss / period


@_jit
def _rsi_smooth(gain: float, loss: float, diff: float, period: int, keep: float) -> tuple[float, float]:
    """One step of Wilder's smoothing with the change ``diff``."""
    # C: loss *= p - 1; gain *= p - 1; then one of them += |diff|, contracted to an fma.
    # Adding an exact 0.0 instead of branching keeps every rounding and avoids a
    # mispredicted branch per candle (``x * k + 0.0 == x * k`` for the non-negative sums).
    down = -diff if diff < 0.0 else 0.0
    up = 0.0 if diff < 0.0 else diff
    return fma(gain, keep, up) / period, fma(loss, keep, down) / period


@_jit
def _rsi_value(gain: float, loss: float) -> float:
    total = gain + loss
    return 100.0 * (gain / total) if not (-EPS < total < EPS) else 0.0


@_jit
def macd(x: FloatArray, b: int, fast: int, slow: int, signal: int) -> Triple:
    """TA-Lib MACD: both EMAs seeded at bar ``slow - 1``, signal = EMA of the line, outputs from
    ``slow - 1 + signal - 1``."""
    n = len(x)
    line = np.full(n, np.nan)
    sig = np.full(n, np.nan)
    hist = np.full(n, np.nan)
    seed = b + slow - 1
    start = seed + signal - 1
    if start >= n:
        return line, sig, hist
    k_fast = 2.0 / (fast + 1)
    k_slow = 2.0 / (slow + 1)
    k_sig = 2.0 / (signal + 1)
    fast_ema, slow_ema = _macd_seeds(x, seed, fast, slow)
    # The signal EMA is seeded with the mean of the first `signal` MACD values.
    raw = np.empty(n - seed)
    raw[0] = fast_ema - slow_ema
    for i in range(seed + 1, n):
        fast_ema = fma(x[i] - fast_ema, k_fast, fast_ema)
        slow_ema = fma(x[i] - slow_ema, k_slow, slow_ema)
        raw[i - seed] = fast_ema - slow_ema
    total = 0.0
    for j in range(signal):
        total += raw[j]
    prev = total / signal
    line[start] = raw[signal - 1]
    sig[start] = prev
    hist[start] = raw[signal - 1] - prev
    for i in range(start + 1, n):
        value = raw[i - seed]
        prev = fma(value - prev, k_sig, prev)
        line[i] = value
        sig[i] = prev
        hist[i] = value - prev
    return line, sig, hist


@_jit
def _macd_seeds(x: FloatArray, seed: int, fast: int, slow: int) -> tuple[float, float]:
    """Both MACD EMAs' seeds at bar ``seed``: the SMA of the ``fast`` and ``slow`` values up to it."""
    total = 0.0
    for i in range(seed - fast + 1, seed + 1):
        total += x[i]
    fast_ema = total / fast
    total = 0.0
    for i in range(seed - slow + 1, seed + 1):
        total += x[i]
    return fast_ema, total / slow


@_jit
def _flat(delta: float, scale: float) -> bool:
    # TA-Lib's scale-aware zero test for ranges and deviations.
    return abs(delta) <= EPS * scale


@_jit
def _suffix_blocks(high: FloatArray, low: FloatArray, b: int, period: int) -> Pair:
    """Running max of ``high`` / min of ``low`` backward within blocks of ``period`` from ``b``.

    van Herk / Gil-Werman: a window ``[j, i]`` of ``period`` values is the suffix of ``j``'s
    block plus the prefix of ``i``'s block, so with these suffix extremes and a running prefix
    extreme every value costs three comparisons and no rescans. The extremes equal TA-Lib's
    rescanning trackers on NaN-free input (a max is a max). High and low share the loop so
    their two serial chains overlap.
    """
    n = len(high)
    bwd_h = np.empty(n)
    bwd_l = np.empty(n)
    for s in range(b, n, period):
        e = min(s + period, n)
        mh = high[e - 1]
        ml = low[e - 1]
        bwd_h[e - 1] = mh
        bwd_l[e - 1] = ml
        for i in range(e - 2, s - 1, -1):
            v = high[i]
            mh = v if v > mh else mh
            bwd_h[i] = mh
            v = low[i]
            ml = v if v < ml else ml
            bwd_l[i] = ml
    return bwd_h, bwd_l


@_jit
def rolling_max_min(high: FloatArray, low: FloatArray, b: int, period: int) -> Pair:
    """Max of ``high`` and min of ``low`` over each window ``[i - period + 1, i]`` with
    ``i >= b + period - 1`` (other positions unspecified); see ``_suffix_blocks``."""
    n = len(high)
    bwd_h, bwd_l = _suffix_blocks(high, low, b, period)
    hh = np.empty(n)
    ll = np.empty(n)
    fh = 0.0
    fl = 0.0
    pos = 0  # index of i inside its block
    for i in range(b, n):
        v = high[i]
        w = low[i]
        if pos == 0:
            fh = v
            fl = w
        else:
            fh = v if v > fh else fh
            fl = w if w < fl else fl
        pos += 1
        if pos == period:
            pos = 0
        j = i - period + 1
        if j >= b:
            x = bwd_h[j]
            hh[i] = x if x > fh else fh
            x = bwd_l[j]
            ll[i] = x if x < fl else fl
    return hh, ll


@_jit
def stochf(high: FloatArray, low: FloatArray, close: FloatArray, b: int, k_period: int, d_period: int) -> Pair:
    """TA-Lib STOCHF: %K = ((c - ll) / (hh - ll)) * 100 (0 for a flat range), %D = SMA of %K."""
    n = len(high)
    k_out = np.full(n, np.nan)
    d_out = np.full(n, np.nan)
    first = b + k_period - 1
    start = first + d_period - 1
    if start >= n:
        return k_out, d_out
    k_raw = np.empty(n - first)
    hh, ll = rolling_max_min(high, low, b, k_period)
    for today in range(first, n):
        highest = hh[today]
        lowest = ll[today]
        span = highest - lowest
        if _flat(span, abs(highest) + abs(lowest)):
            k_raw[today - first] = 0.0
        else:
            k_raw[today - first] = ((close[today] - lowest) / span) * 100.0
    total = 0.0
    for j in range(d_period - 1):
        total += k_raw[j]
    for i in range(start, n):
        total += k_raw[i - first]
        value = total
        total -= k_raw[i - start]
        k_out[i] = k_raw[i - first]
        d_out[i] = value / d_period
    return k_out, d_out


@_jit
def willr(high: FloatArray, low: FloatArray, close: FloatArray, b: int, period: int) -> FloatArray:
    """TA-Lib WILLR: ((hh - c) / (hh - ll)) * -100, 0 for a flat range."""
    n = len(high)
    out = np.full(n, np.nan)
    first = b + period - 1
    if first >= n:
        return out
    hh, ll = rolling_max_min(high, low, b, period)
    for today in range(first, n):
        highest = hh[today]
        lowest = ll[today]
        span = highest - lowest
        if _flat(span, abs(highest) + abs(lowest)):
            out[today] = 0.0
        else:
            out[today] = ((highest - close[today]) / span) * -100.0
    return out


@_jit
def cci(high: FloatArray, low: FloatArray, close: FloatArray, b: int, period: int) -> FloatArray:
    """TA-Lib CCI: circular buffer of typical prices summed from slot 0; flat windows give 0."""
    n = len(high)
    out = np.full(n, np.nan)
    first = b + period - 1
    if first >= n:
        return out
    buffer = np.empty(period)
    slot = 0
    for i in range(b, first):
        buffer[slot] = (high[i] + low[i] + close[i]) / 3.0
        slot += 1
    for i in range(first, n):
        last = (high[i] + low[i] + close[i]) / 3.0
        buffer[slot] = last
        total = 0.0
        for j in range(period):
            total += buffer[j]
        mean = total / period
        deviation = 0.0
        for j in range(period):
            deviation += abs(buffer[j] - mean)
        deviation /= period
        delta = last - mean
        level = abs(mean)
        if _flat(delta, level) or _flat(deviation, level):
            out[i] = 0.0
        else:
            out[i] = delta / (0.015 * deviation)
        slot += 1
        if slot == period:
            slot = 0
    return out


@_jit
def roc(x: FloatArray, b: int, period: int) -> FloatArray:
    """TA-Lib ROC: ((x / x[t - p]) - 1) * 100; a zero base gives 0."""
    n = len(x)
    out = np.full(n, np.nan)
    for i in range(b + period, n):
        prev = x[i - period]
        out[i] = ((x[i] / prev) - 1.0) * 100.0 if prev != 0.0 else 0.0
    return out


@_jit
def true_range(high: FloatArray, low: FloatArray, close: FloatArray, b: int) -> FloatArray:
    """TA-Lib TRANGE from ``b + 1`` on (index ``b`` has no previous close)."""
    n = len(high)
    out = np.full(n, np.nan)
    for i in range(b + 1, n):
        out[i] = _true_range_at(high, low, close, i)
    return out


@_jit
def _true_range_at(high: FloatArray, low: FloatArray, close: FloatArray, i: int) -> float:
    """The true range of candle ``i`` (``i >= 1``)."""
    h: float = high[i]
    lo: float = low[i]
    yc: float = close[i - 1]
    greatest = h - lo
    value = abs(yc - h)
    if value > greatest:
        greatest = value
    value = abs(yc - lo)
    if value > greatest:
        greatest = value
    return greatest


@_jit
def atr(high: FloatArray, low: FloatArray, close: FloatArray, b: int, period: int) -> FloatArray:
    """TA-Lib ATR: first value the SMA of TR, then Wilder smoothing.

    TA-Lib's C loop reads ``(prev * (p - 1) + tr) / p``, but the library in the wheel is built so
    that no division sits in the loop's dependency chain (it runs at one fused op per candle);
    the same is done here with ``fma(prev, (p - 1) / p, tr / p)``: within a few ulp of TA-Lib,
    and 4-5x faster than dividing every step.
    """
    tr: FloatArray = true_range(high, low, close, b)
    if period == 1:
        return tr
    n = len(high)
    out = np.full(n, np.nan)
    start = b + period
    if start >= n:
        return out
    total = 0.0
    for i in range(b + 1, start + 1):
        total += tr[i]
    prev = total / period
    out[start] = prev
    decay = (period - 1) / period
    for i in range(start + 1, n):
        prev = fma(prev, decay, tr[i] / period)
        out[i] = prev
    return out


@_jit
def keltner(
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    b_close: int,
    b_all: int,
    period: int,
    atr_period: int,
    multiplier: float,
) -> Triple:
    """EMA(close) ± multiplier × ATR, NaN until both are defined."""
    middle = ema(close, b_close, period, 2.0 / (period + 1))
    width = atr(high, low, close, b_all, atr_period)
    n = len(close)
    upper = np.empty(n)
    lower = np.empty(n)
    for i in range(n):
        w = width[i] * multiplier
        if math.isnan(w):
            middle[i] = np.nan
        m = middle[i]
        upper[i] = m + w
        lower[i] = m - w
    return upper, middle, lower


@_jit
def bbands(x: FloatArray, b: int, period: int, std_dev: float) -> Triple:
    """TA-Lib BBANDS (SMA middle): the middle is TA-Lib's SMA bit for bit; the standard
    deviation is the population one of each window, computed with a shifted running sum
    (anchor re-chosen every 64 windows, ill-conditioned windows redone in two passes) so it is
    accurate to a few ulp like this TA-Lib build's; a variance below 1e-14 counts as 0."""
    n = len(x)
    upper = np.full(n, np.nan)
    lower = np.full(n, np.nan)
    middle = sma(x, b, period)
    first = b + period - 1
    if first >= n:
        return upper, middle, lower
    i = first
    while i < n:
        # New anchor: the mean of the window ending at i.
        anchor = 0.0
        for j in range(i - period + 1, i + 1):
            anchor += x[j]
        anchor /= period
        s1 = 0.0
        s2 = 0.0
        for j in range(i - period + 1, i + 1):
            d = x[j] - anchor
            s1 += d
            s2 += d * d
        stop = min(i + 64, n)
        for t in range(i, stop):
            if t > i:
                d = x[t] - anchor
                s1 += d
                s2 += d * d
                d = x[t - period] - anchor
                s1 -= d
                s2 -= d * d
            mean = s1 / period
            mean_sq = s2 / period
            variance = mean_sq - mean * mean
            if not (mean_sq <= 1e6 * variance):
                # Cancellation (or NaN): recompute this window in two passes.
                m = 0.0
                for j in range(t - period + 1, t + 1):
                    m += x[j]
                m /= period
                v = 0.0
                for j in range(t - period + 1, t + 1):
                    d = x[j] - m
                    v += d * d
                variance = v / period
            std = math.sqrt(variance) if not variance < EPS else 0.0
            width = std * std_dev
            mid = middle[t]
            upper[t] = mid + width
            lower[t] = mid - width
        i = stop
    return upper, middle, lower


@_jit
def obv(close: FloatArray, volume: FloatArray, b: int) -> FloatArray:
    """TA-Lib OBV, starting at ``volume[b]``."""
    n = len(close)
    out = np.full(n, np.nan)
    if b >= n:
        return out
    prev_obv = volume[b]
    prev = close[b]
    out[b] = prev_obv
    for i in range(b + 1, n):
        value = close[i]
        if value > prev:
            prev_obv += volume[i]
        elif value < prev:
            prev_obv -= volume[i]
        out[i] = prev_obv
        prev = value
    return out


@_jit
def adx(high: FloatArray, low: FloatArray, close: FloatArray, b: int, period: int) -> FloatArray:
    """TA-Lib ADX (Wilder smoothing; undefined DX leaves ADX unchanged), first value at ``2p - 1``."""
    n = len(high)
    out = np.full(n, np.nan)
    start = b + 2 * period - 1
    if start >= n:
        return out
    today = b
    prev_high = high[today]
    prev_low = low[today]
    prev_close = close[today]
    minus_dm = 0.0
    plus_dm = 0.0
    prev_tr = 0.0
    for _ in range(period - 1):
        today += 1
        value = high[today]
        diff_p = value - prev_high
        prev_high = value
        value = low[today]
        diff_m = prev_low - value
        prev_low = value
        if diff_m > 0 and diff_p < diff_m:
            minus_dm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            plus_dm += diff_p
        greatest = prev_high - prev_low
        value = abs(prev_high - prev_close)
        if value > greatest:
            greatest = value
        value = abs(prev_low - prev_close)
        if value > greatest:
            greatest = value
        prev_tr += greatest
        prev_close = close[today]
    sum_dx = 0.0
    prev_adx = 0.0
    keep = float(period - 1)
    while today < n - 1:
        today += 1
        value = high[today]
        diff_p = value - prev_high
        prev_high = value
        value = low[today]
        diff_m = prev_low - value
        prev_low = value
        minus_dm -= minus_dm / period
        plus_dm -= plus_dm / period
        if diff_m > 0 and diff_p < diff_m:
            minus_dm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            plus_dm += diff_p
        greatest = prev_high - prev_low
        value = abs(prev_high - prev_close)
        if value > greatest:
            greatest = value
        value = abs(prev_low - prev_close)
        if value > greatest:
            greatest = value
        prev_tr = prev_tr - prev_tr / period + greatest
        prev_close = close[today]
        defined = False
        dx = 0.0
        if not (-EPS < prev_tr < EPS):
            minus_di = 100.0 * (minus_dm / prev_tr)
            plus_di = 100.0 * (plus_dm / prev_tr)
            di_sum = minus_di + plus_di
            if not (-EPS < di_sum < EPS):
                dx = 100.0 * (abs(minus_di - plus_di) / di_sum)
                defined = True
        if today < start:
            if defined:
                sum_dx += dx
        elif today == start:
            if defined:
                sum_dx += dx
            prev_adx = sum_dx / period
            out[today] = prev_adx
        else:
            if defined:
                prev_adx = fma(prev_adx, keep, dx) / period
            out[today] = prev_adx
    return out


@_jit
def aroon(high: FloatArray, low: FloatArray, b: int, period: int) -> Pair:
    """TA-Lib AROON over ``period + 1`` candles, ties to the newest extreme."""
    n = len(high)
    up = np.full(n, np.nan)
    down = np.full(n, np.nan)
    first = b + period
    if first >= n:
        return up, down
    factor = 100.0 / period
    hi_idx = -1
    lo_idx = -1
    highest = 0.0
    lowest = 0.0
    trailing = b
    for today in range(first, n):
        value = low[today]
        if lo_idx < trailing:
            lo_idx = trailing
            lowest = low[lo_idx]
            for i in range(lo_idx + 1, today + 1):
                value = low[i]
                if value <= lowest:
                    lo_idx = i
                    lowest = value
        elif value <= lowest:
            lo_idx = today
            lowest = value
        value = high[today]
        if hi_idx < trailing:
            hi_idx = trailing
            highest = high[hi_idx]
            for i in range(hi_idx + 1, today + 1):
                value = high[i]
                if value >= highest:
                    hi_idx = i
                    highest = value
        elif value >= highest:
            hi_idx = today
            highest = value
        up[today] = factor * (period - (today - hi_idx))
        down[today] = factor * (period - (today - lo_idx))
        trailing += 1
    return up, down


@_jit
def window_extremes(high: FloatArray, low: FloatArray, period: int) -> Pair:
    """Max of ``high`` and min of ``low`` over each trailing window of ``period``; a NaN in the
    window gives NaN (Donchian channels, no TA-Lib counterpart)."""
    n = len(high)
    upper = np.full(n, np.nan)
    lower = np.full(n, np.nan)
    if n < period:
        return upper, lower
    bwd_h, bwd_l = _suffix_blocks(high, low, 0, period)
    last_nan_h = -1
    last_nan_l = -1
    fh = 0.0
    fl = 0.0
    pos = 0  # index of i inside its block
    for i in range(n):
        v = high[i]
        w = low[i]
        if v != v:
            last_nan_h = i
        if w != w:
            last_nan_l = i
        if pos == 0:
            fh = v
            fl = w
        else:
            fh = v if v > fh else fh
            fl = w if w < fl else fl
        pos += 1
        if pos == period:
            pos = 0
        j = i - period + 1
        if j >= 0:
            if last_nan_h < j:
                x = bwd_h[j]
                upper[i] = x if x > fh else fh
            if last_nan_l < j:
                x = bwd_l[j]
                lower[i] = x if x < fl else fl
    return upper, lower


@_jit
def vwap(high: FloatArray, low: FloatArray, close: FloatArray, volume: FloatArray) -> FloatArray:
    """Cumulative VWAP of typical price; NaN while the cumulative volume is not positive or the
    ratio is not finite."""
    n = len(high)
    out = np.empty(n)
    cum_pv = 0.0
    cum_v = 0.0
    for i in range(n):
        cum_pv += ((high[i] + low[i] + close[i]) / 3.0) * volume[i]
        cum_v += volume[i]
        if cum_v > 0:
            value = cum_pv / cum_v
            out[i] = value if math.isfinite(value) else np.nan
        else:
            out[i] = np.nan
    return out


@_jit
def volume_change(volume: FloatArray, period: int) -> FloatArray:
    """(v[t] / mean(v[t - p .. t - 1]) - 1) * 100 with TA-Lib's SMA running sum for the mean;
    NaN where that mean is not positive or the result is not finite."""
    n = len(volume)
    out = np.full(n, np.nan)
    if n <= period:
        return out
    total = 0.0
    for i in range(period - 1):
        total += volume[i]
    for i in range(period - 1, n - 1):
        total += volume[i]
        mean = total / period
        total -= volume[i - period + 1]
        if mean > 0.0:
            value = (volume[i + 1] / mean - 1.0) * 100.0
            if math.isfinite(value):
                out[i + 1] = value
    return out


# --------------------------------------------------------------------------- newest window only
# The helpers of windowed indicators need one value: these kernels compute it from the newest
# window alone and return numbers, not arrays. One named after a full-series kernel gives
# exactly what that kernel gives for the window's last candle when run on the window alone, NaN
# rules included (``last_stochf`` runs it, the others repeat its operations); ``last_cci`` and
# ``last_bbands`` say how they relate to the full series over all the candles.


@_jit_short
def first_valid(a: FloatArray, b: FloatArray, c: FloatArray) -> int:
    """Index of the first position where none of ``a``, ``b``, ``c`` is NaN (``len`` if none);
    pass a column twice for fewer inputs (``core._begin`` inside a kernel)."""
    n = len(a)
    for i in range(n):
        if not (math.isnan(a[i]) or math.isnan(b[i]) or math.isnan(c[i])):
            return i
    return n


@_jit_short
def last_sum(x: FloatArray, period: int) -> float:
    """Sum of the last ``period`` values, left to right from 0.0 as TA-Lib's SUM; NaN if fewer."""
    n = len(x)
    if n < period:
        return np.nan
    total = 0.0
    for i in range(n - period, n):
        total += x[i]
    return total


@_jit_short
def last_bbands(x: FloatArray, period: int, std_dev: float) -> tuple[float, float, float]:
    """(upper, middle, lower) of the last ``period`` values: middle ± std_dev × deviation.

    middle = their sum (left to right) / period and the population deviation in two passes,
    both within a few ulp of the exact values; a variance below 1e-14 counts as 0, as in
    ``bbands``. ``bbands`` (TA-Lib) carries running sums from the first candle instead, which
    drift by up to ~100 ulp (middle) and ~1000 ulp (bands) over 65,000 candles, so the two
    agree to ~1e-12 relative; this value depends on the window only, not on where the series
    starts. NaN if fewer values or a NaN in the window.
    """
    n = len(x)
    if n < period:
        return np.nan, np.nan, np.nan
    start = n - period
    total = 0.0
    for i in range(start, n):
        total += x[i]
    mean = total / period
    squares = 0.0
    for i in range(start, n):
        d = x[i] - mean
        squares += d * d
    variance = squares / period
    width = (math.sqrt(variance) if not variance < EPS else 0.0) * std_dev
    return mean + width, mean, mean - width


@_jit_short
def last_max(x: FloatArray, period: int) -> float:
    """Largest of the last ``period`` values; NaN if fewer or if one of them is NaN (as ``np.max``)."""
    n = len(x)
    if n < period:
        return np.nan
    best: float = x[n - period]
    for i in range(n - period + 1, n):
        v: float = x[i]
        if v != v:
            return v
        if v > best:
            best = v
    return best


@_jit_short
def last_min(x: FloatArray, period: int) -> float:
    """Smallest of the last ``period`` values; NaN if fewer or if one of them is NaN (as ``np.min``)."""
    n = len(x)
    if n < period:
        return np.nan
    best: float = x[n - period]
    for i in range(n - period + 1, n):
        v: float = x[i]
        if v != v:
            return v
        if v < best:
            best = v
    return best


# ------------------------------------------------------------------ per-close windows, all at once
# ``signal_series`` (the vectorized strategy form) asks for every close's newest-window value in
# one call. Each kernel below applies the newest-window kernel to each window in turn, so value i
# is bit for bit what the helper returns for a view ending at candle i (fastmath is off, so the
# compiler keeps every operation and its order).


@_jit
def window_sums(x: FloatArray, period: int) -> FloatArray:
    """Value i: ``last_sum(x[: i + 1], period)``; NaN before the first full window."""
    n = len(x)
    out = np.full(n, np.nan)
    for i in range(period - 1, n):
        out[i] = last_sum(x[i - period + 1 : i + 1], period)
    return out


# The history-dependent indicators seed at the first candle they are given, so their value at a
# close depends on where check_signal's view starts: value i runs the newest-value kernel over
# that close's own view, ``x[i - window + 1 : i + 1]`` (fewer at the start), O(n * window).


@_jit
def window_ema(x: FloatArray, window: int, period: int, k: float) -> FloatArray:
    """Value i: ``get_latest_ema`` of the view ending at i."""
    n = len(x)
    out = np.full(n, np.nan)
    for i in range(period - 1, n):
        view = x[max(0, i + 1 - window) : i + 1]
        out[i] = _newest_ema(view, first_valid(view, view, view), period, k)
    return out


@_jit
def window_rsi(x: FloatArray, window: int, period: int) -> FloatArray:
    """Value i: ``get_latest_rsi`` of the view ending at i (NaN for views of ``period`` values
    or fewer)."""
    n = len(x)
    out = np.full(n, np.nan)
    for i in range(period, n):
        view = x[max(0, i + 1 - window) : i + 1]
        out[i] = _newest_rsi(view, first_valid(view, view, view), period)
    return out


@_jit
def window_macd(x: FloatArray, window: int, fast: int, slow: int, signal: int) -> Triple:
    """Value i: ``get_latest_macd`` of the view ending at i (line, signal, histogram)."""
    n = len(x)
    line, sig, hist = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for i in range(slow + signal - 2, n):
        view = x[max(0, i + 1 - window) : i + 1]
        line[i], sig[i], hist[i] = _newest_macd(view, first_valid(view, view, view), fast, slow, signal)
    return line, sig, hist


@_jit
def window_atr(high: FloatArray, low: FloatArray, close: FloatArray, window: int, period: int) -> FloatArray:
    """Value i: ``get_latest_atr`` of the view ending at i (NaN for views of ``period`` candles
    or fewer); the view starts at its first candle with no NaN in high, low and close."""
    n = len(close)
    out = np.full(n, np.nan)
    for i in range(period, n):
        lo = max(0, i + 1 - window)
        h, lw, c = high[lo : i + 1], low[lo : i + 1], close[lo : i + 1]
        out[i] = _newest_atr(h, lw, c, first_valid(h, lw, c), period)
    return out


@_jit
def window_bbands(x: FloatArray, period: int, std_dev: float) -> Triple:
    """Value i: ``last_bbands(x[: i + 1], period, std_dev)``; NaN before the first full window."""
    n = len(x)
    upper, middle, lower = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for i in range(period - 1, n):
        upper[i], middle[i], lower[i] = last_bbands(x[i - period + 1 : i + 1], period, std_dev)
    return upper, middle, lower


@_jit
def window_max(x: FloatArray, period: int) -> FloatArray:
    """Value i: ``last_max(x[: i + 1], period)``; NaN before the first full window."""
    n = len(x)
    out = np.full(n, np.nan)
    for i in range(period - 1, n):
        out[i] = last_max(x[i - period + 1 : i + 1], period)
    return out


@_jit
def window_min(x: FloatArray, period: int) -> FloatArray:
    """Value i: ``last_min(x[: i + 1], period)``; NaN before the first full window."""
    n = len(x)
    out = np.full(n, np.nan)
    for i in range(period - 1, n):
        out[i] = last_min(x[i - period + 1 : i + 1], period)
    return out


@_jit_short
def last_max_min(high: FloatArray, low: FloatArray, period: int) -> tuple[float, float]:
    """``last_max(high)`` and ``last_min(low)`` in one call (Donchian's upper and lower)."""
    return last_max(high, period), last_min(low, period)


@_jit_short
def last_wma(x: FloatArray, period: int) -> float:
    """``wma`` on the last ``period`` values: its one output, by the same operations."""
    n = len(x)
    if n < period:
        return np.nan
    last: float = x[n - 1]
    if period == 1:
        return last
    start = n - period
    if math.isnan(x[start]):  # a leading NaN: ``wma`` has too few values after it
        return np.nan
    total: float = 0.0
    for w in range(1, period):
        total += x[start + w - 1] * w
    total += last * period
    return total / float(period * (period + 1) // 2)


@_jit_short
def last_willr(high: FloatArray, low: FloatArray, close: FloatArray, period: int) -> float:
    """``willr`` on the last ``period`` candles: its one output.

    Over exactly one window its block extremes come down to a forward scan from the first
    candle (which must not be NaN; a later NaN never wins a comparison).
    """
    n = len(high)
    if n < period:
        return np.nan
    start = n - period
    highest: float = high[start]
    lowest: float = low[start]
    if math.isnan(highest) or math.isnan(lowest) or math.isnan(close[start]):
        return np.nan
    for i in range(start + 1, n):
        v = high[i]
        if v > highest:
            highest = v
        v = low[i]
        if v < lowest:
            lowest = v
    span = highest - lowest
    if _flat(span, abs(highest) + abs(lowest)):
        return 0.0
    last: float = close[n - 1]
    return ((highest - last) / span) * -100.0


@_jit_short
def last_stochf(
    high: FloatArray, low: FloatArray, close: FloatArray, k_period: int, d_period: int
) -> tuple[float, float]:
    """``stochf`` on the last ``k_period + d_period - 1`` candles: its last (%K, %D)."""
    n = len(high)
    need = k_period + d_period - 1
    if n < need:
        return np.nan, np.nan
    h = high[n - need :]
    lo = low[n - need :]
    c = close[n - need :]
    k_out, d_out = stochf(h, lo, c, first_valid(h, lo, c), k_period, d_period)
    return k_out[need - 1], d_out[need - 1]


@_jit_short
def last_aroon(high: FloatArray, low: FloatArray, period: int) -> tuple[float, float]:
    """``aroon`` on the last ``period + 1`` candles: its one (up, down), ties to the newest."""
    n = len(high)
    if n <= period:
        return np.nan, np.nan
    start = n - period - 1
    highest = high[start]
    lowest = low[start]
    if math.isnan(highest) or math.isnan(lowest):
        return np.nan, np.nan
    hi_idx = 0
    lo_idx = 0
    for j in range(1, period + 1):
        v = low[start + j]
        if v <= lowest:
            lo_idx = j
            lowest = v
        v = high[start + j]
        if v >= highest:
            hi_idx = j
            highest = v
    factor = 100.0 / period
    return factor * hi_idx, factor * lo_idx


@_jit_short
def last_volume_change(volume: FloatArray, period: int) -> float:
    """``volume_change`` on the last ``period + 1`` volumes: its one output."""
    n = len(volume)
    if n <= period:
        return np.nan
    total = 0.0
    for i in range(n - period - 1, n - 1):
        total += volume[i]
    mean = total / period
    if mean > 0.0:
        value: float = (volume[n - 1] / mean - 1.0) * 100.0
        if math.isfinite(value):
            return value
    return np.nan


@_jit_short
def last_cci(high: FloatArray, low: FloatArray, close: FloatArray, period: int) -> float:
    """The last element of ``cci`` over all the candles given, computed from the last window.

    ``cci`` keeps typical prices in a circular buffer whose slot 0 holds candles
    ``b, b + period, ...`` (``b``: the first candle without NaN) and sums it from slot 0;
    summing the window in that rotated order gives every digit of the full series (a CCI near
    zero is all cancellation).
    """
    n = len(high)
    start = n - period
    b = first_valid(high, low, close)
    if start < b:
        return np.nan
    first = (b - start) % period
    total = 0.0
    for j in range(period):
        i = start + (first + j) % period
        total += (high[i] + low[i] + close[i]) / 3.0
    mean = total / period
    deviation = 0.0
    for j in range(period):
        i = start + (first + j) % period
        deviation += abs((high[i] + low[i] + close[i]) / 3.0 - mean)
    deviation /= period
    delta: float = (high[n - 1] + low[n - 1] + close[n - 1]) / 3.0 - mean
    level = abs(mean)
    if _flat(delta, level) or _flat(deviation, level):
        return 0.0
    return delta / (0.015 * deviation)


MARKET_PERIODS = np.array([20, 50, 200, 12, 26, 14, 9], dtype=np.int64)
MARKET_PERIODS.flags.writeable = False


@_jit
def latest_market_indicators(
    close: FloatArray, high: FloatArray, low: FloatArray, volume: FloatArray, b: int, b_hlc: int, p: IntArray
) -> FloatArray:
    """The newest values of ``ai.market_data.calculate_indicators``'s set in one call, each equal
    to ``core.<indicator>(...)[-1]`` bit for bit. ``b``: first candle without NaN in ``close``;
    ``b_hlc``: in high, low and close.

    Order: SMA 20, 50, 200; EMA 12, 26; RSI 14; MACD 12/26/9 line, signal, histogram;
    Bollinger 20/2 upper, middle, lower; ATR 14; VWAP. Needs at least one candle.

    Every analysis calls this, and most of what the full kernels do (fill 15 NaN arrays, store
    every value) is thrown away: the ``_newest_*`` loops below run the kernels' recurrences in
    the same order of operations and keep only the running state, so they give the same last
    values (``test_calculate_indicators_is_core_bit_for_bit``, on real candles too) without an
    allocation, at less than half the time when the caches are cold, as between analyses.

    ``p`` holds the periods (20, 50, 200, 12, 26, 14, 9): as constants here numba would type
    them as literals and compile extra versions of every kernel called, breaking the
    one-specialization-per-kernel rule (``warm_up``) on an empty cache.
    """
    out = np.empty(14)
    out[0] = _newest_sma(close, b, p[0])
    out[1] = _newest_sma(close, b, p[1])
    out[2] = _newest_sma(close, b, p[2])
    out[3] = _newest_ema(close, b, p[3], 2.0 / (p[3] + 1))
    out[4] = _newest_ema(close, b, p[4], 2.0 / (p[4] + 1))
    out[5] = _newest_rsi(close, b, p[5])
    out[6], out[7], out[8] = _newest_macd(close, b, p[3], p[4], p[6])
    width = _newest_bbands_width(close, b, p[0], 2.0)
    out[9] = out[0] + width  # the middle band is the SMA 20 (``bbands``)
    out[10] = out[0]
    out[11] = out[0] - width
    out[12] = _newest_atr(high, low, close, b_hlc, p[5])
    out[13] = _newest_vwap(high, low, close, volume)
    return out


@_jit
def _newest_sma(x: FloatArray, b: int, period: int) -> float:
    """``sma(x, b, period)[-1]``."""
    n = len(x)
    start = b + period - 1
    if start >= n:
        return np.nan
    total = 0.0
    for i in range(b, start):
        total += x[i]
    trailing = b
    for i in range(start, n - 1):
        total += x[i]
        total -= x[trailing]
        trailing += 1
    newest: float = x[n - 1]
    return (total + newest) / period


@_jit
def _newest_ema(x: FloatArray, b: int, period: int, k: float) -> float:
    """``ema(x, b, period, k)[-1]``."""
    n = len(x)
    start = b + period - 1
    if start >= n:
        return np.nan
    total = 0.0
    for i in range(b, start + 1):
        total += x[i]
    prev = total / period
    for i in range(start + 1, n):
        prev = fma(x[i] - prev, k, prev)
    return prev


@_jit
def _newest_rsi(x: FloatArray, b: int, period: int) -> float:
    """``rsi(x, b, period)[-1]``."""
    n = len(x)
    start = b + period
    if start >= n:
        return np.nan
    gain, loss = _rsi_seed(x, b, period)
    keep = float(period - 1)
    for i in range(start + 1, n):
        gain, loss = _rsi_smooth(gain, loss, x[i] - x[i - 1], period, keep)
    return _rsi_value(gain, loss)


@_jit
def _newest_macd(x: FloatArray, b: int, fast: int, slow: int, signal: int) -> tuple[float, float, float]:
    """The last line, signal and histogram of ``macd(x, b, fast, slow, signal)``: the signal is
    seeded with the sum of the first ``signal`` raw values in the same order, then smoothed."""
    n = len(x)
    seed = b + slow - 1
    start = seed + signal - 1
    if start >= n:
        return np.nan, np.nan, np.nan
    k_fast = 2.0 / (fast + 1)
    k_slow = 2.0 / (slow + 1)
    k_sig = 2.0 / (signal + 1)
    fast_ema, slow_ema = _macd_seeds(x, seed, fast, slow)
    raw = fast_ema - slow_ema
    total = raw
    for i in range(seed + 1, start + 1):
        fast_ema = fma(x[i] - fast_ema, k_fast, fast_ema)
        slow_ema = fma(x[i] - slow_ema, k_slow, slow_ema)
        raw = fast_ema - slow_ema
        total += raw
    prev = total / signal
    for i in range(start + 1, n):
        fast_ema = fma(x[i] - fast_ema, k_fast, fast_ema)
        slow_ema = fma(x[i] - slow_ema, k_slow, slow_ema)
        raw = fast_ema - slow_ema
        prev = fma(raw - prev, k_sig, prev)
    return raw, prev, raw - prev


@_jit
def _newest_bbands_width(x: FloatArray, b: int, period: int, std_dev: float) -> float:
    """``std_dev`` times the last standard deviation of ``bbands(x, b, period, std_dev)``: from
    the anchor its last window belongs to (re-chosen every 64 windows from the first), with the
    same running sums and the same two-pass fallback. (Written out, not shared with ``bbands``
    through step functions: that made ``bbands`` twice as slow, 4.6 against 10 ms per 200k.)"""
    n = len(x)
    first = b + period - 1
    if first >= n:
        return np.nan
    i = first + (n - 1 - first) // 64 * 64
    anchor = 0.0
    for j in range(i - period + 1, i + 1):
        anchor += x[j]
    anchor /= period
    s1 = 0.0
    s2 = 0.0
    for j in range(i - period + 1, i + 1):
        d = x[j] - anchor
        s1 += d
        s2 += d * d
    for t in range(i + 1, n):
        d = x[t] - anchor
        s1 += d
        s2 += d * d
        d = x[t - period] - anchor
        s1 -= d
        s2 -= d * d
    mean = s1 / period
    mean_sq = s2 / period
    variance = mean_sq - mean * mean
    if not (mean_sq <= 1e6 * variance):
        m = 0.0
        for j in range(n - period, n):
            m += x[j]
        m /= period
        v = 0.0
        for j in range(n - period, n):
            d = x[j] - m
            v += d * d
        variance = v / period
    std = math.sqrt(variance) if not variance < EPS else 0.0
    return std * std_dev


@_jit
def _newest_atr(high: FloatArray, low: FloatArray, close: FloatArray, b: int, period: int) -> float:
    """``atr(high, low, close, b, period)[-1]``."""
    n = len(high)
    if period == 1:
        return _true_range_at(high, low, close, n - 1) if n - 1 > b else np.nan
    start = b + period
    if start >= n:
        return np.nan
    total = 0.0
    for i in range(b + 1, start + 1):
        total += _true_range_at(high, low, close, i)
    prev = total / period
    decay = (period - 1) / period
    for i in range(start + 1, n):
        prev = fma(prev, decay, _true_range_at(high, low, close, i) / period)
    return prev


@_jit
def _newest_vwap(high: FloatArray, low: FloatArray, close: FloatArray, volume: FloatArray) -> float:
    """``vwap(high, low, close, volume)[-1]``."""
    cum_pv = 0.0
    cum_v = 0.0
    for i in range(len(high)):
        cum_pv += ((high[i] + low[i] + close[i]) / 3.0) * volume[i]
        cum_v += volume[i]
    if cum_v > 0:
        value = cum_pv / cum_v
        return value if math.isfinite(value) else np.nan
    return np.nan


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel for the one argument type used.

    Called once at import so that no indicator call, in particular none inside a strategy's
    time budget in the sandbox, ever pays a compile: read-only C-contiguous float64 arrays,
    ``int`` periods, ``float`` factors (see ``core._array``).
    """
    x = np.linspace(1.0, 2.0, 8)
    x.flags.writeable = False
    sma(x, 0, 2)
    ema(x, 0, 2, 0.5)
    wma(x, 0, 2)
    rsi(x, 0, 2)
    macd(x, 0, 2, 3, 2)
    stochf(x, x, x, 0, 2, 2)
    willr(x, x, x, 0, 2)
    cci(x, x, x, 0, 2)
    roc(x, 0, 2)
    atr(x, x, x, 0, 2)
    keltner(x, x, x, 0, 0, 2, 2, 2.0)
    bbands(x, 0, 2, 2.0)
    obv(x, x, 0)
    adx(x, x, x, 0, 2)
    aroon(x, x, 0, 2)
    window_extremes(x, x, 2)
    vwap(x, x, x, x)
    volume_change(x, 2)
    window_sums(x, 2)
    window_bbands(x, 2, 2.0)
    window_ema(x, 4, 2, 0.5)
    window_rsi(x, 4, 2)
    window_macd(x, 4, 2, 3, 2)
    window_atr(x, x, x, 4, 2)
    window_max(x, 2)
    window_min(x, 2)
    latest_market_indicators(x, x, x, x, 0, 0, MARKET_PERIODS)


warm_up()


# --------------------------------------------------------------------------- entry points
_COLUMN = types.Array(types.float64, 1, "C", readonly=True)
_INT = types.int64
_FLOAT = types.float64


def _entry_point(kernel: _F, columns: int, *scalars: Any) -> _F:
    """``kernel`` compiled for ``columns`` read-only contiguous float64 arrays and then
    ``scalars`` (numba types): the signature ``warm_up`` uses, so no second specialization.

    Returns the compiled code's own entry point. Calling it skips numba's per-call dispatch
    (typing every argument: ~0.5 µs, ~1 µs with three arrays, more than a newest-window
    kernel's whole work), and it checks nothing: an array of another dtype or shape, or with a
    stride, would be misread. ``helpers._column`` is what lets an array through to one.
    """
    dispatcher: Any = kernel
    return cast(_F, dispatcher.compile((_COLUMN,) * columns + scalars))


ema_entry = _entry_point(ema, 1, _INT, _INT, _FLOAT)
rsi_entry = _entry_point(rsi, 1, _INT, _INT)
macd_entry = _entry_point(macd, 1, _INT, _INT, _INT, _INT)
atr_entry = _entry_point(atr, 3, _INT, _INT)
keltner_entry = _entry_point(keltner, 3, _INT, _INT, _INT, _INT, _FLOAT)
adx_entry = _entry_point(adx, 3, _INT, _INT)
obv_entry = _entry_point(obv, 2, _INT)
vwap_entry = _entry_point(vwap, 4)
last_sum_entry = _entry_point(last_sum, 1, _INT)
last_bbands_entry = _entry_point(last_bbands, 1, _INT, _FLOAT)
last_max_entry = _entry_point(last_max, 1, _INT)
last_min_entry = _entry_point(last_min, 1, _INT)
last_max_min_entry = _entry_point(last_max_min, 2, _INT)
last_wma_entry = _entry_point(last_wma, 1, _INT)
last_willr_entry = _entry_point(last_willr, 3, _INT)
last_stochf_entry = _entry_point(last_stochf, 3, _INT, _INT)
last_aroon_entry = _entry_point(last_aroon, 2, _INT)
last_volume_change_entry = _entry_point(last_volume_change, 1, _INT)
last_cci_entry = _entry_point(last_cci, 3, _INT)
