"""Resting stops follow the positions' levels; exits free the balance a stop locks and never double up."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import ccxt.async_support  # noqa: F401 - slow import at collection
import pytest
from fakes.binance import FakeBinance
from fakes.binance_account import FakeBinanceAccount
from fakes.live_env import Seeded, live_settings, seed, start_exchange

from tradeengine.domain.enums import OrderPurpose, OrderStatus, OrderType, TradeSide
from tradeengine.exchange.broker import OrderRejected, OrderRequest
from tradeengine.exchange.ccxt_broker import CcxtBroker
from tradeengine.exchange.order_log import OrderLinks, OrderLog
from tradeengine.exchange.protection import ProtectionSync
from tradeengine.runtime.state import client_order_id
from tradeengine.store.engine import SessionFactory
from tradeengine.store.uow import UnitOfWork

SIZE = Decimal("0.05")


@dataclass
class Env:
    fake: FakeBinance
    account: FakeBinanceAccount
    broker: CcxtBroker
    sync: ProtectionSync
    factory: SessionFactory
    seeded: Seeded


@pytest.fixture
async def env(session_factory: SessionFactory, db_url: str) -> AsyncIterator[Env]:
    fake, account = await start_exchange({"USDT": Decimal("1000"), "BTC": SIZE})
    seeded = await seed(session_factory, position_size=SIZE)  # long 0.05 @ 40 000, stop_loss 38 000
    broker = CcxtBroker.from_settings(
        live_settings(fake, db_url, user_id=seeded.user_id), order_log=OrderLog(session_factory, seeded.user_id)
    )
    broker.retry_delay_s = 0.01
    try:
        yield Env(
            fake, account, broker, ProtectionSync(broker, session_factory, seeded.user_id), session_factory, seeded
        )
    finally:
        await broker.close()
        await fake.stop()


def resting(env: Env) -> list[tuple[Decimal | None, Decimal]]:
    return [(o.stop_price, o.quantity) for o in env.account.open_orders()]


async def set_position(env: Env, **values: object) -> None:
    async with UnitOfWork(env.factory) as uow:
        position = await uow.positions.get(env.seeded.position_id)  # type: ignore[arg-type]
        assert position is not None
        for key, value in values.items():
            setattr(position, key, value)
        await uow.commit()


def exit_request(quantity: Decimal) -> OrderRequest:
    return OrderRequest(
        client_order_id=client_order_id(uuid.uuid4(), "close"),
        symbol="BTC/USDT",
        side=TradeSide.SELL,
        type=OrderType.MARKET,
        quantity=quantity,
        purpose=OrderPurpose.EXIT,
        reduce_only=True,
    )


async def test_sync_places_moves_and_resizes_the_stop(env: Env) -> None:
    first = await env.sync.sync_once()
    assert len(first.placed) == 1
    assert resting(env) == [(Decimal("38000"), SIZE)]
    assert (await env.sync.sync_once()).placed == []  # already in place: nothing sent
    posts = env.account.order_posts

    await set_position(env, stop_loss=Decimal("39000"))  # the analyst moved the stop
    moved = await env.sync.sync_once()
    assert len(moved.moved) == 1
    assert resting(env) == [(Decimal("39000"), SIZE)]
    assert env.account.order_posts > posts

    await set_position(env, size=Decimal("0.03"))  # a partial close happened
    await env.sync.sync_once()
    assert resting(env) == [(Decimal("39000"), Decimal("0.03"))]


async def test_an_exit_cancels_the_resting_stop_first_and_a_partial_exit_restores_it(env: Env) -> None:
    await env.sync.sync_once()
    request = exit_request(Decimal("0.02"))
    links = OrderLinks(position_id=env.seeded.position_id)
    state = await env.broker.place_order(request, links)  # without freeing, the stop's lock refuses it
    assert state.status is OrderStatus.FILLED
    assert resting(env) == [(Decimal("38000"), Decimal("0.03"))]  # protection back for what remains

    full = await env.broker.place_order(exit_request(Decimal("0.03")), links)
    assert full.status is OrderStatus.FILLED
    assert resting(env) == []  # flat: no stop left behind
    assert env.account.free["BTC"] == Decimal(0)


async def test_an_exit_after_the_stop_already_filled_is_refused_not_doubled(env: Env) -> None:
    await env.sync.sync_once()
    env.account.set_price("BTC/USDT", Decimal("37950"))  # the exchange stop fills
    posts = env.account.order_posts
    with pytest.raises(OrderRejected, match="already filled"):
        await env.broker.place_order(exit_request(SIZE), OrderLinks(position_id=env.seeded.position_id))
    assert env.account.order_posts == posts  # no market sell of BTC we no longer hold


async def test_a_stop_filled_on_the_exchange_leaves_the_runtimes_memory(env: Env) -> None:
    """open_live_broker's fill handler reconciles; attach_runtime_state then drops the position
    from the runtime's in-memory state, so the position monitor stops acting on it."""
    from fakes.store_rows import T0

    from tradeengine.domain.decisions import PositionBook
    from tradeengine.domain.enums import PositionSide, SignalStatus
    from tradeengine.exchange.live import attach_runtime_state
    from tradeengine.exchange.reconcile import Reconciler
    from tradeengine.runtime.state import LivePosition, LiveSignal, TenantState

    assert env.seeded.position_id is not None
    state = TenantState()
    state.add_signal(
        LiveSignal(
            env.seeded.signal_id, env.seeded.trader_id, "BTC/USDT", SignalStatus.POSITION_OPEN, Decimal("40000"), T0
        )
    )
    book = PositionBook(PositionSide.LONG)
    book.add_fill(TradeSide.BUY, Decimal("40000"), SIZE, Decimal("2"))
    state.add_position(
        LivePosition(
            env.seeded.position_id,
            env.seeded.signal_id,
            env.seeded.trader_id,
            "BTC/USDT",
            PositionSide.LONG,
            book,
            T0,
            stop_loss=Decimal("38000"),
        )
    )
    reconciler = Reconciler(env.broker, env.factory, env.seeded.user_id)

    async def apply_fills(update: object) -> None:
        await reconciler.run_once()

    env.broker.subscribe(apply_fills)  # what open_live_broker subscribes first
    attach_runtime_state(env.broker, env.factory, state)
    await env.sync.sync_once()
    env.account.set_price("BTC/USDT", Decimal("37950"))
    await env.broker.poll_once()
    assert state.positions == {}
    assert state.signals == {}
    async with UnitOfWork(env.factory) as uow:
        position = await uow.positions.get(env.seeded.position_id)
        assert position is not None
        assert (position.status, position.close_reason) == ("closed", "stop_loss")
