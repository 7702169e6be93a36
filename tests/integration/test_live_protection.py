"""Protective orders on the exchange: moving a stop never leaves the position unprotected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import ccxt.async_support  # noqa: F401 - slow import at collection
import pytest
from fakes.binance import FakeBinance
from fakes.binance_account import FakeBinanceAccount
from fakes.live_env import Seeded, live_settings, seed, start_exchange

from tradeengine.domain.enums import OrderPurpose, OrderStatus, TradeSide
from tradeengine.exchange.ccxt_broker import CcxtBroker, parse_protective_client_order_id
from tradeengine.exchange.order_log import OrderLog
from tradeengine.store.engine import SessionFactory
from tradeengine.store.uow import UnitOfWork

SIZE = Decimal("0.05")


@dataclass
class Env:
    fake: FakeBinance
    account: FakeBinanceAccount
    broker: CcxtBroker
    factory: SessionFactory
    seeded: Seeded


async def _env(factory: SessionFactory, db_url: str, btc: Decimal) -> Env:
    fake, account = await start_exchange({"USDT": Decimal("1000"), "BTC": btc})
    seeded = await seed(factory, position_size=SIZE)
    settings = live_settings(fake, db_url, user_id=seeded.user_id)
    broker = CcxtBroker.from_settings(settings, order_log=OrderLog(factory, seeded.user_id), timeout_ms=2000)
    broker.retry_delay_s = 0.01
    return Env(fake, account, broker, factory, seeded)


@pytest.fixture
async def env(session_factory: SessionFactory, db_url: str) -> AsyncIterator[Env]:
    e = await _env(session_factory, db_url, SIZE)  # the account holds exactly the position
    try:
        yield e
    finally:
        await e.broker.close()
        await e.fake.stop()


async def place_stop(env: Env, level: str) -> object:
    assert env.seeded.position_id is not None
    return await env.broker.place_protective(
        env.seeded.position_id,
        "BTC/USDT",
        TradeSide.SELL,
        SIZE,
        OrderPurpose.STOP_LOSS,
        Decimal(level),
        signal_id=env.seeded.signal_id,
        trader_id=env.seeded.trader_id,
    )


async def move_stop(env: Env, old: object, level: str) -> object:
    assert env.seeded.position_id is not None
    return await env.broker.replace_protective(
        old,
        env.seeded.position_id,
        "BTC/USDT",  # type: ignore[arg-type]
        TradeSide.SELL,
        SIZE,
        OrderPurpose.STOP_LOSS,
        Decimal(level),
    )


def open_stops(env: Env) -> list[tuple[str, Decimal | None]]:
    return [(o.client_order_id, o.stop_price) for o in env.account.open_orders()]


async def events(env: Env, kind: str) -> list[str]:
    async with UnitOfWork(env.factory) as uow:
        page = await uow.events.list(user_id=env.seeded.user_id, kind=kind)
        return [e.message or "" for e in page.items]


async def test_stop_is_an_exchange_stop_loss_limit_with_a_deterministic_client_id(env: Env) -> None:
    state = await place_stop(env, "38000")
    assert state.status is OrderStatus.OPEN  # type: ignore[attr-defined]
    (order,) = env.account.open_orders()
    assert order.type == "STOP_LOSS_LIMIT"
    assert order.stop_price == Decimal("38000")
    assert order.price == Decimal("37810")  # 0.5% below the trigger so a gap still fills
    parsed = parse_protective_client_order_id(order.client_order_id)
    assert parsed == (env.seeded.position_id, OrderPurpose.STOP_LOSS, 0)
    async with UnitOfWork(env.factory) as uow:
        row = await uow.orders.get_by_client_order_id(order.client_order_id)
        assert row is not None
        assert row.position_id == env.seeded.position_id
        assert (row.status, row.type, row.stop_price) == ("open", "stop_limit", Decimal("38000.00000000"))


async def test_move_when_both_cannot_rest_cancels_then_places(env: Env) -> None:
    old = await place_stop(env, "38000")
    result = await move_stop(env, old, "39000")
    assert result.outcome == "replaced"  # type: ignore[attr-defined]
    stops = open_stops(env)
    assert len(stops) == 1
    assert stops[0][1] == Decimal("39000")
    # sl1 was the place-first attempt the locked balance refused; each attempt has its own id.
    assert stops[0][0].endswith("-sl2")
    assert await events(env, "position_unprotected") == []


async def test_move_places_the_new_stop_before_cancelling_when_the_exchange_allows_both(
    session_factory: SessionFactory, db_url: str
) -> None:
    env = await _env(session_factory, db_url, SIZE * 2)  # enough balance for two resting stops
    try:
        old = await place_stop(env, "38000")
        result = await move_stop(env, old, "39000")
        assert result.outcome == "replaced"  # type: ignore[attr-defined]
        calls = [(m, p) for m, p, _ in env.fake.requests if p == "/api/v3/order" and m in ("POST", "DELETE")]
        assert calls == [("POST", "/api/v3/order"), ("POST", "/api/v3/order"), ("DELETE", "/api/v3/order")]
        assert [s[1] for s in open_stops(env)] == [Decimal("39000")]
    finally:
        await env.broker.close()
        await env.fake.stop()


async def test_new_stop_refused_keeps_the_old_one(env: Env) -> None:
    old = await place_stop(env, "38000")
    result = await move_stop(env, old, "40500")  # above the 40 000 market: would trigger immediately
    assert result.outcome == "kept_old"  # type: ignore[attr-defined]
    assert "Stop price would trigger immediately" in result.message  # type: ignore[attr-defined]
    assert [s[1] for s in open_stops(env)] == [Decimal("38000")]
    assert len(await events(env, "protective_kept")) == 1


async def test_new_stop_refused_after_the_cancel_re_places_the_old_level(env: Env) -> None:
    old = await place_stop(env, "38000")
    env.account.reject_next_stop(1)
    result = await move_stop(env, old, "39000")
    assert result.outcome == "restored_old"  # type: ignore[attr-defined]
    stops = open_stops(env)
    assert [s[1] for s in stops] == [Decimal("38000")]
    assert stops[0][0].endswith("-sl3")  # a new attempt id: never reuses a refused one
    assert len(await events(env, "protective_restored")) == 1
    async with UnitOfWork(env.factory) as uow:
        rows = await uow.orders.for_position(env.seeded.position_id)  # type: ignore[arg-type]
        assert sorted(r.status for r in rows) == ["cancelled", "open", "rejected", "rejected"]


async def test_exchange_refusing_everything_records_unprotected_and_hands_over(env: Env) -> None:
    old = await place_stop(env, "38000")
    env.account.reject_next_stop(2)
    result = await move_stop(env, old, "39000")
    assert result.outcome == "unprotected"  # type: ignore[attr-defined]
    assert result.active is None  # type: ignore[attr-defined]
    assert open_stops(env) == []
    (message,) = await events(env, "position_unprotected")
    assert "position monitor" in message
