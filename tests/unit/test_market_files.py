"""Candle files over the real data: freqtrade JSON, ninjabot CSV, gaps, symbols and timeframes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tradeengine.exchange.files import (
    CandleFileError,
    find_gaps,
    load_candles,
    load_freqtrade_json,
    load_ninjabot_csv,
    merge_klines,
    write_freqtrade_json,
)
from tradeengine.exchange.symbols import file_stem, timeframe_ms, to_exchange_id, to_unified

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"


def test_freqtrade_json_counts_and_gaps_match_the_readme() -> None:
    hourly = load_freqtrade_json(DATA / "BTC_USDT-1h.json")
    assert len(hourly) == 5482
    assert hourly.open_time[0] == 1606780800000
    gaps = find_gaps(hourly.open_time, "1h")
    assert sum(g.missing for g in gaps) == 11
    assert (gaps[0].after, gaps[0].missing) == (1608559200000, 3)  # 2020-12-21 14:00, 15-17h missing
    five = load_freqtrade_json(DATA / "SOL_USDT-5m.json")
    assert len(five) == 65744
    assert sum(g.missing for g in find_gaps(five.open_time, "5m")) == 177


def test_ninjabot_csv_is_reordered_deduplicated_and_agrees_with_binance_json() -> None:
    csv = load_ninjabot_csv(DATA / "btc-1h.csv")
    assert len(csv) == 4309  # 4314 rows, 5 duplicates
    assert np.all(np.diff(csv.open_time) > 0)
    assert np.all(csv.high >= np.maximum(csv.open, csv.close))
    assert np.all(csv.low <= np.minimum(csv.open, csv.close))
    nfi = load_freqtrade_json(DATA / "BTC_USDT-1h.json")
    common, in_csv, in_nfi = np.intersect1d(csv.open_time, nfi.open_time, return_indices=True)
    assert len(common) == 3974  # the README's 3979 counts rows, duplicates included
    for column in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(csv, column)[in_csv], getattr(nfi, column)[in_nfi])
    assert len(find_gaps(csv.open_time, "1h")) == 7  # the six exchange gaps plus 2020-11-30 06:00


def test_write_then_read_round_trips_and_merge_never_duplicates(tmp_path: Path) -> None:
    klines = load_freqtrade_json(DATA / "ETH_USDT-1h.json")
    path = tmp_path / "ETH_USDT-1h.json"
    write_freqtrade_json(path, klines.tail(100))
    again = load_candles(path)
    np.testing.assert_array_equal(again.open_time, klines.open_time[-100:])
    np.testing.assert_array_equal(again.close, klines.close[-100:])
    merged = merge_klines(again, klines.tail(150))
    assert len(merged) == 150
    assert len(np.unique(merged.open_time)) == 150


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 2, 3]]")
    with pytest.raises(CandleFileError, match=r"bad\.json"):
        load_freqtrade_json(bad)
    bad.write_text("{not json")
    with pytest.raises(CandleFileError, match="not JSON"):
        load_freqtrade_json(bad)
    with pytest.raises(CandleFileError, match="no such file"):
        load_freqtrade_json(tmp_path / "missing.json")
    with pytest.raises(CandleFileError, match="unknown candle file type"):
        load_candles(tmp_path / "x.parquet")


def test_symbols_and_timeframes() -> None:
    assert to_unified("BTCUSDT") == "BTC/USDT"
    assert to_unified("ethbtc") == "ETH/BTC"
    assert to_unified("SOL-FDUSD") == "SOL/FDUSD"
    assert to_exchange_id("BTC/USDT") == "BTCUSDT"
    assert file_stem("XRPUSDT", "5m") == "XRP_USDT-5m"
    assert timeframe_ms("4h") == 14_400_000
    with pytest.raises(ValueError, match="timeframe"):
        timeframe_ms("1M")
    with pytest.raises(ValueError, match="BASE/QUOTE"):
        to_unified("FOOBAR")
