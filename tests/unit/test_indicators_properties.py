"""Invariants of the indicators on random finite candles (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tradeengine import indicators as ind

price = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)
volume = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
periods = st.integers(min_value=1, max_value=30)
TOL = 1e-9


@st.composite
def candles(draw: st.DrawFn, max_size: int = 120) -> dict[str, np.ndarray]:
    n = draw(st.integers(min_value=0, max_value=max_size))
    close = draw(arrays(np.float64, n, elements=price))
    up = draw(arrays(np.float64, n, elements=st.floats(min_value=0.0, max_value=0.2)))
    down = draw(arrays(np.float64, n, elements=st.floats(min_value=0.0, max_value=0.2)))
    # high >= close >= low by construction; flat candles (0 spread) are included
    return {
        "high": close * (1.0 + up),
        "low": close * (1.0 - down),
        "close": close,
        "volume": draw(arrays(np.float64, n, elements=volume)),
    }


def finite(values: np.ndarray) -> np.ndarray:
    assert not np.isinf(values).any()
    return values[~np.isnan(values)]


@settings(max_examples=30, deadline=None)
@given(candles(), periods, st.floats(min_value=0.0, max_value=5.0))
def test_bands_are_ordered(d: dict[str, np.ndarray], period: int, width: float) -> None:
    h, lo, c = d["high"], d["low"], d["close"]
    for upper, middle, lower in (
        ind.bollinger_bands(c, period, width),
        ind.keltner_channels(h, lo, c, period, max(1, period // 2), width),
        ind.donchian_channels(h, lo, period),
    ):
        valid = ~np.isnan(middle)
        np.testing.assert_array_equal(valid, ~np.isnan(upper))
        np.testing.assert_array_equal(valid, ~np.isnan(lower))
        assert (upper[valid] >= middle[valid]).all()
        assert (middle[valid] >= lower[valid]).all()


@settings(max_examples=30, deadline=None)
@given(candles(), periods, st.integers(min_value=1, max_value=5))
def test_oscillators_stay_in_range(d: dict[str, np.ndarray], period: int, d_period: int) -> None:
    h, lo, c = d["high"], d["low"], d["close"]
    rsi = finite(ind.rsi(c, period))
    assert ((rsi >= -TOL) & (rsi <= 100 + TOL)).all()
    k, dd = ind.stochastic(h, lo, c, period, d_period)
    for values in (finite(k), finite(dd)):
        assert ((values >= -TOL) & (values <= 100 + TOL)).all()
    wr = finite(ind.williams_r(h, lo, c, period))
    assert ((wr >= -100 - TOL) & (wr <= TOL)).all()
    up, down = ind.aroon(h, lo, period)
    for values in (finite(up), finite(down)):
        # factor * (period - age) as TA-Lib spells it: 100/3 * 3 is 100.00000000000001
        assert ((values >= 0) & (values <= 100 + TOL)).all()
    adx = finite(ind.adx(h, lo, c, period))
    assert ((adx >= -TOL) & (adx <= 100 + TOL)).all()


@settings(max_examples=30, deadline=None)
@given(candles(max_size=80), periods)
def test_no_exception_and_aligned_output_on_any_finite_input(d: dict[str, np.ndarray], period: int) -> None:
    h, lo, c, v = d["high"], d["low"], d["close"], d["volume"]
    n = len(c)
    outputs = [
        ind.sma(c, period),
        ind.ema(c, period),
        ind.wma(c, period),
        ind.rsi(c, period),
        ind.roc(c, period),
        ind.cci(h, lo, c, period),
        ind.williams_r(h, lo, c, period),
        ind.atr(h, lo, c, period),
        ind.adx(h, lo, c, period),
        ind.obv(c, v),
        ind.vwap(h, lo, c, v),
        ind.volume_ma(v, period),
        ind.volume_change(v, period),
        *ind.macd(c, period, period + 3, max(1, period // 3)),
        *ind.stochastic(h, lo, c, period, 3),
        *ind.bollinger_bands(c, period, 2.0),
        *ind.keltner_channels(h, lo, c, period),
        *ind.donchian_channels(h, lo, period),
        *ind.aroon(h, lo, period),
    ]
    for out in outputs:
        assert out.shape == (n,)
        assert out.dtype == np.float64
        assert not np.isinf(out).any()
    if n < period:
        assert np.isnan(ind.sma(c, period)).all()
    klines = ind.Klines.from_arrays(np.arange(n, dtype=np.int64), c, h, lo, c, v)
    for name, func in ind.HELPERS.items():
        if name == "Klines" or name[3:4] != "_":
            continue
        if name in {
            "get_latest_vwap",
            "get_latest_obv",
            "get_latest_macd",
            "get_closes",
            "get_opens",
            "get_highs",
            "get_lows",
            "get_volumes",
        }:
            result = func(klines)
        else:
            result = func(klines, period)
        values = result if isinstance(result, tuple) else (result,) if isinstance(result, float) else ()
        assert all(not math.isinf(x) for x in values), name


@settings(max_examples=25, deadline=None)
@given(candles(max_size=60), periods)
def test_helpers_match_full_series_on_random_data(d: dict[str, np.ndarray], period: int) -> None:
    h, lo, c, v = d["high"], d["low"], d["close"], d["volume"]
    klines = ind.Klines.from_arrays(np.arange(len(c), dtype=np.int64), c, h, lo, c, v)
    pairs = [
        (ind.get_latest_sma(klines, period), ind.sma(c, period)),
        (ind.get_latest_wma(klines, period), ind.wma(c, period)),
        (ind.get_latest_rsi(klines, period), ind.rsi(c, period)),
        (ind.get_latest_cci(klines, period), ind.cci(h, lo, c, period)),
        (ind.get_latest_williams_r(klines, period), ind.williams_r(h, lo, c, period)),
        (ind.get_latest_atr(klines, period), ind.atr(h, lo, c, period)),
        (ind.get_latest_adx(klines, period), ind.adx(h, lo, c, period)),
    ]
    for got, full in pairs:
        expected = float(full[-1]) if len(full) else math.nan
        if math.isnan(expected):
            assert math.isnan(got)
        else:
            assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9 * max(1.0, float(np.max(c))))
