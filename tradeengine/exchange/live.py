"""Opening a live (or testnet) broker for a tenant: opt-in check, durable order log, reconciliation.

The tenant bootstrap calls ``open_live_broker`` instead of building a ``CcxtBroker`` directly, so
live mode cannot start for a user who has not opted in, and the database agrees with the exchange
before the runtime loads its state from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from loguru import logger

from tradeengine.clock import Clock
from tradeengine.domain.decisions import PositionBook
from tradeengine.domain.enums import PositionStatus, TradeSide, TradeStatus
from tradeengine.exchange.broker import OrderState
from tradeengine.exchange.ccxt_broker import (
    CcxtBroker,
    LiveTradingNotAllowedError,
    parse_protective_client_order_id,
    require_live_opt_in,
)
from tradeengine.exchange.order_log import OrderLog
from tradeengine.exchange.protection import ProtectionSync
from tradeengine.exchange.reconcile import Reconciler, ReconcileReport
from tradeengine.runtime.state import TenantState
from tradeengine.settings import BrokerKind, Settings
from tradeengine.store.engine import SessionFactory
from tradeengine.store.uow import UnitOfWork

ReconcileHook = Callable[[ReconcileReport], Coroutine[Any, Any, None]]
# Called (each in its own task) after a reconciliation pass of that broker corrected something;
# ``attach_runtime_state`` registers here so periodic corrections reach the runtime's memory.
_reconcile_hooks: weakref.WeakKeyDictionary[CcxtBroker, list[ReconcileHook]] = weakref.WeakKeyDictionary()
_hook_tasks: set[asyncio.Task[None]] = set()


async def _run_reconcile_hooks(broker: CcxtBroker, report: ReconcileReport) -> None:
    # Not awaited here: the reconciler holds its lock, and a hook may wait for the executor's
    # lock while the executor waits for a reconciliation (a fill seen while placing an order).
    for hook in list(_reconcile_hooks.get(broker, ())):
        task = asyncio.get_running_loop().create_task(hook(report), name="reconcile-hook")
        _hook_tasks.add(task)
        task.add_done_callback(_hook_tasks.discard)


async def check_live_opt_in(settings: Settings, factory: SessionFactory, user_id: uuid.UUID) -> None:
    """Raise ``LiveTradingNotAllowedError`` unless this user may trade in ``settings.broker`` mode."""
    if settings.broker is BrokerKind.PAPER:
        return
    async with UnitOfWork(factory) as uow:
        user = await uow.users.get(user_id)
    if user is None:
        raise LiveTradingNotAllowedError(f"TRADEENGINE_USER_ID: user {user_id} does not exist")
    keys = settings.exchange_api_key is not None and settings.exchange_secret is not None
    require_live_opt_in(settings, real_trading_enabled=user.real_trading_enabled, keys_present=keys)


async def open_live_broker(
    settings: Settings,
    factory: SessionFactory,
    user_id: uuid.UUID,
    *,
    clock: Clock | None = None,
    reconcile: bool = True,
    poll_interval_s: float | None = 2.0,
    protection_interval_s: float | None = 5.0,
    reconcile_interval_s: float | None = None,
) -> CcxtBroker:
    """Check the opt-in, build the broker with its order log, reconcile once, start fill polling,
    periodic reconciliation (``reconcile_interval_s``, default ``settings.reconcile_interval_s``;
    0 disables) and the exchange-stop sync. ``broker.close()`` stops every loop."""
    await check_live_opt_in(settings, factory, user_id)
    broker = CcxtBroker.from_settings(settings, order_log=OrderLog(factory, user_id, clock=clock), clock=clock)

    async def on_change(report: ReconcileReport) -> None:
        await _run_reconcile_hooks(broker, report)

    reconciler = Reconciler(broker, factory, user_id, clock=clock, leave_runtime_pending=True, on_change=on_change)
    interval = settings.reconcile_interval_s if reconcile_interval_s is None else reconcile_interval_s
    try:
        if reconcile:
            # The runtime resumes its own pending "te-" orders on the first price; leave those to it.
            report = await reconciler.run_once()
            logger.info(
                "start reconciliation: {} order(s) checked, corrections: {}",
                report.orders_checked,
                report.events or "none",
            )

        async def apply_fills(state: OrderState) -> None:
            # A resting order (a stop, a take-profit) filled: trades and the position change are
            # written by the reconciler, in one transaction with the order's new status.
            if state.filled_quantity > 0:
                await reconciler.run_once()

        broker.subscribe(apply_fills)
        for state in await broker.open_orders():
            broker.track(state)
        if poll_interval_s:
            broker.start_polling(poll_interval_s)
        if interval > 0:
            # Catches what no callback reports: fills of orders nobody tracks (an exchange-side
            # fill of a pending order, a missed poll), stray orders, foreign trades, balances.
            reconciler.start(interval)
            broker.on_close(reconciler.stop)
        if protection_interval_s:
            # Resting exchange stops follow the positions' stop_loss (the position monitor stays
            # the fallback for what the exchange refuses, and for trailing stops).
            sync = ProtectionSync(broker, factory, user_id, clock=clock)
            sync.start(protection_interval_s)
            broker.on_close(sync.stop)
    except BaseException:
        await broker.close()
        raise
    return broker


def attach_runtime_state(
    broker: CcxtBroker, factory: SessionFactory, state: TenantState, lock: asyncio.Lock | None = None
) -> None:
    """Keep a running runtime's in-memory positions in step with reconciled fills.

    Two paths: fills of resting protective orders (subscribed after ``open_live_broker``'s own
    handler, so the reconciler has already written the trades and the position change) and any
    pass of the periodic reconciliation that corrected something. Both only mirror the database
    into ``state``: a position closed on the exchange is dropped (with its signal), one whose
    stored size changed gets its book rebuilt from its trades.
    """

    async def sync(position_id: uuid.UUID) -> None:
        live = state.positions.get(position_id)
        if live is None:
            return
        async with UnitOfWork(factory) as uow:
            row = await uow.positions.get(position_id)
            trades = await uow.trades.for_position(position_id)
            uow.session.expunge_all()
        if row is None:
            return
        if row.status == PositionStatus.CLOSED.value:
            state.drop_position(position_id)
            state.drop_signal(row.signal_id)
            logger.info("position {} closed on the exchange ({}); dropped from memory", position_id, row.close_reason)
            return
        book = PositionBook(live.side)
        for trade in trades:
            if trade.status == TradeStatus.FILLED.value:
                book.add_fill(TradeSide(trade.side), trade.price, trade.quantity, trade.fee)
        # Only a consistent stored state replaces memory (trades and the row agree).
        if book.size == row.size and book.size != live.size:
            live.book = book

    async def mirror(update: OrderState) -> None:
        parsed = parse_protective_client_order_id(update.client_order_id)
        if parsed is None or update.filled_quantity <= 0:
            return
        async with lock if lock is not None else contextlib.nullcontext():
            await sync(parsed[0])

    async def after_reconcile(report: ReconcileReport) -> None:
        if not report.fills_applied:
            return
        try:
            async with lock if lock is not None else contextlib.nullcontext():
                for position_id in list(state.positions):
                    await sync(position_id)
        except Exception:
            logger.exception("mirroring a reconciliation into the runtime failed")

    broker.subscribe(mirror)
    _reconcile_hooks.setdefault(broker, []).append(after_reconcile)
