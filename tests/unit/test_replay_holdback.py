"""Holding back a quiet symbol's rows (QuietRows): what the feed drops, how it catches the symbol
up, and the series gate's answer to "when is this symbol needed next"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tradeengine.clock import SimClock, datetime_to_ms
from tradeengine.exchange.events import QUIET_FOREVER, ROW_CLOSE, ROW_TICKER, EventRow, RowHold
from tradeengine.exchange.replay import ReplayFeed, _first_outside
from tradeengine.runtime.state import SeriesGate

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
STEP = 300_000
START = datetime_to_ms(datetime(2021, 5, 1, tzinfo=UTC))


def _feed() -> ReplayFeed:
    return ReplayFeed.from_directory(
        DATA, ["BTC/USDT", "ETH/USDT"], ["5m", "1h"], clock=SimClock(START), start_ms=START, end_ms=START + 86_400_000
    )


async def _every_row() -> list[tuple[int, EventRow]]:
    full = _feed()
    every: list[tuple[int, EventRow]] = []

    async def record(at: int, rows: list[EventRow]) -> None:
        every.extend((at, row) for row in rows)

    full.subscribe_rows(record)
    await full.run()
    return every


class Recorder:
    """A row handler that holds ETH from its close at ``hold_at`` until ``until`` (and takes a
    second hold back early), recording every row and what the store shows ETH at its rows."""

    def __init__(self, feed: ReplayFeed, hold_at: int, until: int) -> None:
        self.feed, self.hold_at, self.until = feed, hold_at, until
        self.rows: list[tuple[int, EventRow]] = []
        self.eth_views: dict[int, tuple[int | None, int | None]] = {}
        self.hold: RowHold | None = None

    def bind_hold(self, hold: RowHold) -> None:
        self.hold = hold

    async def __call__(self, at: int, rows: list[EventRow]) -> None:
        self.rows.extend((at, row) for row in rows)
        store = self.feed.store
        if any(row[0] == "ETH/USDT" for row in rows):
            self.eth_views[at] = (store.last_open_time("ETH/USDT", "5m"), store.last_open_time("ETH/USDT", "1h"))
        assert self.hold is not None
        if at == self.hold_at:
            self.hold("ETH/USDT", self.until)
        if at == self.until + 6 * STEP:
            self.hold("ETH/USDT", QUIET_FOREVER)
        if at == self.until + 9 * STEP:
            self.hold("ETH/USDT", 0)  # taken back: ETH's rows again from the next instant


async def test_held_rows_go_nowhere_and_the_symbol_is_caught_up_before_its_next_rows() -> None:
    every = await _every_row()
    feed = _feed()
    hold_at = START + 7 * STEP
    until = START + 20 * STEP  # 13 closes later, across the 1h close at START + 12 steps
    handler = Recorder(feed, hold_at, until)
    feed.subscribe_rows(handler, handler)
    await feed.run()

    eth_at = sorted({at for at, row in handler.rows if row[0] == "ETH/USDT"})
    skipped = [at for at in sorted({at for at, row in every if row[0] == "ETH/USDT"}) if at not in eth_at]
    assert skipped == [*range(hold_at + STEP, until, STEP), *range(until + 7 * STEP, until + 10 * STEP, STEP)]
    # BTC never held: exactly its rows in the full stream.
    assert [r for r in handler.rows if r[1][0] == "BTC/USDT"] == [r for r in every if r[1][0] == "BTC/USDT"]
    # At the wake: ETH's latest ticker row goes first, then the instant's own rows as in the full stream.
    woke = [row for at, row in handler.rows if at == until]
    previous_ticker = [row for at, row in every if at == until - STEP and row[0] == "ETH/USDT" and row[2] == ROW_TICKER]
    assert woke[0] == previous_ticker[0]
    assert woke[1:] == [row for at, row in every if at == until]
    # The store shows ETH as the full replay would: the 5m candle just closed, and the 1h candle
    # (opened at START) whose close at START + 1h was held back.
    assert handler.eth_views[until] == (until - STEP, START)
    # Held "forever" and taken back: delivered again from the next instant; the last instant goes to everyone.
    final = every[-1][0]
    assert {row[0] for at, row in handler.rows if at == final} == {"BTC/USDT", "ETH/USDT"}
    closes = sum(1 for _, row in every if row[2] == ROW_CLOSE)  # what the full replay closed
    assert feed.status().candles_closed == closes


class BandRecorder:
    """Holds ETH at ``hold_at`` until ``until`` while its price stays inside ``band``."""

    def __init__(self, hold_at: int, until: int, band: tuple[float, float]) -> None:
        self.hold_at, self.until, self.band = hold_at, until, band
        self.rows: list[tuple[int, EventRow]] = []
        self.hold: RowHold | None = None

    def bind_hold(self, hold: RowHold) -> None:
        self.hold = hold

    async def __call__(self, at: int, rows: list[EventRow]) -> None:
        self.rows.extend((at, row) for row in rows)
        if at == self.hold_at:
            assert self.hold is not None
            self.hold("ETH/USDT", self.until, *self.band)


@pytest.mark.parametrize("edge", ["high", "low", "none"])
async def test_a_hold_with_a_band_ends_at_the_first_row_priced_on_or_beyond_an_edge(edge: str) -> None:
    every = await _every_row()
    hold_at, until = START + 7 * STEP, START + 40 * STEP
    # ETH's rows after the hold (candle closes and ticker lasts), in delivery order, before ``until``.
    later = [(at, row[7]) for at, row in every if row[0] == "ETH/USDT" and hold_at < at < until]
    prices = [price for _, price in later[:12]]
    # The band's edge is exactly a later row's price (an edge counts as outside); the other edge
    # is out of reach. "none": both out of reach, the hold runs to ``until``.
    low, high = min(prices) - 1000.0, max(prices) + 1000.0
    if edge == "high":
        high = max(prices)
        exit_at = next(at for at, price in later if price >= high)
    elif edge == "low":
        low = min(prices)
        exit_at = next(at for at, price in later if price <= low)
    else:
        exit_at = until
    assert hold_at < exit_at <= until

    feed = _feed()
    handler = BandRecorder(hold_at, until, (low, high))
    feed.subscribe_rows(handler, handler)
    await feed.run()

    eth_at = sorted({at for at, row in handler.rows if row[0] == "ETH/USDT"})
    skipped = [at for at in sorted({at for at, row in every if row[0] == "ETH/USDT"}) if at not in eth_at]
    assert skipped == list(range(hold_at + STEP, exit_at, STEP))
    woke = [row for at, row in handler.rows if at == exit_at and row[0] == "ETH/USDT"]
    if exit_at > hold_at + STEP:  # caught up: the latest held ticker row first, then the instant's rows
        held = [row for at, row in every if at < exit_at and row[0] == "ETH/USDT" and row[2] == ROW_TICKER]
        assert woke[0] == held[-1]
        woke = woke[1:]
    assert woke == [row for at, row in every if at == exit_at and row[0] == "ETH/USDT"]


def test_first_outside_finds_the_first_price_on_or_beyond_an_edge_near_or_far() -> None:
    """The scan a band hold runs: the first 64 rows in Python, then doubling numpy chunks; both
    must agree with the plain definition, edges and NaN counting as outside."""
    rng = np.random.default_rng(7)
    prices = 100.0 + np.cumsum(rng.normal(0.0, 0.05, 20_000))
    prices[[150, 9_000]] = np.nan
    prices[3_000] = prices[2_999]  # an exact repeat: equal to an edge taken from a neighbour
    for _ in range(400):
        begin = int(rng.integers(0, len(prices)))
        end = int(rng.integers(begin, len(prices) + 1))
        low, high = prices[begin] - rng.uniform(0.0, 3.0), prices[begin] + rng.uniform(0.0, 3.0)
        expected = next((k for k in range(begin, end) if not low < prices[k] < high), end)
        assert _first_outside(prices, begin, end, low, high) == expected
    assert _first_outside(prices, 2_990, 20_000, float(prices[2_999]) - 50.0, float(prices[2_999])) <= 2_999
    assert _first_outside(prices, 100, 20_000, -np.inf, np.inf) == 150  # NaN is outside any band


@pytest.mark.parametrize("every", [1, 2, 5, 32])
def test_next_needed_is_the_first_verdict_after_the_last_that_is_not_a_skip(every: int) -> None:
    rng = np.random.default_rng(every)
    for density in (0.0, 0.02, 0.3):
        mask = (rng.random(300) < density).tolist()
        gate = SeriesGate(np.arange(300, dtype=np.int64), mask)
        assert gate.next_needed(every) == 0  # no verdict yet: the first close
        unaudited, needed = 0, []
        for index, flagged in enumerate(mask):  # the verdicts as TenantRuntime._series_verdict gives them
            if flagged:
                needed.append(index)
                continue
            unaudited += 1
            if unaudited == every:
                unaudited = 0
                needed.append(index)
        unaudited = 0
        for index, flagged in enumerate(mask):
            if not flagged:
                unaudited = 0 if unaudited + 1 == every else unaudited + 1
            gate.last_index, gate.unaudited = index, unaudited
            later = [n for n in needed if n > index]
            assert gate.next_needed(every) == (later[0] if later else len(mask)), (density, index)
