"""The decision executor: applies the analyst's eleven decisions and the monitor's closes.

Durability protocol for every order (see docs/runtime.md):

1. Commit the intent: the ``analysis_history`` row (for a decision) together with an ``orders``
   row in status ``pending`` whose ``client_order_id`` is derived from our own ids.
2. Place the order with the broker (idempotent per client id; transient errors are retried with
   the same id).
3. Commit the result in one batch: order status, ``trades`` rows, the position change, the signal
   status and the paper balance. Only then is the in-memory state changed.

A crash between 1 and 3 leaves a ``pending`` order that recovery completes (``resume_order``):
it asks the broker for that client id and either applies the fill it finds or places the very
same request again. A decision is therefore applied once, never twice, and never lost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from loguru import logger

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult
from tradeengine.clock import Clock
from tradeengine.domain.decisions import (
    HUNDRED,
    ZERO,
    DecisionError,
    DecisionMetadata,
    PositionBook,
    entry_side,
    exit_side,
    opposite,
    quantize_price,
    quantize_quantity,
    validate_protective_levels,
)
from tradeengine.domain.enums import (
    CloseReason,
    Decision,
    OrderPurpose,
    OrderStatus,
    OrderType,
    PositionSide,
    PositionStatus,
    SignalStatus,
    TradeSide,
    TradeStatus,
    TradeType,
)
from tradeengine.exchange.broker import Broker, OrderRejected, OrderRequest, OrderState, TransientBrokerError
from tradeengine.runtime.journal import DurableWriter
from tradeengine.runtime.metrics import RuntimeCounters
from tradeengine.runtime.state import (
    LivePosition,
    LiveSignal,
    TenantState,
    TraderRuntime,
    client_order_id,
)
from tradeengine.store.batch import WriteBatch

CLOSING_STEPS = frozenset(
    {
        "close",
        "partial_close",
        "scale_out",
        "flip_close",
        "stop_loss",
        "take_profit",
        "trailing_stop",
        "manual",
    }
)
STEP_PURPOSE: dict[str, OrderPurpose] = {
    "open": OrderPurpose.ENTRY,
    "close": OrderPurpose.EXIT,
    "partial_close": OrderPurpose.PARTIAL_CLOSE,
    "scale_in": OrderPurpose.SCALE_IN,
    "scale_out": OrderPurpose.SCALE_OUT,
    "flip_close": OrderPurpose.FLIP,
    "flip_open": OrderPurpose.ENTRY,
    "stop_loss": OrderPurpose.STOP_LOSS,
    "take_profit": OrderPurpose.TAKE_PROFIT,
    "trailing_stop": OrderPurpose.TRAILING_STOP,
    "manual": OrderPurpose.MANUAL,
}
STEP_CLOSE_REASON: dict[str, CloseReason] = {
    "close": CloseReason.AI_CLOSE,
    "partial_close": CloseReason.AI_CLOSE,
    "scale_out": CloseReason.AI_CLOSE,
    "flip_close": CloseReason.FLIP,
    "stop_loss": CloseReason.STOP_LOSS,
    "take_profit": CloseReason.TAKE_PROFIT,
    "trailing_stop": CloseReason.TRAILING_STOP,
    "manual": CloseReason.MANUAL,
}


class PriceBook:
    """Last trade price per symbol: a float for the hot path, Decimal on demand."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.last_ms: dict[str, int] = {}
        self._exact: dict[str, Decimal] = {}

    def set_float(self, symbol: str, price: float, at_ms: int) -> None:
        self.last[symbol] = price
        self.last_ms[symbol] = at_ms
        self._exact.pop(symbol, None)

    def set_exact(self, symbol: str, price: Decimal, at_ms: int) -> None:
        self.last[symbol] = float(price)
        self.last_ms[symbol] = at_ms
        self._exact[symbol] = price

    def decimal(self, symbol: str) -> Decimal | None:
        exact = self._exact.get(symbol)
        if exact is None:
            value = self.last.get(symbol)
            if value is None:
                return None
            exact = self._exact[symbol] = Decimal(repr(value))
        return exact


@dataclass(slots=True)
class StepContext:
    """What an order step needs to turn a fill into database changes."""

    step: str
    owner_id: uuid.UUID  # analysis id (decisions) or position id (monitor)
    trader: TraderRuntime
    signal: LiveSignal
    analysis_id: uuid.UUID | None = None
    position: LivePosition | None = None
    side: PositionSide | None = None  # opens: the new position's side
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    follow_up: StepContext | None = None  # flip: the open that follows the close
    follow_up_size_pct: Decimal | None = None
    outcome: dict[str, Any] = field(default_factory=dict)


_PLAIN = frozenset({str, int, float, bool, type(None)})  # JSON-safe as they are


def jsonable(value: Any) -> Any:
    """Metadata for a JSON column: Decimals as strings (exact), everything else as is."""
    # Exact built-in types first (what market data is made of), leaves without a call: same
    # results as the general checks below, without an isinstance against the Mapping ABC each.
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict:
        return {str(k): v if type(v) in _PLAIN else jsonable(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _PLAIN else jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


class Executor:
    """Turns decisions into orders, positions and signal transitions, durably and once."""

    def __init__(
        self,
        *,
        state: TenantState,
        writer: DurableWriter,
        broker: Broker,
        clock: Clock,
        user_id: uuid.UUID,
        prices: PriceBook,
        counters: RuntimeCounters,
        trade_type: TradeType = TradeType.PAPER,
        quote_asset: str = "USDT",
        persist_paper_balance: bool = True,
        broker_retries: int = 3,
    ) -> None:
        self.state = state
        self.writer = writer
        self.broker = broker
        self.clock = clock
        self.user_id = user_id
        self.prices = prices
        self.counters = counters
        self.trade_type = trade_type
        self.quote_asset = quote_asset
        self.persist_paper_balance = persist_paper_balance
        self.broker_retries = broker_retries
        # One state change at a time: decisions and monitor closes for the same position must
        # not interleave at their awaits.
        self.lock = asyncio.Lock()

    # ------------------------------------------------------------------ decisions

    async def apply_analysis(self, signal_id: uuid.UUID, request: AnalysisRequest, result: AnalysisResult) -> uuid.UUID:
        """Record ``result`` in analysis_history and apply it; return the analysis id. Never raises
        for a decision that cannot apply: the reason is stored in the row's metadata."""
        async with self.lock:
            return await self._apply_analysis(signal_id, request, result)

    async def _apply_analysis(
        self, signal_id: uuid.UUID, request: AnalysisRequest, result: AnalysisResult
    ) -> uuid.UUID:
        now = self.clock.now()
        analysis_id = uuid.uuid4()
        decision = Decision(result.decision)
        self.counters.decisions += 1
        signal = self.state.signals.get(signal_id)
        trader = self.state.traders.get(request.trader_id)
        batch = WriteBatch(f"analysis:{decision.value}")
        meta: dict[str, Any] = dict(jsonable(result.metadata))
        if result.key_levels:
            meta["keyLevels"] = jsonable(result.key_levels)
        if request.is_reanalysis:
            meta["reanalysis"] = True
        analysis_row: dict[str, Any] = {
            "id": analysis_id,
            "signal_id": signal_id,
            "trader_id": request.trader_id,
            "user_id": self.user_id,
            "timestamp": now,
            "decision": decision.value,
            "reasoning": result.reasoning or "(no reasoning given)",
            "confidence": max(0, min(100, int(result.confidence))),
            "market_data": _market_snapshot(request.market_data),
            "model_name": result.model,
            "tokens_used": result.total_tokens or None,
            "latency_ms": round(result.latency_ms) if result.latency_ms else None,
        }

        def reject(reason: str) -> None:
            self.counters.decisions_rejected += 1
            meta["execution"] = {"status": "rejected", "reason": reason}
            logger.info("decision {} for signal {} not applied: {}", decision.value, signal_id, reason)

        if signal is None or trader is None:
            reject("signal is no longer active" if signal is None else "trader is not active")
            batch.insert("analysis_history", **analysis_row, metadata=meta)
            await self.writer.write(batch)
            return analysis_id

        position = self.state.position_for_signal(signal.id)
        parsed: DecisionMetadata | None = None
        rejected = False
        try:
            try:
                parsed = DecisionMetadata.parse(result.metadata)
            except DecisionError:
                if decision not in (Decision.NO_TRADE, Decision.WATCH):
                    raise
                parsed = DecisionMetadata()  # these two need no metadata; junk in it is harmless
            ctx = self._plan(decision, analysis_id, trader, signal, position, parsed, batch, now)
        except DecisionError as exc:
            reject(str(exc))
            rejected = True
            ctx = None
            if signal.status is SignalStatus.NEW and position is None:
                # Analysed but not actionable: keep it for re-analysis instead of blocking forever.
                batch.update("signals", signal.id, status=SignalStatus.WATCHING.value, updated_at=now)
                signal.status = SignalStatus.WATCHING
        if ctx is None:
            meta.setdefault("execution", {"status": "applied"})
            batch.operations.insert(0, _insert_op("analysis_history", {**analysis_row, "metadata": meta}))
            await self.writer.write(batch)
            if not rejected:
                self._apply_simple(decision, signal, position, parsed)
            return analysis_id
        meta["execution"] = {"status": "pending", "step": ctx.step}
        if ctx.follow_up is not None:
            # The open half of a flip is part of the first committed intent: recovery finishes it
            # from this plan whatever point of the flip a crash interrupts.
            meta["flip"] = flip_plan(ctx.follow_up)
        batch.operations.insert(0, _insert_op("analysis_history", {**analysis_row, "metadata": meta}))
        await self._run_step(ctx, batch, meta=meta)
        return analysis_id

    def _plan(
        self,
        decision: Decision,
        analysis_id: uuid.UUID,
        trader: TraderRuntime,
        signal: LiveSignal,
        position: LivePosition | None,
        md: DecisionMetadata,
        batch: WriteBatch,
        now: datetime,
    ) -> StepContext | None:
        """Validate a decision; return the order step to run, or None after adding the simple
        (non-order) changes to ``batch``. Raises DecisionError with the reason it cannot apply."""
        symbol = signal.symbol
        if decision is Decision.NO_TRADE:
            if position is None:
                batch.update(
                    "signals",
                    signal.id,
                    status=SignalStatus.CLOSED.value,
                    closed_at=now,
                    close_reason=CloseReason.NO_TRADE.value,
                    updated_at=now,
                )
            return None
        if decision is Decision.WATCH:
            if position is None and signal.status is not SignalStatus.WATCHING:
                batch.update("signals", signal.id, status=SignalStatus.WATCHING.value, updated_at=now)
            return None
        if decision in (Decision.OPEN_LONG, Decision.OPEN_SHORT):
            if position is not None:
                raise DecisionError(f"{decision.value}: the signal already has an open {position.side.value} position")
            if self.state.open_positions_of(trader.id) >= trader.sizing.max_open_positions:
                limit = trader.sizing.max_open_positions
                raise DecisionError(
                    f"{decision.value}: trader already has {limit} open position(s) (max_open_positions)"
                )
            side = PositionSide.LONG if decision is Decision.OPEN_LONG else PositionSide.SHORT
            price = self._price(symbol)
            stop, take = md.stop_loss, md.take_profit
            default_stop, default_take = trader.sizing.default_stops(side, price)
            stop = stop if stop is not None else default_stop
            take = take if take is not None else default_take
            validate_protective_levels(side, price, stop, take)
            return StepContext(
                "open",
                analysis_id,
                trader,
                signal,
                analysis_id=analysis_id,
                side=side,
                stop_loss=stop,
                take_profit=take,
                follow_up_size_pct=md.position_size,
            )
        if position is None:
            raise DecisionError(f"{decision.value}: the signal has no open position")
        if position.closing:
            raise DecisionError(f"{decision.value}: the position is already being closed")
        if decision is Decision.CLOSE:
            return StepContext("close", analysis_id, trader, signal, analysis_id=analysis_id, position=position)
        if decision is Decision.PARTIAL_CLOSE:
            share = md.close_percentage or trader.sizing.default_close_percentage
            return StepContext(
                "partial_close",
                analysis_id,
                trader,
                signal,
                analysis_id=analysis_id,
                position=position,
                follow_up_size_pct=share,
            )
        if decision is Decision.SCALE_OUT:
            share = md.scale_out_percentage or trader.sizing.default_scale_out_percentage
            return StepContext(
                "scale_out",
                analysis_id,
                trader,
                signal,
                analysis_id=analysis_id,
                position=position,
                follow_up_size_pct=share,
            )
        if decision is Decision.SCALE_IN:
            share = md.scale_in_amount or trader.sizing.default_scale_in_amount
            return StepContext(
                "scale_in",
                analysis_id,
                trader,
                signal,
                analysis_id=analysis_id,
                position=position,
                follow_up_size_pct=share,
            )
        if decision in (Decision.UPDATE_STOP_LOSS, Decision.UPDATE_TAKE_PROFIT):
            price = self._price(symbol)
            if decision is Decision.UPDATE_STOP_LOSS:
                level = md.new_stop_loss or md.stop_loss
                if level is None:
                    raise DecisionError("update_stop_loss needs metadata newStopLoss")
                validate_protective_levels(position.side, price, level, None)
                batch.update(
                    "positions",
                    position.id,
                    stop_loss=level,
                    updated_at=now,
                    increment={"version": 1},
                    **_extreme_values(position),
                )
            else:
                level = md.new_take_profit or md.take_profit
                if level is None:
                    raise DecisionError("update_take_profit needs metadata newTakeProfit")
                validate_protective_levels(position.side, price, None, level)
                batch.update("positions", position.id, take_profit=level, updated_at=now, increment={"version": 1})
            return None
        if decision is Decision.FLIP_POSITION:
            self._price(symbol)
            follow = StepContext(
                "flip_open",
                analysis_id,
                trader,
                signal,
                analysis_id=analysis_id,
                side=opposite(position.side),
                follow_up_size_pct=md.position_size,
            )
            new_price = self._price(symbol)
            stop, take = md.stop_loss, md.take_profit
            default_stop, default_take = trader.sizing.default_stops(follow.side or position.side, new_price)
            follow.stop_loss = stop if stop is not None else default_stop
            follow.take_profit = take if take is not None else default_take
            validate_protective_levels(opposite(position.side), new_price, follow.stop_loss, follow.take_profit)
            return StepContext(
                "flip_close",
                analysis_id,
                trader,
                signal,
                analysis_id=analysis_id,
                position=position,
                follow_up=follow,
            )
        raise DecisionError(f"unknown decision {decision!r}")

    def _apply_simple(
        self,
        decision: Decision,
        signal: LiveSignal,
        position: LivePosition | None,
        md: DecisionMetadata | None,
    ) -> None:
        """Mirror a committed non-order decision in memory."""
        if decision is Decision.NO_TRADE and position is None:
            self.state.drop_signal(signal.id)
        elif decision is Decision.WATCH and position is None:
            signal.status = SignalStatus.WATCHING
        elif decision is Decision.UPDATE_STOP_LOSS and position is not None and md is not None:
            position.stop_loss = md.new_stop_loss or md.stop_loss
            position.refresh_levels()
        elif decision is Decision.UPDATE_TAKE_PROFIT and position is not None and md is not None:
            position.take_profit = md.new_take_profit or md.take_profit
            position.refresh_levels()

    def _price(self, symbol: str) -> Decimal:
        price = self.prices.decimal(symbol)
        if price is None:
            raise DecisionError(f"no price for {symbol} yet")
        return price

    # ------------------------------------------------------------------ monitor closes

    async def close_position(self, position: LivePosition, reason: str) -> None:
        """Close ``position`` at market for ``reason`` (stop_loss, take_profit, trailing_stop, manual)."""
        async with self.lock:
            if position.id not in self.state.positions or position.size <= ZERO:
                return
            trader = self.state.traders.get(position.trader_id)
            signal = self.state.signals.get(position.signal_id)
            if trader is None or signal is None:
                logger.error("position {} has no active trader/signal in memory; not closing", position.id)
                return
            position.close_attempts += 1
            ctx = StepContext(reason, position.id, trader, signal, position=position)
            await self._run_step(ctx, WriteBatch(f"monitor:{reason}"), meta=None, attempt=position.close_attempts - 1)

    async def persist_extreme(self, position: LivePosition) -> None:
        """Save the trailing high-water (low-water for shorts) mark so a restart resumes from it."""
        value = position.extreme_price
        values = _extreme_values(position)
        if not values:
            return
        batch = WriteBatch("position:extreme")
        batch.update("positions", position.id, updated_at=self.clock.now(), **values)
        await self.writer.write(batch)
        position.mark_extreme_saved(value)

    def flip_follow_up(
        self, analysis_id: uuid.UUID, trader: TraderRuntime, signal: LiveSignal, plan: Mapping[str, Any]
    ) -> StepContext:
        """The flip's opening step as recorded in the analysis metadata (``flip_plan``)."""

        def dec(key: str) -> Decimal | None:
            raw = plan.get(key)
            return Decimal(str(raw)) if raw is not None else None

        return StepContext(
            "flip_open",
            analysis_id,
            trader,
            signal,
            analysis_id=analysis_id,
            side=PositionSide(plan["side"]),
            stop_loss=dec("stopLoss"),
            take_profit=dec("takeProfit"),
            follow_up_size_pct=dec("positionSize"),
        )

    async def resume_flip_open(
        self, analysis_id: uuid.UUID, trader: TraderRuntime, signal: LiveSignal, meta: dict[str, Any]
    ) -> None:
        """Recovery: the flip's close committed but its open intent did not; run the open now
        (same client id as the lost attempt, so the broker cannot fill it twice)."""
        async with self.lock:
            if self.state.position_for_signal(signal.id) is not None:
                return
            follow = self.flip_follow_up(analysis_id, trader, signal, meta["flip"])
            await self._run_step(follow, WriteBatch("flip:open:resume"), meta=meta)

    # ------------------------------------------------------------------ order steps

    async def _run_step(
        self, ctx: StepContext, batch: WriteBatch, *, meta: dict[str, Any] | None, attempt: int = 0
    ) -> None:
        """Commit the order intent (with whatever ``batch`` already holds), place it, commit the result."""
        symbol = ctx.signal.symbol
        try:
            quantity, side = await self._step_order(ctx)
        except DecisionError as exc:
            # Sizing failed after the intent was planned (e.g. balance): record, don't trade.
            self.counters.decisions_rejected += 1
            if meta is not None:
                meta["execution"] = {"status": "rejected", "reason": str(exc), "step": ctx.step}
                _set_insert_meta(batch, meta)
            if ctx.signal.status is SignalStatus.NEW and ctx.position is None:
                batch.update("signals", ctx.signal.id, status=SignalStatus.WATCHING.value, updated_at=self.clock.now())
            await self.writer.write(batch)
            if ctx.signal.status is SignalStatus.NEW and ctx.position is None:
                ctx.signal.status = SignalStatus.WATCHING
            logger.info("{} for {} not executed: {}", ctx.step, symbol, exc)
            return
        now = self.clock.now()
        order_id = uuid.uuid4()
        coid = client_order_id(ctx.owner_id, ctx.step, attempt)
        batch.insert(
            "orders",
            id=order_id,
            client_order_id=coid,
            user_id=self.user_id,
            trader_id=ctx.trader.id,
            position_id=ctx.position.id if ctx.position is not None else None,
            signal_id=ctx.signal.id,
            symbol=symbol,
            side=side.value,
            type=OrderType.MARKET.value,
            purpose=STEP_PURPOSE[ctx.step].value,
            status=OrderStatus.PENDING.value,
            trade_type=self.trade_type.value,
            quantity=quantity,
            filled_quantity=ZERO,
            created_at=now,
            updated_at=now,
        )
        if ctx.position is not None and ctx.step in CLOSING_STEPS:
            ctx.position.closing = ctx.step not in ("partial_close", "scale_out")
        await self.writer.write(batch)
        request = OrderRequest(
            client_order_id=coid,
            symbol=symbol,
            side=side,
            type=OrderType.MARKET,
            quantity=quantity,
            purpose=STEP_PURPOSE[ctx.step],
            reduce_only=ctx.step in CLOSING_STEPS,
        )
        state = await self._place(request)
        await self.complete(ctx, order_id, request, state, meta=meta)

    async def _step_order(self, ctx: StepContext) -> tuple[Decimal, TradeSide]:
        """Quantity and side of the order a step sends."""
        position = ctx.position
        if ctx.step in ("open", "flip_open"):
            assert ctx.side is not None
            price = self._price(ctx.signal.symbol)
            free = (await self.broker.balances()).get(self.quote_asset, ZERO)
            quantity = ctx.trader.sizing.entry_quantity(free_quote=free, price=price, requested=ctx.follow_up_size_pct)
            return quantity, entry_side(ctx.side)
        assert position is not None
        if ctx.step == "scale_in":
            share = ctx.follow_up_size_pct or ctx.trader.sizing.default_scale_in_amount
            quantity = quantize_quantity(position.size * share)
            price = self._price(ctx.signal.symbol)
            if quantity * price < ctx.trader.sizing.min_notional:
                raise DecisionError(
                    f"scale_in of {quantity} is below the minimum order {ctx.trader.sizing.min_notional}"
                )
            return quantity, entry_side(position.side)
        if ctx.step in ("partial_close", "scale_out"):
            share = ctx.follow_up_size_pct or ctx.trader.sizing.default_close_percentage
            quantity = quantize_quantity(position.size * share)
            if quantity <= ZERO:
                raise DecisionError(f"{ctx.step}: {share} of {position.size} rounds to nothing")
            if quantity >= position.size:
                quantity = position.size
            return quantity, exit_side(position.side)
        return position.size, exit_side(position.side)

    async def _place(self, request: OrderRequest) -> OrderState:
        """Send ``request``; retry transient errors with the same client id; rejections become a
        ``rejected`` state (never an exception)."""
        price = self.prices.decimal(request.symbol)
        if price is not None:
            await self.broker.on_price(request.symbol, price, self.clock.now())
        error = "not sent"
        for attempt in range(self.broker_retries):
            try:
                state = await self.broker.place_order(request)
                self.counters.orders_placed += 1
                return state
            except OrderRejected as exc:
                error = str(exc)
                break
            except TransientBrokerError as exc:
                error = f"transient: {exc}"
                # The order may have reached the exchange: ask before sending it again.
                found = await self._safe_fetch(request)
                if found is not None:
                    return found
                await self.clock.sleep(0.5 * 2**attempt)
        self.counters.orders_failed += 1
        status = OrderStatus.REJECTED if not error.startswith("transient") else OrderStatus.PENDING
        return OrderState(
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            status=status,
            quantity=request.quantity,
            error_message=error[:500],
        )

    async def _safe_fetch(self, request: OrderRequest) -> OrderState | None:
        try:
            return await self.broker.fetch_order(request.client_order_id, request.symbol)
        except Exception:
            return None

    async def complete(
        self,
        ctx: StepContext,
        order_id: uuid.UUID,
        request: OrderRequest,
        state: OrderState,
        *,
        meta: dict[str, Any] | None,
    ) -> None:
        """Commit what the broker reported for one step and mirror it in memory."""
        now = self.clock.now()
        batch = WriteBatch(f"fill:{ctx.step}")
        filled = state.filled_quantity
        if state.status is OrderStatus.PENDING:
            # Still unknown (broker unreachable): leave the intent pending for recovery to finish.
            logger.warning("order {} left pending: {}", request.client_order_id, state.error_message)
            if ctx.position is not None:
                ctx.position.closing = False
            return
        order_values: dict[str, Any] = {
            "status": state.status.value,
            "filled_quantity": filled,
            "average_price": quantize_price(state.average_price) if state.average_price is not None else None,
            "fee": state.fee if state.fills else None,
            "fee_asset": state.fills[0].fee_asset if state.fills else None,
            "exchange_order_id": state.exchange_order_id,
            "error_message": state.error_message,
            "updated_at": now,
        }
        if state.quantity > ZERO:
            order_values["quantity"] = state.quantity  # what the broker took (lot-rounded), not the request
        position = ctx.position
        new_position: LivePosition | None = None
        closed = False
        if filled <= ZERO:
            # Rejected or expired unfilled: the seed stores a failed trade against the position.
            if meta is not None:
                meta["execution"] = {"status": "failed", "step": ctx.step, "reason": state.error_message}
            if position is not None:
                batch.insert(
                    "trades",
                    id=uuid.uuid4(),
                    position_id=position.id,
                    user_id=self.user_id,
                    order_id=order_id,
                    type=self.trade_type.value,
                    side=request.side.value,
                    symbol=request.symbol,
                    price=self._price(request.symbol),
                    quantity=request.quantity,
                    fee=ZERO,
                    status=TradeStatus.FAILED.value,
                    error_message=state.error_message,
                    executed_at=now,
                )
                position.closing = False
            elif ctx.signal.status is SignalStatus.NEW:
                batch.update("signals", ctx.signal.id, status=SignalStatus.WATCHING.value, updated_at=now)
        elif ctx.step in ("open", "flip_open"):
            assert ctx.side is not None
            position_id = uuid.uuid4()
            book = PositionBook(ctx.side)
            for fill in state.fills:
                book.add_fill(request.side, fill.price, fill.quantity, fill.fee)
            entry = book.average_entry
            trailing = ctx.trader.trailing_stop_pct
            batch.insert(
                "positions",
                id=position_id,
                signal_id=ctx.signal.id,
                user_id=self.user_id,
                trader_id=ctx.trader.id,
                symbol=request.symbol,
                side=ctx.side.value,
                trade_type=self.trade_type.value,
                entry_price=entry,
                size=book.size,
                stop_loss=ctx.stop_loss,
                take_profit=ctx.take_profit,
                trailing_stop_pct=trailing * HUNDRED if trailing is not None else None,
                highest_price=entry,
                lowest_price=entry,
                status=PositionStatus.OPEN.value,
                fees=book.fees,
                opened_at=now,
                updated_at=now,
                version=1,
            )
            order_values["position_id"] = position_id
            self._insert_trades(batch, position_id, order_id, request, state)
            batch.update(
                "signals",
                ctx.signal.id,
                status=SignalStatus.POSITION_OPEN.value,
                current_price=entry,
                updated_at=now,
            )
            new_position = LivePosition(
                id=position_id,
                signal_id=ctx.signal.id,
                trader_id=ctx.trader.id,
                symbol=request.symbol,
                side=ctx.side,
                book=book,
                opened_at=now,
                stop_loss=ctx.stop_loss,
                take_profit=ctx.take_profit,
                trailing_pct=trailing,
                extreme=entry,
            )
            if meta is not None:
                meta["execution"] = {
                    "status": "applied",
                    "step": ctx.step,
                    "positionId": str(position_id),
                    "quantity": str(book.size),
                    "price": str(entry),
                }
        else:
            assert position is not None
            book = _copy_book(position.book)
            for fill in state.fills:
                book.add_fill(request.side, fill.price, fill.quantity, fill.fee)
            self._insert_trades(batch, position.id, order_id, request, state)
            values: dict[str, Any] = {"size": book.size, "fees": book.fees, "updated_at": now}
            if ctx.step == "scale_in":
                values["entry_price"] = book.average_entry
            values.update(_extreme_values(position))
            if book.size <= ZERO:
                closed = True
                pnl, pnl_percent = book.close_result()
                reason = STEP_CLOSE_REASON[ctx.step]
                values.update(
                    status=PositionStatus.CLOSED.value,
                    exit_price=book.average_exit,
                    pnl=pnl,
                    pnl_percent=pnl_percent,
                    closed_at=now,
                    close_reason=reason.value,
                )
                if ctx.follow_up is None:
                    batch.update(
                        "signals",
                        ctx.signal.id,
                        status=SignalStatus.CLOSED.value,
                        closed_at=now,
                        close_reason=reason.value,
                        current_price=book.average_exit,
                        updated_at=now,
                    )
            batch.update("positions", position.id, increment={"version": 1}, **values)
            if meta is not None:
                meta["execution"] = {
                    "status": "applied",
                    "step": ctx.step,
                    "quantity": str(filled),
                    "remaining": str(book.size),
                }
            position.book = book
        batch.update("orders", order_id, **order_values)
        if meta is not None and ctx.analysis_id is not None:
            batch.update("analysis_history", ctx.analysis_id, metadata=meta)
        if self.persist_paper_balance and filled > ZERO:
            free = (await self.broker.balances()).get(self.quote_asset)
            if free is not None:
                batch.update("users", self.user_id, paper_balance=free, updated_at=now)

        follow = ctx.follow_up if closed else None
        if follow is not None:
            # Flip: the open runs as its own step; the plan for it was committed with the first
            # intent (metadata "flip"), so recovery opens it if a crash lands in between.
            await self.writer.write(batch)
            self._mirror(ctx, position, new_position, closed)
            await self._run_step(follow, WriteBatch("flip:open"), meta=meta)
            return
        await self.writer.write(batch)
        self._mirror(ctx, position, new_position, closed)

    def _mirror(
        self, ctx: StepContext, position: LivePosition | None, new_position: LivePosition | None, closed: bool
    ) -> None:
        if new_position is not None:
            self.state.add_position(new_position)
            ctx.signal.status = SignalStatus.POSITION_OPEN
            self.counters.positions_opened += 1
        if position is not None:
            position.closing = False
            if closed:
                self.state.drop_position(position.id)
                self.counters.positions_closed += 1
                if ctx.follow_up is None:
                    self.state.drop_signal(ctx.signal.id)
        elif new_position is None and ctx.signal.status is SignalStatus.NEW:
            ctx.signal.status = SignalStatus.WATCHING

    def _insert_trades(
        self,
        batch: WriteBatch,
        position_id: uuid.UUID,
        order_id: uuid.UUID,
        request: OrderRequest,
        state: OrderState,
    ) -> None:
        for fill in state.fills:
            batch.insert(
                "trades",
                id=uuid.uuid4(),
                position_id=position_id,
                user_id=self.user_id,
                order_id=order_id,
                type=self.trade_type.value,
                side=request.side.value,
                symbol=request.symbol,
                price=fill.price,
                quantity=fill.quantity,
                fee=fill.fee,
                fee_asset=fill.fee_asset,
                status=TradeStatus.FILLED.value,
                exchange_order_id=state.exchange_order_id,
                executed_at=fill.timestamp,
            )


def flip_plan(follow: StepContext) -> dict[str, Any]:
    """What the open half of a flip needs, as JSON for the analysis metadata."""
    assert follow.side is not None
    return {
        "side": follow.side.value,
        "stopLoss": jsonable(follow.stop_loss),
        "takeProfit": jsonable(follow.take_profit),
        "positionSize": jsonable(follow.follow_up_size_pct),
    }


def _extreme_values(position: LivePosition) -> dict[str, Any]:
    """The position's trailing extreme as the column it is stored in (empty when there is none)."""
    extreme = position.extreme_price
    if not extreme:
        return {}
    column = "highest_price" if position.side is PositionSide.LONG else "lowest_price"
    return {column: quantize_price(Decimal(repr(extreme)))}


def parsed_or_none(metadata: Mapping[str, Any] | None) -> DecisionMetadata | None:
    try:
        return DecisionMetadata.parse(metadata)
    except DecisionError:
        return None


def _copy_book(book: PositionBook) -> PositionBook:
    return PositionBook(
        book.side,
        book.size,
        book.entry_notional,
        book.exit_notional,
        book.entry_quantity,
        book.exit_quantity,
        book.fees,
    )


def _insert_op(table: str, values: dict[str, Any]) -> Any:
    from tradeengine.store.batch import Insert

    return Insert(table, values)


def _set_insert_meta(batch: WriteBatch, meta: dict[str, Any]) -> None:
    from tradeengine.store.batch import Insert

    for i, op in enumerate(batch.operations):
        if isinstance(op, Insert) and op.table == "analysis_history":
            batch.operations[i] = Insert(op.table, {**op.values, "metadata": meta})


SNAPSHOT_CANDLES = 3  # candles per timeframe analysis_history keeps of the market data


def _market_snapshot(market_data: Mapping[str, Any]) -> dict[str, Any]:
    """What analysis_history keeps of the market data: ticker, indicators and the last candles
    (the full klines are rebuilt from the exchange at will; storing 100 rows per analysis is not)."""
    klines = market_data.get("klines") or {}
    return {
        "symbol": market_data.get("symbol"),
        "timestamp": market_data.get("timestamp"),
        "ticker": jsonable(market_data.get("ticker")),
        "indicators": jsonable(market_data.get("calculatedIndicators") or market_data.get("indicators")),
        "lastCandles": {tf: jsonable(rows[-SNAPSHOT_CANDLES:]) for tf, rows in klines.items()},
    }
