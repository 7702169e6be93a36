"""CcxtBroker with the real ccxt client against the fake Binance's signed private REST protocol."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import ccxt.async_support  # noqa: F401 - slow import at collection, not inside a test's timeout
import pytest
from fakes.binance import FakeBinance
from fakes.binance_account import FakeBinanceAccount
from fakes.live_env import Seeded, live_settings, seed, start_exchange

from tradeengine.domain.enums import OrderPurpose, OrderStatus, OrderType, TradeSide
from tradeengine.exchange.broker import OrderRejected, OrderRequest, OrderState, TransientBrokerError
from tradeengine.exchange.ccxt_broker import CcxtBroker
from tradeengine.exchange.order_log import OrderLog
from tradeengine.exchange.reconcile import Reconciler
from tradeengine.runtime.state import client_order_id
from tradeengine.store.engine import SessionFactory
from tradeengine.store.uow import UnitOfWork


@dataclass
class Env:
    fake: FakeBinance
    account: FakeBinanceAccount
    broker: CcxtBroker
    factory: SessionFactory
    seeded: Seeded


@pytest.fixture
async def env(session_factory: SessionFactory, db_url: str) -> AsyncIterator[Env]:
    fake, account = await start_exchange()
    seeded = await seed(session_factory)
    settings = live_settings(fake, db_url, user_id=seeded.user_id)
    broker = CcxtBroker.from_settings(settings, order_log=OrderLog(session_factory, seeded.user_id), timeout_ms=800)
    broker.retry_delay_s = 0.01
    try:
        yield Env(fake, account, broker, session_factory, seeded)
    finally:
        await broker.close()
        await fake.stop()


def market_buy(quantity: str = "0.01") -> OrderRequest:
    return OrderRequest(
        client_order_id=client_order_id(uuid.uuid4(), "open"),
        symbol="BTC/USDT",
        side=TradeSide.BUY,
        type=OrderType.MARKET,
        quantity=Decimal(quantity),
        purpose=OrderPurpose.ENTRY,
    )


async def order_row(env: Env, coid: str) -> tuple[str, Decimal, str | None, str | None]:
    async with UnitOfWork(env.factory) as uow:
        row = await uow.orders.get_by_client_order_id(coid)
        assert row is not None, f"{coid} was never recorded"
        return row.status, row.filled_quantity, row.exchange_order_id, row.error_message


async def test_market_order_fills_with_fee_in_quote_and_is_recorded(env: Env) -> None:
    request = market_buy("0.01")
    state = await env.broker.place_order(request)
    assert state.status is OrderStatus.FILLED
    assert state.filled_quantity == Decimal("0.01")
    assert state.average_price == Decimal("40000")
    assert state.fee == Decimal("0.4")  # 0.1% of 400 USDT
    assert state.fills[0].fee_asset == "USDT"
    status, filled, exchange_id, _ = await order_row(env, request.client_order_id)
    # The broker records the acknowledgement only; the fill is written with its trades and the
    # position change by whoever applies it (the executor, or reconciliation).
    assert (status, filled) == ("pending", Decimal(0))
    assert exchange_id == state.exchange_order_id
    assert env.account.free["BTC"] == Decimal("0.01")
    assert env.account.free["USDT"] == Decimal("10000") - Decimal("400") - Decimal("0.4")
    balances = await env.broker.balances()
    assert balances["BTC"] == Decimal("0.01")
    # The request was signed: the fake refused nothing.
    assert env.account.auth_failures == 0


async def test_order_is_recorded_pending_before_it_is_sent(env: Env) -> None:
    """The row exists (pending) at the moment the exchange receives the request."""
    seen: list[tuple[str, ...] | None] = []
    original = env.account._post_order
    request = market_buy()

    async def spy(http_request: object) -> object:
        async with UnitOfWork(env.factory) as uow:
            row = await uow.orders.get_by_client_order_id(request.client_order_id)
            seen.append((row.status,) if row is not None else None)
        return await original(http_request)  # type: ignore[arg-type]

    env.account._post_order = spy  # type: ignore[method-assign]
    # aiohttp resolved the handler at start; route through a fresh lookup by re-wrapping
    for route in env.fake._runner.app.router.routes():  # type: ignore[union-attr]
        if route.method == "POST" and route.resource is not None and route.resource.canonical == "/api/v3/order":
            route._handler = spy  # type: ignore[attr-defined]
    await env.broker.place_order(request)
    assert seen == [("pending",)]


async def test_timeout_after_the_exchange_accepted_adopts_the_order_no_duplicate(env: Env) -> None:
    env.account.stall_next(1, seconds=2.0)  # accepted and filled, answer never arrives in time
    request = market_buy("0.02")
    state = await env.broker.place_order(request)
    assert state.status is OrderStatus.FILLED
    assert state.filled_quantity == Decimal("0.02")
    assert len(env.account.orders_by_client_id(request.client_order_id)) == 1
    assert env.account.order_posts == 1
    assert state.fee == Decimal("0.8")  # fills come from myTrades when the POST answer was lost
    _, _, exchange_id, _ = await order_row(env, request.client_order_id)
    assert exchange_id == state.exchange_order_id


async def test_5xx_then_success_sends_again_with_the_same_client_id(env: Env) -> None:
    env.account.fail_next(2, status=503)
    request = market_buy("0.01")
    state = await env.broker.place_order(request)
    assert state.status is OrderStatus.FILLED
    assert env.broker.requests_sent == 3
    assert env.account.order_posts == 1  # the two 5xx never reached the matching engine
    assert [o.client_order_id for o in env.account.orders.values()] == [request.client_order_id]


async def test_persistent_5xx_leaves_the_order_pending_and_raises_transient(env: Env) -> None:
    env.account.fail_next(10, status=502)
    request = market_buy()
    with pytest.raises(TransientBrokerError):
        await env.broker.place_order(request)
    status, _, _, _ = await order_row(env, request.client_order_id)
    assert status == "pending"  # reconciliation looks it up later
    assert env.account.orders == {}


async def test_insufficient_funds_is_recorded_with_the_exchange_message(env: Env) -> None:
    request = market_buy("1")  # 40 000 USDT > 10 000
    with pytest.raises(OrderRejected, match="insufficient balance"):
        await env.broker.place_order(request)
    status, _, _, message = await order_row(env, request.client_order_id)
    assert status == "rejected"
    assert message is not None
    assert "InsufficientFunds" in message
    # A repeat of the same intent is not sent again.
    with pytest.raises(OrderRejected):
        await env.broker.place_order(request)
    assert env.broker.requests_sent == 1


async def test_precision_and_limits_are_checked_before_sending(env: Env) -> None:
    tiny = market_buy("0.0001")  # 4 USDT < 5 USDT minimum notional
    with pytest.raises(OrderRejected, match="minimum notional"):
        await env.broker.place_order(tiny)
    below_step = market_buy("0.000001")  # below the 0.00001 lot step
    with pytest.raises(OrderRejected, match="quantity"):
        await env.broker.place_order(below_step)
    assert env.broker.requests_sent == 0
    rounded = market_buy("0.012345678")
    state = await env.broker.place_order(rounded)
    assert state.filled_quantity == Decimal("0.01234")  # rounded down to the lot step
    async with UnitOfWork(env.factory) as uow:
        row = await uow.orders.get_by_client_order_id(rounded.client_order_id)
        assert row is not None
        # The row says what the exchange took, so reconciliation's "remaining" is not a rounding residue.
        assert row.quantity == Decimal("0.01234")


async def test_limit_order_rests_then_partial_and_full_fills_are_polled(env: Env) -> None:
    updates: list[OrderState] = []

    async def on_update(state: OrderState) -> None:
        updates.append(state)

    env.broker.subscribe(on_update)
    request = OrderRequest(
        client_order_id=client_order_id(uuid.uuid4(), "open"),
        symbol="BTC/USDT",
        side=TradeSide.BUY,
        type=OrderType.LIMIT,
        quantity=Decimal("0.1"),
        purpose=OrderPurpose.ENTRY,
        price=Decimal("39000"),
    )
    state = await env.broker.place_order(request)
    assert state.status is OrderStatus.OPEN
    assert [o.client_order_id for o in await env.broker.open_orders("BTC/USDT")] == [request.client_order_id]
    env.account.max_fill_quantity = Decimal("0.04")
    env.account.set_price("BTC/USDT", Decimal("38900"))
    await env.broker.poll_once()
    assert updates[-1].status is OrderStatus.PARTIALLY_FILLED
    assert updates[-1].filled_quantity == Decimal("0.04")
    env.account.max_fill_quantity = None
    env.account.set_price("BTC/USDT", Decimal("38800"))
    await env.broker.poll_once()
    final = updates[-1]
    assert final.status is OrderStatus.FILLED
    assert final.filled_quantity == Decimal("0.1")
    assert sum(f.quantity for f in final.fills) == Decimal("0.1")
    assert final.fee == Decimal("3.9")  # 0.1% of 0.1 * 39000, in USDT
    assert env.broker.tracked == {}
    status, filled, _, _ = await order_row(env, request.client_order_id)
    assert (status, filled) == ("open", Decimal(0))  # fills are not the broker's to write
    await Reconciler(env.broker, env.factory, env.seeded.user_id).run_once()
    status, filled, _, _ = await order_row(env, request.client_order_id)
    assert (status, filled) == ("filled", Decimal("0.1"))


async def test_cancel_by_client_id_and_cancel_of_a_finished_order(env: Env) -> None:
    request = OrderRequest(
        client_order_id=client_order_id(uuid.uuid4(), "open"),
        symbol="BTC/USDT",
        side=TradeSide.BUY,
        type=OrderType.LIMIT,
        quantity=Decimal("0.01"),
        purpose=OrderPurpose.ENTRY,
        price=Decimal("30000"),
    )
    await env.broker.place_order(request)
    cancelled = await env.broker.cancel_order(request.client_order_id, "BTC/USDT")
    assert cancelled.status is OrderStatus.CANCELLED
    again = await env.broker.cancel_order(request.client_order_id, "BTC/USDT")
    assert again.status is OrderStatus.CANCELLED
    assert env.account.locked.get("USDT", Decimal(0)) == Decimal(0)
    assert await env.broker.fetch_order("te-never-sent", "BTC/USDT") is None
