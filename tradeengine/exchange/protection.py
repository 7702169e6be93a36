"""Exchange-side protection: keep a resting stop-loss (and optionally take-profit) order on the
exchange for every open live position, at the level and size the database says.

Desired state, not events: the executor writes ``positions.stop_loss`` (on open and on
``update_stop_loss``) and ``size`` (on partial closes); ``ProtectionSync.sync_once`` places the
missing orders and moves the ones whose level or size no longer match, always through
``CcxtBroker.replace_protective`` (new before old where possible, old re-placed if the new one
fails, ``position_unprotected`` recorded otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from loguru import logger

from tradeengine.clock import Clock, LiveClock
from tradeengine.domain.enums import OPEN_ORDER_STATUSES, OrderPurpose, PositionSide, TradeSide, TradeType
from tradeengine.exchange.broker import BrokerError, OrderState
from tradeengine.exchange.ccxt_broker import CcxtBroker, parse_protective_client_order_id
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import Order, Position
from tradeengine.store.uow import UnitOfWork


@dataclass
class SyncReport:
    placed: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    unprotected: list[str] = field(default_factory=list)


class ProtectionSync:
    """Reconciles resting protective orders with the positions' levels for one user."""

    def __init__(
        self,
        broker: CcxtBroker,
        session_factory: SessionFactory,
        user_id: uuid.UUID,
        *,
        take_profits: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.broker = broker
        self.factory = session_factory
        self.user_id = user_id
        # On spot a stop and a take-profit both lock the full base amount, so an account holding
        # the position once can rest only one of them: take-profits stay with the position
        # monitor unless asked for.
        self.take_profits = take_profits
        self.clock = clock or LiveClock()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def sync_once(self) -> SyncReport:
        async with self._lock:
            report = SyncReport()
            async with UnitOfWork(self.factory) as uow:
                positions = [
                    p for p in await uow.positions.open_for_user(self.user_id) if p.trade_type == TradeType.REAL.value
                ]
                orders = {p.id: await uow.orders.for_position(p.id) for p in positions}
                uow.session.expunge_all()
            for position in positions:
                wanted = [(OrderPurpose.STOP_LOSS, position.stop_loss)]
                if self.take_profits:
                    wanted.append((OrderPurpose.TAKE_PROFIT, position.take_profit))
                for purpose, level in wanted:
                    if level is None or position.size <= 0:
                        continue
                    try:
                        await self._ensure(position, purpose, level, orders[position.id], report)
                    except BrokerError as exc:
                        logger.warning("protection of position {} not synced: {}", position.id, exc)
            return report

    async def _ensure(
        self, position: Position, purpose: OrderPurpose, level: Decimal, rows: list[Order], report: SyncReport
    ) -> None:
        active = [
            r
            for r in rows
            if r.purpose == purpose.value
            and r.status in {s.value for s in OPEN_ORDER_STATUSES}
            and parse_protective_client_order_id(r.client_order_id) is not None
        ]
        current = active[-1] if active else None
        if current is not None and current.stop_price == level and current.quantity == position.size:
            return
        side = TradeSide.SELL if position.side == PositionSide.LONG.value else TradeSide.BUY
        old: OrderState | None = None
        if current is not None:
            old = await self.broker.fetch_order(current.client_order_id, current.symbol)
        result = await self.broker.replace_protective(
            old,
            position.id,
            position.symbol,
            side,
            position.size,
            purpose,
            level,
            signal_id=position.signal_id,
            trader_id=position.trader_id,
        )
        label = f"{position.id}:{purpose.value}@{level}"
        if result.outcome == "unprotected":
            report.unprotected.append(label)
        elif current is None:
            report.placed.append(label)
        elif result.outcome == "replaced":
            report.moved.append(label)

    def start(self, interval_s: float = 5.0) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self.sync_once()
                except Exception:
                    logger.exception("protection sync failed; retrying next interval")
                await self.clock.sleep(interval_s)

        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(loop(), name="protection-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
