"""Sample inputs for AI-layer tests: the seed's marketData from real Binance candles, DB rows."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from tradeengine.ai.analyst import AnalysisRequest, PositionSnapshot
from tradeengine.ai.market_data import build_market_data
from tradeengine.domain.enums import PositionSide
from tradeengine.exchange.files import load_freqtrade_json
from tradeengine.indicators.klines import Klines
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import Signal, Trader, User
from tradeengine.store.uow import UnitOfWork

MARKET_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"


def candles(symbol_file: str = "BTC_USDT-1h.json") -> Klines:
    return load_freqtrade_json(MARKET_DIR / symbol_file)


def market_data(
    klines: Klines, end: int, *, symbol: str = "BTC/USDT", timeframe: str = "1h", count: int = 100
) -> dict[str, Any]:
    """The seed's marketData (tradeengine.ai.market_data) for the candles up to ``end`` (exclusive)."""
    window = Klines(
        klines.open_time[:end],
        klines.open[:end],
        klines.high[:end],
        klines.low[:end],
        klines.close[:end],
        klines.volume[:end],
    ).tail(500)
    return build_market_data(symbol, None, {timeframe: window}, limit=count)


def request(
    ids: dict[str, uuid.UUID] | None = None,
    *,
    md: dict[str, Any],
    position: PositionSnapshot | None = None,
    candle_key: int | None = None,
    symbol: str = "BTC/USDT",
    priority: int = 0,
    instructions: str = "Buy oversold dips in an uptrend.",
) -> AnalysisRequest:
    ids = ids or {"user": uuid.uuid4(), "trader": uuid.uuid4(), "signal": uuid.uuid4()}
    return AnalysisRequest(
        correlation_id=f"corr-{uuid.uuid4().hex[:8]}",
        user_id=ids["user"],
        trader_id=ids["trader"],
        signal_id=ids["signal"],
        symbol=symbol,
        ai_instructions=instructions,
        market_data=md,
        position=position,
        candle_key=candle_key,
        priority=priority,
    )


def long_position(entry: Decimal) -> PositionSnapshot:
    return PositionSnapshot(
        position_id=uuid.uuid4(),
        side=PositionSide.LONG,
        entry_price=entry,
        size=Decimal("0.01"),
        stop_loss=entry * Decimal("0.97"),
        take_profit=entry * Decimal("1.05"),
        unrealized_pnl=Decimal("0"),
        unrealized_pnl_percent=Decimal("0"),
    )


async def seed_signal(session_factory: SessionFactory, *, tier: str = "pro") -> dict[str, uuid.UUID]:
    """A user, a trader and a new signal, committed."""
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(User(email=f"{uuid.uuid4().hex[:8]}@example.com", tier=tier))
        await uow.flush()
        trader = uow.traders.add(
            Trader(
                user_id=user.id,
                name="dip buyer",
                signal_code="def check_signal(s, t, k):\n    return False\n",
                ai_instructions="Buy oversold dips.",
                timeframes=["1h"],
                check_interval="1h_close",
                reanalysis_interval="15m",
            )
        )
        await uow.flush()
        signal = uow.signals.add(
            Signal(trader_id=trader.id, user_id=user.id, symbol="BTC/USDT", trigger_price=Decimal("50000"))
        )
        await uow.commit()
        return {"user": user.id, "trader": trader.id, "signal": signal.id}
