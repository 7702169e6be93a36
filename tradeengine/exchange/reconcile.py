"""Reconciliation: make the database agree with the exchange, and say what was corrected.

Run at start (before the runtime loads its state) and periodically. Each pass:

1. **Our open orders** (``orders`` in pending/open/partially_filled): looked up on the exchange
   by client id. New fills become ``trades`` rows and change the position (entries grow or open
   it, exits shrink or close it, with P&L); status, filled quantity, fee and exchange id are
   stored. A pending order the exchange never saw is marked ``failed``; when a protective order
   is missing that way, ``position_unprotected`` is recorded. When a position closes, its other
   protective orders are cancelled on the exchange.
2. **Orders on the exchange we have no row for**: recorded (never silently adopted or cancelled).
3. **Trades since the last one seen** (cursor kept in a ``reconcile_cursor`` machine event):
   trades of orders that are not ours (manual trading on the account) are recorded.
4. **Balances**: if the exchange holds less of a base asset than our open long positions say,
   ``reconcile_balance_mismatch`` is recorded.

Every correction is one ``machine_events`` row (kind ``reconcile_*``) with a JSON payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from loguru import logger

from tradeengine.clock import Clock, LiveClock
from tradeengine.domain.decisions import PositionBook, quantize_price
from tradeengine.domain.enums import (
    OPEN_ORDER_STATUSES,
    CloseReason,
    OrderPurpose,
    OrderStatus,
    PositionSide,
    PositionStatus,
    SignalStatus,
    TradeSide,
    TradeStatus,
    TradeType,
)
from tradeengine.exchange.broker import BrokerError, Fill, OrderState
from tradeengine.exchange.ccxt_broker import CcxtBroker, parse_protective_client_order_id
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import Order, Position, Trade
from tradeengine.store.uow import UnitOfWork

ZERO = Decimal(0)
_GROWING = {OrderPurpose.ENTRY.value, OrderPurpose.SCALE_IN.value}
_CLOSE_REASON = {
    OrderPurpose.STOP_LOSS.value: CloseReason.STOP_LOSS,
    OrderPurpose.TAKE_PROFIT.value: CloseReason.TAKE_PROFIT,
    OrderPurpose.TRAILING_STOP.value: CloseReason.TRAILING_STOP,
    OrderPurpose.MANUAL.value: CloseReason.MANUAL,
    OrderPurpose.FLIP.value: CloseReason.FLIP,
}


@dataclass
class ReconcileReport:
    orders_checked: int = 0
    orders_corrected: int = 0
    fills_applied: int = 0
    positions_opened: int = 0
    positions_closed: int = 0
    unknown_orders: int = 0
    foreign_trades: int = 0
    balance_mismatches: int = 0
    events: list[str] = field(default_factory=list)

    @property
    def corrected(self) -> bool:
        return bool(self.events)


class Reconciler:
    """Reconciles one user's live account. ``leave_runtime_pending``: skip pending ``te-`` orders
    the tenant runtime resumes itself on its first price (so the two never apply one fill twice)."""

    def __init__(
        self,
        broker: CcxtBroker,
        session_factory: SessionFactory,
        user_id: uuid.UUID,
        *,
        clock: Clock | None = None,
        symbols: Iterable[str] = (),
        leave_runtime_pending: bool = False,
        on_change: Callable[[ReconcileReport], Awaitable[None]] | None = None,
    ) -> None:
        self.broker = broker
        self.factory = session_factory
        self.user_id = user_id
        self.clock = clock or LiveClock()
        self.symbols = set(symbols)
        self.leave_runtime_pending = leave_runtime_pending
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ scheduling

    def start(self, interval_s: float = 60.0) -> None:
        async def loop() -> None:
            while True:
                await self.clock.sleep(interval_s)
                try:
                    await self.run_once()
                except Exception:
                    logger.exception("reconciliation failed; retrying next interval")

        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(loop(), name="reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ------------------------------------------------------------------ one pass

    async def run_once(self) -> ReconcileReport:
        async with self._lock:
            report = ReconcileReport()
            symbols = set(self.symbols)
            async with UnitOfWork(self.factory) as uow:
                local = [o for o in await uow.orders.open_orders(self.user_id) if o.trade_type == TradeType.REAL.value]
                positions = [
                    p for p in await uow.positions.open_for_user(self.user_id) if p.trade_type == TradeType.REAL.value
                ]
                uow.session.expunge_all()
            symbols.update(o.symbol for o in local)
            symbols.update(p.symbol for p in positions)
            for row in local:
                await self._order(row, report)
            known = await self._known_client_ids()
            await self._unknown_open_orders(known, report)
            for symbol in sorted(symbols):
                await self._trades(symbol, report)
            await self._balances(report)
            if report.corrected:
                logger.info("reconciliation corrected local state: {}", report.events)
                if self.on_change is not None:
                    await self.on_change(report)
            return report

    async def _known_client_ids(self) -> set[str]:
        async with UnitOfWork(self.factory) as uow:
            from sqlalchemy import select

            stmt = select(Order.client_order_id).where(Order.user_id == self.user_id)
            return set((await uow.session.execute(stmt)).scalars().all())

    async def _order(self, row: Order, report: ReconcileReport) -> None:
        from tradeengine.runtime.state import parse_client_order_id

        report.orders_checked += 1
        if (
            self.leave_runtime_pending
            and row.status == OrderStatus.PENDING.value
            and parse_client_order_id(row.client_order_id) is not None
        ):
            return
        try:
            remote = await self.broker.fetch_order(row.client_order_id, row.symbol)
        except BrokerError as exc:
            logger.warning("reconcile: {} not checked: {}", row.client_order_id, exc)
            return
        if remote is None:
            await self._missing(row, report)
            return
        await self._apply(row, remote, report)

    async def _missing(self, row: Order, report: ReconcileReport) -> None:
        never_sent = row.status == OrderStatus.PENDING.value
        status = OrderStatus.FAILED if never_sent else OrderStatus.EXPIRED
        message = (
            "never reached the exchange (recorded, then the process stopped before or while sending)"
            if never_sent
            else "no longer known to the exchange"
        )
        async with UnitOfWork(self.factory) as uow:
            fresh = await uow.orders.get(row.id)
            if fresh is None or fresh.status not in {s.value for s in OPEN_ORDER_STATUSES}:
                return
            fresh.status = status.value
            fresh.error_message = message
            fresh.updated_at = self.clock.now()
            self._event(
                uow,
                report,
                "reconcile_order_not_found",
                f"order {row.client_order_id} {message}: marked {status.value}",
                {"clientOrderId": row.client_order_id, "status": status.value},
            )
            if row.position_id is not None and parse_protective_client_order_id(row.client_order_id):
                self._event(
                    uow,
                    report,
                    "position_unprotected",
                    f"{row.purpose} order {row.client_order_id} of position {row.position_id} is not on "
                    "the exchange; the position monitor enforces the level",
                    {"positionId": str(row.position_id), "purpose": row.purpose},
                )
            await uow.commit()
        report.orders_corrected += 1

    async def _apply(self, row: Order, remote: OrderState, report: ReconcileReport) -> None:
        new_fills = _new_fills(remote.fills, row.filled_quantity)
        changed = (
            remote.status.value != row.status
            or remote.filled_quantity != row.filled_quantity
            or (remote.exchange_order_id is not None and row.exchange_order_id != remote.exchange_order_id)
        )
        if not changed and not new_fills:
            return
        closed_position: uuid.UUID | None = None
        async with UnitOfWork(self.factory) as uow:
            fresh = await uow.orders.get(row.id)
            if fresh is None:
                return
            if fresh.filled_quantity != row.filled_quantity:
                return  # someone else (the runtime) applied fills meanwhile; next pass re-checks
            if fresh.status == remote.status.value and not new_fills:
                return  # already corrected earlier in this pass (e.g. a cancelled sibling)
            now = self.clock.now()
            fresh.status = remote.status.value
            fresh.filled_quantity = remote.filled_quantity
            fresh.average_price = quantize_price(remote.average_price) if remote.average_price else None
            if remote.fills:
                fresh.fee = remote.fee
                fresh.fee_asset = remote.fills[0].fee_asset
            fresh.exchange_order_id = remote.exchange_order_id or fresh.exchange_order_id
            fresh.updated_at = now
            payload: dict[str, Any] = {
                "clientOrderId": row.client_order_id,
                "from": row.status,
                "to": remote.status.value,
                "filled": str(remote.filled_quantity),
                "newFills": [f.trade_id for f in new_fills],
            }
            if new_fills:
                closed_position = await self._apply_fills(uow, fresh, new_fills, remote, report, payload)
            self._event(
                uow,
                report,
                "reconcile_order",
                f"order {row.client_order_id}: {row.status} -> {remote.status.value}"
                + (f", {len(new_fills)} fill(s) applied" if new_fills else ""),
                payload,
            )
            await uow.commit()
        report.orders_corrected += 1
        report.fills_applied += len(new_fills)
        if closed_position is not None:
            await self._cancel_siblings(closed_position, row.client_order_id, report)

    async def _apply_fills(
        self,
        uow: UnitOfWork,
        order: Order,
        fills: list[Fill],
        remote: OrderState,
        report: ReconcileReport,
        payload: dict[str, Any],
    ) -> uuid.UUID | None:
        """Turn fills into trades and a position change; return the position id if it closed."""
        now = self.clock.now()
        side = TradeSide(order.side)
        position: Position | None = None
        if order.position_id is not None:
            position = await uow.positions.get(order.position_id)
        if position is None and order.purpose in _GROWING and order.signal_id and order.trader_id:
            entry = fills[0].price
            position = uow.positions.add(
                Position(
                    signal_id=order.signal_id,
                    user_id=self.user_id,
                    trader_id=order.trader_id,
                    symbol=order.symbol,
                    side=(PositionSide.LONG if side is TradeSide.BUY else PositionSide.SHORT).value,
                    trade_type=TradeType.REAL.value,
                    entry_price=entry,
                    size=ZERO,
                    highest_price=entry,
                    lowest_price=entry,
                    status=PositionStatus.OPEN.value,
                    opened_at=fills[0].timestamp,
                    updated_at=now,
                )
            )
            await uow.flush()
            order.position_id = position.id
            report.positions_opened += 1
            payload["positionOpened"] = str(position.id)
            signal = await uow.signals.get(order.signal_id)
            if signal is not None and signal.status != SignalStatus.CLOSED.value:
                signal.status = SignalStatus.POSITION_OPEN.value
        if position is None:
            payload["unapplied"] = "no position to apply the fills to"
            return None
        book = await _book(uow, position)
        for fill in fills:
            uow.trades.add(
                Trade(
                    position_id=position.id,
                    user_id=self.user_id,
                    order_id=order.id,
                    type=TradeType.REAL.value,
                    side=side.value,
                    symbol=order.symbol,
                    price=fill.price,
                    quantity=fill.quantity,
                    fee=fill.fee,
                    fee_asset=fill.fee_asset,
                    status=TradeStatus.FILLED.value,
                    exchange_order_id=remote.exchange_order_id,
                    executed_at=fill.timestamp,
                )
            )
            book.add_fill(side, fill.price, fill.quantity, fill.fee)
        position.size = max(book.size, ZERO)
        position.fees = book.fees
        if order.purpose in _GROWING:
            position.entry_price = book.average_entry
        position.updated_at = now
        if book.size > ZERO or position.status != PositionStatus.OPEN.value:
            return None
        pnl, pnl_percent = book.close_result()
        reason = _CLOSE_REASON.get(order.purpose, CloseReason.AI_CLOSE)
        position.status = PositionStatus.CLOSED.value
        position.exit_price = book.average_exit
        position.pnl = pnl
        position.pnl_percent = pnl_percent
        position.closed_at = fills[-1].timestamp
        position.close_reason = reason.value
        signal = await uow.signals.get(position.signal_id)
        if signal is not None and signal.status != SignalStatus.CLOSED.value:
            signal.status = SignalStatus.CLOSED.value
            signal.closed_at = fills[-1].timestamp
            signal.close_reason = reason.value
            signal.current_price = book.average_exit
            signal.updated_at = now
        report.positions_closed += 1
        payload["positionClosed"] = {"positionId": str(position.id), "reason": reason.value, "pnl": str(pnl)}
        return position.id

    async def _cancel_siblings(self, position_id: uuid.UUID, filled_client_id: str, report: ReconcileReport) -> None:
        """The position is flat: its remaining protective orders must not fire on a later move."""
        async with UnitOfWork(self.factory) as uow:
            rows = [
                o
                for o in await uow.orders.for_position(position_id)
                if o.status in {s.value for s in OPEN_ORDER_STATUSES} and o.client_order_id != filled_client_id
            ]
            uow.session.expunge_all()
        for row in rows:
            try:
                state = await self.broker.cancel_order(row.client_order_id, row.symbol)
            except BrokerError as exc:
                logger.warning("reconcile: could not cancel {}: {}", row.client_order_id, exc)
                continue
            async with UnitOfWork(self.factory) as uow:
                fresh = await uow.orders.get(row.id)
                if fresh is not None:
                    fresh.status = state.status.value
                    fresh.updated_at = self.clock.now()
                self._event(
                    uow,
                    report,
                    "reconcile_cancelled_sibling",
                    f"position {position_id} is closed: cancelled {row.purpose} order {row.client_order_id}",
                    {"positionId": str(position_id), "clientOrderId": row.client_order_id},
                )
                await uow.commit()

    async def _unknown_open_orders(self, known: set[str], report: ReconcileReport) -> None:
        try:
            remote = await self.broker.open_orders()
        except BrokerError as exc:
            logger.warning("reconcile: open orders unavailable: {}", exc)
            return
        unknown = [o for o in remote if o.client_order_id not in known]
        if not unknown:
            return
        async with UnitOfWork(self.factory) as uow:
            for state in unknown:
                report.unknown_orders += 1
                self._event(
                    uow,
                    report,
                    "reconcile_unknown_order",
                    f"open order {state.client_order_id} on {state.symbol} is not ours; left untouched",
                    {
                        "clientOrderId": state.client_order_id,
                        "symbol": state.symbol,
                        "side": state.side.value,
                        "quantity": str(state.quantity),
                    },
                )
            await uow.commit()

    async def _trades(self, symbol: str, report: ReconcileReport) -> None:
        cursor = await self._cursor()
        start = cursor.get(symbol)
        try:
            rows = await self.broker.trades_since(symbol, int(start) + 1 if start is not None else None)
        except BrokerError as exc:
            logger.warning("reconcile: trades of {} unavailable: {}", symbol, exc)
            return
        if not rows:
            return
        async with UnitOfWork(self.factory) as uow:
            from sqlalchemy import select

            stmt = select(Order.exchange_order_id).where(
                Order.user_id == self.user_id, Order.exchange_order_id.is_not(None)
            )
            ours = set((await uow.session.execute(stmt)).scalars().all())
            last: int | None = int(start) if start is not None else None
            for trade in rows:
                trade_id = int(trade["id"])
                last = max(trade_id, last) if last is not None else trade_id
                if str(trade.get("order")) in ours:
                    continue
                report.foreign_trades += 1
                self._event(
                    uow,
                    report,
                    "reconcile_foreign_trade",
                    f"trade {trade_id} on {symbol} belongs to no order of ours (manual trading?)",
                    {
                        "tradeId": trade_id,
                        "orderId": trade.get("order"),
                        "side": trade.get("side"),
                        "amount": str(trade.get("amount")),
                        "price": str(trade.get("price")),
                    },
                )
            cursor[symbol] = str(last)
            # The cursor is bookkeeping, not a correction: stored, but not counted in the report.
            uow.events.record(
                self.user_id,
                "reconcile_cursor",
                message="last trade seen per symbol",
                payload=cursor,
                at=self.clock.now(),
            )
            await uow.commit()

    async def _cursor(self) -> dict[str, str]:
        async with UnitOfWork(self.factory) as uow:
            from sqlalchemy import select

            from tradeengine.store.models import MachineEvent

            stmt = (
                select(MachineEvent)
                .where(MachineEvent.user_id == self.user_id, MachineEvent.kind == "reconcile_cursor")
                .order_by(MachineEvent.created_at.desc(), MachineEvent.id.desc())
                .limit(1)
            )
            event = (await uow.session.execute(stmt)).scalar_one_or_none()
            return {str(k): str(v) for k, v in (event.payload or {}).items()} if event is not None else {}

    async def _balances(self, report: ReconcileReport) -> None:
        try:
            totals = await self.broker.total_balances()
        except BrokerError as exc:
            logger.warning("reconcile: balances unavailable: {}", exc)
            return
        async with UnitOfWork(self.factory) as uow:
            positions = [
                p
                for p in await uow.positions.open_for_user(self.user_id)
                if p.trade_type == TradeType.REAL.value and p.side == PositionSide.LONG.value
            ]
            held: dict[str, Decimal] = {}
            for p in positions:
                base = p.symbol.split("/")[0]
                held[base] = held.get(base, ZERO) + p.size
            for asset, amount in held.items():
                have = totals.get(asset, ZERO)
                if have < amount:
                    report.balance_mismatches += 1
                    self._event(
                        uow,
                        report,
                        "reconcile_balance_mismatch",
                        f"exchange holds {have} {asset} but open positions need {amount}",
                        {"asset": asset, "exchange": str(have), "positions": str(amount)},
                    )
            await uow.commit()

    def _event(
        self, uow: UnitOfWork, report: ReconcileReport, kind: str, message: str, payload: dict[str, Any]
    ) -> None:
        report.events.append(kind)
        uow.events.record(self.user_id, kind, message=message[:1000], payload=payload, at=self.clock.now())


def _new_fills(fills: Iterable[Fill], already: Decimal) -> list[Fill]:
    """The fills beyond the ``already`` recorded quantity (fills in execution order)."""
    ordered = sorted(fills, key=lambda f: (f.timestamp, int(f.trade_id) if f.trade_id.isdigit() else 0))
    seen = ZERO
    fresh: list[Fill] = []
    for fill in ordered:
        if seen >= already:
            fresh.append(fill)
        seen += fill.quantity
    return fresh


async def _book(uow: UnitOfWork, position: Position) -> PositionBook:
    """The position's book from its filled trades (or from the row when it has none)."""
    side = PositionSide(position.side)
    book = PositionBook(side)
    for trade in await uow.trades.for_position(position.id):
        if trade.status == TradeStatus.FILLED.value:
            book.add_fill(TradeSide(trade.side), trade.price, trade.quantity, trade.fee)
    if book.entry_quantity == ZERO and position.size > ZERO:
        book = PositionBook(
            side,
            size=position.size,
            entry_notional=position.entry_price * position.size,
            entry_quantity=position.size,
            fees=position.fees,
        )
    return book
