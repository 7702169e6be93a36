"""The ``orders`` table as the live broker's write-ahead log.

A live order is recorded (status ``pending``) and committed **before** its request leaves the
process, so a crash at any later point leaves a row that names the client id to look up on the
exchange. The runtime's executor usually records the row itself first (it knows the position and
signal); ``ensure_pending`` then finds it and adds nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from tradeengine.clock import Clock, LiveClock
from tradeengine.domain.enums import OPEN_ORDER_STATUSES, OrderPurpose, OrderStatus, TradeType
from tradeengine.exchange.broker import OrderRequest, OrderState
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import Order
from tradeengine.store.uow import UnitOfWork

_PROTECTIVE_PURPOSES = frozenset({OrderPurpose.STOP_LOSS.value, OrderPurpose.TAKE_PROFIT.value})
_UNFILLED_STATUSES = frozenset({OrderStatus.OPEN, OrderStatus.CANCELLED, OrderStatus.EXPIRED})


@dataclass(frozen=True, slots=True)
class OrderLinks:
    """What an order belongs to (all optional; protective orders name their position)."""

    position_id: uuid.UUID | None = None
    signal_id: uuid.UUID | None = None
    trader_id: uuid.UUID | None = None


class OrderLog:
    """Records live orders and machine events for one user."""

    def __init__(
        self,
        session_factory: SessionFactory,
        user_id: uuid.UUID,
        *,
        trade_type: TradeType = TradeType.REAL,
        clock: Clock | None = None,
    ) -> None:
        self.factory = session_factory
        self.user_id = user_id
        self.trade_type = trade_type
        self.clock = clock or LiveClock()

    async def ensure_pending(self, request: OrderRequest, links: OrderLinks | None = None) -> Order:
        """Return the row for ``request.client_order_id``, inserting it as ``pending`` if absent.

        Committed before returning: the caller may send the request only after this succeeded.
        """
        async with UnitOfWork(self.factory) as uow:
            row = await uow.orders.get_by_client_order_id(request.client_order_id)
            if row is None:
                links = links or OrderLinks()
                now = self.clock.now()
                row = uow.orders.add(
                    Order(
                        client_order_id=request.client_order_id,
                        user_id=self.user_id,
                        trader_id=links.trader_id,
                        position_id=links.position_id,
                        signal_id=links.signal_id,
                        symbol=request.symbol,
                        side=request.side.value,
                        type=request.type.value,
                        purpose=request.purpose.value,
                        status=OrderStatus.PENDING.value,
                        trade_type=self.trade_type.value,
                        price=request.price,
                        stop_price=request.stop_price,
                        quantity=request.quantity,
                        filled_quantity=Decimal(0),
                        created_at=now,
                        updated_at=now,
                    )
                )
                await uow.commit()
            uow.session.expunge(row)
            return row

    async def get(self, client_order_id: str) -> Order | None:
        async with UnitOfWork(self.factory) as uow:
            row = await uow.orders.get_by_client_order_id(client_order_id)
            if row is not None:
                uow.session.expunge(row)
            return row

    async def record_ack(self, state: OrderState) -> None:
        """Store the exchange's acknowledgement: its order id, and the status of an order with no
        fills (open, or cancelled/expired unfilled).

        Fills are deliberately not written here: they become ``trades`` and a position change in
        the same transaction as the order's filled quantity (the executor's ``complete`` or the
        reconciler), so a crash can never leave an order marked filled whose fill was not applied.
        """
        async with UnitOfWork(self.factory) as uow:
            row = await uow.orders.get_by_client_order_id(state.client_order_id)
            if row is None:
                return
            if state.exchange_order_id is not None:
                row.exchange_order_id = state.exchange_order_id
            if state.quantity > 0:
                row.quantity = state.quantity  # what the exchange took (lot-rounded), not what we asked
            unfilled = state.filled_quantity <= 0 and row.filled_quantity <= 0
            still_open = row.status in {s.value for s in OPEN_ORDER_STATUSES}
            if unfilled and still_open and state.status in _UNFILLED_STATUSES:
                row.status = state.status.value
                if state.error_message is not None:
                    row.error_message = state.error_message[:1000]
            row.updated_at = self.clock.now()
            await uow.commit()

    async def record_rejection(self, client_order_id: str, message: str) -> None:
        async with UnitOfWork(self.factory) as uow:
            row = await uow.orders.get_by_client_order_id(client_order_id)
            if row is None:
                return
            row.status = OrderStatus.REJECTED.value
            row.error_message = message[:1000]
            row.updated_at = self.clock.now()
            await uow.commit()

    async def open_protective(self, position_id: uuid.UUID) -> list[Order]:
        """The position's open stop-loss / take-profit orders."""
        async with UnitOfWork(self.factory) as uow:
            rows = [
                r
                for r in await uow.orders.for_position(position_id)
                if r.purpose in _PROTECTIVE_PURPOSES and r.status in {s.value for s in OPEN_ORDER_STATUSES}
            ]
            uow.session.expunge_all()
            return rows

    async def count_for_position(self, position_id: uuid.UUID, purpose: str) -> int:
        async with UnitOfWork(self.factory) as uow:
            return await uow.orders.count(position_id=position_id, purpose=purpose)

    async def event(
        self, kind: str, message: str, payload: Mapping[str, Any] | None = None, at: datetime | None = None
    ) -> None:
        async with UnitOfWork(self.factory) as uow:
            uow.events.record(
                self.user_id,
                kind,
                message=message[:1000],
                payload=dict(payload or {}),
                at=at or self.clock.now(),
            )
            await uow.commit()
