"""The strategy helper API: names, inputs, equality with the full series, caching, errors."""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import talib
from numba.core.dispatcher import Dispatcher

from tradeengine import indicators as ind
from tradeengine.indicators import _kernels, helpers

ROOT = Path(__file__).resolve().parents[2]
MARKET = ROOT.parent / "shared" / "data" / "market"
SEED = ROOT.parent / "shared" / "seeds" / "000_bea8b7cbd79a14b9.txt"


def rows(name: str = "BTC_USDT-1h.json", start: int = 0, count: int = 500) -> list[list[float]]:
    data: list[list[float]] = json.loads((MARKET / name).read_text())
    return data[start : start + count]


def close_enough(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1e-300)


def test_helpers_mapping_has_every_seed_name_and_snake_case_twin() -> None:
    text = SEED.read_text()
    block = text[text.index("Helper Functions Provided to User Code") :]
    block = block[: block.index("Custom Indicators")]
    seed_names = set(re.findall(r"func (get\w+)\(", block))
    assert len(seed_names) == 29
    assert seed_names <= set(ind.HELPERS)
    for camel in seed_names:
        assert ind.HELPERS[camel] is getattr(ind, camel)
    snake_names = {n for n in ind.HELPERS if "_" in n}
    assert len(snake_names) == 29
    for name in snake_names:
        camel_twin = [c for c in seed_names if ind.HELPERS[c] is ind.HELPERS[name]]
        assert len(camel_twin) == 1, name
    assert ind.HELPERS["Klines"] is ind.Klines
    assert set(ind.HELPERS) == seed_names | snake_names | {"Klines"}


K = ind.Klines.from_rows(rows())
H, L, C, V = K.high, K.low, K.close, K.volume


def last(values: np.ndarray) -> float:
    return float(values[-1])


FULL_SERIES = {
    "get_latest_sma": (lambda k: ind.get_latest_sma(k, 20), lambda: last(ind.sma(C, 20))),
    "get_latest_ema": (lambda k: ind.get_latest_ema(k, 20), lambda: last(ind.ema(C, 20))),
    "get_latest_wma": (lambda k: ind.get_latest_wma(k, 20), lambda: last(ind.wma(C, 20))),
    "get_latest_vwap": (lambda k: ind.get_latest_vwap(k), lambda: last(ind.vwap(H, L, C, V))),
    "get_latest_rsi": (lambda k: ind.get_latest_rsi(k, 14), lambda: last(ind.rsi(C, 14))),
    "get_latest_macd": (lambda k: ind.get_latest_macd(k), lambda: tuple(last(x) for x in ind.macd(C))),
    "get_latest_stochastic": (
        lambda k: ind.get_latest_stochastic(k, 14, 3),
        lambda: tuple(last(x) for x in ind.stochastic(H, L, C, 14, 3)),
    ),
    "get_latest_cci": (lambda k: ind.get_latest_cci(k, 20), lambda: last(ind.cci(H, L, C, 20))),
    "get_latest_williams_r": (
        lambda k: ind.get_latest_williams_r(k, 14),
        lambda: last(ind.williams_r(H, L, C, 14)),
    ),
    "get_latest_roc": (lambda k: ind.get_latest_roc(k, 10), lambda: last(ind.roc(C, 10))),
    "get_latest_bollinger_bands": (
        lambda k: ind.get_latest_bollinger_bands(k, 20, 2.0),
        lambda: tuple(last(x) for x in ind.bollinger_bands(C, 20, 2.0)),
    ),
    "get_latest_atr": (lambda k: ind.get_latest_atr(k, 14), lambda: last(ind.atr(H, L, C, 14))),
    "get_latest_keltner_channels": (
        lambda k: ind.get_latest_keltner_channels(k, 20, 10, 2.0),
        lambda: tuple(last(x) for x in ind.keltner_channels(H, L, C, 20, 10, 2.0)),
    ),
    "get_latest_donchian_channels": (
        lambda k: ind.get_latest_donchian_channels(k, 20),
        lambda: tuple(last(x) for x in ind.donchian_channels(H, L, 20)),
    ),
    "get_latest_volume_change": (
        lambda k: ind.get_latest_volume_change(k, 20),
        lambda: last(ind.volume_change(V, 20)),
    ),
    "get_latest_obv": (lambda k: ind.get_latest_obv(k), lambda: last(ind.obv(C, V))),
    "get_latest_volume_ma": (lambda k: ind.get_latest_volume_ma(k, 20), lambda: last(ind.volume_ma(V, 20))),
    "get_latest_adx": (lambda k: ind.get_latest_adx(k, 14), lambda: last(ind.adx(H, L, C, 14))),
    "get_latest_aroon": (
        lambda k: ind.get_latest_aroon(k, 14),
        lambda: tuple(last(x) for x in ind.aroon(H, L, 14)),
    ),
}


@pytest.mark.parametrize("name", sorted(FULL_SERIES))
def test_helper_equals_last_value_of_full_series(name: str) -> None:
    helper, full = FULL_SERIES[name]
    ind.clear_cache()
    expected = full()
    for source in (K, rows()):  # a Klines view and raw Binance rows
        got = helper(source)
        if isinstance(expected, tuple):
            assert isinstance(got, tuple)
            assert len(got) == len(expected)
            assert all(isinstance(x, float) for x in got)
            assert all(close_enough(a, b) for a, b in zip(got, expected, strict=True)), (got, expected)
        else:
            assert isinstance(got, float)
            assert close_enough(got, expected), (got, expected)
            assert not math.isnan(got)


@pytest.mark.parametrize("start", [0, 1, 7, 19, 1234, 4900])
def test_cci_helper_is_bit_identical_for_every_window_alignment(start: int) -> None:
    k = ind.Klines.from_rows(rows("SOL_USDT-1h.json", start, 500 - start % 20))
    assert ind.get_latest_cci(k, 20) == last(ind.cci(k.high, k.low, k.close, 20))


def test_string_rows_are_accepted_like_binance_rest() -> None:
    raw = [[str(x) if i else int(x) for i, x in enumerate(r)] + ["ignored"] for r in rows(count=60)]
    assert ind.get_latest_rsi(raw, 14) == ind.get_latest_rsi(ind.Klines.from_rows(rows(count=60)), 14)


def test_short_input_gives_nan_not_an_exception() -> None:
    short = ind.Klines.from_rows(rows(count=5))
    periodic = [
        n
        for n in ind.HELPERS
        if n.startswith("get_")
        and n
        not in {
            "get_closes",
            "get_opens",
            "get_highs",
            "get_lows",
            "get_volumes",
            "get_latest_vwap",
            "get_latest_obv",
            "get_latest_macd",
        }
    ]
    assert len(periodic) == 21
    for name in periodic:
        result = ind.HELPERS[name](short, 20)
        values = result if isinstance(result, tuple) else (result,)
        assert all(math.isnan(v) for v in values), name
    assert all(math.isnan(v) for v in ind.get_latest_macd(short))
    assert math.isnan(ind.get_latest_vwap(ind.Klines.empty()))
    assert math.isnan(ind.get_latest_obv([]))
    assert len(ind.get_closes([])) == 0


def test_price_action_and_volume_helpers_by_hand() -> None:
    k = ind.Klines.from_rows(
        [
            [0, 10, 11, 9, 10, 100],
            [1, 10, 12, 10, 11, 200],
            [2, 11, 15, 10, 14, 0],
            [3, 14, 14, 8, 12, 300],
        ]
    )
    assert ind.get_price_change(k, 1) == 12 - 14
    assert ind.get_price_change(k, 3) == 12 - 10
    assert ind.get_price_change_percent(k, 3) == pytest.approx(20.0)
    assert math.isnan(ind.get_price_change(k, 4))
    assert ind.get_highest_high(k, 2) == 15
    assert ind.get_lowest_low(k, 2) == 8
    assert ind.get_highest_high(k, 4) == 15
    assert ind.get_lowest_low(k, 4) == 8
    assert math.isnan(ind.get_highest_high(k, 5))
    assert ind.get_latest_volume(k) == 300
    assert ind.get_latest_volume(k, 3) == 500
    # newest volume against the mean of the 3 before it: 300 / 100 - 1
    assert ind.get_latest_volume_change(k, 3) == pytest.approx(200.0)
    assert ind.get_latest_volume_ma(k, 2) == pytest.approx(150.0)
    upper, middle, lower = ind.get_latest_donchian_channels(k, 3)
    assert (upper, middle, lower) == (15.0, 11.5, 8.0)
    tp = [(11 + 9 + 10) / 3, (12 + 10 + 11) / 3, (15 + 10 + 14) / 3, (14 + 8 + 12) / 3]
    vols = [100, 200, 0, 300]
    assert ind.get_latest_vwap(k) == pytest.approx(sum(t * v for t, v in zip(tp, vols, strict=True)) / 600)
    assert list(ind.get_closes(k)) == [10, 11, 14, 12]
    assert list(ind.get_opens(k)) == [10, 10, 11, 14]
    assert list(ind.get_highs(k)) == [11, 12, 15, 14]
    assert list(ind.get_lows(k)) == [9, 10, 10, 8]
    assert list(ind.get_volumes(k)) == [100, 200, 0, 300]
    with pytest.raises(ValueError, match="read-only"):
        ind.get_closes(k)[0] = 1.0


def test_vwap_and_volume_change_undefined_ratios_are_nan() -> None:
    zero = np.zeros(5)
    price = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert np.isnan(ind.vwap(price, price, price, zero)).all()
    vwap = ind.vwap(price, price, price, np.array([0.0, 0.0, 1.0, 1.0, 2.0]))
    assert np.isnan(vwap[:2]).all()
    np.testing.assert_allclose(vwap[2:], [3.0, 3.5, (3 + 4 + 10) / 4])
    change = ind.volume_change(np.array([0.0, 0.0, 5.0, 10.0]), 2)
    assert np.isnan(change[:3]).all()  # warm-up, then a zero base
    assert change[3] == pytest.approx((10 / 2.5 - 1) * 100)


def test_keltner_is_ema_plus_minus_multiplier_atr() -> None:
    upper, middle, lower = ind.keltner_channels(H, L, C, 20, 10, 1.5)
    ema, atr = ind.ema(C, 20), ind.atr(H, L, C, 10)
    valid = ~np.isnan(middle)
    assert valid.sum() == len(C) - 19
    np.testing.assert_array_equal(middle[valid], ema[valid])
    np.testing.assert_allclose(upper[valid], ema[valid] + 1.5 * atr[valid], rtol=1e-15)
    np.testing.assert_allclose(lower[valid], ema[valid] - 1.5 * atr[valid], rtol=1e-15)


def test_cache_sees_in_place_updates_of_the_open_candle() -> None:
    """The kline store updates the still-open candle in place; the cache must not go stale."""
    table = np.array(rows(count=200), dtype=np.float64)
    close = table[:, 4].copy()
    high, low, volume = table[:, 2].copy(), table[:, 3].copy(), table[:, 5].copy()
    k = ind.Klines(table[:, 0].astype(np.int64), table[:, 1].copy(), high, low, close, volume)
    before = ind.get_latest_rsi(k, 14)
    assert ind.get_latest_rsi(k, 14) == before  # a hit
    close[-1] *= 1.01  # the buffer's owner writes through its writable base array
    after = ind.get_latest_rsi(k, 14)
    assert after != before
    assert after == pytest.approx(float(ind.rsi(close, 14)[-1]), rel=1e-12)
    volume[-1] += 5.0
    assert ind.get_latest_obv(k) == pytest.approx(float(ind.obv(close, volume)[-1]), rel=1e-12)


def test_cache_tells_apart_views_that_share_a_close_array_and_sees_a_new_high() -> None:
    """Hand-built views may share columns; the key is the view, and range helpers key on the
    newest high and low as well (the open candle's high moves without its close changing)."""
    ind.clear_cache()
    table = np.array(rows(count=200), dtype=np.float64)
    times, close, volume = table[:, 0].astype(np.int64), table[:, 4].copy(), table[:, 5].copy()
    for column in (times, close, volume):
        column.flags.writeable = False  # read-only columns are shared as they are, not re-viewed
    high = table[:, 2].copy()
    low = table[:, 3].copy()
    wide = ind.Klines(times, close, high, low, close, volume)
    narrow = ind.Klines(times, close, close + (high - close) / 10, close - (close - low) / 10, close, volume)
    for view in (wide, narrow, wide):
        assert ind.get_latest_atr(view, 14) == pytest.approx(
            float(ind.atr(view.high, view.low, view.close, 14)[-1]), rel=1e-12
        )
        assert ind.get_latest_adx(view, 14) == pytest.approx(
            float(ind.adx(view.high, view.low, view.close, 14)[-1]), rel=1e-12
        )
    assert ind.get_latest_atr(wide, 14) != ind.get_latest_atr(narrow, 14)
    before = ind.get_latest_atr(wide, 14)
    high[-1] += 50.0  # a trade at a new high, then the price came back: close and volume as they were
    after = ind.get_latest_atr(wide, 14)
    assert after != before
    assert after == pytest.approx(float(ind.atr(high, wide.low, close, 14)[-1]), rel=1e-12)


def test_cache_is_bounded() -> None:
    ind.clear_cache()
    for period in range(1, helpers._CACHE_LIMIT + 50):
        ind.get_latest_ema(K, period % 400 + 1)
        ind.get_latest_rsi(K, period % 97 + 1)
    assert len(helpers._cache) <= helpers._CACHE_LIMIT


def test_window_only_helpers_are_not_cached() -> None:
    """They cost about what a cache lookup does, so they skip it."""
    ind.clear_cache()
    ind.get_latest_sma(K, 20), ind.get_latest_bollinger_bands(K), ind.get_latest_volume_ma(K, 20)
    ind.get_latest_cci(K), ind.get_latest_stochastic(K), ind.get_latest_aroon(K)
    assert helpers._cache == {}
    ind.get_latest_ema(K, 20)
    assert len(helpers._cache) == 1


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: ind.get_latest_sma(K, 0), "period"),
        (lambda: ind.get_latest_rsi(K, -3), "period"),
        (lambda: ind.get_latest_rsi(K, 2.5), "period"),
        (lambda: ind.get_latest_macd(K, 12, 0, 9), "slow_period"),
        (lambda: ind.get_latest_stochastic(K, 14, 0), "d_period"),
        (lambda: ind.get_latest_bollinger_bands(K, 20, float("nan")), "std_dev"),
        (lambda: ind.get_latest_keltner_channels(K, 20, 0, 2.0), "atr_period"),
        (lambda: ind.get_price_change(K, 0), "periods"),
        (lambda: ind.get_highest_high(K, True), "periods"),
        (lambda: ind.get_latest_rsi("not klines", 14), "klines"),
        (lambda: ind.get_latest_rsi([[1, 2]], 14), "klines"),
        (lambda: ind.sma(np.ones((3, 3)), 2), "close"),
        (lambda: ind.atr(np.ones(5), np.ones(4), np.ones(5), 2), "low"),
        (lambda: ind.obv(np.ones(5), np.ones(6)), "volume"),
        (lambda: ind.macd(np.ones(50), 12, 26, 0), "signal_period"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call: object, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        call()  # type: ignore[operator]


def test_inputs_are_never_mutated() -> None:
    data = {name: np.array(col, copy=True) for name, col in (("h", H), ("l", L), ("c", C), ("v", V))}
    snapshot = {name: col.copy() for name, col in data.items()}
    h, lo, c, v = data["h"], data["l"], data["c"], data["v"]
    ind.sma(c, 5), ind.ema(c, 5), ind.wma(c, 5), ind.rsi(c, 5), ind.macd(c), ind.roc(c, 5)
    ind.bollinger_bands(c, 5, 2.0), ind.vwap(h, lo, c, v), ind.volume_ma(v, 5), ind.volume_change(v, 5)
    ind.stochastic(h, lo, c, 5, 3), ind.cci(h, lo, c, 5), ind.williams_r(h, lo, c, 5), ind.atr(h, lo, c, 5)
    ind.keltner_channels(h, lo, c), ind.donchian_channels(h, lo), ind.obv(c, v), ind.adx(h, lo, c, 5)
    ind.aroon(h, lo, 5)
    for name, col in data.items():
        np.testing.assert_array_equal(col, snapshot[name])


# --------------------------------------------------------------------------- window-only helpers


def _random_klines(rng: np.random.Generator, n: int) -> ind.Klines:
    """Random-walk candles with flat stretches, zero volumes and NaNs (leading and inner)."""
    base = 100 + np.cumsum(rng.normal(size=n))
    high, low = base + rng.random(n), base - rng.random(n)
    close, volume = base + rng.normal(size=n) * 0.3, rng.random(n) * 10
    if rng.random() < 0.3:  # flat stretches: zero ranges and deviations
        stop = int(rng.integers(0, n + 1))
        high[:stop] = low[:stop] = close[:stop] = 5.0
        volume[rng.random(n) < 0.3] = 0.0
    for column in (high, low, close, volume):
        if rng.random() < 0.5:
            column[rng.random(n) < rng.choice([0.02, 0.2])] = np.nan
        if rng.random() < 0.2:
            column[: int(rng.integers(0, n + 1))] = np.nan
    return ind.Klines.from_arrays(np.arange(n), base, high, low, close, volume)


def _same(got: float | tuple[float, ...], expected: float | tuple[float, ...]) -> bool:
    """Equal value by value, NaN matching NaN (the helpers return floats or tuples of floats)."""
    a = got if isinstance(got, tuple) else (got,)
    b = expected if isinstance(expected, tuple) else (expected,)
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b, strict=True))


def _last_of(values: tuple[np.ndarray, ...] | np.ndarray) -> float | tuple[float, ...]:
    if isinstance(values, tuple):
        return tuple(float(v[-1]) if len(v) else math.nan for v in values)
    return float(values[-1]) if len(values) else math.nan


def test_window_helpers_equal_their_full_series_function_run_on_the_window_alone() -> None:
    """The window-only helpers give bit for bit what the full-series function gives for the
    window's last candle when given that window alone, NaNs, flat windows and short input
    included (CCI: the full series over all the candles; Bollinger: the tests below)."""
    rng = np.random.default_rng(7)
    for _ in range(400):
        k = _random_klines(rng, int(rng.integers(0, 60)))
        p = int(rng.choice([1, 2, 3, int(rng.integers(1, 30))]))
        d = max(1, p // 3)
        # The window each helper reads; with fewer candles the full series is all NaN anyway.
        w, w1, ws = (k.tail(count) if len(k) >= count else ind.Klines.empty() for count in (p, p + 1, p + d - 1))
        cases = [
            (ind.get_latest_sma(k, p), ind.sma(w.close, p)),
            (ind.get_latest_wma(k, p), ind.wma(w.close, p)),
            (ind.get_latest_volume_ma(k, p), ind.volume_ma(w.volume, p)),
            (ind.get_latest_stochastic(k, p, d), ind.stochastic(ws.high, ws.low, ws.close, p, d)),
            (ind.get_latest_williams_r(k, p), ind.williams_r(w.high, w.low, w.close, p)),
            (ind.get_latest_roc(k, p), ind.roc(w1.close, p)),
            (ind.get_latest_aroon(k, p), ind.aroon(w1.high, w1.low, p)),
            (ind.get_latest_volume_change(k, p), ind.volume_change(w1.volume, p)),
            (ind.get_latest_cci(k, p), ind.cci(k.high, k.low, k.close, p)),
        ]
        for got, full in cases:
            expected = _last_of(full)
            assert _same(got, expected), (p, got, expected)
        if len(k) >= p:
            upper, middle, lower = ind.get_latest_donchian_channels(k, p)
            assert _same((upper, lower), (float(np.max(w.high)), float(np.min(w.low))))
            assert _same(middle, (upper + lower) / 2.0)
            assert _same(ind.get_highest_high(k, p), upper) and _same(ind.get_lowest_low(k, p), lower)
            total = 0.0
            for value in w.volume.tolist():
                total += value
            assert _same(ind.get_latest_volume(k, p), total)


@pytest.mark.parametrize("start", [0, 1, 7, 19, 1234, 4900])
def test_bollinger_helper_is_bit_identical_for_every_window_alignment(start: int) -> None:
    """Window-only: the value depends on the last ``period`` closes, not on where the series starts."""
    data = rows("SOL_USDT-1h.json", 0, 5000)
    k = ind.Klines.from_rows(data[start:])
    expected = ind.get_latest_bollinger_bands(ind.Klines.from_rows(data[-20:]), 20, 2.0)
    assert ind.get_latest_bollinger_bands(k, 20, 2.0) == expected
    assert all(close_enough(a, b) for a, b in zip(expected, _last_of(ind.bollinger_bands(k.close)), strict=True))


def _closes(close: np.ndarray) -> ind.Klines:
    """A view with ``close`` in every column (the Bollinger helper reads only the close)."""
    return ind.Klines(close.astype(np.int64), close, close, close, close, close)


def test_bollinger_helper_is_accurate_to_a_few_ulp() -> None:
    """Against exact rational arithmetic: the window's mean, and the deviation from the exact
    variance (TA-Lib's own running sums drift by up to ~1000 ulp on these files)."""
    close = np.array(rows("XRP_USDT-5m.json", 0, 70_000), dtype=np.float64)[:, 4]
    rng = np.random.default_rng(3)
    for end in rng.integers(60, len(close), 200).tolist():
        for period, dev in ((20, 2.0), (5, 1.0), (50, 2.5)):
            window = [Fraction(x) for x in close[end - period : end].tolist()]
            mean = sum(window, Fraction(0)) / period
            variance = sum(((x - mean) ** 2 for x in window), Fraction(0)) / period
            width = Fraction(math.sqrt(variance)) * Fraction(dev)
            exact = (float(mean + width), float(mean), float(mean - width))
            got = ind.get_latest_bollinger_bands(_closes(close[end - 57 : end]), period, dev)
            for g, e in zip(got, exact, strict=True):
                assert abs(g - e) <= 4 * math.ulp(e), (end, period, got, exact)


@pytest.mark.parametrize("name", sorted(p.name for p in MARKET.glob("*_USDT-*.json")))
def test_bollinger_helper_is_close_to_talib_on_every_file(name: str) -> None:
    """Within 1e-11 of the middle band, at every 11th candle and the last 500 of all ten files:
    TA-Lib's running sums drift by up to ~1000 ulp (~1e-12 relative here), the window-only
    value stays within a few ulp of the exact one (see above)."""
    close = np.ascontiguousarray(np.array(json.loads((MARKET / name).read_text()), dtype=np.float64)[:, 4])
    ends = sorted({*range(1, len(close) + 1, 11), *range(len(close) - 500, len(close) + 1)})
    for period, dev in ((20, 2.0), (5, 1.0), (50, 2.5)):
        ref = np.column_stack(talib.BBANDS(close, period, dev, dev, 0))[np.array(ends) - 1]
        got = np.array(
            [ind.get_latest_bollinger_bands(_closes(close[max(end - 60, 0) : end]), period, dev) for end in ends]
        )
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        valid = ~np.isnan(ref[:, 1])
        scale = np.abs(ref[valid, 1:2])
        assert (np.abs(got[valid] - ref[valid]) <= 1e-11 * scale).all()


def _specializations() -> dict[str, int]:
    return {name: len(obj.signatures) for name, obj in vars(_kernels).items() if isinstance(obj, Dispatcher)}


def _every_helper(k: ind.Klines) -> list[object]:
    """Every snake_case helper that computes a value, with period 3 where it takes one."""
    return [
        helper(k) if name in {"get_latest_vwap", "get_latest_obv"} else helper(k, 3)
        for name, helper in sorted(ind.HELPERS.items())
        if name.startswith("get_") and name not in {"get_closes", "get_opens", "get_highs", "get_lows", "get_volumes"}
    ]


def test_helpers_read_any_column_layout_and_never_compile() -> None:
    """Kernels are called through raw entry points that would misread other arrays: strided,
    float32 or int64 columns of a hand-built Klines are copied first, giving the values their
    float64 copies give, and no call compiles a new specialization (the sandbox's budget)."""
    table = np.array(rows(count=300), dtype=np.float64)
    canonical = ind.Klines.from_rows(table.tolist())
    times = table[:, 0].astype(np.int64)
    strided = ind.Klines(times, table[:, 1], table[:, 2], table[:, 3], table[:, 4], table[:, 5])
    as_f32 = table.astype(np.float32)
    f32 = ind.Klines(times, *(np.ascontiguousarray(as_f32[:, i]) for i in range(1, 6)))
    f32_as_f64 = ind.Klines.from_arrays(times, *(as_f32[:, i].astype(np.float64) for i in range(1, 6)))
    as_int = np.round(table).astype(np.int64)
    ints = ind.Klines(times, *(np.ascontiguousarray(as_int[:, i]) for i in range(1, 6)))
    ints_as_f64 = ind.Klines.from_arrays(times, *(as_int[:, i].astype(np.float64) for i in range(1, 6)))
    before = _specializations()
    assert all(count == 1 for name, count in before.items() if name.startswith("last_"))
    for odd, plain in ((strided, canonical), (f32, f32_as_f64), (ints, ints_as_f64)):
        ind.clear_cache()
        expected = _every_helper(plain)
        ind.clear_cache()
        got = _every_helper(odd)
        assert len(got) == 24
        assert all(_same(g, e) for g, e in zip(got, expected, strict=True))
    assert _specializations() == before


@pytest.mark.parametrize("period", [2**31, 2**62, 2**63 - 1, 2**63, 10**30])
def test_huge_periods_give_nan_not_a_crash(period: int) -> None:
    """A period beyond the candles given is "too few candles", and never reaches a kernel (whose
    int64 index arithmetic would overflow: strategy code chooses these numbers)."""
    price_action = {"get_price_change", "get_price_change_percent", "get_highest_high", "get_lowest_low"}
    for name, helper in ind.HELPERS.items():
        if name in price_action or (
            name.startswith("get_latest_") and name not in {"get_latest_vwap", "get_latest_obv"}
        ):
            values = helper(K, period)
            assert all(math.isnan(v) for v in (values if isinstance(values, tuple) else (values,))), name
    assert all(math.isnan(v) for v in ind.get_latest_macd(K, 12, period, 9))
    assert all(math.isnan(v) for v in ind.get_latest_macd(K, 12, 26, period))
    assert all(math.isnan(v) for v in ind.get_latest_stochastic(K, 14, period))
    assert all(math.isnan(v) for v in ind.get_latest_keltner_channels(K, 20, period))
