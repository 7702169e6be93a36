"""JSON for ``POST /v1/signals/analyze`` (seed 000 "Analyze Signal"), shared by both ends.

Request (tenant -> control plane)::

    {"traderId": uuid, "signalId": uuid, "marketData": {...seed marketData...},
     # our additions, all optional:
     "symbol": "BTC/USDT", "correlationId": "...", "candleKey": 1704067200000, "priority": 0,
     "isReanalysis": false,
     "position": {"positionId", "side", "entryPrice", "size", "stopLoss", "takeProfit",
                  "unrealizedPnl", "unrealizedPnlPercent"} | null}

The control plane takes ``ai_instructions`` and trader settings from its own ``traders`` row (after
checking the trader belongs to the caller), never from the request.

Response (200)::

    {"success": true, "analysis": {"decision", "reasoning", "confidence",
     "metadata": {"stopLoss": 41800.5, ...}, "keyLevels": {...}, "model", "promptTokens",
     "completionTokens", "totalTokens", "latencyMs", "attempts", "error": null}}

Prices in ``metadata`` are JSON numbers as in the seed; they are written from Decimal via the
shortest float repr and read back with ``Decimal(str(x))``, which round-trips prices of up to 15
significant digits exactly.
"""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult, PositionSnapshot
from tradeengine.ai.hygiene import AIInputError, normalize_symbol
from tradeengine.domain.enums import Decision, PositionSide

_PRICE_KEYS = ("entryPrice", "size", "stopLoss", "takeProfit", "unrealizedPnl", "unrealizedPnlPercent")


def _uuid(value: Any, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError):
        raise AIInputError(field, "must be a UUID") from None


def _dec(value: Any, field: str, *, required: bool = False) -> Decimal | None:
    if value is None:
        if required:
            raise AIInputError(field, "is required")
        return None
    if isinstance(value, bool):
        raise AIInputError(field, "must be a number")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise AIInputError(field, "must be a number") from None
    if not result.is_finite():
        raise AIInputError(field, "must be finite")
    return result


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)
    if isinstance(value, dict):
        return {k: _number(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_number(v) for v in value]
    return value


def position_to_json(position: PositionSnapshot) -> dict[str, Any]:
    return {
        "positionId": str(position.position_id),
        "side": position.side.value,
        "entryPrice": str(position.entry_price),
        "size": str(position.size),
        "stopLoss": None if position.stop_loss is None else str(position.stop_loss),
        "takeProfit": None if position.take_profit is None else str(position.take_profit),
        "unrealizedPnl": str(position.unrealized_pnl),
        "unrealizedPnlPercent": str(position.unrealized_pnl_percent),
    }


def position_from_json(body: Any) -> PositionSnapshot:
    if not isinstance(body, dict):
        raise AIInputError("position", "must be an object")
    try:
        side = PositionSide(str(body.get("side")))
    except ValueError:
        raise AIInputError("position.side", "must be long or short") from None
    values = {key: _dec(body.get(key), f"position.{key}") for key in _PRICE_KEYS}
    for key in ("entryPrice", "size"):
        value = values[key]
        if value is None or value <= 0:
            raise AIInputError(f"position.{key}", "must be a positive number")
    return PositionSnapshot(
        position_id=_uuid(body.get("positionId"), "position.positionId"),
        side=side,
        entry_price=values["entryPrice"],  # type: ignore[arg-type]
        size=values["size"],  # type: ignore[arg-type]
        stop_loss=values["stopLoss"],
        take_profit=values["takeProfit"],
        unrealized_pnl=values["unrealizedPnl"] or Decimal(0),
        unrealized_pnl_percent=values["unrealizedPnlPercent"] or Decimal(0),
    )


def request_to_json(request: AnalysisRequest) -> dict[str, Any]:
    return {
        "traderId": str(request.trader_id),
        "signalId": str(request.signal_id),
        "symbol": request.symbol,
        "correlationId": request.correlation_id,
        "marketData": request.market_data,
        "position": None if request.position is None else position_to_json(request.position),
        "isReanalysis": request.is_reanalysis,
        "candleKey": request.candle_key,
        "priority": request.priority,
    }


def request_from_json(
    body: Any,
    *,
    user_id: uuid.UUID,
    ai_instructions: str,
    trader_settings: dict[str, Any] | None = None,
    correlation_id: str | None = None,
) -> AnalysisRequest:
    """Parse and check a request body; ``AIInputError`` names the offending field."""
    if not isinstance(body, dict):
        raise AIInputError("body", "must be a JSON object")
    market_data = body.get("marketData")
    if not isinstance(market_data, dict):
        raise AIInputError("marketData", "must be an object")
    symbol = body.get("symbol") or market_data.get("symbol")
    if not isinstance(symbol, str):
        raise AIInputError("marketData.symbol", "is required")
    candle_key = body.get("candleKey")
    if candle_key is not None and (not isinstance(candle_key, int) or isinstance(candle_key, bool)):
        raise AIInputError("candleKey", "must be an integer (ms)")
    priority = body.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise AIInputError("priority", "must be an integer")
    position = body.get("position")
    return AnalysisRequest(
        correlation_id=str(body.get("correlationId") or correlation_id or uuid.uuid4().hex)[:100],
        user_id=user_id,
        trader_id=_uuid(body.get("traderId"), "traderId"),
        signal_id=_uuid(body.get("signalId"), "signalId"),
        symbol=normalize_symbol(symbol, field="marketData.symbol"),
        ai_instructions=ai_instructions,
        market_data=market_data,
        position=None if position is None else position_from_json(position),
        is_reanalysis=bool(body.get("isReanalysis", False)),
        trader_settings=dict(trader_settings or {}),
        candle_key=candle_key,
        priority=max(-1000, min(priority, 1000)),
    )


def result_to_json(result: AnalysisResult) -> dict[str, Any]:
    return {
        "success": True,
        "analysis": {
            "decision": result.decision.value,
            "reasoning": result.reasoning,
            "confidence": result.confidence,
            "metadata": _number(result.metadata),
            "keyLevels": result.key_levels,
            "model": result.model,
            "promptTokens": result.prompt_tokens,
            "completionTokens": result.completion_tokens,
            "totalTokens": result.total_tokens,
            "latencyMs": round(result.latency_ms, 1),
            "attempts": result.attempts,
            "error": result.error,
        },
    }


def _metadata_from_json(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, int | float) and not isinstance(item, bool):
            out[key] = Decimal(str(item))
        else:
            out[key] = item
    return out


def result_from_json(body: Any) -> AnalysisResult:
    """Parse a 200 response; raise ``ValueError`` (with the field) when it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("analysis"), dict):
        raise ValueError("analysis: missing from the response")
    analysis = body["analysis"]
    try:
        decision = Decision(analysis.get("decision"))
    except ValueError:
        raise ValueError(f"analysis.decision: unknown value {analysis.get('decision')!r}") from None
    confidence = analysis.get("confidence")
    if not isinstance(confidence, int | float) or not 0 <= confidence <= 100:
        raise ValueError("analysis.confidence: must be a number in 0..100")
    reasoning = analysis.get("reasoning")
    if not isinstance(reasoning, str):
        raise ValueError("analysis.reasoning: must be a string")

    def count(name: str) -> int:
        value = analysis.get(name)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0

    return AnalysisResult(
        decision=decision,
        reasoning=reasoning,
        confidence=int(confidence),
        metadata=_metadata_from_json(analysis.get("metadata")),
        key_levels=analysis.get("keyLevels") if isinstance(analysis.get("keyLevels"), dict) else {},
        model=analysis.get("model") if isinstance(analysis.get("model"), str) else None,
        prompt_tokens=count("promptTokens"),
        completion_tokens=count("completionTokens"),
        total_tokens=count("totalTokens"),
        latency_ms=float(analysis.get("latencyMs") or 0.0),
        raw_response=None,
        error=analysis.get("error") if isinstance(analysis.get("error"), str) else None,
        attempts=max(1, count("attempts")),
    )
