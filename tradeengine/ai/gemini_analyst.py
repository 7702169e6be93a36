"""GeminiAnalyst: the Analyst port on Gemini, with validation, one repair round and safe defaults.

Flow per request: validate the symbol -> cache -> per-user slot -> build the prompt (active
template, the seed's marketData, indicators computed by us, locally computed key levels) -> model
(quota limiter, retries inside the client) -> parse against ``AnalysisOutput`` and validate against
the market and position -> on a problem, one repair turn that quotes the problem -> still bad, or
the model unreachable: the safe default (``no_trade`` for a new signal, ``watch`` = keep for an
open position) with ``error`` set -> record ``signal_analyses`` -> one structured log line.
It never raises into the runtime.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from loguru import logger

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult, PositionSnapshot
from tradeengine.ai.cache import AnalysisCache
from tradeengine.ai.gemini import GeminiClient, GeminiError, GeminiReply, Turn, parse_reply
from tradeengine.ai.hygiene import AIInputError, fence, normalize_symbol
from tradeengine.ai.key_levels import KeyLevels, compute_key_levels
from tradeengine.ai.limiter import PRIORITY_OPEN_POSITION, UserConcurrency
from tradeengine.ai.prompts import REPAIR_ANALYSIS, PromptLibrary, render
from tradeengine.ai.records import SignalAnalysisRecorder
from tradeengine.ai.schemas import AnalysisOutput
from tradeengine.ai.validation import allowed_decisions, to_decimal_metadata, validate_analysis
from tradeengine.domain.enums import Decision, PositionSide, PromptType
from tradeengine.indicators.klines import Klines

SYSTEM_INSTRUCTION = (
    "You are a trading analyst inside an automated platform. Answer only with the JSON object the "
    "schema describes. Numbers in the prompt were computed by the platform; do not invent data."
)


@dataclass
class _Timings:
    prompt_ms: float = 0.0
    model_ms: float = 0.0
    limiter_ms: float = 0.0
    parse_ms: float = 0.0
    persist_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def current_price(market_data: dict[str, Any]) -> Decimal | None:
    """The ticker's last price, else the last close of the first timeframe."""
    ticker = market_data.get("ticker") or {}
    for key in ("lastPrice", "last_price", "last", "price"):
        price = _decimal(ticker.get(key))
        if price is not None and price > 0:
            return price
    for series in (market_data.get("klines") or {}).values():
        klines = _as_klines(series, 1)
        if klines is not None and len(klines):
            return _decimal(repr(float(klines.close[-1])))
    return None


def _as_klines(series: Any, count: int) -> Klines | None:
    if isinstance(series, Klines):
        return series.tail(count)
    if isinstance(series, list | tuple) and series:
        try:
            return Klines.from_rows(series[-count:])
        except ValueError:
            return None
    return None


def _format_candles(market_data: dict[str, Any], count: int) -> str:
    lines: list[str] = []
    for timeframe, series in (market_data.get("klines") or {}).items():
        klines = _as_klines(series, count)
        if klines is None or not len(klines):
            continue
        lines.append(f"[{timeframe}] open_time_ms,open,high,low,close,volume")
        for i in range(len(klines)):
            lines.append(
                f"{int(klines.open_time[i])},{klines.open[i]:.8g},{klines.high[i]:.8g},"
                f"{klines.low[i]:.8g},{klines.close[i]:.8g},{klines.volume[i]:.6g}"
            )
    ticker = market_data.get("ticker")
    head = f"Ticker: {json.dumps(ticker, default=str)}" if ticker else "Ticker: (none)"
    return head + "\n" + "\n".join(lines)


def _format_position(position: PositionSnapshot) -> str:
    return json.dumps(
        {
            "side": position.side.value,
            "entryPrice": str(position.entry_price),
            "size": str(position.size),
            "stopLoss": None if position.stop_loss is None else str(position.stop_loss),
            "takeProfit": None if position.take_profit is None else str(position.take_profit),
            "unrealizedPnl": str(position.unrealized_pnl),
            "unrealizedPnlPercent": str(position.unrealized_pnl_percent),
        }
    )


class GeminiAnalyst:
    """Implements ``Analyst`` with Gemini. Share one instance per process (it holds the cache)."""

    def __init__(
        self,
        client: GeminiClient,
        *,
        prompts: PromptLibrary | None = None,
        recorder: SignalAnalysisRecorder | None = None,
        cache: AnalysisCache | None = None,
        concurrency: UserConcurrency | None = None,
        candles_in_prompt: int = 20,
    ) -> None:
        self.client = client
        self.prompts = prompts or PromptLibrary()
        self.recorder = recorder
        self.cache = cache
        self.concurrency = concurrency or UserConcurrency(4)
        self.candles_in_prompt = candles_in_prompt

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        started = time.perf_counter()
        timings = _Timings()
        try:
            symbol = normalize_symbol(request.symbol)
            if symbol != request.symbol:
                request = replace(request, symbol=symbol)
        except AIInputError as exc:
            result = self._safe_default(request, f"invalid request: {exc}", started)
            self._log(request, result, timings, cached=False)
            return result
        try:
            if self.cache is not None:
                result, cached = await self.cache.get_or_compute(
                    request, lambda: self._analyze_and_record(request, timings, started)
                )
            else:
                result, cached = await self._analyze_and_record(request, timings, started), False
        except Exception as exc:  # the port's promise: never raise into the runtime
            logger.opt(exception=exc).bind(correlation_id=request.correlation_id).error("analysis crashed")
            result, cached = (
                self._safe_default(request, f"internal error: {type(exc).__name__}: {exc}", started),
                False,
            )
        self._log(request, result, timings, cached=cached)
        return result

    async def _analyze_and_record(self, request: AnalysisRequest, timings: _Timings, started: float) -> AnalysisResult:
        async with self.concurrency.slot(str(request.user_id)):
            result = await self._analyze(request, timings, started)
        if self.recorder is not None:
            t0 = time.perf_counter()
            try:
                await self.recorder.record(request, result)
            except Exception as exc:  # the decision still stands; the audit row is lost, loudly
                logger.bind(correlation_id=request.correlation_id).error("signal_analyses write failed: {}", exc)
            timings.persist_ms = (time.perf_counter() - t0) * 1000
        return result

    async def _analyze(self, request: AnalysisRequest, timings: _Timings, started: float) -> AnalysisResult:
        t0 = time.perf_counter()
        price = current_price(request.market_data)
        levels = self._key_levels(request, price)
        prompt_type = PromptType.STRUCTURED_ANALYSIS if request.position is None else PromptType.POSITION_MANAGEMENT
        template = await self.prompts.get(prompt_type)
        prompt = self._prompt(request, template.content, levels)
        timings.prompt_ms = (time.perf_counter() - t0) * 1000
        timings.extra["template"] = template.label

        priority = PRIORITY_OPEN_POSITION if request.position is not None else request.priority
        turns = [Turn("user", prompt)]
        replies: list[GeminiReply] = []
        problems: list[str] = []
        for round_ in (1, 2):
            try:
                reply = await self.client.generate_json(
                    turns,
                    AnalysisOutput,
                    system_instruction=SYSTEM_INSTRUCTION,
                    priority=priority,
                    correlation_id=request.correlation_id,
                )
            except GeminiError as exc:
                return self._safe_default(request, f"model unavailable: {exc}", started, replies, exc.attempts)
            replies.append(reply)
            timings.model_ms += reply.model_ms
            timings.limiter_ms += reply.limiter_wait_ms
            t1 = time.perf_counter()
            output, error = parse_reply(reply.text, AnalysisOutput)
            problems = [error] if error else validate_analysis(output, price=price, position=request.position)  # type: ignore[arg-type]
            timings.parse_ms += (time.perf_counter() - t1) * 1000
            if not problems and output is not None:
                return self._result(request, output, levels, price, replies, started)
            if round_ == 1:
                turns = [
                    *turns,
                    Turn("model", reply.text or "(empty)"),
                    Turn("user", REPAIR_ANALYSIS.format(problems="; ".join(problems))),
                ]
        return self._safe_default(request, "invalid analysis after repair: " + "; ".join(problems), started, replies)

    def _key_levels(self, request: AnalysisRequest, price: Decimal | None) -> dict[PositionSide, KeyLevels]:
        if price is None:
            return {}
        by_timeframe = request.market_data.get("klines") or {}
        primary = request.market_data.get("primaryTimeframe")
        if primary not in by_timeframe:
            primary = next(iter(by_timeframe), None)
        series = by_timeframe.get(primary)
        klines = _as_klines(series, 100)
        if klines is None:
            return {}
        sides = [request.position.side] if request.position is not None else [PositionSide.LONG, PositionSide.SHORT]
        levels: dict[PositionSide, KeyLevels] = {}
        for side in sides:
            computed = compute_key_levels(klines, price, side)
            if computed is not None:
                levels[side] = computed
        return levels

    def _prompt(self, request: AnalysisRequest, template: str, levels: dict[PositionSide, KeyLevels]) -> str:
        indicators = request.market_data.get("calculatedIndicators") or request.market_data.get("indicators") or {}
        return render(
            template,
            {
                "INSTRUCTIONS": fence(request.ai_instructions, "user_instructions"),
                "SYMBOL": request.symbol,
                "MARKET_DATA": _format_candles(request.market_data, self.candles_in_prompt),
                "INDICATORS": json.dumps(indicators, default=str, separators=(",", ":")),
                "KEY_LEVELS": json.dumps({side.value: lv.to_json() for side, lv in levels.items()})
                if levels
                else "(not enough candles)",
                "POSITION": _format_position(request.position) if request.position is not None else "",
                "ALLOWED_DECISIONS": ", ".join(d.value for d in allowed_decisions(request.position)),
            },
        )

    def _result(
        self,
        request: AnalysisRequest,
        output: AnalysisOutput,
        levels: dict[PositionSide, KeyLevels],
        price: Decimal | None,
        replies: list[GeminiReply],
        started: float,
    ) -> AnalysisResult:
        decision = Decision(output.decision)
        metadata: dict[str, Any] = dict(to_decimal_metadata(output))
        if output.tradePlan is not None:
            metadata["tradePlan"] = output.tradePlan.model_dump(exclude_none=True)
        side = {Decision.OPEN_LONG: PositionSide.LONG, Decision.OPEN_SHORT: PositionSide.SHORT}.get(decision)
        if decision is Decision.FLIP_POSITION and request.position is not None:
            side = PositionSide.SHORT if request.position.side is PositionSide.LONG else PositionSide.LONG
        chosen = levels.get(side) if side is not None else None
        if chosen is None and request.position is not None:
            chosen = levels.get(request.position.side)
        if chosen is None and levels:
            chosen = levels.get(PositionSide.LONG)
        if side is not None and chosen is not None and chosen.side is side:
            # Opening without levels from the model: use ours, and say so.
            filled = []
            if "stopLoss" not in metadata:
                metadata["stopLoss"] = chosen.stop_loss
                filled.append("stopLoss")
            if "takeProfit" not in metadata and chosen.take_profits:
                metadata["takeProfit"] = chosen.take_profits[0]
                filled.append("takeProfit")
            if filled:
                metadata["filledFromKeyLevels"] = filled
        return AnalysisResult(
            decision=decision,
            reasoning=output.reasoning,
            confidence=output.confidence,
            metadata=metadata,
            key_levels=chosen.to_json() if chosen is not None else {},
            model=replies[-1].model,
            prompt_tokens=sum(r.prompt_tokens for r in replies),
            completion_tokens=sum(r.completion_tokens for r in replies),
            total_tokens=sum(r.total_tokens for r in replies),
            latency_ms=(time.perf_counter() - started) * 1000,
            raw_response=replies[-1].raw,
            error=None,
            attempts=sum(r.attempts for r in replies),
        )

    def _safe_default(
        self,
        request: AnalysisRequest,
        error: str,
        started: float,
        replies: list[GeminiReply] | None = None,
        failed_attempts: int = 0,
    ) -> AnalysisResult:
        replies = replies or []
        decision = Decision.NO_TRADE if request.position is None else Decision.WATCH
        action = "no trade taken" if request.position is None else "position kept unchanged"
        return AnalysisResult(
            decision=decision,
            reasoning=f"Analysis failed; safe default applied ({action}). Reason: {error}",
            confidence=0,
            metadata={"safeDefault": True},
            key_levels={},
            model=replies[-1].model if replies else self.client.model,
            prompt_tokens=sum(r.prompt_tokens for r in replies),
            completion_tokens=sum(r.completion_tokens for r in replies),
            total_tokens=sum(r.total_tokens for r in replies),
            latency_ms=(time.perf_counter() - started) * 1000,
            raw_response=replies[-1].raw if replies else None,
            error=error,
            attempts=sum(r.attempts for r in replies) + failed_attempts,
        )

    def _log(self, request: AnalysisRequest, result: AnalysisResult, timings: _Timings, *, cached: bool) -> None:
        fields = {
            "correlation_id": request.correlation_id,
            "trader_id": str(request.trader_id),
            "signal_id": str(request.signal_id),
            "symbol": request.symbol,
            "decision": result.decision.value,
            "confidence": result.confidence,
            "cached": cached,
            "prompt_ms": round(timings.prompt_ms, 2),
            "model_ms": round(timings.model_ms, 2),
            "limiter_ms": round(timings.limiter_ms, 2),
            "parse_ms": round(timings.parse_ms, 2),
            "persist_ms": round(timings.persist_ms, 2),
            "total_ms": round(result.latency_ms, 2),
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.total_tokens,
            "attempts": result.attempts,
            "template": timings.extra.get("template"),
            "error": result.error,
        }
        bound = logger.bind(event="analysis", **fields)
        if result.error is None:
            bound.info("analysis {} {} -> {}", request.correlation_id, request.symbol, result.decision.value)
        else:
            bound.warning(
                "analysis {} {} -> safe default {}",
                request.correlation_id,
                request.symbol,
                result.decision.value,
            )
