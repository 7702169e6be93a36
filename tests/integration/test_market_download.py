"""download-data against the local fake Binance: pagination, resume without duplicates, gap report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ccxt.pro  # noqa: F401 - slow import; at collection time
import numpy as np
from fakes.binance import FakeBinance
from typer.testing import CliRunner

from tradeengine.cli import app
from tradeengine.exchange.ccxt_feed import build_exchange
from tradeengine.exchange.download import download
from tradeengine.exchange.files import load_freqtrade_json

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
HOUR = 3_600_000


async def test_download_pages_resumes_and_reports_gaps(tmp_path: Path) -> None:
    source = load_freqtrade_json(DATA / "BTC_USDT-1h.json")
    # 2020-12-21 15:00-17:00 is missing in the real data: the download must report it, not fill it.
    now = 1608595200000 + 30 * 60_000  # 2020-12-22 00:30, candle 00:00 still open
    async with FakeBinance({("BTC/USDT", "1h"): source}, now_ms=now, push_interval_s=None) as fake:
        fake.max_klines_limit = 50  # force pagination
        exchange = build_exchange(rest_url=fake.base_url)
        try:
            first = await download(exchange, ["BTCUSDT"], ["1h"], 8, tmp_path, page_limit=50)
            path = first[0].path
            written = load_freqtrade_json(path)
            open_candle = now // HOUR * HOUR
            expected = (source.open_time >= open_candle - 8 * 24 * HOUR) & (source.open_time < open_candle)
            assert list(written.open_time) == list(source.open_time[expected])
            np.testing.assert_array_equal(written.close, source.close[expected])
            assert [(g.after, g.missing) for g in first[0].gaps] == [(1608559200000, 3)]
            kline_calls = [r for r in fake.requests if r[1] == "/api/v3/klines"]
            assert len(kline_calls) >= 4  # 8 days of 1h in pages of 50

            await fake.advance_to(now + 10 * HOUR)
            second = await download(exchange, ["BTC/USDT"], ["1h"], 8, tmp_path, page_limit=50)
        finally:
            await exchange.close()
    resumed = load_freqtrade_json(path)
    assert second[0].added == 10
    assert len(np.unique(resumed.open_time)) == len(resumed)  # no duplicates
    end = (now + 10 * HOUR) // HOUR * HOUR  # the candle open at the second run is excluded
    tail = source.open_time[(source.open_time >= int(resumed.open_time[0])) & (source.open_time < end)]
    assert list(resumed.open_time) == list(tail)


async def test_download_data_command_writes_file(tmp_path: Path) -> None:
    source = load_freqtrade_json(DATA / "ETH_USDT-5m.json")
    now = int(source.open_time[5000]) + 60_000
    async with FakeBinance({("ETH/USDT", "5m"): source}, now_ms=now, push_interval_s=None) as fake:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            [
                "download-data",
                "--symbols",
                "ETHUSDT",
                "--timeframes",
                "5m",
                "--days",
                "1",
                "--out",
                str(tmp_path),
                "--exchange-url",
                fake.base_url,
            ],
        )
    assert result.exit_code == 0, result.output
    written = load_freqtrade_json(tmp_path / "ETH_USDT-5m.json")
    assert len(written) == 288  # one day of 5m candles, the open one excluded
    assert int(written.open_time[-1]) == int(source.open_time[4999])


def test_download_data_command_rejects_bad_timeframe(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["download-data", "--timeframes", "5x", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--timeframes" in result.output
