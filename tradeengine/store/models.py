"""SQLAlchemy 2.0 models: one schema for Postgres (prod) and SQLite (embedded, demo, backtests).

Tables follow the seed schemas (seed 000 "Database Schema", seed 004 signal_analyses/ai_prompts)
with the additions the runtime needs (orders, machine_events, trader settings, trailing-stop and
fee columns). Alembic migrations are the only way this schema reaches a database; after a model
change, add a migration (tests compare models vs migrated schema on both backends).

No ORM relationships on purpose: async code must not lazy-load, and cascades live in the
database (ON DELETE CASCADE), so repositories query by foreign key explicitly.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.orm.decl_base import _declarative_constructor
from sqlalchemy.sql.schema import CallableColumnDefault, ScalarElementColumnDefault

from tradeengine.domain.enums import (
    AnalysisVerdict,
    CloseReason,
    Decision,
    MachineStatus,
    OrderPurpose,
    OrderStatus,
    OrderType,
    PositionSide,
    PositionStatus,
    SignalStatus,
    SubscriptionStatus,
    Tier,
    TraderStatus,
    TradeSide,
    TradeStatus,
    TradeType,
)
from tradeengine.store.types import JSONType, Money, StrList, UTCDateTime, new_id, utcnow

# Deterministic constraint names: alembic (and SQLite batch mode) must be able to find them.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MONEY = Money(20, 8)
PERCENT = Money(10, 4)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    def __init__(self, **kwargs: Any) -> None:
        """Apply Python-side column defaults at construction, not only at flush, so a new
        object's ``id`` (uuid4), timestamps and settings are usable before it is flushed."""
        mapper = sa_inspect(type(self))
        version_col = mapper.version_id_col
        for attr in mapper.column_attrs:
            column = attr.columns[0]
            default = column.default
            if attr.key in kwargs or default is None or column is version_col:
                continue
            if isinstance(default, ScalarElementColumnDefault | CallableColumnDefault):
                # Callable defaults are wrapped by SQLAlchemy to take an (unused) context.
                kwargs[attr.key] = default.arg(None) if default.is_callable else default.arg  # type: ignore[arg-type]
        _declarative_constructor(self, **kwargs)


def check_in(column: str, values: type[StrEnum], *, name: str | None = None) -> CheckConstraint:
    """CHECK (column IN (...)) built from an enum; NULL passes, as in SQL."""
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=name or column)


def _fk(target: str, *, nullable: bool = False, index: bool = False) -> Mapped[Any]:
    return mapped_column(ForeignKey(target, ondelete="CASCADE"), nullable=nullable, index=index)


def _parent() -> Mapped[Any]:
    # Many-to-one only so the unit of work inserts parents before children in one flush
    # (without a relationship the order is arbitrary). lazy="raise": async code must not
    # lazy-load; query by the *_id column instead.
    return relationship(lazy="raise")


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=new_id)


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), nullable=False, default=utcnow)


def _updated() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        check_in("tier", Tier),
        check_in("subscription_status", SubscriptionStatus),
        Index("idx_users_tier", "tier"),
    )

    id: Mapped[uuid.UUID] = _id()
    email: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    tier: Mapped[str] = mapped_column(Text, nullable=False, default=Tier.FREE.value)
    subscription_status: Mapped[str | None] = mapped_column(Text)
    # Exchange keys, encrypted by the caller (settings.master_key); never stored in clear.
    binance_api_key: Mapped[str | None] = mapped_column(Text)
    binance_secret_key: Mapped[str | None] = mapped_column(Text)
    paper_trading_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    real_trading_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Persisted paper-trading cash in the quote asset; NULL = not started (use settings.paper_balance).
    paper_balance: Mapped[Decimal | None] = mapped_column(MONEY)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class FlyMachine(Base):
    __tablename__ = "fly_machines"
    __table_args__ = (
        check_in("status", MachineStatus),
        Index("idx_fly_machines_user_id", "user_id"),
        Index("idx_fly_machines_status", "status"),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    user: Mapped[User] = _parent()
    machine_id: Mapped[str] = mapped_column(Text, unique=True, nullable=False)  # provider's id
    status: Mapped[str] = mapped_column(Text, nullable=False, default=MachineStatus.PROVISIONING.value)
    ip_address: Mapped[str | None] = mapped_column(Text)
    region: Mapped[str | None] = mapped_column(Text)
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    url: Mapped[str | None] = mapped_column(Text)
    image: Mapped[str | None] = mapped_column(Text)
    # sha256 of the bearer token the tenant accepts; the token itself is never stored.
    tenant_token_hash: Mapped[str | None] = mapped_column(Text)
    # Last state reported by the provider when the machine stopped/was destroyed.
    final_state: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime())
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Trader(Base):
    """A user's strategy. Risk settings are explicit columns (typed, checked); rarely used
    knobs go in ``settings`` (JSON)."""

    __tablename__ = "traders"
    __table_args__ = (
        check_in("status", TraderStatus),
        check_in("trade_type", TradeType),
        CheckConstraint(
            "CAST(position_size_pct AS NUMERIC) > 0 AND CAST(position_size_pct AS NUMERIC) <= 100",
            name="position_size_pct",
        ),
        CheckConstraint("max_open_positions >= 1", name="max_open_positions"),
        Index("idx_traders_user_id", "user_id"),
        Index("idx_traders_status", "status"),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    user: Mapped[User] = _parent()
    name: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    signal_code: Mapped[str] = mapped_column(Text, nullable=False)  # sandboxed Python strategy
    ai_instructions: Mapped[str] = mapped_column(Text, nullable=False)
    timeframes: Mapped[list[str]] = mapped_column(StrList(), nullable=False)
    check_interval: Mapped[str] = mapped_column(Text, nullable=False)
    reanalysis_interval: Mapped[str] = mapped_column(Text, nullable=False)
    symbols: Mapped[list[str] | None] = mapped_column(StrList())  # NULL = all symbols
    status: Mapped[str] = mapped_column(Text, nullable=False, default=TraderStatus.ACTIVE.value)
    error_message: Mapped[str | None] = mapped_column(Text)
    trade_type: Mapped[str] = mapped_column(Text, nullable=False, default=TradeType.PAPER.value)
    position_size_pct: Mapped[Decimal] = mapped_column(PERCENT, nullable=False, default=Decimal("10"))
    max_open_positions: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    stop_loss_pct: Mapped[Decimal | None] = mapped_column(PERCENT, default=Decimal("2"))
    take_profit_pct: Mapped[Decimal | None] = mapped_column(PERCENT, default=Decimal("4"))
    trailing_stop_pct: Mapped[Decimal | None] = mapped_column(PERCENT)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Signal(Base):
    __tablename__ = "signals"
    __table_args__ = (
        check_in("status", SignalStatus),
        check_in("close_reason", CloseReason),
        Index("idx_signals_trader_id", "trader_id"),
        Index("idx_signals_user_id", "user_id"),
        Index("idx_signals_status", "status"),
        Index("idx_signals_symbol", "symbol"),
        Index("idx_signals_timestamp", "timestamp"),
        Index("idx_signals_trader_symbol_status", "trader_id", "symbol", "status"),
    )

    id: Mapped[uuid.UUID] = _id()
    trader_id: Mapped[uuid.UUID] = _fk("traders.id")
    trader: Mapped[Trader] = _parent()
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    user: Mapped[User] = _parent()
    symbol: Mapped[str] = mapped_column(Text, nullable=False)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    status: Mapped[str] = mapped_column(Text, nullable=False, default=SignalStatus.NEW.value)
    trigger_price: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    current_price: Mapped[Decimal | None] = mapped_column(MONEY)
    timeframe: Mapped[str | None] = mapped_column(Text)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    close_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Position(Base):
    """An open or closed position. ``version`` gives optimistic locking: a concurrent update
    of a stale copy raises ``sqlalchemy.orm.exc.StaleDataError``."""

    __tablename__ = "positions"
    __table_args__ = (
        check_in("side", PositionSide),
        check_in("status", PositionStatus),
        check_in("trade_type", TradeType),
        check_in("close_reason", CloseReason),
        CheckConstraint("CAST(size AS NUMERIC) >= 0", name="size"),
        Index("idx_positions_signal_id", "signal_id"),
        Index("idx_positions_user_id", "user_id"),
        Index("idx_positions_trader_id", "trader_id"),
        Index("idx_positions_status", "status"),
        Index("idx_positions_symbol", "symbol"),
    )

    id: Mapped[uuid.UUID] = _id()
    signal_id: Mapped[uuid.UUID] = _fk("signals.id")
    signal: Mapped[Signal] = _parent()
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    user: Mapped[User] = _parent()
    trader_id: Mapped[uuid.UUID] = _fk("traders.id")
    trader: Mapped[Trader] = _parent()
    symbol: Mapped[str] = mapped_column(Text, nullable=False)
    side: Mapped[str] = mapped_column(Text, nullable=False)
    trade_type: Mapped[str] = mapped_column(Text, nullable=False, default=TradeType.PAPER.value)
    entry_price: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    size: Mapped[Decimal] = mapped_column(MONEY, nullable=False)  # base asset
    stop_loss: Mapped[Decimal | None] = mapped_column(MONEY)
    stop_loss_order_id: Mapped[str | None] = mapped_column(Text)  # exchange order id (text: any venue)
    take_profit: Mapped[Decimal | None] = mapped_column(MONEY)
    take_profit_order_id: Mapped[str | None] = mapped_column(Text)
    trailing_stop_pct: Mapped[Decimal | None] = mapped_column(PERCENT)
    highest_price: Mapped[Decimal | None] = mapped_column(MONEY)  # since open, for trailing longs
    lowest_price: Mapped[Decimal | None] = mapped_column(MONEY)  # since open, for trailing shorts
    status: Mapped[str] = mapped_column(Text, nullable=False, default=PositionStatus.OPEN.value)
    exit_price: Mapped[Decimal | None] = mapped_column(MONEY)
    fees: Mapped[Decimal] = mapped_column(MONEY, nullable=False, default=Decimal("0"))
    pnl: Mapped[Decimal | None] = mapped_column(MONEY)  # quote asset, net of fees
    pnl_percent: Mapped[Decimal | None] = mapped_column(PERCENT)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    close_reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = _updated()
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


class Order(Base):
    """One row per exchange order; ``client_order_id`` is our idempotency key."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("client_order_id"),
        check_in("side", TradeSide),
        check_in("type", OrderType),
        check_in("purpose", OrderPurpose),
        check_in("status", OrderStatus),
        check_in("trade_type", TradeType),
        CheckConstraint("CAST(quantity AS NUMERIC) > 0", name="quantity"),
        CheckConstraint("CAST(filled_quantity AS NUMERIC) >= 0", name="filled_quantity"),
        Index("idx_orders_user_id_status", "user_id", "status"),
        Index("idx_orders_position_id", "position_id"),
        Index("idx_orders_signal_id", "signal_id"),
        Index("idx_orders_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = _id()
    client_order_id: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    user: Mapped[User] = _parent()
    trader_id: Mapped[uuid.UUID | None] = _fk("traders.id", nullable=True, index=True)
    trader: Mapped[Trader | None] = _parent()
    position_id: Mapped[uuid.UUID | None] = _fk("positions.id", nullable=True)
    position: Mapped[Position | None] = _parent()
    signal_id: Mapped[uuid.UUID | None] = _fk("signals.id", nullable=True)
    signal: Mapped[Signal | None] = _parent()
    symbol: Mapped[str] = mapped_column(Text, nullable=False)
    side: Mapped[str] = mapped_column(Text, nullable=False)
    type: Mapped[str] = mapped_column(Text, nullable=False)
    purpose: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, default=OrderStatus.PENDING.value)
    trade_type: Mapped[str] = mapped_column(Text, nullable=False, default=TradeType.PAPER.value)
    price: Mapped[Decimal | None] = mapped_column(MONEY)
    stop_price: Mapped[Decimal | None] = mapped_column(MONEY)
    quantity: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    filled_quantity: Mapped[Decimal] = mapped_column(MONEY, nullable=False, default=Decimal("0"))
    average_price: Mapped[Decimal | None] = mapped_column(MONEY)
    fee: Mapped[Decimal | None] = mapped_column(MONEY)
    fee_asset: Mapped[str | None] = mapped_column(Text)
    exchange_order_id: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Trade(Base):
    """An executed fill (paper or real) against a position."""

    __tablename__ = "trades"
    __table_args__ = (
        check_in("type", TradeType),
        check_in("side", TradeSide),
        check_in("status", TradeStatus),
        Index("idx_trades_position_id", "position_id"),
        Index("idx_trades_user_id", "user_id"),
        Index("idx_trades_type", "type"),
        Index("idx_trades_executed_at", "executed_at"),
    )

    id: Mapped[uuid.UUID] = _id()
    position_id: Mapped[uuid.UUID] = _fk("positions.id")
    position: Mapped[Position] = _parent()
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    user: Mapped[User] = _parent()
    order_id: Mapped[uuid.UUID | None] = _fk("orders.id", nullable=True, index=True)
    order: Mapped[Order | None] = _parent()
    type: Mapped[str] = mapped_column(Text, nullable=False)
    side: Mapped[str] = mapped_column(Text, nullable=False)
    symbol: Mapped[str] = mapped_column(Text, nullable=False)
    price: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    quantity: Mapped[Decimal] = mapped_column(MONEY, nullable=False)
    fee: Mapped[Decimal] = mapped_column(MONEY, nullable=False, default=Decimal("0"))
    fee_asset: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False, default=TradeStatus.FILLED.value)
    exchange_order_id: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    executed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class AnalysisHistory(Base):
    """Each analyst decision about a signal (seed 000 analysis_history)."""

    __tablename__ = "analysis_history"
    __table_args__ = (
        check_in("decision", Decision),
        CheckConstraint("confidence >= 0 AND confidence <= 100", name="confidence"),
        Index("idx_analysis_history_signal_id", "signal_id"),
        Index("idx_analysis_history_trader_id", "trader_id"),
        Index("idx_analysis_history_user_id", "user_id"),
        Index("idx_analysis_history_timestamp", "timestamp"),
    )

    id: Mapped[uuid.UUID] = _id()
    signal_id: Mapped[uuid.UUID] = _fk("signals.id")
    signal: Mapped[Signal] = _parent()
    trader_id: Mapped[uuid.UUID] = _fk("traders.id")
    trader: Mapped[Trader] = _parent()
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    user: Mapped[User] = _parent()
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    decision: Mapped[str] = mapped_column(Text, nullable=False)
    reasoning: Mapped[str] = mapped_column(Text, nullable=False)
    confidence: Mapped[int | None] = mapped_column(Integer)
    market_data: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # Column is named "metadata" as in the seed; the attribute can't be (reserved by SQLAlchemy).
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    model_name: Mapped[str | None] = mapped_column(Text)
    tokens_used: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int | None] = mapped_column(Integer)


class SignalAnalysis(Base):
    """Structured analysis result (seed 004 signal_analyses)."""

    __tablename__ = "signal_analyses"
    __table_args__ = (
        check_in("decision", AnalysisVerdict),
        # Money columns are TEXT on SQLite: compare them as numbers there.
        CheckConstraint("CAST(confidence AS NUMERIC) >= 0 AND CAST(confidence AS NUMERIC) <= 100", name="confidence"),
        Index("idx_signal_analyses_signal_id", "signal_id"),
        Index("idx_signal_analyses_user_id", "user_id"),
        Index("idx_signal_analyses_trader_id", "trader_id"),
        Index("idx_signal_analyses_created_at", "created_at"),
        Index("idx_signal_analyses_decision", "decision"),
    )

    id: Mapped[uuid.UUID] = _id()
    signal_id: Mapped[uuid.UUID] = _fk("signals.id")
    signal: Mapped[Signal] = _parent()
    trader_id: Mapped[uuid.UUID] = _fk("traders.id")
    trader: Mapped[Trader] = _parent()
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    user: Mapped[User] = _parent()
    decision: Mapped[str] = mapped_column(Text, nullable=False)
    confidence: Mapped[Decimal] = mapped_column(Money(5, 2), nullable=False)
    reasoning: Mapped[str] = mapped_column(Text, nullable=False)
    key_levels: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    trade_plan: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    technical_indicators: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    raw_ai_response: Mapped[str | None] = mapped_column(Text)
    analysis_latency_ms: Mapped[int | None] = mapped_column(Integer)
    gemini_tokens_used: Mapped[int | None] = mapped_column(Integer)
    model_name: Mapped[str | None] = mapped_column(Text)
    # Added by the AI layer (migration 0002): tracing and the failure a safe default stands for.
    correlation_id: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class AIRateLimit(Base):
    """A shared sliding-window quota (tradeengine.ai.limiter.PostgresQuota): grant times, epoch s."""

    __tablename__ = "ai_rate_limits"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    grants: Mapped[list[float]] = mapped_column(JSONType, nullable=False, default=list)
    updated_at: Mapped[datetime] = _updated()


class AIPrompt(Base):
    """Prompt templates (seed 004 ai_prompts): the analyst reads the active row of a type."""

    __tablename__ = "ai_prompts"
    __table_args__ = (
        UniqueConstraint("type", "version", name="uq_ai_prompts_type_version"),
        Index("idx_ai_prompts_type_active", "type", "is_active"),
    )

    id: Mapped[uuid.UUID] = _id()
    type: Mapped[str] = mapped_column(Text, nullable=False)  # e.g. PromptType.STRUCTURED_ANALYSIS
    name: Mapped[str] = mapped_column(Text, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class MachineEvent(Base):
    """Heartbeats, lifecycle events and errors of a tenant machine."""

    __tablename__ = "machine_events"
    __table_args__ = (
        Index("idx_machine_events_user_id_created_at", "user_id", "created_at"),
        Index("idx_machine_events_machine_id_created_at", "machine_id", "created_at"),
        Index("idx_machine_events_kind", "kind"),
    )

    id: Mapped[uuid.UUID] = _id()
    user_id: Mapped[uuid.UUID] = _fk("users.id")
    user: Mapped[User] = _parent()
    machine_id: Mapped[uuid.UUID | None] = _fk("fly_machines.id", nullable=True)
    machine: Mapped[FlyMachine | None] = _parent()
    kind: Mapped[str] = mapped_column(Text, nullable=False)  # heartbeat, started, stopped, error, ...
    message: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = _created()


ALL_TABLES: tuple[str, ...] = tuple(sorted(Base.metadata.tables))

__all__ = [
    "ALL_TABLES",
    "NAMING_CONVENTION",
    "AIPrompt",
    "AnalysisHistory",
    "Base",
    "FlyMachine",
    "MachineEvent",
    "Order",
    "Position",
    "Signal",
    "SignalAnalysis",
    "Trade",
    "Trader",
    "User",
]
