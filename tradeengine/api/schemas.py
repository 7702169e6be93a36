"""Request and response bodies of the control API (camelCase on the wire, as the seed's API).

Separate from the ORM models on purpose: what the API accepts and returns is a contract with the
frontend; the tables may change underneath. Money goes out as decimal strings (exact).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tradeengine.domain.enums import (
    Decision,
    MachineStatus,
    PositionSide,
    PositionStatus,
    SignalStatus,
    Tier,
    TraderStatus,
    TradeSide,
    TradeStatus,
    TradeType,
)
from tradeengine.domain.timeframes import TimerInterval, timeframe_ms
from tradeengine.exchange.symbols import to_unified

MAX_TEXT = 10_000
MAX_CODE = 20_000
SUPPORTED_TIMEFRAMES = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w")
DestroyReason = Literal["subscription_cancelled", "user_request", "inactivity", "admin"]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


# --- shared validators ----------------------------------------------------------------------


def _symbols(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out: list[str] = []
    for value in values:
        unified = to_unified(value)
        if unified not in out:
            out.append(unified)
    return out


def _timeframes(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        if value not in SUPPORTED_TIMEFRAMES:
            raise ValueError(f"{value!r} is not one of {', '.join(SUPPORTED_TIMEFRAMES)}")
        if value not in out:
            out.append(value)
    return sorted(out, key=timeframe_ms)


def _interval(value: str) -> str:
    return TimerInterval.parse(value, field="interval").text


Symbols = Annotated[list[Annotated[str, Field(min_length=1, max_length=30)]], Field(max_length=200)]
Timeframes = Annotated[list[str], Field(min_length=1, max_length=6)]
Interval = Annotated[str, Field(min_length=2, max_length=16, examples=["1m", "5m_close"])]
LimitedText = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]


# --- strategies -----------------------------------------------------------------------------


class GenerateStrategyRequest(_Model):
    """``POST /v1/strategies/generate`` (seed: generate-strategy)."""

    description: LimitedText = Field(description="The strategy in plain language.")
    tier: Tier | None = Field(default=None, description="The caller's tier; must match the account.")
    user_id: UUID | None = Field(default=None, description="Ignored for users (the token decides); admins act for it.")
    name: Annotated[str, Field(min_length=1, max_length=80)] | None = None
    symbols: Symbols | None = None

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("symbols")
    @classmethod
    def _norm_symbols(cls, value: list[str] | None) -> list[str] | None:
        return _symbols(value)


class TraderOut(_Out):
    id: UUID
    name: str
    description: str | None
    signal_code: str
    ai_instructions: str
    timeframes: list[str]
    check_interval: str
    reanalysis_interval: str
    symbols: list[str] | None
    status: TraderStatus
    error_message: str | None
    trade_type: TradeType
    position_size_pct: Decimal
    max_open_positions: int
    stop_loss_pct: Decimal | None
    take_profit_pct: Decimal | None
    trailing_stop_pct: Decimal | None
    created_at: datetime
    updated_at: datetime

    @computed_field(description="The seed's name for checkInterval.")  # type: ignore[prop-decorator]
    @property
    def recommended_interval(self) -> str:
        return self.check_interval


class GenerateStrategyResponse(_Out):
    success: Literal[True] = True
    trader: TraderOut
    machine_id: str | None = Field(default=None, description="Present when this call provisioned a machine.")
    trigger_rate: float | None = Field(default=None, description="How often the strategy fired on replayed candles.")


class TraderUpdateRequest(_Model):
    """``PATCH /v1/traders/{id}``: any subset; code is re-validated through the sandbox."""

    name: Annotated[str, Field(min_length=1, max_length=80)] | None = None
    description: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    signal_code: Annotated[str, Field(min_length=1, max_length=MAX_CODE)] | None = None
    ai_instructions: LimitedText | None = None
    timeframes: Timeframes | None = None
    check_interval: Interval | None = None
    reanalysis_interval: Interval | None = None
    symbols: Symbols | None = None
    clear_symbols: bool = Field(default=False, description="Set symbols to null (all symbols).")

    @field_validator("symbols")
    @classmethod
    def _norm_symbols(cls, value: list[str] | None) -> list[str] | None:
        return _symbols(value)

    @field_validator("timeframes")
    @classmethod
    def _norm_timeframes(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _timeframes(value)

    @field_validator("check_interval", "reanalysis_interval")
    @classmethod
    def _norm_intervals(cls, value: str | None) -> str | None:
        return None if value is None else _interval(value)

    @model_validator(mode="after")
    def _something(self) -> TraderUpdateRequest:
        if not self.model_fields_set - {"clear_symbols"} and not self.clear_symbols:
            raise ValueError("body: give at least one field to change")
        if self.clear_symbols and self.symbols is not None:
            raise ValueError("clearSymbols: cannot be combined with symbols")
        return self


class TraderResponse(_Out):
    success: Literal[True] = True
    trader: TraderOut
    tenant_notified: bool = Field(description="Whether the user's tenant acknowledged /reload-traders.")


class TraderListResponse(_Out):
    success: Literal[True] = True
    traders: list[TraderOut]
    next_cursor: str | None


class DeletedResponse(_Out):
    success: Literal[True] = True
    id: UUID
    tenant_notified: bool


# --- analysis -------------------------------------------------------------------------------


class MarketData(BaseModel):
    """The seed's ``marketData``: symbol, ticker, klines per timeframe, indicators."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    symbol: Annotated[str, Field(min_length=1, max_length=30)]
    timestamp: Annotated[int, Field(ge=0)] | None = None
    ticker: dict[str, Any] = Field(default_factory=dict)
    klines: dict[str, Annotated[list[list[Any]], Field(max_length=2000)]] = Field(default_factory=dict)
    indicators: dict[str, Any] = Field(default_factory=dict)
    calculated_indicators: dict[str, Any] | None = Field(default=None, alias="calculatedIndicators")

    @field_validator("symbol")
    @classmethod
    def _unified(cls, value: str) -> str:
        return to_unified(value)

    @field_validator("klines")
    @classmethod
    def _known_timeframes(cls, value: dict[str, list[list[Any]]]) -> dict[str, list[list[Any]]]:
        if len(value) > 8:
            raise ValueError("at most 8 timeframes")
        for timeframe in value:
            if timeframe not in SUPPORTED_TIMEFRAMES:
                raise ValueError(f"{timeframe!r} is not a supported timeframe")
        return value


class PositionIn(_Model):
    position_id: UUID
    side: PositionSide
    entry_price: Decimal = Field(gt=0)
    size: Decimal = Field(gt=0)
    stop_loss: Decimal | None = Field(default=None, gt=0)
    take_profit: Decimal | None = Field(default=None, gt=0)
    unrealized_pnl: Decimal = Decimal(0)
    unrealized_pnl_percent: Decimal = Decimal(0)


class AnalyzeSignalRequest(_Model):
    """``POST /v1/signals/analyze`` (seed: analyze-signal)."""

    trader_id: UUID
    signal_id: UUID
    market_data: MarketData
    position: PositionIn | None = None
    is_reanalysis: bool = False
    correlation_id: Annotated[str, Field(max_length=100)] | None = None
    # tradeengine.ai.wire additions (what HttpAnalyst sends); all optional
    symbol: Annotated[str, Field(min_length=1, max_length=30)] | None = None
    candle_key: Annotated[int, Field(ge=0)] | None = Field(default=None, description="Last closed candle (ms).")
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher goes first through the model quota.")

    @field_validator("symbol")
    @classmethod
    def _unified(cls, value: str | None) -> str | None:
        return None if value is None else to_unified(value)


class AnalysisOut(_Out):
    """The seed's analysis (metadata prices are JSON numbers, as in the seed) plus usage data."""

    decision: Decision
    reasoning: str
    confidence: int = Field(ge=0, le=100)
    metadata: dict[str, Any]
    key_levels: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 1
    error: str | None = Field(default=None, description="Set when this is a safe default after a failure.")


class AnalyzeSignalResponse(_Out):
    success: Literal[True] = True
    analysis: AnalysisOut


# --- machines -------------------------------------------------------------------------------


class ProvisionRequest(_Model):
    """``POST /v1/machines/provision`` (seed: provision-machine)."""

    user_id: UUID | None = Field(default=None, description="Admins only: provision for this user.")
    tier: Tier | None = Field(default=None, description="Must match the account's tier when given.")


class DestroyRequest(_Model):
    """``POST /v1/machines/destroy`` (seed: destroy-machine)."""

    user_id: UUID | None = Field(default=None, description="Admins only: destroy this user's machine.")
    reason: DestroyReason = "user_request"


class MachineOut(_Out):
    id: UUID
    machine_id: str
    status: MachineStatus
    ip_address: str | None
    region: str | None
    memory_mb: int | None
    image: str | None
    created_at: datetime
    last_heartbeat: datetime | None
    destroyed_at: datetime | None


class ProvisionResponse(_Out):
    success: Literal[True] = True
    created: bool = Field(description="False when the user already had a machine (provisioning is idempotent).")
    machine: MachineOut


class FinalStateOut(_Out):
    open_positions: int
    watching_signals: int


class DestroyResponse(_Out):
    success: Literal[True] = True
    final_state: FinalStateOut
    tenant_reached: bool = Field(description="Whether the tenant answered the graceful shutdown.")


class MachineMeResponse(_Out):
    success: Literal[True] = True
    machine: MachineOut | None


# --- user -----------------------------------------------------------------------------------


class ExchangeKeysRequest(_Model):
    """``PUT /v1/me/exchange-keys``: stored encrypted, never returned."""

    api_key: Annotated[str, Field(min_length=8, max_length=256, pattern=r"^[A-Za-z0-9_\-]+$")]
    secret_key: Annotated[str, Field(min_length=8, max_length=256, pattern=r"^[A-Za-z0-9_\-]+$")]


class UserOut(_Out):
    id: UUID
    email: str
    tier: Tier
    subscription_status: str | None
    has_exchange_keys: bool
    paper_trading_enabled: bool
    real_trading_enabled: bool
    trader_cap: int
    trader_count: int


class UserResponse(_Out):
    success: Literal[True] = True
    user: UserOut


# --- reads ----------------------------------------------------------------------------------


class UserQuery(_Model):
    """``userId`` lets an admin (service-role token) act for a user; users may only name themselves."""

    user_id: UUID | None = Field(default=None, description="Admins only: act for this user.")


class ListQuery(UserQuery):
    """Filters shared by the read endpoints (query string)."""

    symbol: Annotated[str, Field(min_length=1, max_length=30)] | None = None
    trader_id: UUID | None = None
    since: datetime | None = Field(default=None, description="Inclusive, ISO 8601 with a timezone.")
    until: datetime | None = Field(default=None, description="Exclusive, ISO 8601 with a timezone.")
    cursor: Annotated[str, Field(max_length=200)] | None = None
    limit: int = Field(default=50, ge=1, le=500)

    @field_validator("symbol")
    @classmethod
    def _unified(cls, value: str | None) -> str | None:
        return None if value is None else to_unified(value)

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a timezone, e.g. 2026-01-01T00:00:00Z")
        return value


class SignalQuery(ListQuery):
    status: SignalStatus | None = None


class PositionQuery(ListQuery):
    status: PositionStatus | None = None


class TradeQuery(ListQuery):
    status: TradeStatus | None = None


class AnalysisQuery(ListQuery):
    decision: Decision | None = None
    signal_id: UUID | None = None


class TraderQuery(UserQuery):
    status: TraderStatus | None = None
    cursor: Annotated[str, Field(max_length=200)] | None = None
    limit: int = Field(default=50, ge=1, le=500)


class SignalOut(_Out):
    id: UUID
    trader_id: UUID
    symbol: str
    timeframe: str | None
    timestamp: datetime
    status: SignalStatus
    trigger_price: Decimal
    current_price: Decimal | None
    closed_at: datetime | None
    close_reason: str | None


class PositionOut(_Out):
    id: UUID
    signal_id: UUID
    trader_id: UUID
    symbol: str
    side: PositionSide
    trade_type: TradeType
    entry_price: Decimal
    size: Decimal
    stop_loss: Decimal | None
    take_profit: Decimal | None
    trailing_stop_pct: Decimal | None
    status: PositionStatus
    exit_price: Decimal | None
    fees: Decimal
    pnl: Decimal | None
    pnl_percent: Decimal | None
    opened_at: datetime
    closed_at: datetime | None
    close_reason: str | None


class TradeOut(_Out):
    id: UUID
    position_id: UUID
    type: TradeType
    side: TradeSide
    symbol: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_asset: str | None
    status: TradeStatus
    executed_at: datetime


class AnalysisHistoryOut(_Out):
    id: UUID
    signal_id: UUID
    trader_id: UUID
    timestamp: datetime
    decision: Decision
    reasoning: str
    confidence: int | None
    metadata: dict[str, Any] | None = Field(validation_alias="meta")
    model_name: str | None


class SignalListResponse(_Out):
    success: Literal[True] = True
    signals: list[SignalOut]
    next_cursor: str | None


class PositionListResponse(_Out):
    success: Literal[True] = True
    positions: list[PositionOut]
    next_cursor: str | None


class TradeListResponse(_Out):
    success: Literal[True] = True
    trades: list[TradeOut]
    next_cursor: str | None


class AnalysisListResponse(_Out):
    success: Literal[True] = True
    analyses: list[AnalysisHistoryOut]
    next_cursor: str | None


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: str


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    mode: str
    version: str
