"""Modes: live needs the user's opt-in and keys; testnet uses ccxt's sandbox; the tenant refuses clearly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import ccxt.async_support  # noqa: F401 - slow import at collection
import pytest
from fakes.binance import FakeBinance
from fakes.binance_account import FakeBinanceAccount
from fakes.live_env import live_settings, seed, start_exchange
from pydantic import SecretStr

from tradeengine.domain.enums import OrderPurpose, OrderStatus, TradeSide
from tradeengine.exchange.broker import OrderState
from tradeengine.exchange.ccxt_broker import CcxtBroker, LiveTradingNotAllowedError, build_exchange
from tradeengine.exchange.live import check_live_opt_in, open_live_broker
from tradeengine.exchange.order_log import OrderLog
from tradeengine.runtime.bootstrap import TenantConfigError, build_tenant
from tradeengine.settings import BrokerKind, Settings
from tradeengine.store.engine import SessionFactory
from tradeengine.store.uow import UnitOfWork


@pytest.fixture
async def exchange() -> AsyncIterator[tuple[FakeBinance, FakeBinanceAccount]]:
    fake, account = await start_exchange({"USDT": Decimal("1000"), "BTC": Decimal("0.05")})
    try:
        yield fake, account
    finally:
        await fake.stop()


async def test_live_refused_without_the_users_opt_in(
    exchange: tuple[FakeBinance, FakeBinanceAccount], session_factory: SessionFactory, db_url: str
) -> None:
    fake, _ = exchange
    seeded = await seed(session_factory, real_trading=False)
    settings = live_settings(fake, db_url, user_id=seeded.user_id)
    with pytest.raises(LiveTradingNotAllowedError, match="real_trading_enabled is false"):
        await check_live_opt_in(settings, session_factory, seeded.user_id)
    # Testnet is not real money: keys suffice.
    await check_live_opt_in(live_settings(fake, db_url, broker=BrokerKind.TESTNET), session_factory, seeded.user_id)


async def test_live_refused_without_keys(session_factory: SessionFactory, db_url: str) -> None:
    seeded = await seed(session_factory, real_trading=True)
    settings = Settings(broker=BrokerKind.LIVE, database_url=db_url)
    with pytest.raises(LiveTradingNotAllowedError, match="TRADEENGINE_EXCHANGE_API_KEY"):
        await check_live_opt_in(settings, session_factory, seeded.user_id)
    with pytest.raises(LiveTradingNotAllowedError, match="needs exchange API keys"):
        CcxtBroker.from_settings(settings)


async def test_tenant_refuses_to_start_live_mode_with_a_clear_message(
    exchange: tuple[FakeBinance, FakeBinanceAccount],
    session_factory: SessionFactory,
    db_url: str,
    tmp_path: object,
) -> None:
    fake, account = exchange
    seeded = await seed(session_factory, real_trading=False)
    settings = live_settings(fake, db_url, user_id=seeded.user_id, journal_path=f"{tmp_path}/journal.db")
    with pytest.raises(TenantConfigError, match="refusing to start live mode"):
        async with build_tenant(settings, start_feed=False):
            pass
    assert account.order_posts == 0


async def test_testnet_uses_ccxt_sandbox_urls() -> None:
    settings = Settings(broker=BrokerKind.TESTNET, exchange_api_key=SecretStr("k"), exchange_secret=SecretStr("s"))
    exchange = build_exchange(settings)
    try:
        assert "testnet.binance.vision" in exchange.urls["api"]["private"]
        assert exchange.isSandboxModeEnabled
    finally:
        await exchange.close()
    live = build_exchange(settings.model_copy(update={"broker": BrokerKind.LIVE}))
    try:
        assert "testnet" not in live.urls["api"]["private"]
    finally:
        await live.close()


async def test_open_live_broker_reconciles_tracks_and_polls_fills(
    exchange: tuple[FakeBinance, FakeBinanceAccount], session_factory: SessionFactory, db_url: str
) -> None:
    fake, account = exchange
    seeded = await seed(session_factory, position_size=Decimal("0.05"))
    settings = live_settings(fake, db_url, user_id=seeded.user_id)
    assert seeded.position_id is not None
    first = CcxtBroker.from_settings(settings, order_log=OrderLog(session_factory, seeded.user_id))
    stop = await first.place_protective(
        seeded.position_id,
        "BTC/USDT",
        TradeSide.SELL,
        Decimal("0.05"),
        OrderPurpose.STOP_LOSS,
        Decimal("38000"),
    )
    await first.close()

    broker = await open_live_broker(
        settings, session_factory, seeded.user_id, poll_interval_s=None, protection_interval_s=None
    )
    try:
        assert set(broker.tracked) == {stop.client_order_id}
        seen: list[OrderState] = []

        async def on_update(state: OrderState) -> None:
            seen.append(state)

        broker.subscribe(on_update)
        account.set_price("BTC/USDT", Decimal("37950"))
        await broker.poll_once()
        assert [(s.client_order_id, s.status) for s in seen] == [(stop.client_order_id, OrderStatus.FILLED)]
        async with UnitOfWork(session_factory) as uow:
            row = await uow.orders.get_by_client_order_id(stop.client_order_id)
            assert row is not None
            assert row.status == "filled"
            assert row.filled_quantity == Decimal("0.05")
            position = await uow.positions.get(seeded.position_id)
            assert position is not None
            assert (position.status, position.close_reason, position.exit_price) == (
                "closed",
                "stop_loss",
                Decimal("37950.00000000"),
            )
    finally:
        await broker.close()


async def test_open_live_broker_puts_a_resting_stop_under_an_unprotected_position(
    exchange: tuple[FakeBinance, FakeBinanceAccount], session_factory: SessionFactory, db_url: str
) -> None:
    import asyncio

    fake, account = exchange
    seeded = await seed(session_factory, position_size=Decimal("0.05"))  # stop_loss 38 000, no order yet
    settings = live_settings(fake, db_url, user_id=seeded.user_id)
    broker = await open_live_broker(settings, session_factory, seeded.user_id, poll_interval_s=None)
    try:
        for _ in range(500):
            if account.open_orders():
                break
            await asyncio.sleep(0.02)
        (stop,) = account.open_orders()
        assert (stop.type, stop.stop_price, stop.quantity) == ("STOP_LOSS_LIMIT", Decimal("38000"), Decimal("0.05"))
    finally:
        await broker.close()  # also stops the sync loop
    posts = account.order_posts
    await asyncio.sleep(0.2)
    assert account.order_posts == posts
