"""Backtests with a strategy's series form: same trades as checking every close, far fewer
check_signal calls, and a series form that misses matches fails the backtest instead of
silently dropping signals."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pytest

from tradeengine.backtest.errors import BacktestError
from tradeengine.backtest.runner import BacktestConfig, BacktestResult, TraderSpec, run_backtest
from tradeengine.examples import example

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


@pytest.mark.parametrize(("mode", "days"), [("verify", 3), ("use", 20)])
async def test_series_form_that_misses_matches_fails_the_backtest(mode: Literal["use", "verify"], days: int) -> None:
    with pytest.raises(BacktestError, match="where signal_series said no") as caught:
        await backtest(LYING, mode, days)
    assert "'bollinger'" in str(caught.value) and "--signal-series off" in str(caught.value)
    # Without a series form nothing is skipped, so nothing can be missed.
    assert (await backtest(CHECK_ONLY, "use", 3)).series_skips == 0
