"""The replay hot-path shortcuts give exactly what the general paths give."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from tradeengine.ai.market_data import _num, kline_rows
from tradeengine.exchange.kline_store import KlineStore
from tradeengine.indicators.klines import Klines
from tradeengine.runtime.heap import frozen_heap
from tradeengine.sandbox.values import FROZEN, freeze_basic_ticker, freeze_store_klines, freeze_ticker

M = 60_000


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
