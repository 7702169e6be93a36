"""ReplayFeed over the real files: counts, cross-symbol order, resampling, intra-candle updates, clock."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tradeengine.clock import SimClock
from tradeengine.exchange.events import CandleClosed, CandleUpdated, MarketEvent, TickerUpdated
from tradeengine.exchange.files import load_freqtrade_json
from tradeengine.exchange.replay import ReplayFeed, resample

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT", "XRP/USDT"]
H = 3_600_000


def _independent_resample(path: Path, hours: int) -> dict[int, tuple[float, float, float, float, float]]:
    """A plain-Python resample to compare against (no numpy tricks)."""
    buckets: dict[int, list[list[float]]] = defaultdict(list)
    klines = load_freqtrade_json(path)
    columns = (klines.open_time, klines.open, klines.high, klines.low, klines.close, klines.volume)
    for t, o, h, lo, c, v in zip(*(column.tolist() for column in columns), strict=True):
        buckets[t - t % (hours * H)].append([t, o, h, lo, c, v])
    result = {}
    for start, rows in buckets.items():
        rows.sort()
        result[start] = (
            rows[0][1],
            max(r[2] for r in rows),
            min(r[3] for r in rows),
            rows[-1][4],
            sum(r[5] for r in rows),
        )
    return result


async def test_replay_1h_five_symbols_counts_and_order() -> None:
    clock = SimClock(0)
    feed = ReplayFeed.from_directory(DATA, SYMBOLS, ["1h"], clock=clock, tickers=False)
    closed: list[CandleClosed] = []

    async def record(event: MarketEvent) -> None:
        if isinstance(event, CandleClosed):
            closed.append(event)
            assert clock.now_ms() == event.open_time + H  # delivered at its close time

    feed.subscribe(record)
    await feed.run()
    assert len(closed) == 5 * 5482
    keys = [(e.open_time, SYMBOLS.index(e.symbol)) for e in closed]
    assert keys == sorted(keys)  # time order, then the caller's symbol order
    assert feed.store.klines("SOL/USDT", "1h").last_open_time == 1626552000000
    assert feed.status().candles_closed == 5 * 5482


async def test_resampled_4h_equals_an_independent_resample() -> None:
    feed = ReplayFeed.from_directory(DATA, ["BTC/USDT"], ["4h"], clock=SimClock(0), tickers=False)
    emitted: dict[int, tuple[float, float, float, float, float]] = {}

    async def record(event: MarketEvent) -> None:
        if isinstance(event, CandleClosed):
            emitted[event.open_time] = (event.open, event.high, event.low, event.close, event.volume)

    feed.subscribe(record)
    await feed.run()
    expected = _independent_resample(DATA / "BTC_USDT-1h.json", 4)
    last = max(expected)
    del expected[last]  # 2021-07-17 20:00 holds only 20:00 of 20-23h: incomplete, not emitted
    assert emitted.keys() == expected.keys()
    for start, values in expected.items():
        assert emitted[start] == pytest.approx(values, rel=1e-12)


async def test_intra_candle_updates_build_up_to_the_closed_candle_and_15m_from_5m() -> None:
    clock = SimClock(0)
    feed = ReplayFeed.from_directory(
        DATA, ["ETH/USDT"], ["5m", "15m", "1h"], clock=clock, intra_candle=True, end_ms=1606780800000 + 48 * H
    )
    updates: dict[tuple[str, int], list[CandleUpdated]] = defaultdict(list)
    closes: dict[tuple[str, int], CandleClosed] = {}
    tickers: list[TickerUpdated] = []

    async def record(event: MarketEvent) -> None:
        if isinstance(event, CandleUpdated):
            updates[(event.timeframe, event.open_time)].append(event)
            if event.timeframe == "1h":
                assert event.open_time < clock.now_ms() <= event.open_time + H
        elif isinstance(event, CandleClosed):
            closes[(event.timeframe, event.open_time)] = event
        else:
            tickers.append(event)

    feed.subscribe(record)
    await feed.run()
    hour = updates[("1h", 1606780800000)]
    assert [u.closed for u in hour] == [False] * 11 + [True]  # 11 partial updates from 5m, then final
    assert hour[0].high <= hour[-1].high
    assert hour[-2].volume < hour[-1].volume
    final = closes[("1h", 1606780800000)]
    assert (final.open, final.close) == (hour[0].open, hour[-1].close)
    quarter = [k for k in closes if k[0] == "15m"]
    assert len(quarter) == 48 * 4
    five = load_freqtrade_json(DATA / "ETH_USDT-5m.json")
    first = closes[("15m", 1606780800000)]
    assert first.volume == pytest.approx(float(np.sum(five.volume[:3])))
    assert len(tickers) == 48 * 12  # one per 5m close: the symbol's smallest timeframe
    day_volume = float(np.sum(five.volume[12:300]))  # the 24 h ending at hour 25
    ticker_25h = next(t for t in tickers if t.timestamp == 1606780800000 + 25 * H)
    assert float(ticker_25h.volume_24h) == pytest.approx(day_volume)


async def test_timers_on_the_sim_clock_see_every_candle_closed_before_them() -> None:
    clock = SimClock(0)
    feed = ReplayFeed.from_directory(
        DATA, ["BTC/USDT"], ["1h"], clock=clock, tickers=False, start_ms=1609459200000, end_ms=1609459200000 + 24 * H
    )
    seen: list[tuple[int, int | None]] = []

    async def hourly_timer() -> None:
        await clock.sleep_until_ms(1609459200000 + 30 * 60_000)
        while True:
            seen.append((clock.now_ms(), feed.store.last_open_time("BTC/USDT", "1h")))
            await clock.sleep(3600)

    timer = asyncio.create_task(hourly_timer())
    await asyncio.sleep(0)
    clock_start = 1609459200000
    await clock.advance_to_ms(clock_start)  # warm-up candles are in the store before the run
    await feed.run()
    timer.cancel()
    assert len(seen) == 24
    for now, last_open in seen:
        assert last_open == (now // H) * H - H  # the candle that closed at the top of this hour
    # December 2020 (744 h minus 4 missing) was preloaded as warm-up, then 24 replayed hours.
    assert feed.store.count("BTC/USDT", "1h") == 744 - 4 + 24


async def test_batched_run_matches_per_event_run_for_store_and_timers() -> None:
    start = 1606780800000

    async def replay(batched: bool) -> tuple[ReplayFeed, list[tuple[int, int | None, float]]]:
        clock = SimClock(start)
        feed = ReplayFeed.from_directory(
            DATA, ["BTC/USDT", "XRP/USDT"], ["5m", "1h"], clock=clock, intra_candle=True, end_ms=start + 10 * 24 * H
        )
        seen: list[tuple[int, int | None, float]] = []

        async def every_17_minutes() -> None:
            while True:
                await clock.sleep(17 * 60)
                hourly = feed.store.klines("XRP/USDT", "1h", 1)
                seen.append(
                    (
                        clock.now_ms(),
                        feed.store.last_open_time("BTC/USDT", "5m"),
                        float(hourly.volume[-1]) if len(hourly) else 0.0,
                    )
                )

        timer = asyncio.create_task(every_17_minutes())
        await asyncio.sleep(0)
        if batched:
            await feed.run_batched(max_rows=5_000)
        else:
            await feed.run()
        timer.cancel()
        return feed, seen

    (one, seen_one), (two, seen_two) = await replay(False), await replay(True)
    assert len(seen_one) == 10 * 24 * 60 // 17
    assert seen_one == seen_two  # timers saw identical stores at identical times
    for symbol in ("BTC/USDT", "XRP/USDT"):
        for timeframe in ("5m", "1h"):
            a, b = one.store.klines(symbol, timeframe), two.store.klines(symbol, timeframe)
            np.testing.assert_array_equal(a.open_time, b.open_time)
            np.testing.assert_array_equal(a.close, b.close)
            np.testing.assert_array_equal(a.volume, b.volume)


def test_resample_rejects_non_multiples() -> None:
    klines = load_freqtrade_json(DATA / "BTC_USDT-1h.json")
    with pytest.raises(ValueError, match="not a multiple"):
        resample(klines, "1h", "90m")
