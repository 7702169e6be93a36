"""Pydantic schemas for what the model must return.

They serve twice: google-genai turns them into the ``responseSchema`` that constrains Gemini's
JSON, and we validate the reply against them ourselves (the model can still break a schema, and a
fake or a proxy may not enforce it). Field names are the seed's camelCase where the seed's wire
format uses them, so the JSON the model writes is the JSON the API returns.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tradeengine.domain.enums import Decision

DecisionName = Literal[
    "no_trade",
    "watch",
    "open_long",
    "open_short",
    "close",
    "partial_close",
    "scale_in",
    "scale_out",
    "update_stop_loss",
    "update_take_profit",
    "flip_position",
]

# Guard against the Literal drifting away from the domain enum.
assert set(DecisionName.__args__) == {d.value for d in Decision}  # type: ignore[attr-defined]

Timeframe = Literal["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"]
TIMEFRAMES: tuple[str, ...] = Timeframe.__args__  # type: ignore[attr-defined]

# "5s", "1m", "15m", "1h" or candle-close aligned "5m_close", "1h_close" (seed: check_interval).
INTERVAL_PATTERN = r"^([1-9][0-9]{0,2}[smh]|1d|([1-9][0-9]?[mh]|1d)_close)$"
SYMBOL_PATTERN = r"^[A-Z0-9]{2,15}/[A-Z0-9]{2,10}$"


class AnalysisMetadata(BaseModel):
    """The seed's decision metadata. Prices in the quote asset; fractions in (0, 1]."""

    model_config = ConfigDict(extra="ignore")

    stopLoss: float | None = Field(default=None, description="Stop-loss price for a new position")
    takeProfit: float | None = Field(default=None, description="Take-profit price for a new position")
    positionSize: float | None = Field(
        default=None, description="Fraction of the available balance to commit, in (0, 1]"
    )
    closePercentage: float | None = Field(
        default=None, description="partial_close: fraction of the position to close, in (0, 1]"
    )
    scaleInAmount: float | None = Field(
        default=None, description="scale_in: fraction of the current position size to add, in (0, 1]"
    )
    scaleOutPercentage: float | None = Field(
        default=None, description="scale_out: fraction of the position to take off, in (0, 1]"
    )
    newStopLoss: float | None = Field(default=None, description="update_stop_loss: the new stop price")
    newTakeProfit: float | None = Field(default=None, description="update_take_profit: the new target")


class TradePlan(BaseModel):
    """Seed 004's structured trade plan (free text plus an expected reward/risk ratio)."""

    model_config = ConfigDict(extra="ignore")

    setup: str = Field(default="", max_length=2000)
    execution: str = Field(default="", max_length=2000)
    invalidation: str = Field(default="", max_length=2000)
    riskReward: float | None = Field(default=None, ge=0)


class AnalysisOutput(BaseModel):
    """One analysis: what to do with a signal or an open position, and why."""

    model_config = ConfigDict(extra="ignore")

    decision: DecisionName
    reasoning: str = Field(min_length=1, max_length=6000)
    confidence: int = Field(ge=0, le=100)
    metadata: AnalysisMetadata = Field(default_factory=AnalysisMetadata)
    tradePlan: TradePlan | None = None


class GeneratedStrategy(BaseModel):
    """A trader generated from a plain-language description."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=80)
    signal_code: str = Field(min_length=1, max_length=20_000, description="Python defining check_signal")
    ai_instructions: str = Field(min_length=1, max_length=10_000)
    timeframes: list[Timeframe] = Field(min_length=1, max_length=4)
    check_interval: str = Field(pattern=INTERVAL_PATTERN)
    reanalysis_interval: str = Field(pattern=INTERVAL_PATTERN)
    symbols: list[str] | None = Field(
        default=None, description="ccxt symbols like BTC/USDT, or null for the default universe"
    )
