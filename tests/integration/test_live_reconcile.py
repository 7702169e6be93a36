"""Reconciliation against the fake Binance: fills while we were down, lost orders, strays, balances.

Each test throws the first broker away (all in-memory state gone) and rebuilds from the database
and the exchange alone, as a restarted tenant does.
"""

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

from tradeengine.domain.enums import OrderPurpose, OrderType, TradeSide
from tradeengine.exchange.broker import OrderRequest, TransientBrokerError
from tradeengine.exchange.ccxt_broker import CcxtBroker
from tradeengine.exchange.order_log import OrderLog
from tradeengine.exchange.reconcile import Reconciler
from tradeengine.runtime.state import client_order_id
from tradeengine.settings import Settings
from tradeengine.store.engine import SessionFactory
from tradeengine.store.uow import UnitOfWork

SIZE = Decimal("0.05")


@dataclass
class Env:
    fake: FakeBinance
    account: FakeBinanceAccount
    settings: Settings
    factory: SessionFactory
    seeded: Seeded
    brokers: list[CcxtBroker]

    def broker(self) -> CcxtBroker:
        """A fresh broker: nothing in memory from before."""
        broker = CcxtBroker.from_settings(
            self.settings, order_log=OrderLog(self.factory, self.seeded.user_id), timeout_ms=700
        )
        broker.retry_delay_s = 0.01
        self.brokers.append(broker)
        return broker

    def reconciler(self) -> Reconciler:
        return Reconciler(self.broker(), self.factory, self.seeded.user_id, symbols=["BTC/USDT"])


@pytest.fixture
async def env(session_factory: SessionFactory, db_url: str) -> AsyncIterator[Env]:
    fake, account = await start_exchange({"USDT": Decimal("10000"), "BTC": SIZE})
    seeded = await seed(session_factory, position_size=SIZE)
    e = Env(fake, account, live_settings(fake, db_url, user_id=seeded.user_id), session_factory, seeded, [])
    try:
        yield e
    finally:
        for broker in e.brokers:
            await broker.close()
        await fake.stop()


async def event_kinds(env: Env) -> list[str]:
    async with UnitOfWork(env.factory) as uow:
        page = await uow.events.list(user_id=env.seeded.user_id, limit=200)
        return sorted(e.kind for e in page.items if e.kind != "reconcile_cursor")


async def test_stop_filled_while_down_closes_the_position_and_cancels_the_take_profit(env: Env) -> None:
    broker = env.broker()
    pid = env.seeded.position_id
    assert pid is not None
    await broker.place_protective(pid, "BTC/USDT", TradeSide.SELL, SIZE, OrderPurpose.STOP_LOSS, Decimal("38000"))
    # Take-profit and stop share the balance on spot; give the account room for both here.
    env.account.free["BTC"] = SIZE
    await broker.place_protective(pid, "BTC/USDT", TradeSide.SELL, SIZE, OrderPurpose.TAKE_PROFIT, Decimal("45000"))
    await broker.close()
    env.brokers.clear()
    env.account.set_price("BTC/USDT", Decimal("37900"))  # the stop triggers and fills at 37 900

    report = await env.reconciler().run_once()
    assert report.fills_applied == 1
    assert report.positions_closed == 1
    async with UnitOfWork(env.factory) as uow:
        position = await uow.positions.get(pid)
        assert position is not None
        assert (position.status, position.close_reason, position.size) == (
            "closed",
            "stop_loss",
            Decimal("0E-8"),
        )
        assert position.exit_price == Decimal("37900.00000000")
        # (37900 - 40000) * 0.05 - entry fee 2 - exit fee 1.895
        assert position.pnl == Decimal("-108.89500000")
        trades = await uow.trades.for_position(pid)
        sells = [(t.quantity, t.price, t.fee, t.fee_asset) for t in trades if t.side == "SELL"]
        assert sells == [(Decimal("0.05000000"), Decimal("37900.00000000"), Decimal("1.89500000"), "USDT")]
        signal = await uow.signals.get(env.seeded.signal_id)
        assert signal is not None
        assert signal.status == "closed"
        orders = {o.purpose: o.status for o in await uow.orders.for_position(pid)}
        assert orders == {"stop_loss": "filled", "take_profit": "cancelled"}
    assert env.account.open_orders() == []  # the take-profit no longer rests on the exchange
    assert "reconcile_order" in await event_kinds(env)
    assert "reconcile_cancelled_sibling" in await event_kinds(env)

    again = await env.reconciler().run_once()
    assert (again.fills_applied, again.positions_closed, again.events) == (0, 0, [])


async def test_entry_accepted_but_answer_lost_becomes_a_position_without_a_second_order(env: Env) -> None:
    broker = env.broker()
    coid = client_order_id(uuid.uuid4(), "open")
    env.account.stall_next(1, seconds=1.5)  # accepted and filled, the answer times out
    request = OrderRequest(
        client_order_id=coid,
        symbol="BTC/USDT",
        side=TradeSide.BUY,
        type=OrderType.MARKET,
        quantity=Decimal("0.01"),
        purpose=OrderPurpose.ENTRY,
    )
    # Make look-ups fail too: the exchange stops answering GETs for a moment.
    original_get = env.account._get_order

    async def refuse_get(req: object) -> object:
        from aiohttp import web

        return web.Response(status=504, text="gateway timeout")

    env.account._get_order = refuse_get  # type: ignore[method-assign]
    for route in env.fake._runner.app.router.routes():  # type: ignore[union-attr]
        if route.method == "GET" and route.resource is not None and route.resource.canonical == "/api/v3/order":
            route._handler = refuse_get  # type: ignore[attr-defined]
    async with UnitOfWork(env.factory) as uow:
        from fakes.store_rows import make_signal

        trader = await uow.traders.get(env.seeded.trader_id)
        assert trader is not None
        signal = uow.signals.add(make_signal(trader, symbol="BTC/USDT", status="watching"))
        await uow.commit()
    await OrderLog(env.factory, env.seeded.user_id).ensure_pending(request, _links(signal.id, env.seeded.trader_id))
    with pytest.raises(TransientBrokerError):
        await broker.place_order(request)
    for route in env.fake._runner.app.router.routes():  # type: ignore[union-attr]
        if route.method == "GET" and route.resource is not None and route.resource.canonical == "/api/v3/order":
            route._handler = original_get  # type: ignore[attr-defined]
    assert len(env.account.orders_by_client_id(coid)) == 1  # accepted and filled on the exchange

    report = await env.reconciler().run_once()
    assert report.positions_opened == 1
    async with UnitOfWork(env.factory) as uow:
        row = await uow.orders.get_by_client_order_id(coid)
        assert row is not None
        assert row.status == "filled"
        assert row.position_id is not None
        position = await uow.positions.get(row.position_id)
        assert position is not None
        assert (position.side, position.size, position.entry_price) == (
            "long",
            Decimal("0.01000000"),
            Decimal("40000.00000000"),
        )
        assert position.fees == Decimal("0.40000000")
    assert len(env.account.orders_by_client_id(coid)) == 1
    assert env.account.order_posts == 1


async def test_pending_order_the_exchange_never_saw_is_marked_failed(env: Env) -> None:
    request = OrderRequest(
        client_order_id=client_order_id(uuid.uuid4(), "close"),
        symbol="BTC/USDT",
        side=TradeSide.SELL,
        type=OrderType.MARKET,
        quantity=SIZE,
        purpose=OrderPurpose.EXIT,
    )
    await OrderLog(env.factory, env.seeded.user_id).ensure_pending(request)  # crash before sending
    report = await env.reconciler().run_once()
    assert report.orders_corrected == 1
    async with UnitOfWork(env.factory) as uow:
        row = await uow.orders.get_by_client_order_id(request.client_order_id)
        assert row is not None
        assert row.status == "failed"
        assert row.error_message is not None
        assert "never reached the exchange" in row.error_message
    assert env.account.orders == {}  # reconciliation never sends orders
    # With the runtime running, its own resume owns pending te- orders: left alone.
    request2 = OrderRequest(
        client_order_id=client_order_id(uuid.uuid4(), "close"),
        symbol="BTC/USDT",
        side=TradeSide.SELL,
        type=OrderType.MARKET,
        quantity=SIZE,
        purpose=OrderPurpose.EXIT,
    )
    await OrderLog(env.factory, env.seeded.user_id).ensure_pending(request2)
    reconciler = env.reconciler()
    reconciler.leave_runtime_pending = True
    await reconciler.run_once()
    async with UnitOfWork(env.factory) as uow:
        row = await uow.orders.get_by_client_order_id(request2.client_order_id)
        assert row is not None
        assert row.status == "pending"


async def test_strays_foreign_trades_and_balance_shortfall_are_recorded(env: Env) -> None:
    from fakes.binance_account import FakeOrder

    # Someone traded by hand on the account: an open order and a filled sell of our BTC.
    manual = FakeOrder(
        9001,
        "web_manual_1",
        "BTCUSDT",
        "BUY",
        "LIMIT",
        Decimal("0.01"),
        Decimal("30000"),
        None,
        env.fake.now_ms,
    )
    env.account.orders[manual.order_id] = manual
    env.account._reserve[manual.order_id] = ("USDT", Decimal("0"))
    sell = FakeOrder(9002, "web_manual_2", "BTCUSDT", "SELL", "MARKET", SIZE, None, None, env.fake.now_ms)
    env.account.orders[sell.order_id] = sell
    env.account._reserve[sell.order_id] = ("BTC", SIZE)
    env.account.free["BTC"] -= SIZE
    env.account.locked["BTC"] = SIZE
    env.account._match(sell)

    report = await env.reconciler().run_once()
    assert report.unknown_orders == 1
    assert report.foreign_trades == 1
    assert report.balance_mismatches == 1
    kinds = await event_kinds(env)
    assert kinds == ["reconcile_balance_mismatch", "reconcile_foreign_trade", "reconcile_unknown_order"]
    # The cursor remembers the trade: the next pass reports it no more.
    again = await env.reconciler().run_once()
    assert again.foreign_trades == 0


def _links(signal_id: uuid.UUID, trader_id: uuid.UUID) -> object:
    from tradeengine.exchange.order_log import OrderLinks

    return OrderLinks(signal_id=signal_id, trader_id=trader_id)
