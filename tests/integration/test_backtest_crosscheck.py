"""Correctness cross-check: the backtest (tenant runtime on a SimClock, replay feed, paper broker,
offline analyst that always opens) against an independent numpy implementation of the same
strategy: RSI(14) < 30 on 1h closes -> long, 2% stop-loss, 4% take-profit, 10% of free balance,
0.1% taker fee, 5 bps slippage. Trade lists must match exactly (times, prices, sizes, fees, P&L).

The reference is written from the rules as documented (paper broker fill rules, runtime event order),
not from the runtime's code: indicators on the last 500 candles, stops checked on candle closes,
market orders at the close with slippage, prices and fees on an 8-decimal grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from tradeengine.backtest.runner import BacktestConfig, TraderSpec, run_backtest
from tradeengine.exchange.files import load_freqtrade_json

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"
Q8 = Decimal("0.00000001")
HOUR_MS = 3_600_000
WINDOW = 500  # candles a strategy sees (the runtime's kline_limit)

STRATEGY = """
def check_signal(symbol, ticker, klines):
    return get_latest_rsi(klines["1h"], 14) < 30
"""

FEE = Decimal("0.001")
SLIPPAGE_BPS = Decimal(5)
STOP, TAKE, SHARE = Decimal("0.02"), Decimal("0.04"), Decimal("0.10")


def windowed_rsi(close: np.ndarray, period: int = 14, window: int = WINDOW) -> np.ndarray:
    """RSI (Wilder, seeded with the simple mean of the first ``period`` moves) of the last ``window``
    closes at every index, all windows at once; NaN until a full window exists."""
    out = np.full(len(close), np.nan)
    windows = sliding_window_view(close, window)  # (n - window + 1, window)
    diff = np.diff(windows, axis=1)
    gains = np.where(diff < 0, 0.0, diff)
    losses = np.where(diff < 0, -diff, 0.0)
    avg_gain = np.cumsum(gains[:, :period], axis=1)[:, -1] / period
    avg_loss = np.cumsum(losses[:, :period], axis=1)[:, -1] / period
    weight, decay = 1.0 / period, (period - 1) / period
    for k in range(period, diff.shape[1]):
        avg_gain = gains[:, k] * weight + decay * avg_gain
        avg_loss = losses[:, k] * weight + decay * avg_loss
    total = avg_gain + avg_loss
    out[window - 1 :] = np.where(total == 0, 0.0, 100.0 * avg_gain / np.where(total == 0, 1.0, total))
    return out


@dataclass
class RefTrade:
    symbol: str
    opened_ms: int
    entry: Decimal
    quantity: Decimal
    stop: Decimal
    take: Decimal
    entry_fee: Decimal
    closed_ms: int | None = None
    exit: Decimal | None = None
    exit_fee: Decimal = Decimal(0)
    reason: str | None = None

    @property
    def fees(self) -> Decimal:
        return self.entry_fee + self.exit_fee

    @property
    def pnl(self) -> Decimal:
        assert self.exit is not None
        return (self.exit * self.quantity - self.entry * self.quantity - self.fees).quantize(Q8)


def reference(symbols: list[str], start_ms: int, end_ms: int, balance: Decimal) -> list[RefTrade]:
    slip = SLIPPAGE_BPS / 10_000
    series = {}
    for symbol in symbols:
        k = load_freqtrade_json(DATA / f"{symbol.replace('/', '_')}-1h.json")
        close_ms = k.open_time + HOUR_MS
        rsi = windowed_rsi(k.close)
        live = (close_ms > start_ms) & (close_ms <= end_ms)
        series[symbol] = {
            int(t): (float(c), float(r)) for t, c, r in zip(close_ms[live], k.close[live], rsi[live], strict=True)
        }
    free = balance
    trades: list[RefTrade] = []
    open_by_symbol: dict[str, RefTrade] = {}
    for t in sorted(set().union(*[s.keys() for s in series.values()])):
        for symbol in symbols:  # same instant: symbols in order, each one's stops before its check
            if t not in series[symbol]:
                continue
            close, rsi = series[symbol][t]
            price = Decimal(repr(close))
            position = open_by_symbol.get(symbol)
            if position is not None:
                reason = (
                    "stop_loss"
                    if close <= float(position.stop)
                    else "take_profit"
                    if close >= float(position.take)
                    else None
                )
                if reason is not None:
                    fill = (price * (1 - slip)).quantize(Q8, rounding=ROUND_FLOOR)
                    notional = fill * position.quantity
                    fee = (notional * FEE).quantize(Q8, rounding=ROUND_CEILING)
                    free += notional - fee
                    position.closed_ms, position.exit, position.exit_fee, position.reason = (
                        t,
                        fill,
                        fee,
                        reason,
                    )
                    del open_by_symbol[symbol]
            if symbol not in open_by_symbol and rsi < 30:
                quantity = (free * SHARE / price).quantize(Q8, rounding=ROUND_DOWN)
                fill = (price * (1 + slip)).quantize(Q8, rounding=ROUND_CEILING)
                notional = fill * quantity
                fee = (notional * FEE).quantize(Q8, rounding=ROUND_CEILING)
                free -= notional + fee
                trade = RefTrade(
                    symbol,
                    t,
                    fill,
                    quantity,
                    (price * (1 - STOP)).quantize(Q8, rounding=ROUND_HALF_EVEN),
                    (price * (1 + TAKE)).quantize(Q8, rounding=ROUND_HALF_EVEN),
                    fee,
                )
                open_by_symbol[symbol] = trade
                trades.append(trade)
    return trades


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@pytest.mark.slow
async def test_backtest_trades_equal_an_independent_numpy_implementation() -> None:
    symbols = ["BTC/USDT", "ETH/USDT"]
    start, end = datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 3, 15, tzinfo=UTC)
    balance = Decimal(10000)
    config = BacktestConfig(
        traders=(
            TraderSpec(
                name="rsi<30",
                source=STRATEGY,
                timeframes=("1h",),
                check_interval="1h_close",
                reanalysis_interval="1h_close",
                max_open_positions=len(symbols),
                ai_instructions="Long only.",
            ),
        ),
        data_dir=DATA,
        symbols=tuple(symbols),
        start=start,
        end=end,
        balance=balance,
        fee_rate=FEE,
        slippage_bps=SLIPPAGE_BPS,
        analyst="offline",
        analyst_policy="always_open",
    )
    result = await run_backtest(config)
    expected = reference(symbols, ms(start), ms(end), balance)

    assert len(expected) > 20, "the window should produce a meaningful number of trades"
    got = sorted(result.trades, key=lambda r: (r.opened_at, r.symbol))
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.symbol == theirs.symbol
        assert ms(mine.opened_at) == theirs.opened_ms
        assert mine.entry_price == theirs.entry
        assert mine.quantity == theirs.quantity
        if theirs.closed_ms is None:
            assert mine.closed_at is None
            continue
        assert mine.closed_at is not None
        assert ms(mine.closed_at) == theirs.closed_ms
        assert mine.exit_price == theirs.exit
        assert mine.close_reason == theirs.reason
        assert mine.fees == theirs.fees
        assert mine.pnl == theirs.pnl
    # The summary's money adds up to the same trades.
    assert result.summary.fees == sum((t.fees for t in expected), Decimal(0))
    closed = [t for t in expected if t.closed_ms is not None]
    assert result.summary.trades == len(closed)
    assert result.summary.realized_pnl == sum((t.pnl for t in closed), Decimal(0))
    assert {t.reason for t in closed} == {"stop_loss", "take_profit"}
    # Both symbols traded, so the shared free balance (sizing) was exercised across symbols.
    assert {t.symbol for t in expected} == set(symbols)


def test_reference_rsi_matches_talib_on_a_full_window() -> None:
    """The reference's RSI is the textbook one: same as TA-Lib on the same 500 closes."""
    import talib

    k = load_freqtrade_json(DATA / "BTC_USDT-1h.json")
    ours = windowed_rsi(k.close)
    for i in (WINDOW - 1, 1000, len(k) - 1):
        window = k.close[i - WINDOW + 1 : i + 1]
        assert ours[i] == pytest.approx(talib.RSI(window, 14)[-1], rel=1e-10)
    assert np.isnan(ours[WINDOW - 2])
