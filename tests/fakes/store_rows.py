"""Builders for valid store rows in tests (fill required columns; override with keywords)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tradeengine.store.models import Position, Signal, Trader, User

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def make_user(**kw: Any) -> User:
    kw.setdefault("email", f"{uuid.uuid4().hex[:8]}@example.com")
    kw.setdefault("tier", "pro")
    return User(**kw)


def make_trader(user: User, **kw: Any) -> Trader:
    base: dict[str, Any] = {
        "user_id": user.id,
        "name": "rsi dip",
        "signal_code": "def check(ctx):\n    return False\n",
        "ai_instructions": "be careful",
        "timeframes": ["1m", "5m"],
        "check_interval": "5s",
        "reanalysis_interval": "5m",
    }
    base.update(kw)
    return Trader(**base)


def make_signal(trader: Trader, **kw: Any) -> Signal:
    base: dict[str, Any] = {
        "trader_id": trader.id,
        "user_id": trader.user_id,
        "symbol": "BTCUSDT",
        "timestamp": T0,
        "trigger_price": Decimal("50000"),
    }
    base.update(kw)
    return Signal(**base)


def make_position(signal: Signal, **kw: Any) -> Position:
    base: dict[str, Any] = {
        "signal_id": signal.id,
        "user_id": signal.user_id,
        "trader_id": signal.trader_id,
        "symbol": signal.symbol,
        "side": "long",
        "entry_price": Decimal("50000"),
        "size": Decimal("0.01"),
    }
    base.update(kw)
    return Position(**base)
