"""The Analyst port: given a signal (or an open position) and market data, return a decision.

Adapters: ``OfflineAnalyst`` (rules on our own indicators, no network), ``GeminiAnalyst``
(google-genai), ``HttpAnalyst`` (a tenant asking the control plane). An analyst never raises into
the runtime: on failure it returns a safe default with ``error`` set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from tradeengine.domain.enums import Decision, PositionSide
from tradeengine.indicators.klines import Klines


@dataclass(frozen=True, slots=True)
class PositionSnapshot:
    """The open position an analysis is about, if any."""

    position_id: UUID
    side: PositionSide
    entry_price: Decimal
    size: Decimal
    stop_loss: Decimal | None
    take_profit: Decimal | None
    unrealized_pnl: Decimal
    unrealized_pnl_percent: Decimal


@dataclass(frozen=True, slots=True)
class AnalysisRequest:
    correlation_id: str
    user_id: UUID
    trader_id: UUID
    signal_id: UUID
    symbol: str
    ai_instructions: str
    # The seed's marketData: {"symbol", "ticker": {...}, "klines": {tf: [[...], ...]},
    # "calculatedIndicators": {...}}; built by the runtime from the kline store.
    market_data: dict[str, Any]
    position: PositionSnapshot | None = None
    is_reanalysis: bool = False
    # Trader settings an analyst may use for sizing/stops (e.g. position_size_pct).
    trader_settings: dict[str, Any] = field(default_factory=dict)
    # Last closed candle open time of the primary timeframe; keys caches of analyses.
    candle_key: int | None = None
    # Higher goes first through the shared Gemini limiter (see ai.limiter.priority_for); an open
    # position is always raised to PRIORITY_OPEN_POSITION by the Gemini analyst.
    priority: int = 0
    # The candles of market_data["klines"] by timeframe, as the float columns their rows were
    # formatted from (parsing the rows back gives the same values), so an analyst in the same
    # process need not parse strings. Empty when the request came over the wire; never sent.
    # Derived from market_data, so left out of equality and repr. For an analyst whose class says
    # ``reads_kline_rows = False`` the runtime formats only the newest few rows; these columns
    # still hold every candle the rows would have.
    candles: Mapping[str, Klines] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    decision: Decision
    reasoning: str
    confidence: int  # 0..100
    # The seed's metadata keys (camelCase): stopLoss, takeProfit, positionSize, closePercentage,
    # scaleInAmount, scaleOutPercentage, newStopLoss, newTakeProfit, ... Prices/sizes as Decimal.
    metadata: dict[str, Any] = field(default_factory=dict)
    key_levels: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_ms: float = 0.0
    raw_response: Any = None
    error: str | None = None  # set when this is a safe default after a failure
    attempts: int = 1


class Analyst(Protocol):
    """Decides on a signal. Optional hint, read with ``getattr`` (not part of the protocol, so
    analysts need not declare it): a class attribute ``reads_kline_rows = False`` says the
    analyst reads ``AnalysisRequest.candles`` and never ``market_data["klines"]``, and the runtime
    then formats only the rows it stores (``OfflineAnalyst``)."""

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        """Decide what to do; never raise (return a safe default with ``error`` set)."""
        ...
