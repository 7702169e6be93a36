"""KlineStore: O(1) update semantics, zero-copy read-only views, ring wrap, memory budget."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradeengine.exchange.kline_store import KlineStore, UpdateResult
from tradeengine.indicators.klines import Klines

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


def _history(n: int) -> Klines:
    rows = [_row(t, 100.0 + t) for t in range(n)]
    return Klines.from_arrays(*(np.array(column) for column in zip(*rows, strict=True)))


def _same(a: Klines, b: Klines) -> bool:
    return all(
        np.array_equal(getattr(a, name), getattr(b, name))
        for name in ("open_time", "open", "high", "low", "close", "volume")
    )


def test_attached_history_reads_exactly_like_updates_at_every_step() -> None:
    history = _history(40)
    attached, updated = KlineStore(capacity=7), KlineStore(capacity=7)
    advance = attached.attach("BTC/USDT", "5m", history, visible=5)
    assert advance is not None
    for t in range(5):
        updated.update("BTC/USDT", "5m", *_row(t, 100.0 + t))
    for t in range(5, 40):
        for count in (None, 1, 3, 7, 50):
            assert _same(attached.klines("BTC/USDT", "5m", count), updated.klines("BTC/USDT", "5m", count))
        assert attached.last_open_time("BTC/USDT", "5m") == updated.last_open_time("BTC/USDT", "5m")
        assert attached.count("BTC/USDT", "5m") == updated.count("BTC/USDT", "5m")
        advance(t * M)
        updated.update("BTC/USDT", "5m", *_row(t, 100.0 + t))
    assert _same(attached.klines("BTC/USDT", "5m"), updated.klines("BTC/USDT", "5m"))
    assert not attached.klines("BTC/USDT", "5m").close.flags.writeable


def test_attached_series_refuses_a_row_out_of_order_and_the_end() -> None:
    store = KlineStore(capacity=5)
    advance = store.attach("ETH/USDT", "1h", _history(3), visible=1)
    assert advance is not None
    with pytest.raises(ValueError, match="not the candle opening"):
        advance(2 * M)  # the next row opens at 1 * M
    advance(1 * M)
    advance(2 * M)
    with pytest.raises(ValueError, match="not the candle opening"):
        advance(3 * M)  # past the history
    assert store.attach("ETH/USDT", "1h", _history(3), visible=1) is None  # already holds candles


def test_any_other_write_copies_the_window_and_earlier_views_stay_as_they_were() -> None:
    store = KlineStore(capacity=4)
    history = _history(10)
    advance = store.attach("SOL/USDT", "5m", history, visible=6)
    assert advance is not None
    before = store.klines("SOL/USDT", "5m")
    assert store.update("SOL/USDT", "5m", *_row(5, 1.0)) is UpdateResult.REPLACED  # the newest, in place
    after = store.klines("SOL/USDT", "5m")
    assert list(after.open_time // M) == [2, 3, 4, 5]
    assert list(after.open) == [102.0, 103.0, 104.0, 1.0]
    assert list(before.open) == [102.0, 103.0, 104.0, 105.0]  # handed out before the write
    assert history.open[5] == 105.0  # the replay's own columns are never written
    assert store.update("SOL/USDT", "5m", *_row(6, 2.0)) is UpdateResult.APPENDED
    assert list(store.klines("SOL/USDT", "5m").open_time // M) == [3, 4, 5, 6]


def test_window_view_slices_columns_on_first_use_only() -> None:
    store = KlineStore(capacity=50)
    for t in range(30):
        store.update("ADA/USDT", "5m", *_row(t))
    view = store.klines("ADA/USDT", "5m", 10)
    assert len(view) == 10
    eager = Klines.from_arrays(
        *(getattr(view, name).copy() for name in ("open_time", "open", "high", "low", "close", "volume"))
    )
    assert _same(view, eager)
    assert view.close is view.close  # sliced once, then a plain attribute
    assert view.tail(3).close.tolist() == eager.close[-3:].tolist()
    with pytest.raises(AttributeError, match="no attribute 'closes'"):
        _ = view.closes  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.close = eager.close  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        view.volume[0] = 1.0


def test_reveal_is_every_advance_in_between_at_once() -> None:
    history = _history(30)
    revealed, advanced = KlineStore(capacity=6), KlineStore(capacity=6)
    advance = advanced.attach("BTC/USDT", "5m", history, visible=2)
    assert advance is not None and revealed.attach("BTC/USDT", "5m", history, visible=2) is not None
    stale = revealed.klines("BTC/USDT", "5m")
    for visible in (2, 3, 9, 10, 30):  # nothing, one, a jump past the capacity, ..., the end
        revealed.reveal("BTC/USDT", "5m", visible)
        while (last := advanced.last_open_time("BTC/USDT", "5m")) is not None and last < (visible - 1) * M:
            advance(last + M)
        assert _same(revealed.klines("BTC/USDT", "5m"), advanced.klines("BTC/USDT", "5m"))
        assert revealed.last_open_time("BTC/USDT", "5m") == (visible - 1) * M
    revealed.reveal("BTC/USDT", "5m", 4)  # never back
    assert revealed.count("BTC/USDT", "5m") == 6 and revealed.last_open_time("BTC/USDT", "5m") == 29 * M
    assert list(stale.open_time // M) == [0, 1]  # a view handed out earlier is unchanged
    with pytest.raises(ValueError, match="only 30 rows"):
        revealed.reveal("BTC/USDT", "5m", 31)
    with pytest.raises(ValueError, match="not an attached series"):
        revealed.reveal("ETH/USDT", "5m", 1)
