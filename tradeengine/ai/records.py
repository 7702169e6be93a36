"""Where analyses are stored, and who stores them (so nothing is written twice).

* ``signal_analyses`` (the AI audit trail: raw response, latency, tokens, model, correlation id,
  key levels, trade plan, error) is written by the analyst that called the model, i.e.
  ``GeminiAnalyst`` through ``SignalAnalysisRecorder``, once per analysis, cache hits excluded.
  On the control plane that is the ``/v1/signals/analyze`` handler's analyst; a tenant using
  ``HttpAnalyst`` therefore writes none.
* ``analysis_history`` (one row per decision the runtime applies) is written by the runtime in
  the same transaction that moves the signal, for every analyst alike. It uses
  ``analysis_history_row`` so the columns are filled the same way everywhere.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from uuid import UUID

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult
from tradeengine.domain.enums import AnalysisVerdict, Decision
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import AnalysisHistory, SignalAnalysis
from tradeengine.store.uow import UnitOfWork

_ENTER = {Decision.OPEN_LONG, Decision.OPEN_SHORT, Decision.SCALE_IN, Decision.FLIP_POSITION}
_WAIT = {Decision.WATCH, Decision.UPDATE_STOP_LOSS, Decision.UPDATE_TAKE_PROFIT}


def verdict_for(decision: Decision) -> AnalysisVerdict:
    """Seed 004's three-way verdict for one of the eleven decisions (the exact one is kept too)."""
    if decision in _ENTER:
        return AnalysisVerdict.ENTER_TRADE
    if decision in _WAIT:
        return AnalysisVerdict.WAIT
    return AnalysisVerdict.BAD_SETUP


def json_safe(value: Any) -> Any:
    """Decimals as strings (exact), recursively; everything else unchanged."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _raw_text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw if isinstance(raw, str) else json.dumps(raw, separators=(",", ":"), default=str)


def signal_analysis_row(request: AnalysisRequest, result: AnalysisResult) -> SignalAnalysis:
    trade_plan = dict(result.metadata.get("tradePlan") or {})
    trade_plan["decision"] = result.decision.value
    indicators = request.market_data.get("calculatedIndicators") or request.market_data.get("indicators")
    return SignalAnalysis(
        signal_id=request.signal_id,
        trader_id=request.trader_id,
        user_id=request.user_id,
        decision=verdict_for(result.decision).value,
        confidence=Decimal(result.confidence),
        reasoning=result.reasoning,
        key_levels=json_safe(result.key_levels),
        trade_plan=json_safe(trade_plan),
        technical_indicators=json_safe(indicators) if isinstance(indicators, dict) else None,
        raw_ai_response=_raw_text(result.raw_response),
        analysis_latency_ms=round(result.latency_ms),
        gemini_tokens_used=result.total_tokens,
        model_name=result.model,
        correlation_id=request.correlation_id,
        error=result.error,
    )


def analysis_history_row(
    request: AnalysisRequest, result: AnalysisResult, *, include_market_data: bool = False
) -> AnalysisHistory:
    """The runtime's ``analysis_history`` row for an applied decision (add it in your own UoW)."""
    meta = {k: v for k, v in result.metadata.items() if k != "tradePlan"}
    if result.error is not None:
        meta["error"] = result.error
    meta["correlationId"] = request.correlation_id
    return AnalysisHistory(
        signal_id=request.signal_id,
        trader_id=request.trader_id,
        user_id=request.user_id,
        decision=result.decision.value,
        reasoning=result.reasoning,
        confidence=result.confidence,
        market_data=json_safe(request.market_data) if include_market_data else None,
        meta=json_safe(meta),
        model_name=result.model,
        tokens_used=result.total_tokens,
        latency_ms=round(result.latency_ms),
    )


class SignalAnalysisRecorder:
    """Writes one ``signal_analyses`` row per analysis, in its own short transaction."""

    def __init__(self, session_factory: SessionFactory) -> None:
        self._factory = session_factory

    async def record(self, request: AnalysisRequest, result: AnalysisResult) -> UUID:
        async with UnitOfWork(self._factory) as uow:
            row = uow.signal_analyses.add(signal_analysis_row(request, result))
            await uow.commit()
            return row.id
