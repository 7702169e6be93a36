"""The replay hot-path shortcuts give exactly what the general paths give."""

from __future__ import annotations

import enum
import gc
import json
import math
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from tradeengine.ai import market_data
from tradeengine.ai.market_data import KlineRowCache, _num, calculate_indicators, kline_rows
from tradeengine.exchange.files import data_path, load_candles
from tradeengine.exchange.kline_store import KlineStore
from tradeengine.exchange.symbols import to_unified
from tradeengine.indicators import core
from tradeengine.indicators.klines import Klines
from tradeengine.runtime.executor import jsonable
from tradeengine.runtime.heap import frozen_heap
from tradeengine.sandbox.values import FROZEN, freeze_basic_ticker, freeze_store_klines, freeze_ticker

M = 60_000
COLUMNS = ("open_time", "open", "high", "low", "close", "volume")
MARKET = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"


def _store(n: int = 30) -> KlineStore:
    store = KlineStore(capacity=20)
    times = np.arange(n, dtype=np.int64) * M
    close = np.linspace(100.0, 130.0, n)
    store.extend("BTC/USDT", "1m", times, close, close + 1, close - 1, close, np.ones(n))
    return store


def test_store_view_is_reused_until_the_series_changes() -> None:
    store = _store()
    first = store.klines("BTC/USDT", "1m", 10)
    assert store.klines("BTC/USDT", "1m", 10) is first  # unchanged: same object (caches hit)
    assert store.klines("BTC/USDT", "1m", 5) is not first  # another length: another view
    store.update("BTC/USDT", "1m", 29 * M, 1.0, 2.0, 0.5, 1.5, 7.0)  # the open candle changes
    after = store.klines("BTC/USDT", "1m", 5)
    assert after.close[-1] == 1.5 and after.volume[-1] == 7.0
    store.update("BTC/USDT", "1m", 30 * M, 1.0, 2.0, 0.5, 9.5, 1.0)  # a new candle
    newest = store.klines("BTC/USDT", "1m", 5)
    assert newest is not after and int(newest.open_time[-1]) == 30 * M and newest.close[-1] == 9.5


def test_store_view_is_read_only_and_checked_like_a_built_one() -> None:
    store = _store()
    for _ in range(40):  # enough appends to move into fresh buffers several times
        last = store.last_open_time("BTC/USDT", "1m")
        assert last is not None
        store.update("BTC/USDT", "1m", last + M, 1.0, 2.0, 0.5, 1.5, 1.0)
        view = store.klines("BTC/USDT", "1m", 20)
        rebuilt = Klines(view.open_time, view.open, view.high, view.low, view.close, view.volume)
        for name in ("open_time", "open", "high", "low", "close", "volume"):
            column = getattr(view, name)
            assert not column.flags.writeable
            assert column.ndim == 1 and len(column) == len(view) == 20
            np.testing.assert_array_equal(column, getattr(rebuilt, name))
            with pytest.raises(ValueError):
                column[0] = 0


def test_kline_rows_match_per_element_formatting() -> None:
    rng = np.random.default_rng(3)
    n = 50
    k = Klines.from_arrays(
        np.arange(n, dtype=np.int64) * 300_000,
        rng.random(n) * 1e4,
        rng.random(n),
        rng.random(n) * 1e-9,
        np.r_[np.nan, rng.random(n - 1)],
        rng.random(n) * 1e12,
    )
    expected = [
        [
            int(k.open_time[i]),
            _num(k.open[i]),
            _num(k.high[i]),
            _num(k.low[i]),
            _num(k.close[i]),
            _num(k.volume[i]),
            int(k.open_time[i]) + 300_000 - 1,
        ]
        for i in range(n)
    ]
    rows = kline_rows(k, 300_000)
    assert rows == expected
    assert all(
        type(a) is type(b) for row, want in zip(rows, expected, strict=True) for a, b in zip(row, want, strict=True)
    )


@pytest.mark.parametrize("values", [(101.5, 2000.0, -3.25), (None, None, None), (7.0, None, 0.0)])
def test_basic_ticker_freezes_like_the_generic_path(values: tuple[float | None, ...]) -> None:
    last, volume, change = values
    generic = freeze_ticker({"symbol": "BTC/USDT", "lastPrice": last, "volume24h": volume, "priceChange24h": change})
    fast = freeze_basic_ticker(last, volume, change)
    assert list(fast.items()) == list(generic.items())
    assert FROZEN.get(id(fast)) is fast  # recognized by check_signal without a second copy
    with pytest.raises(TypeError):
        fast["lastPrice"] = 1.0  # type: ignore[index]


def test_store_klines_freeze_registers_a_read_only_mapping() -> None:
    view = _store().klines("BTC/USDT", "1m", 5)
    frozen = freeze_store_klines({"1m": view})
    assert FROZEN.get(id(frozen)) is frozen and frozen["1m"] is view
    with pytest.raises(TypeError):
        frozen["1m"] = view  # type: ignore[index]


def test_frozen_heap_freezes_for_the_block_only() -> None:
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0


# ---------------------------------------------------------------- analysis requests


def _series(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    close = 100 + np.cumsum(rng.normal(size=n))
    return (
        np.arange(n, dtype=np.int64) * 300_000,
        np.r_[close[:1], close[:-1]],
        close + rng.random(n),
        close - rng.random(n),
        close,
        rng.random(n) * 50,
    )


def test_row_cache_gives_kline_rows_for_every_window_and_keeps_its_candles() -> None:
    columns = [c.copy() for c in _series(400, 1)]
    columns[5][7] = -0.0  # repr "-0.0", equal to 0.0: only its bits tell them apart
    columns[5][8] = 0.0
    columns[2][9] = np.nan
    store = KlineStore(capacity=300)
    store.extend("BTC/USDT", "5m", *(c[:150] for c in columns))
    cache = KlineRowCache()

    def check(limit: int = 100) -> None:
        view = store.klines("BTC/USDT", "5m", 300)
        first = max(len(view) - limit, 0)
        window = view.tail(limit)
        rows = cache.rows("BTC/USDT", "5m", view, 300_000, first)
        expected = kline_rows(window, 300_000)
        assert rows == expected
        assert [[type(v) for v in row] for row in rows] == [[type(v) for v in row] for row in expected]
        candles = cache.candles("BTC/USDT", "5m")
        for name in ("open_time", "open", "high", "low", "close", "volume"):
            column = getattr(candles, name)
            assert column.tobytes() == getattr(window, name).tobytes()  # bit for bit, NaN and -0.0 too
            assert not column.flags.writeable
        rows[0][1] = "mutated"  # the caller's copy: later calls are not affected

    check()  # nothing cached yet
    check()  # the same window again: every row reused
    for i in range(150, 165):  # one new candle at a time
        store.update("BTC/USDT", "5m", *(c[i].item() for c in columns))
        check()
    store.update("BTC/USDT", "5m", int(columns[0][164]), 1.0, 2.0, 0.5, 1.5, 7.0)  # the newest candle changes
    check()
    store.update("BTC/USDT", "5m", int(columns[0][130]), 3.0, 4.0, 2.5, 3.5, 1.0)  # an older one is corrected
    check()
    for i in range(165, 400, 40):  # a window that moved on by more than its length
        store.update("BTC/USDT", "5m", *(c[i].item() for c in columns))
    check()
    check(limit=37)  # another length
    check(limit=500)  # longer than the series
    view = store.klines("BTC/USDT", "5m", 300)
    before = cache.candles("BTC/USDT", "5m")
    kept = before.close.copy()
    store.update("BTC/USDT", "5m", int(view.open_time[-1]), 9.0, 9.0, 9.0, 9.0, 9.0)  # in place in the store
    assert np.array_equal(before.close, kept)  # the candles are a copy


@pytest.mark.parametrize("length", [0, 2, 3, 50, 150])
def test_rows_kept_market_data_is_the_full_one_cut_and_its_candles_are_the_rows(length: int) -> None:
    """For an analyst that reads candle columns only the newest rows are formatted: everything
    else is the full market data's, and the candles the runtime hands over (``KlineStore.lasting_klines``)
    are what parsing the full rows gives."""
    columns = [c.copy() for c in _series(max(length, 1), 4)]
    columns[2][-1] = -0.0
    klines = {"5m": Klines.from_arrays(*(c[:length] for c in columns)), "1h": Klines.from_arrays(*_series(40, 5))}
    ticker = {"lastPrice": 101.5, "volume24h": 3.0, "priceChange24h": -1.25}
    full = market_data.build_market_data("BTC/USDT", ticker, klines, limit=100, primary_timeframe="5m")
    cut = market_data.build_market_data("BTC/USDT", ticker, klines, limit=100, primary_timeframe="5m", rows_kept=3)
    for tf, rows in full["klines"].items():
        assert cut["klines"][tf] == rows[-3:]
        parsed = market_data.klines_from_market_data(full, tf)
        store = KlineStore()
        _fill(store, tf, klines[tf])
        # The same rows from a store's window view (read unsliced, Klines.span).
        view = store.klines("BTC/USDT", tf, 300)
        viewed = market_data.build_market_data("BTC/USDT", ticker, {tf: view}, primary_timeframe=tf, rows_kept=3)
        assert viewed["klines"][tf] == rows[-3:]
        copies = store.lasting_klines("BTC/USDT", tf, 100)
        for name in ("open_time", "open", "high", "low", "close", "volume"):
            assert getattr(copies, name).tobytes() == getattr(parsed, name).tobytes()
    assert {k: v for k, v in cut.items() if k != "klines"} == {k: v for k, v in full.items() if k != "klines"}


def test_row_cache_starts_over_on_another_step_and_keeps_series_apart() -> None:
    k = Klines.from_arrays(*_series(120, 2))
    other = Klines.from_arrays(*_series(120, 3))
    cache = KlineRowCache()
    assert cache.rows("BTC/USDT", "5m", k, 300_000, 20) == kline_rows(k.tail(100), 300_000)
    assert cache.rows("BTC/USDT", "5m", k, 60_000, 20) == kline_rows(k.tail(100), 60_000)
    assert cache.rows("ETH/USDT", "5m", other, 300_000) == kline_rows(other, 300_000)
    assert cache.rows("BTC/USDT", "5m", k, 300_000) == kline_rows(k, 300_000)
    assert cache.rows("BTC/USDT", "5m", Klines.empty(), 300_000) == []
    assert len(cache.candles("BTC/USDT", "5m")) == 0


def _indicators_from_core(k: Klines) -> dict[str, object]:
    """What calculate_indicators gave when it called each ``core`` function (the reference)."""
    out: dict[str, object] = {}
    if len(k) == 0:
        return out

    def put(key: str, series: np.ndarray) -> None:
        if math.isfinite(series[-1]):
            out[key] = float(series[-1])

    for period in (20, 50, 200):
        put(f"sma_{period}", core.sma(k.close, period))
    for period in (12, 26):
        put(f"ema_{period}", core.ema(k.close, period))
    put("rsi_14", core.rsi(k.close, 14))
    line, signal, hist = core.macd(k.close)
    if all(math.isfinite(s[-1]) for s in (line, signal, hist)):
        out["macd"] = {"macd": float(line[-1]), "signal": float(signal[-1]), "histogram": float(hist[-1])}
    upper, middle, lower = core.bollinger_bands(k.close, 20, 2.0)
    if all(math.isfinite(s[-1]) for s in (upper, middle, lower)):
        out["bb"] = {"upper": float(upper[-1]), "middle": float(middle[-1]), "lower": float(lower[-1])}
    put("atr_14", core.atr(k.high, k.low, k.close, 14))
    put("vwap", core.vwap(k.high, k.low, k.close, k.volume))
    return out


@pytest.mark.parametrize("n", [0, 1, 13, 14, 15, 19, 20, 33, 34, 35, 49, 50, 199, 200, 201, 300, 1000])
def test_calculate_indicators_is_core_bit_for_bit(n: int) -> None:
    columns = _series(n, n)
    plain = Klines.from_arrays(*columns)
    close, high, volume = columns[4].copy(), columns[2].copy(), columns[5].copy()
    close[:3] = np.nan  # leading NaNs: every kernel starts after them
    high[3:5] = np.nan  # ATR starts later than the close-only indicators
    volume[:] = 0.0  # no volume: VWAP stays in warm-up
    gappy = Klines.from_arrays(columns[0], columns[1], high, columns[3], close, volume)
    for k in (plain, gappy):
        got, want = calculate_indicators(k), _indicators_from_core(k)
        assert json.dumps(got) == json.dumps(want)  # same keys, same order, same digits


@pytest.mark.parametrize("symbol", ["BTC/USDT", "ADA/USDT"])
def test_calculate_indicators_is_core_bit_for_bit_on_real_candles(symbol: str) -> None:
    """The newest-value kernels against the full ones on real 5m candles: windows of every
    length an analysis sends and of every position against Bollinger's 64-window anchors, at
    random places (a zero-volume stretch, a flat one, a jump all occur in the files)."""
    candles = load_candles(data_path(MARKET, to_unified(symbol), "5m"))
    rng = np.random.default_rng(7)
    lengths = [*range(195, 336), 1, 2, 26, 34, 1000]
    for n in lengths:
        end = int(rng.integers(n, len(candles) + 1))
        k = Klines.from_arrays(*(getattr(candles, name)[end - n : end] for name in COLUMNS))
        got, want = calculate_indicators(k), _indicators_from_core(k)
        assert json.dumps(got) == json.dumps(want), (n, end)


def test_bollinger_newest_value_recomputes_a_cancelled_window_like_the_full_kernel() -> None:
    """A jump between the last anchor (index 83 here) and a flat last window: the running sums
    are far from the window's mean, the variance cancels, and both kernels redo that window in
    two passes (with the fallback removed the bands differ)."""
    rng = np.random.default_rng(3)
    for n in (130, 140, 147):
        close = np.where(np.arange(n) < 100, 100.0, 200.0) + rng.normal(size=n) * 1e-5
        k = Klines.from_arrays(np.arange(n, dtype=np.int64) * M, close, close + 1e-4, close - 1e-4, close, np.ones(n))
        upper, middle, lower = core.bollinger_bands(k.close, 20, 2.0)
        assert calculate_indicators(k)["bb"] == {"upper": upper[-1], "middle": middle[-1], "lower": lower[-1]}


def _jsonable_reference(value: object) -> object:
    """``executor.jsonable`` before its exact-type fast path."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable_reference(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable_reference(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


class _Side(enum.IntEnum):
    BUY = 1


class _Frozen(Mapping[str, object]):
    def __init__(self, data: dict[str, object]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> object:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_jsonable_fast_path_gives_what_the_general_rules_give() -> None:
    value = {
        "a": 1.5,
        2: [True, None, Decimal("1.10"), ("x", Decimal("-0")), {"n": float("nan")}],
        "enum": _Side.BUY,
        "uuid": uuid.UUID(int=7),
        "frozen": _Frozen({"p": Decimal("3"), "q": [1, "s"]}),
        "rows": [[1, "2.5", "3", 4]],
        (1, 2): "tuple key",
    }
    got, want = jsonable(value), _jsonable_reference(value)
    assert json.dumps(got, default=repr) == json.dumps(want, default=repr)
    assert [type(v) for v in got.values()] == [type(v) for v in want.values()]  # type: ignore[attr-defined]
    assert got["enum"] is _Side.BUY  # an int subclass is passed through, as before
    rows = value["rows"]
    assert got["rows"] == rows and got["rows"] is not rows  # containers are copies


def test_row_cache_formats_only_the_candles_it_has_not_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    formatted: list[int] = []
    format_rows = market_data._format_rows

    def counting(columns: list[np.ndarray], step: int) -> list[list[object]]:
        formatted.append(len(columns[0]))
        return format_rows(columns, step)

    monkeypatch.setattr(market_data, "_format_rows", counting)
    columns = _series(200, 4)
    store = KlineStore(capacity=300)
    store.extend("BTC/USDT", "5m", *(c[:150] for c in columns))
    cache = KlineRowCache()
    cache.rows("BTC/USDT", "5m", store.klines("BTC/USDT", "5m", 300), 300_000, 50)
    for i in range(150, 162):
        store.update("BTC/USDT", "5m", *(c[i].item() for c in columns))
    view = store.klines("BTC/USDT", "5m", 300)
    cache.rows("BTC/USDT", "5m", view, 300_000, len(view) - 100)
    store.update("BTC/USDT", "5m", int(view.open_time[-1]), 1.0, 2.0, 0.5, 1.5, 7.0)  # the newest candle changes
    cache.rows("BTC/USDT", "5m", view, 300_000, len(view) - 100)
    assert formatted == [100, 12, 1]


def test_lasting_klines_are_views_of_attached_histories_and_copies_otherwise() -> None:
    history = Klines.from_arrays(*_series(300, 6))
    attached, owned = KlineStore(), KlineStore()
    attached.attach("BTC/USDT", "5m", history, 200)
    _fill(owned, "5m", history)
    assert attached.lasting_klines("BTC/USDT", "5m", 50).open_time.tobytes() == history.open_time[150:200].tobytes()
    assert owned.lasting_klines("BTC/USDT", "5m", 50).open_time.tobytes() == history.open_time[250:].tobytes()
    view = attached.lasting_klines("BTC/USDT", "5m", 50)
    # Nothing copied: an attached history never changes.
    assert np.shares_memory(view.close, attached.klines("BTC/USDT", "5m", 50).close)
    copy = owned.lasting_klines("BTC/USDT", "5m", 50)
    before = copy.close.copy()
    newest = int(history.open_time[-1])
    owned.update("BTC/USDT", "5m", newest, 9.0, 9.0, 9.0, 9.0, 9.0)  # the open candle, in place
    assert np.array_equal(copy.close, before)
    assert len(KlineStore().lasting_klines("BTC/USDT", "5m", 10)) == 0


def _fill(store: KlineStore, timeframe: str, k: Klines) -> None:
    store.extend("BTC/USDT", timeframe, k.open_time, k.open, k.high, k.low, k.close, k.volume)
