"""Backtest metrics from what the runtime stored: positions and fills, marked to market on candles.

Money (P&L, fees, equity, profit factor) is exact ``Decimal``. The equity curve is a float series
(one point per candle close of the smallest timeframe replayed) because it only feeds ratios and
pictures: drawdown, Sharpe, Sortino and the PNG.

Equity at time ``t`` is ``initial + cash flows of fills up to t + holdings(t) * close(t)`` per
symbol: a buy pays ``price * qty + fee``, a sell receives ``price * qty - fee``. The same formula
holds for longs and shorts, so it needs no knowledge of the broker's collateral rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradeengine.clock import datetime_to_ms, ms_to_datetime

ZERO = Decimal(0)
Q8 = Decimal("0.00000001")
DAY_MS = 86_400_000
YEAR_DAYS = 365.0  # crypto trades every day of the year


@dataclass(frozen=True, slots=True)
class Fill:
    """One filled trade row."""

    symbol: str
    side: str  # "BUY" / "SELL"
    price: Decimal
    quantity: Decimal
    fee: Decimal
    executed_at: datetime


@dataclass(frozen=True, slots=True)
class TradeRecord:
    """One position (a round trip when closed), as the trades CSV lists it."""

    position_id: str
    trader: str
    symbol: str
    side: str  # "long" / "short"
    opened_at: datetime
    closed_at: datetime | None
    entry_price: Decimal
    exit_price: Decimal | None
    quantity: Decimal  # base quantity bought (long) / sold (short) to open
    fees: Decimal
    pnl: Decimal | None  # net of fees; None while open
    pnl_percent: Decimal | None
    close_reason: str | None

    @property
    def is_closed(self) -> bool:
        return self.closed_at is not None and self.pnl is not None

    def as_row(self) -> dict[str, str]:
        def text(value: Any) -> str:
            if value is None:
                return ""
            if isinstance(value, datetime):
                return value.isoformat().replace("+00:00", "Z")
            if isinstance(value, Decimal):
                return _money(value)
            return str(value)

        return {
            "position_id": self.position_id,
            "trader": self.trader,
            "symbol": self.symbol,
            "side": self.side,
            "opened_at": text(self.opened_at),
            "closed_at": text(self.closed_at),
            "entry_price": text(self.entry_price),
            "exit_price": text(self.exit_price),
            "quantity": text(self.quantity),
            "fees": text(self.fees),
            "pnl": text(self.pnl),
            "pnl_percent": text(self.pnl_percent),
            "close_reason": text(self.close_reason),
        }


@dataclass(frozen=True, slots=True)
class MarkSeries:
    """Close prices of one symbol at candle close times (ms), ascending."""

    close_ms: NDArray[np.int64]
    close: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class EquityCurve:
    """Equity (quote) after each candle close; drawdown as a fraction below the running peak."""

    time_ms: NDArray[np.int64]
    equity: NDArray[np.float64]
    drawdown: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SymbolStats:
    symbol: str
    trades: int
    wins: int
    pnl: Decimal
    fees: Decimal

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.trades if self.trades else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "trades": self.trades,
            "wins": self.wins,
            "winRate": _round(self.win_rate),
            "pnl": _money(self.pnl),
            "fees": _money(self.fees),
        }


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything the summary table, the JSON and the HTML report show."""

    start: datetime
    end: datetime
    initial_balance: Decimal
    final_equity: Decimal
    trades: int  # closed positions
    open_positions: int
    wins: int
    losses: int
    win_rate: float | None
    total_return: float  # fraction
    annualized_return: float | None
    max_drawdown: float  # fraction, >= 0
    sharpe: float | None
    sortino: float | None
    profit_factor: float | None  # None when there is no losing trade
    gross_profit: Decimal
    gross_loss: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    fees: Decimal
    exposure: float  # fraction of the period with at least one open position
    average_trade_hours: float | None
    best_trade: Decimal | None
    worst_trade: Decimal | None
    per_symbol: tuple[SymbolStats, ...] = field(default_factory=tuple)
    candles: int = 0
    signals: int = 0
    analyses: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: money as exact decimal strings, ratios as floats."""

        def iso(value: datetime) -> str:
            return value.isoformat().replace("+00:00", "Z")

        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "initialBalance": _money(self.initial_balance),
            "finalEquity": _money(self.final_equity),
            "trades": self.trades,
            "openPositions": self.open_positions,
            "wins": self.wins,
            "losses": self.losses,
            "winRate": _round(self.win_rate),
            "totalReturn": _round(self.total_return),
            "annualizedReturn": _round(self.annualized_return),
            "maxDrawdown": _round(self.max_drawdown),
            "sharpe": _round(self.sharpe),
            "sortino": _round(self.sortino),
            "profitFactor": _round(self.profit_factor),
            "grossProfit": _money(self.gross_profit),
            "grossLoss": _money(self.gross_loss),
            "realizedPnl": _money(self.realized_pnl),
            "unrealizedPnl": _money(self.unrealized_pnl),
            "fees": _money(self.fees),
            "exposure": _round(self.exposure),
            "averageTradeHours": _round(self.average_trade_hours),
            "bestTrade": None if self.best_trade is None else _money(self.best_trade),
            "worstTrade": None if self.worst_trade is None else _money(self.worst_trade),
            "perSymbol": [s.to_dict() for s in self.per_symbol],
            "candles": self.candles,
            "signals": self.signals,
            "analyses": self.analyses,
        }


def _money(value: Decimal) -> str:
    """Exact and without exponent notation (``0E-8`` reads as a bug in a report)."""
    return format(value, "f")


def _round(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def equity_curve(initial: Decimal, fills: Sequence[Fill], marks: Mapping[str, MarkSeries]) -> EquityCurve:
    """Mark-to-market equity at every candle close of ``marks`` (union of their times)."""
    if not marks:
        return EquityCurve(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    grid = np.unique(np.concatenate([m.close_ms for m in marks.values()]))
    equity = np.full(len(grid), float(initial))
    by_symbol: dict[str, list[Fill]] = {}
    for f in fills:
        by_symbol.setdefault(f.symbol, []).append(f)
    for symbol, rows in by_symbol.items():
        mark = marks.get(symbol)
        if mark is None or len(mark.close_ms) == 0:
            raise ValueError(f"no prices to mark {symbol} to market")
        times = np.array([datetime_to_ms(f.executed_at) for f in rows], dtype=np.int64)
        signed_qty = np.array([float(f.quantity) * (1 if f.side == "BUY" else -1) for f in rows])
        cash = np.array([float(f.price * f.quantity) * (-1 if f.side == "BUY" else 1) - float(f.fee) for f in rows])
        # A fill at time t counts from the first grid point >= t on (fills happen at closes).
        where = np.searchsorted(grid, times, side="left")
        holding_delta = np.zeros(len(grid) + 1)
        cash_delta = np.zeros(len(grid) + 1)
        np.add.at(holding_delta, where, signed_qty)
        np.add.at(cash_delta, where, cash)
        holdings = np.cumsum(holding_delta)[:-1]
        cash_cum = np.cumsum(cash_delta)[:-1]
        # Last known close at each grid time (forward fill across gaps of this symbol).
        idx = np.searchsorted(mark.close_ms, grid, side="right") - 1
        price = np.where(idx >= 0, mark.close[np.clip(idx, 0, None)], mark.close[0])
        equity += cash_cum + holdings * price
    peak = np.maximum.accumulate(equity)
    with np.errstate(divide="ignore", invalid="ignore"):
        drawdown = np.where(peak > 0, (peak - equity) / peak, 0.0)
    return EquityCurve(grid.astype(np.int64), equity, drawdown)


def daily_returns(curve: EquityCurve) -> NDArray[np.float64]:
    """Returns between the last equity of consecutive UTC days."""
    if len(curve.time_ms) < 2:
        return np.zeros(0)
    day = curve.time_ms // DAY_MS
    last = np.flatnonzero(np.concatenate((day[1:] != day[:-1], [True])))
    closes = np.concatenate(([curve.equity[0]], curve.equity[last]))
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = closes[1:] / closes[:-1] - 1.0
    result: NDArray[np.float64] = returns[np.isfinite(returns)]
    return result


def sharpe_ratio(returns: NDArray[np.float64]) -> float | None:
    """Annualized (sqrt 365) mean over standard deviation of daily returns, risk-free rate 0."""
    if len(returns) < 2:
        return None
    std = float(np.std(returns, ddof=1))
    if std == 0:
        return None
    return float(np.mean(returns)) / std * math.sqrt(YEAR_DAYS)


def sortino_ratio(returns: NDArray[np.float64]) -> float | None:
    """Annualized mean over downside deviation (root mean square of negative daily returns)."""
    if len(returns) < 2:
        return None
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
    if downside == 0:
        return None
    return float(np.mean(returns)) / downside * math.sqrt(YEAR_DAYS)


def exposure_fraction(trades: Sequence[TradeRecord], start_ms: int, end_ms: int) -> float:
    """Share of [start, end] during which at least one position was open (union of intervals)."""
    if end_ms <= start_ms:
        return 0.0
    spans = sorted(
        (
            max(datetime_to_ms(t.opened_at), start_ms),
            min(datetime_to_ms(t.closed_at) if t.closed_at is not None else end_ms, end_ms),
        )
        for t in trades
    )
    covered = 0
    current_start = current_end = None
    for a, b in spans:
        if b <= a:
            continue
        if current_end is None or a > current_end:
            if current_end is not None and current_start is not None:
                covered += current_end - current_start
            current_start, current_end = a, b
        else:
            current_end = max(current_end, b)
    if current_end is not None and current_start is not None:
        covered += current_end - current_start
    return covered / (end_ms - start_ms)


def last_marks(marks: Mapping[str, MarkSeries]) -> dict[str, Decimal]:
    """Each symbol's last close as the exact decimal of its float (as the replay feed prices it)."""
    return {s: Decimal(repr(float(m.close[-1]))) for s, m in marks.items() if len(m.close)}


def summarize(
    *,
    initial: Decimal,
    trades: Sequence[TradeRecord],
    fills: Sequence[Fill],
    marks: Mapping[str, MarkSeries],
    start_ms: int,
    end_ms: int,
    candles: int = 0,
    signals: int = 0,
    analyses: int = 0,
) -> tuple[Summary, EquityCurve]:
    """Compute the summary and the equity curve of one backtest."""
    closed = [t for t in trades if t.is_closed]
    pnls = [t.pnl for t in closed if t.pnl is not None]
    wins = sum(1 for p in pnls if p > 0)
    losses = sum(1 for p in pnls if p < 0)
    gross_profit = sum((p for p in pnls if p > 0), ZERO)
    gross_loss = -sum((p for p in pnls if p < 0), ZERO)
    fees = sum((f.fee for f in fills), ZERO)

    # Final equity, exactly: cash flows plus holdings at the last close.
    prices = last_marks(marks)
    for symbol in {f.symbol for f in fills} - set(prices):
        raise ValueError(f"no prices to mark {symbol} to market")
    cash = initial
    holdings: dict[str, Decimal] = {}
    for f in fills:
        notional = f.price * f.quantity
        if f.side == "BUY":
            cash -= notional + f.fee
            holdings[f.symbol] = holdings.get(f.symbol, ZERO) + f.quantity
        else:
            cash += notional - f.fee
            holdings[f.symbol] = holdings.get(f.symbol, ZERO) - f.quantity
    final = (cash + sum((q * prices[s] for s, q in holdings.items() if q), ZERO)).quantize(Q8, rounding=ROUND_HALF_EVEN)
    realized = sum(pnls, ZERO)
    # Open positions' fees are already in cash; unrealized is what is neither realized nor initial
    # (so it also carries the 8-decimal rounding of each stored trade P&L: < 1e-8 per trade).
    unrealized = final - initial - realized

    curve = equity_curve(initial, fills, marks)
    total_return = float(final / initial) - 1.0
    duration_days = (end_ms - start_ms) / DAY_MS
    annualized: float | None = None
    if duration_days >= 1 and final > 0:
        annualized = float(final / initial) ** (YEAR_DAYS / duration_days) - 1.0
    returns = daily_returns(curve)

    per_symbol: dict[str, list[TradeRecord]] = {}
    for t in trades:
        per_symbol.setdefault(t.symbol, []).append(t)
    symbol_stats = tuple(
        SymbolStats(
            symbol=symbol,
            trades=sum(1 for t in rows if t.is_closed),
            wins=sum(1 for t in rows if t.is_closed and t.pnl is not None and t.pnl > 0),
            pnl=sum((t.pnl for t in rows if t.pnl is not None and t.is_closed), ZERO),
            fees=sum((t.fees for t in rows), ZERO),
        )
        for symbol, rows in sorted(per_symbol.items())
    )
    durations = [(t.closed_at - t.opened_at).total_seconds() / 3600 for t in closed if t.closed_at]
    summary = Summary(
        start=ms_to_datetime(start_ms),
        end=ms_to_datetime(end_ms),
        initial_balance=initial,
        final_equity=final,
        trades=len(closed),
        open_positions=len(trades) - len(closed),
        wins=wins,
        losses=losses,
        win_rate=wins / len(closed) if closed else None,
        total_return=total_return,
        annualized_return=annualized,
        max_drawdown=float(curve.drawdown.max()) if len(curve.drawdown) else 0.0,
        sharpe=sharpe_ratio(returns),
        sortino=sortino_ratio(returns),
        profit_factor=float(gross_profit / gross_loss) if gross_loss > 0 else None,
        gross_profit=gross_profit,
        gross_loss=gross_loss,
        realized_pnl=realized,
        unrealized_pnl=unrealized,
        fees=fees,
        exposure=exposure_fraction(trades, start_ms, end_ms),
        average_trade_hours=sum(durations) / len(durations) if durations else None,
        best_trade=max(pnls) if pnls else None,
        worst_trade=min(pnls) if pnls else None,
        per_symbol=symbol_stats,
        candles=candles,
        signals=signals,
        analyses=analyses,
    )
    return summary, curve
