"""Backtest metrics on hand-made fills and prices: every number checked against arithmetic."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from tradeengine.backtest.metrics import (
    EquityCurve,
    Fill,
    MarkSeries,
    TradeRecord,
    daily_returns,
    exposure_fraction,
    sharpe_ratio,
    sortino_ratio,
    summarize,
)

T0 = datetime(2021, 1, 1, tzinfo=UTC)
H = 3_600_000


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def trade(symbol: str, opened: int, closed: int | None, pnl: str | None, fees: str = "1") -> TradeRecord:
    return TradeRecord(
        position_id=f"{symbol}-{opened}",
        trader="t",
        symbol=symbol,
        side="long",
        opened_at=at(opened),
        closed_at=at(closed) if closed is not None else None,
        entry_price=Decimal(100),
        exit_price=Decimal(110) if closed is not None else None,
        quantity=Decimal(1),
        fees=Decimal(fees),
        pnl=Decimal(pnl) if pnl is not None else None,
        pnl_percent=None,
        close_reason="take_profit",
    )


def test_equity_is_cash_plus_holdings_marked_at_each_close_and_final_equity_is_exact() -> None:
    marks = {
        "BTC/USDT": MarkSeries(
            np.array([ms(at(h)) for h in range(1, 6)], dtype=np.int64), np.array([100.0, 100.0, 90.0, 120.0, 110.0])
        )
    }
    fills = [
        Fill("BTC/USDT", "BUY", Decimal(100), Decimal(2), Decimal("0.2"), at(2)),
        Fill("BTC/USDT", "SELL", Decimal(120), Decimal(1), Decimal("0.12"), at(4)),
    ]
    trades = [trade("BTC/USDT", 2, None, None, fees="0.32")]
    summary, curve = summarize(
        initial=Decimal(1000), trades=trades, fills=fills, marks=marks, start_ms=ms(at(0)), end_ms=ms(at(5))
    )
    # h1: 1000; h2: 1000-200.2+2*100; h3: 799.8+180; h4: 799.8+119.88+120; h5: 919.68+110
    assert curve.equity.tolist() == pytest.approx([1000.0, 999.8, 979.8, 1039.68, 1029.68])
    assert summary.final_equity == Decimal("1029.68")
    assert summary.fees == Decimal("0.32")
    assert summary.unrealized_pnl == Decimal("29.68")  # no closed trade: everything is unrealized
    assert summary.max_drawdown == pytest.approx((1000 - 979.8) / 1000)
    assert summary.total_return == pytest.approx(0.02968)
    assert summary.trades == 0 and summary.open_positions == 1


def test_win_rate_profit_factor_and_per_symbol() -> None:
    trades = [
        trade("BTC/USDT", 0, 1, "30"),
        trade("BTC/USDT", 2, 3, "-10"),
        trade("ETH/USDT", 4, 6, "5"),
        trade("ETH/USDT", 7, 8, "-5"),
    ]
    marks = {
        s: MarkSeries(np.array([ms(at(h)) for h in range(1, 10)], dtype=np.int64), np.full(9, 100.0))
        for s in ("BTC/USDT", "ETH/USDT")
    }
    summary, _ = summarize(
        initial=Decimal(1000), trades=trades, fills=[], marks=marks, start_ms=ms(at(0)), end_ms=ms(at(10))
    )
    assert summary.trades == 4 and summary.wins == 2 and summary.losses == 2
    assert summary.win_rate == 0.5
    assert summary.profit_factor == pytest.approx(35 / 15)
    assert summary.realized_pnl == Decimal(20)
    assert summary.best_trade == Decimal(30) and summary.worst_trade == Decimal(-10)
    assert summary.exposure == pytest.approx((1 + 1 + 2 + 1) / 10)
    assert summary.average_trade_hours == pytest.approx(1.25)
    btc, eth = summary.per_symbol
    assert (btc.symbol, btc.trades, btc.wins, btc.pnl) == ("BTC/USDT", 2, 1, Decimal(20))
    assert (eth.symbol, eth.pnl, eth.fees) == ("ETH/USDT", Decimal(0), Decimal(2))
    assert summary.to_dict()["perSymbol"][0]["pnl"] == "20"


def test_exposure_merges_overlapping_positions_and_clips_to_the_period() -> None:
    trades = [trade("A", 0, 4, "1"), trade("B", 2, 6, "1"), trade("C", 8, None, None)]
    assert exposure_fraction(trades, ms(at(0)), ms(at(10))) == pytest.approx((6 + 2) / 10)
    assert exposure_fraction([], ms(at(0)), ms(at(10))) == 0.0


def test_sharpe_and_sortino_from_daily_returns() -> None:
    # The first point is the start of day 0; the others are the last points of days 0..3.
    days = np.array([0, *(d * 86_400_000 + 86_400_000 - 1 for d in range(4))], dtype=np.int64)
    equity = np.array([100.0, 110.0, 99.0, 108.9, 119.79])
    curve = EquityCurve(days, equity, np.zeros(5))
    returns = daily_returns(curve)
    assert returns.tolist() == pytest.approx([0.1, -0.1, 0.1, 0.1])
    mean, std = 0.05, float(np.std([0.1, -0.1, 0.1, 0.1], ddof=1))
    assert sharpe_ratio(returns) == pytest.approx(mean / std * math.sqrt(365))
    assert sortino_ratio(returns) == pytest.approx(mean / math.sqrt(0.01 / 4) * math.sqrt(365))
    assert sharpe_ratio(np.array([0.01, 0.01])) is None  # no variance: undefined, not infinite
    assert sortino_ratio(np.array([0.01, 0.02])) is None  # no losing day


def test_a_fill_for_a_symbol_without_prices_is_an_error() -> None:
    with pytest.raises(ValueError, match="no prices to mark SOL/USDT"):
        summarize(
            initial=Decimal(1),
            trades=[],
            start_ms=0,
            end_ms=1,
            fills=[Fill("SOL/USDT", "BUY", Decimal(1), Decimal(1), Decimal(0), at(0))],
            marks={"BTC/USDT": MarkSeries(np.array([1], dtype=np.int64), np.array([1.0]))},
        )
