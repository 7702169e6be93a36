"""CcxtFeed with the real ccxt client against the local fake Binance: backfill, drops, refused connections."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import ccxt.pro  # noqa: F401 - importing takes seconds; do it at collection, not inside a timed wait
import numpy as np
import pytest
from fakes.binance import FakeBinance

from tradeengine.exchange.ccxt_feed import CcxtFeed
from tradeengine.exchange.events import CandleClosed, CandleUpdated, MarketEvent, TickerUpdated
from tradeengine.exchange.files import load_freqtrade_json
from tradeengine.indicators.klines import Klines

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
STEP = 300_000  # 5m
START = 1610236800000  # 2021-01-10 00:00 UTC, a stretch without exchange gaps


def _window(path: str, count: int) -> Klines:
    klines = load_freqtrade_json(DATA / path)
    first = int(np.searchsorted(klines.open_time, START))
    rows = slice(first, first + count)
    return Klines(
        klines.open_time[rows],
        klines.open[rows],
        klines.high[rows],
        klines.low[rows],
        klines.close[rows],
        klines.volume[rows],
    )


@pytest.fixture
def candles() -> dict[tuple[str, str], Klines]:
    return {("BTC/USDT", "5m"): _window("BTC_USDT-5m.json", 400), ("ETH/USDT", "5m"): _window("ETH_USDT-5m.json", 400)}


async def _wait_for(predicate: Callable[[], bool], limit_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _assert_store_matches(feed: CcxtFeed, source: Klines, symbol: str, until_open: int) -> None:
    stored = feed.store.klines(symbol, "5m")
    expected_rows = (source.open_time >= int(stored.open_time[0])) & (source.open_time <= until_open)
    assert list(stored.open_time) == list(source.open_time[expected_rows])  # no gap, no duplicate
    np.testing.assert_array_equal(stored.close, source.close[expected_rows])
    np.testing.assert_array_equal(stored.high, source.high[expected_rows])
    np.testing.assert_array_equal(stored.volume, source.volume[expected_rows])


async def test_backfill_drop_and_refused_connections_lose_no_candle(
    candles: dict[tuple[str, str], Klines],
) -> None:
    now = START + 200 * STEP + 60_000
    async with FakeBinance(candles, now_ms=now) as fake:
        feed = CcxtFeed(
            ["BTCUSDT", "ETH/USDT"],
            ["5m"],
            rest_url=fake.base_url,
            ws_url=fake.ws_url,
            backfill=50,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            max_silence_s=5.0,
        )
        events: list[MarketEvent] = []

        async def record(event: MarketEvent) -> None:
            events.append(event)

        feed.subscribe(record)
        runner = asyncio.create_task(feed.run())
        try:
            await _wait_for(lambda: feed.status().connected and fake.ws_connections_accepted > 0)
            assert feed.store.count("BTC/USDT", "5m") == 50
            for step in range(1, 41):
                await fake.advance_to(now + step * STEP)
                await asyncio.sleep(0.02)
                if step == 10:
                    await fake.drop_streams()  # mid-stream drop; market keeps moving meanwhile
                if step == 25:
                    await fake.refuse()  # nothing listens for a while: connections are refused
                if step == 32:
                    await fake.accept()
            final_open = now + 40 * STEP - 60_000  # the candle still open at the end
            await _wait_for(
                lambda: all(feed.store.last_open_time(s, "5m") == final_open for s in ("BTC/USDT", "ETH/USDT"))
            )
            await _wait_for(lambda: feed.status().connected)
            status = feed.status()
        finally:
            await feed.stop()
            await runner
    assert status.reconnects >= 2
    assert status.gap_candles_backfilled >= 6  # at least the 7 candles closed while refused
    for symbol in ("BTC/USDT", "ETH/USDT"):
        _assert_store_matches(feed, candles[(symbol, "5m")], symbol, final_open)
        closed = [e.open_time for e in events if isinstance(e, CandleClosed) and e.symbol == symbol]
        # every candle that closed after start is announced exactly once, in order
        first_new = START + 200 * STEP  # the candle open when the feed started
        assert closed == list(range(first_new, final_open, STEP))
        finals = {
            e.open_time: e.close for e in events if isinstance(e, CandleUpdated) and e.closed and e.symbol == symbol
        }
        source = candles[(symbol, "5m")]
        for open_time, close in finals.items():
            assert close == source.close[np.searchsorted(source.open_time, open_time)]
    assert any(isinstance(e, TickerUpdated) and e.symbol == "BTC/USDT" for e in events)


async def test_silent_stream_is_reset_and_backfilled(candles: dict[tuple[str, str], Klines]) -> None:
    now = START + 100 * STEP + 60_000
    btc = {("BTC/USDT", "5m"): candles[("BTC/USDT", "5m")]}
    async with FakeBinance(btc, now_ms=now, push_interval_s=None) as fake:
        feed = CcxtFeed(
            ["BTC/USDT"],
            ["5m"],
            rest_url=fake.base_url,
            ws_url=fake.ws_url,
            tickers=False,
            backfill=20,
            backoff_initial_s=0.05,
            backoff_max_s=0.1,
            max_silence_s=0.4,
        )
        closed: list[int] = []

        async def record(event: MarketEvent) -> None:
            if isinstance(event, CandleClosed):
                closed.append(event.open_time)

        feed.subscribe(record)
        runner = asyncio.create_task(feed.run())
        try:
            await _wait_for(lambda: fake.ws_connections_accepted >= 1)
            # The connection stays open but nothing is pushed while the market moves 5 candles on:
            # the watchdog must declare the stream dead, redial and fetch the missed candles.
            fake.now_ms = now + 5 * STEP
            await _wait_for(lambda: fake.ws_connections_accepted >= 2)
            await _wait_for(lambda: feed.store.last_open_time("BTC/USDT", "5m") == now + 5 * STEP - 60_000)
            status = feed.status()
        finally:
            await feed.stop()
            await runner
    assert status.reconnects >= 1
    assert status.gap_candles_backfilled == 5
    assert closed == [START + (100 + i) * STEP for i in range(5)]
    _assert_store_matches(feed, btc[("BTC/USDT", "5m")], "BTC/USDT", now + 5 * STEP - 60_000)
