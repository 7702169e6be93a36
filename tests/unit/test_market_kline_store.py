"""KlineStore: O(1) update semantics, zero-copy read-only views, ring wrap, memory budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeengine.exchange.kline_store import KlineStore, UpdateResult

M = 60_000


def _row(t: int, price: float = 1.0) -> tuple[int, float, float, float, float, float]:
    return (t * M, price, price + 1, price - 1, price + 0.5, float(t))


def test_open_candle_replaced_new_candle_appended_old_corrected_missing_inserted() -> None:
    store = KlineStore(capacity=5)
    assert store.update("BTC/USDT", "1m", *_row(1)) is UpdateResult.APPENDED
    assert store.update("BTC/USDT", "1m", *_row(3)) is UpdateResult.APPENDED
    assert store.update("BTC/USDT", "1m", *_row(3, 7.0)) is UpdateResult.REPLACED
    assert store.update("BTC/USDT", "1m", *_row(1, 9.0)) is UpdateResult.CORRECTED
    assert store.update("BTC/USDT", "1m", *_row(2, 4.0)) is UpdateResult.INSERTED
    view = store.klines("BTC/USDT", "1m")
    assert list(view.open_time // M) == [1, 2, 3]
    assert list(view.open) == [9.0, 4.0, 7.0]
    for t in range(4, 10):
        store.update("BTC/USDT", "1m", *_row(t))
    assert store.count("BTC/USDT", "1m") == 5
    assert store.update("BTC/USDT", "1m", *_row(1)) is UpdateResult.IGNORED
    assert list(store.klines("BTCUSDT", "1m").open_time // M) == [5, 6, 7, 8, 9]


def test_views_are_zero_copy_read_only_and_survive_compaction() -> None:
    store = KlineStore(capacity=100)
    for t in range(100):
        store.update("ETH/USDT", "5m", *_row(t))
    view = store.klines("ETH/USDT", "5m", 10)
    assert not view.close.flags.writeable
    with pytest.raises(ValueError):
        view.close[0] = 1.0
    assert np.shares_memory(view.close, store.klines("ETH/USDT", "5m").close)
    snapshot = np.array(view.open_time)
    for t in range(100, 400):  # forces several compactions into fresh buffers
        store.update("ETH/USDT", "5m", *_row(t))
    np.testing.assert_array_equal(view.open_time, snapshot)  # old views never see rows shift
    assert list(store.klines("ETH/USDT", "5m", 3).open_time // M) == [397, 398, 399]


def test_unknown_series_reads_empty() -> None:
    store = KlineStore()
    assert len(store.klines("XRP/USDT", "1h")) == 0
    assert store.last_open_time("XRP/USDT", "1h") is None


ops = st.lists(st.tuples(st.integers(0, 60), st.floats(1, 100, allow_nan=False)), max_size=300)


@given(ops)
@settings(max_examples=60, deadline=None)
def test_matches_a_dictionary_model(updates: list[tuple[int, float]]) -> None:
    capacity = 16
    store = KlineStore(capacity=capacity)
    model: dict[int, float] = {}
    for t, price in updates:
        result = store.update("S/USDT", "1m", *_row(t, price))
        window = sorted(model)[-capacity:]
        if result is not UpdateResult.IGNORED:
            model[t] = price
        else:
            assert len(window) == capacity
            assert t < window[0]
        for old in sorted(model)[:-capacity]:
            del model[old]
    view = store.klines("S/USDT", "1m")
    assert list(view.open_time // M) == sorted(model)
    assert list(view.open) == [model[t] for t in sorted(model)]


def test_extend_equals_row_by_row() -> None:
    rng = np.random.default_rng(7)
    times = np.arange(2500, dtype=np.int64) * M
    values = rng.random((5, 2500))
    bulk, single = KlineStore(1000), KlineStore(1000)
    for start in range(0, 2500, 333):
        stop = min(start + 333, 2500)
        bulk.extend("A/USDT", "1m", times[start:stop], *values[:, start:stop])
    for i in range(2500):
        single.update("A/USDT", "1m", int(times[i]), *values[:, i].tolist())
    a, b = bulk.klines("A/USDT", "1m"), single.klines("A/USDT", "1m")
    np.testing.assert_array_equal(a.open_time, b.open_time)
    np.testing.assert_array_equal(a.volume, b.volume)
    assert len(a) == 1000


def test_memory_for_100_symbols_3_timeframes_1000_candles_under_30mb() -> None:
    store = KlineStore()
    times = np.arange(1000, dtype=np.int64) * M
    ones = np.ones(1000)
    for s in range(100):
        for tf in ("1m", "5m", "1h"):
            store.extend(f"S{s}/USDT", tf, times, ones, ones, ones, ones, ones)
    assert store.nbytes < 30 * 1024 * 1024
