"""Backtests with a strategy's series form: same trades as checking every close, far fewer
check_signal calls, and a series form that misses matches fails the backtest instead of
silently dropping signals."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from tradeengine.backtest.errors import BacktestError
from tradeengine.backtest.runner import BacktestConfig, BacktestResult, TraderSpec, run_backtest
from tradeengine.examples import example
from tradeengine.store.models import AnalysisHistory, Signal

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"
SYMBOLS = ("BTC/USDT", "SOL/USDT")
CHECK_ONLY = example("bollinger_breakout").source.split("\n\ndef signal_series")[0]
# Says no everywhere: every match of check_signal is one it missed.
LYING = CHECK_ONLY + "\n\ndef signal_series(symbol, klines):\n    return klines['5m'].close < 0\n"


async def backtest(source: str, mode: Literal["use", "verify", "off"], days: int) -> BacktestResult:
    found = TraderSpec.from_example(example("bollinger_breakout"))
    spec = replace(found, name="bollinger", source=source, max_open_positions=len(SYMBOLS))
    config = BacktestConfig(
        traders=(spec,),
        data_dir=DATA,
        symbols=SYMBOLS,
        start=datetime(2021, 5, 1, tzinfo=UTC),
        end=datetime(2021, 5, 1 + days, tzinfo=UTC),
        signal_series=mode,
    )
    return await run_backtest(config)


def trade_list(result: BacktestResult) -> list[tuple[object, ...]]:
    # Sorted: trades opened at one instant on several symbols come back in id order.
    return sorted(
        (t.opened_at, t.symbol, t.closed_at, t.entry_price, t.exit_price, t.quantity, t.pnl) for t in result.trades
    )


async def test_series_form_trades_exactly_as_every_close_checked() -> None:
    source = example("bollinger_breakout").source
    used = await backtest(source, "use", 10)
    off = await backtest(source, "off", 10)
    verified = await backtest(source, "verify", 10)
    assert len(used.trades) > 5
    assert trade_list(used) == trade_list(off) == trade_list(verified)
    assert used.summary == off.summary
    assert off.series_skips == 0 and verified.series_skips == 0
    # Used, the series form leaves check_signal to the closes it flags and a 1-in-32 audit.
    assert used.series_skips > 0.9 * off.checks
    assert used.checks < 0.1 * off.checks
    assert verified.checks == off.checks


async def test_rsi_example_series_form_trades_exactly_as_every_close_checked() -> None:
    """The RSI example's series form (``ta.rsi``: RSI seeded at each close's own view) on 1h
    closes over the May 2021 sell-off."""
    results = {}
    modes: tuple[Literal["use", "off"], ...] = ("use", "off")
    for mode in modes:
        found = TraderSpec.from_example(example("rsi_reversal"))
        config = BacktestConfig(
            traders=(replace(found, max_open_positions=len(SYMBOLS)),),
            data_dir=DATA,
            symbols=SYMBOLS,
            start=datetime(2021, 4, 15, tzinfo=UTC),
            end=datetime(2021, 6, 30, tzinfo=UTC),
            signal_series=mode,
        )
        results[mode] = await run_backtest(config)
    used, off = results["use"], results["off"]
    assert len(used.trades) > 5
    assert trade_list(used) == trade_list(off)
    assert used.summary == off.summary
    assert off.series_skips == 0 and used.checks < 0.1 * off.checks


@pytest.mark.parametrize(("mode", "days"), [("verify", 3), ("use", 20)])
async def test_series_form_that_misses_matches_fails_the_backtest(mode: Literal["use", "verify"], days: int) -> None:
    with pytest.raises(BacktestError, match="where signal_series said no") as caught:
        await backtest(LYING, mode, days)
    assert "'bollinger'" in str(caught.value) and "--signal-series off" in str(caught.value)
    # Without a series form nothing is skipped, so nothing can be missed.
    assert (await backtest(CHECK_ONLY, "use", 3)).series_skips == 0


async def stored_analyses(url: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(AnalysisHistory.timestamp, Signal.symbol, AnalysisHistory.decision, AnalysisHistory.reasoning)
                .add_columns(AnalysisHistory.confidence, AnalysisHistory.market_data)
                .join(Signal, Signal.id == AnalysisHistory.signal_id)
            )
            return sorted((tuple(row) for row in rows), key=lambda row: (row[0], row[1]))
    finally:
        await engine.dispose()


def held_back_traders(setup: str) -> tuple[TraderSpec, ...]:
    bollinger = replace(
        TraderSpec.from_example(example("bollinger_breakout")), name="bollinger", max_open_positions=len(SYMBOLS)
    )
    if setup == "bollinger":
        return (bollinger,)
    # Two traders on each symbol (the feed holds a symbol for both), trailing stops (the band
    # follows each new extreme), and shorts (the RSI trader sells: the band's edges swap roles).
    rsi = TraderSpec.from_example(example("rsi_reversal"))
    short_rsi = replace(
        rsi,
        name="short-rsi",
        ai_instructions="Go short when the hourly RSI is stretched; bearish setups only.",
        max_open_positions=len(SYMBOLS),
        trailing_stop_pct=Decimal("1.5"),
        take_profit_pct=Decimal(6),
    )
    trailing = replace(bollinger, name="trailing", trailing_stop_pct=Decimal("0.8"), take_profit_pct=None)
    return trailing, short_rsi


@pytest.mark.parametrize("setup", ["bollinger", "trailing-and-short"])
async def test_rows_held_back_from_quiet_symbols_change_nothing(tmp_path: Path, setup: str) -> None:
    """Held back (no position, or positions whose stops the price stays clear of, no signal due
    for re-analysis, the series form rules the close out) or delivered, every row stored, trade
    and counter is the same; the market data an analysis stored shows the symbol caught up
    (candles, ticker) as if it had seen every row."""
    results = {}
    for hold in (True, False):
        config = BacktestConfig(
            traders=held_back_traders(setup),
            data_dir=DATA,
            symbols=SYMBOLS,
            start=datetime(2021, 5, 1, tzinfo=UTC),
            end=datetime(2021, 5, 15, tzinfo=UTC),
            database_url=f"sqlite+aiosqlite:///{tmp_path / f'hold-{hold}.db'}",
            hold_quiet_rows=hold,
        )
        results[hold] = await run_backtest(config)
    held, delivered = results[True], results[False]
    assert len(held.trades) > 5
    if setup != "bollinger":  # what the setup is for did happen
        assert {"long", "short"} <= {t.side for t in held.trades}
        assert "trailing_stop" in {t.close_reason for t in held.trades}
        # Both traders in a position on one symbol at once: the feed held it for the two bands.
        assert any(
            a.symbol == b.symbol
            and a.trader != b.trader
            and a.opened_at < (b.closed_at or a.opened_at)
            and b.opened_at < (a.closed_at or b.opened_at)
            for a in held.trades
            for b in held.trades
        )
    assert trade_list(held) == trade_list(delivered)
    assert held.summary == delivered.summary
    assert (held.checks, held.series_skips) == (delivered.checks, delivered.series_skips)
    assert held.database_url is not None and delivered.database_url is not None
    analyses = await stored_analyses(held.database_url)
    assert len(analyses) == held.summary.analyses > 20
    assert analyses == await stored_analyses(delivered.database_url)
