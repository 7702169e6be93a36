"""Periodic reconciliation (started by ``open_live_broker``): a fill nobody reports is still applied,
and the runtime's in-memory state follows; interval 0 disables it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import ccxt.async_support  # noqa: F401 - slow import at collection
import pytest
from fakes.binance import FakeBinance
from fakes.binance_account import FakeBinanceAccount
from fakes.live_env import Seeded, live_settings, seed, start_exchange

from tradeengine.domain.decisions import PositionBook
from tradeengine.domain.enums import OrderPurpose, PositionSide, SignalStatus, TradeSide
from tradeengine.exchange.ccxt_broker import CcxtBroker
from tradeengine.exchange.live import attach_runtime_state, open_live_broker
from tradeengine.exchange.order_log import OrderLog
from tradeengine.runtime.state import LivePosition, LiveSignal, TenantState
from tradeengine.settings import Settings
from tradeengine.store.engine import SessionFactory
from tradeengine.store.uow import UnitOfWork

SIZE = Decimal("0.05")


@pytest.fixture
async def exchange() -> AsyncIterator[tuple[FakeBinance, FakeBinanceAccount]]:
    fake, account = await start_exchange({"USDT": Decimal("1000"), "BTC": SIZE})
    try:
        yield fake, account
    finally:
        await fake.stop()


async def _stop_on_exchange(settings: Settings, factory: SessionFactory, seeded: Seeded) -> str:
    """A resting stop placed by an earlier process: the new broker does not track it at first."""
    assert seeded.position_id is not None
    first = CcxtBroker.from_settings(settings, order_log=OrderLog(factory, seeded.user_id))
    try:
        stop = await first.place_protective(
            seeded.position_id, "BTC/USDT", TradeSide.SELL, SIZE, OrderPurpose.STOP_LOSS, Decimal("38000")
        )
    finally:
        await first.close()
    return stop.client_order_id


def _runtime_state(seeded: Seeded) -> TenantState:
    assert seeded.position_id is not None
    state = TenantState()
    state.add_signal(
        LiveSignal(
            id=seeded.signal_id,
            trader_id=seeded.trader_id,
            symbol="BTC/USDT",
            status=SignalStatus.POSITION_OPEN,
            trigger_price=Decimal("40000"),
            timestamp=datetime.now(UTC),
        )
    )
    book = PositionBook(PositionSide.LONG)
    book.add_fill(TradeSide.BUY, Decimal("40000"), SIZE, Decimal("2"))
    state.add_position(
        LivePosition(
            id=seeded.position_id,
            signal_id=seeded.signal_id,
            trader_id=seeded.trader_id,
            symbol="BTC/USDT",
            side=PositionSide.LONG,
            book=book,
            opened_at=datetime.now(UTC),
            stop_loss=Decimal("38000"),
        )
    )
    return state


async def test_periodic_pass_applies_a_fill_no_callback_reported_and_mirrors_it_into_memory(
    exchange: tuple[FakeBinance, FakeBinanceAccount], session_factory: SessionFactory, db_url: str
) -> None:
    fake, account = exchange
    seeded = await seed(session_factory, position_size=SIZE)
    assert seeded.position_id is not None
    settings = live_settings(fake, db_url, user_id=seeded.user_id, reconcile_interval_s=0.2)
    stop_id = await _stop_on_exchange(settings, session_factory, seeded)
    # No polling, no protection sync: only the periodic reconciliation can notice the fill.
    broker = await open_live_broker(
        settings, session_factory, seeded.user_id, poll_interval_s=None, protection_interval_s=None
    )
    state = _runtime_state(seeded)
    attach_runtime_state(broker, session_factory, state, asyncio.Lock())
    try:
        account.set_price("BTC/USDT", Decimal("37900"))
        assert account.orders_by_client_id(stop_id)[0].status == "FILLED"
        for _ in range(200):
            if not state.positions:
                break
            await asyncio.sleep(0.05)
        assert state.positions == {} and state.signals == {}, "the runtime still holds the closed position"
        async with UnitOfWork(session_factory) as uow:
            position = await uow.positions.get(seeded.position_id)
            assert position is not None
            assert (position.status, position.close_reason, position.exit_price) == (
                "closed",
                "stop_loss",
                Decimal("37900.00000000"),
            )
            assert position.pnl == Decimal("-108.89500000")  # (37900 - 40000) * 0.05 - fees 2 + 1.895
            order = await uow.orders.get_by_client_order_id(stop_id)
            assert order is not None
            assert (order.status, order.filled_quantity) == ("filled", SIZE)
            events = await uow.events.list(user_id=seeded.user_id, kind="reconcile_order")
            assert len(events.items) == 1
    finally:
        await broker.close()
    assert account.order_posts == 1  # the stop only: nothing re-placed


async def test_interval_zero_disables_the_periodic_pass_and_close_stops_it(
    exchange: tuple[FakeBinance, FakeBinanceAccount], session_factory: SessionFactory, db_url: str
) -> None:
    fake, account = exchange
    seeded = await seed(session_factory, position_size=SIZE)
    assert seeded.position_id is not None
    settings = live_settings(fake, db_url, user_id=seeded.user_id, reconcile_interval_s=0)
    await _stop_on_exchange(settings, session_factory, seeded)
    broker = await open_live_broker(
        settings, session_factory, seeded.user_id, poll_interval_s=None, protection_interval_s=None
    )
    try:
        account.set_price("BTC/USDT", Decimal("37900"))
        await asyncio.sleep(0.6)
        async with UnitOfWork(session_factory) as uow:
            position = await uow.positions.get(seeded.position_id)
            assert position is not None
            assert position.status == "open"
    finally:
        await broker.close()
    # The same setup with an interval reconciles, and closing the broker ends the loop.
    broker = await open_live_broker(
        settings,
        session_factory,
        seeded.user_id,
        poll_interval_s=None,
        protection_interval_s=None,
        reconcile=False,
        reconcile_interval_s=0.1,
    )
    tasks = {t for t in asyncio.all_tasks() if t.get_name() == "reconciler"}
    assert len(tasks) == 1
    try:
        for _ in range(100):
            async with UnitOfWork(session_factory) as uow:
                position = await uow.positions.get(seeded.position_id)
                assert position is not None
                if position.status == "closed":
                    break
            await asyncio.sleep(0.05)
        assert position.status == "closed"
    finally:
        await broker.close()
    assert all(t.done() for t in tasks)
