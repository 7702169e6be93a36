"""Closed vocabularies shared by the domain and the database CHECK constraints.

Each enum's values are exactly what is stored in the database; the store builds its CHECK
constraints from these, so adding a value here needs a migration too.
"""

from __future__ import annotations

from enum import StrEnum


class Tier(StrEnum):
    FREE = "free"
    PRO = "pro"
    ELITE = "elite"
    POWER = "power"


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"
    PAST_DUE = "past_due"


class MachineStatus(StrEnum):
    PROVISIONING = "provisioning"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DESTROYED = "destroyed"
    ERROR = "error"  # heartbeat lost or the provider reported a failure


class TraderStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    ERROR = "error"


class SignalStatus(StrEnum):
    NEW = "new"
    WATCHING = "watching"
    POSITION_OPEN = "position_open"
    CLOSED = "closed"


ACTIVE_SIGNAL_STATUSES: frozenset[SignalStatus] = frozenset(
    {SignalStatus.NEW, SignalStatus.WATCHING, SignalStatus.POSITION_OPEN}
)


class PositionSide(StrEnum):
    LONG = "long"
    SHORT = "short"


class PositionStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class TradeType(StrEnum):
    PAPER = "paper"
    REAL = "real"


class TradeSide(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class TradeStatus(StrEnum):
    PENDING = "pending"
    FILLED = "filled"
    CANCELLED = "cancelled"
    FAILED = "failed"


class Decision(StrEnum):
    """What the analyst may decide about a signal (analysis_history.decision)."""

    NO_TRADE = "no_trade"
    WATCH = "watch"
    OPEN_LONG = "open_long"
    OPEN_SHORT = "open_short"
    CLOSE = "close"
    PARTIAL_CLOSE = "partial_close"
    SCALE_IN = "scale_in"
    SCALE_OUT = "scale_out"
    UPDATE_STOP_LOSS = "update_stop_loss"
    UPDATE_TAKE_PROFIT = "update_take_profit"
    FLIP_POSITION = "flip_position"


class AnalysisVerdict(StrEnum):
    """The structured-analysis outcome stored in signal_analyses.decision (seed 004)."""

    ENTER_TRADE = "enter_trade"
    BAD_SETUP = "bad_setup"
    WAIT = "wait"


class OrderStatus(StrEnum):
    PENDING = "pending"  # recorded locally, not yet acknowledged by the exchange
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    FAILED = "failed"


OPEN_ORDER_STATUSES: frozenset[OrderStatus] = frozenset(
    {OrderStatus.PENDING, OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED}
)


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP_MARKET = "stop_market"
    STOP_LIMIT = "stop_limit"
    TAKE_PROFIT_LIMIT = "take_profit_limit"
    TRAILING_STOP = "trailing_stop"


class OrderPurpose(StrEnum):
    ENTRY = "entry"
    EXIT = "exit"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    TRAILING_STOP = "trailing_stop"
    SCALE_IN = "scale_in"
    SCALE_OUT = "scale_out"
    PARTIAL_CLOSE = "partial_close"
    FLIP = "flip"
    MANUAL = "manual"


class CloseReason(StrEnum):
    """Why a signal or position ended (signals.close_reason, positions.close_reason)."""

    NO_TRADE = "no_trade"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    TRAILING_STOP = "trailing_stop"
    MANUAL = "manual"
    AI_CLOSE = "ai_close"
    FLIP = "flip"
    EXPIRED = "expired"
    TRADER_DELETED = "trader_deleted"
    LIQUIDATION = "liquidation"
    ERROR = "error"


class PromptType(StrEnum):
    """ai_prompts.type: which template a prompt row is."""

    STRUCTURED_ANALYSIS = "structured_analysis"
    STRATEGY_GENERATION = "strategy_generation"
    SIGNAL_ANALYSIS = "signal_analysis"
    POSITION_MANAGEMENT = "position_management"
