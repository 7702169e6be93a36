"""kill -9 of the REAL tenant process trading live against the fake Binance, a stop fill while it
is dead, then a restart: the fill is reconciled, nothing is sent twice, the position is right.

The tenant is ``tradeengine serve --mode tenant`` with ``TRADEENGINE_BROKER=live`` (the user opted
in, keys set), ``TRADEENGINE_FEED=ccxt`` and the real ccxt client for both market data and orders,
all pointed at one fake Binance (public klines/ws + the signed private endpoints) in this process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes.live_env import API_KEY, SECRET, start_exchange
from fakes.runtime_world import seed_user
from sqlalchemy import select, update

from tradeengine.store.engine import create_engine, create_session_factory
from tradeengine.store.models import MachineEvent, Order, Position, Trade, Trader, User

REPO = Path(__file__).resolve().parents[2]
TOKEN = "tet_live-kill-token"
ALWAYS = """
def check_signal(symbol, ticker, klines):
    return len(klines["5m"].close) > 20
"""
NEVER = "def check_signal(symbol, ticker, klines):\n    return False\n"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _spawn(env: dict[str, str], user_id: str, port: int, log: Path) -> asyncio.subprocess.Process:
    exe = Path(sys.executable).with_name("tradeengine")
    return await asyncio.create_subprocess_exec(
        str(exe),
        "serve",
        "--mode",
        "tenant",
        "--user-id",
        user_id,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        env=env,
        cwd=str(REPO),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


async def _wait(predicate: Callable[[], Awaitable[Any]], limit_s: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        found = await predicate()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; tenant log tail:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


@pytest.mark.slow
async def test_kill_9_real_live_tenant_stop_fills_while_dead_then_restart_reconciles(
    db_url: str, tmp_path: Path
) -> None:
    engine = create_engine(db_url)
    factory = create_session_factory(engine)
    fake, account = await start_exchange({"USDT": Decimal("10000"), "BTC": Decimal("0")})
    account.prices.clear()  # the exchange trades at the feed's last close, as the tenant sees it
    tenant: asyncio.subprocess.Process | None = None
    log = tmp_path / "tenant.log"
    try:
        user_id, (trader_id,) = await seed_user(
            factory,
            [
                {
                    "name": "always",
                    "signal_code": ALWAYS,
                    "check_interval": "1s",
                    "symbols": ["BTC/USDT"],
                    "max_open_positions": 1,
                    "trade_type": "real",
                    "stop_loss_pct": Decimal("2"),
                    "take_profit_pct": Decimal("4"),
                }
            ],
        )
        async with factory() as session:
            await session.execute(update(User).where(User.id == user_id).values(real_trading_enabled=True))
            await session.commit()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEENGINE_")}
        env.update(
            {
                "TRADEENGINE_DATABASE_URL": db_url,
                "TRADEENGINE_BROKER": "live",
                "TRADEENGINE_EXCHANGE_API_KEY": API_KEY,
                "TRADEENGINE_EXCHANGE_SECRET": SECRET,
                "TRADEENGINE_EXCHANGE_REST_URL": fake.base_url,
                "TRADEENGINE_EXCHANGE_WS_URL": fake.ws_url,
                "TRADEENGINE_FEED": "ccxt",
                "TRADEENGINE_ANALYST": "offline",
                "TRADEENGINE_TENANT_TOKEN": TOKEN,
                "TRADEENGINE_RECONCILE_INTERVAL_S": "1",  # periodic passes run too; none may double a fill
                "TRADEENGINE_JOURNAL_PATH": str(tmp_path / "journal.db"),
                "TRADEENGINE_DEFAULT_SYMBOLS": '["BTC/USDT"]',
                "TRADEENGINE_LOG_LEVEL": "INFO",
                "TRADEENGINE_LOG_FORMAT": "text",
            }
        )
        port = _free_port()

        # 1. The live tenant opens a position: a market entry, then a resting exchange stop.
        tenant = await _spawn(env, str(user_id), port, log)

        async def protected() -> tuple[Any, Any, Any] | None:
            if tenant is not None and tenant.returncode is not None:
                raise AssertionError(f"tenant exited {tenant.returncode}: {_tail(log)}")
            async with factory() as session:
                position = (await session.execute(select(Position))).scalars().first()
                if position is None:
                    return None
                orders = list((await session.execute(select(Order).where(Order.position_id == position.id))).scalars())
            entry = [o for o in orders if o.purpose == "entry" and o.status == "filled"]
            stop = [o for o in orders if o.client_order_id.startswith("tep-") and o.status == "open"]
            if entry and stop:
                return position, entry[0], stop[0]
            return None

        position, entry, stop = await _wait(protected, 120, "an open position with a resting exchange stop", log)
        assert stop.purpose == "stop_loss"
        # The entry row holds the quantity the exchange took (rounded to its lot step), not the
        # sizing's 8-decimal request: a market order filled in full has nothing remaining.
        assert entry.quantity == entry.filled_quantity > 0
        os.kill(tenant.pid, signal.SIGKILL)
        assert await tenant.wait() == -signal.SIGKILL
        tenant = None

        # 2. While it is dead the market falls through the stop (limit 0.5% under the trigger).
        (remote_stop,) = account.orders_by_client_id(stop.client_order_id)
        assert remote_stop.status == "NEW" and remote_stop.stop_price is not None
        exit_price = (remote_stop.stop_price * Decimal("0.998")).quantize(Decimal("0.01"))
        account.set_price("BTC/USDT", exit_price)
        assert remote_stop.status == "FILLED"
        posts = account.order_posts
        async with factory() as session:  # the strategy stops signalling: no new position after restart
            await session.execute(update(Trader).where(Trader.id == trader_id).values(signal_code=NEVER))
            await session.commit()

        # 3. Restart: the start reconciliation applies the fill.
        tenant = await _spawn(env, str(user_id), port, log)

        async def closed() -> Any:
            async with factory() as session:
                row = await session.get(Position, position.id, populate_existing=True)
                return row if row is not None and row.status == "closed" else None

        final = await _wait(closed, 90, "the restarted tenant to reconcile the stop fill", log)
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await _wait(healthy, 60, "the restarted tenant to serve", log)
            await asyncio.sleep(3)  # a few runtime/poll/protection-sync cycles: nothing may be re-sent
            async with http.post(
                f"http://127.0.0.1:{port}/shutdown",
                json={"reason": "test"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                assert resp.status == 200
        tenant.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(tenant.wait(), 60) == 0
        tenant = None
        # Shutdown closed the live broker (its ccxt client and its polling/reconcile/sync loops).
        assert "release all resources" not in _tail(log)

        # The position is closed at the stop's fill, with the P&L of both fills net of fees.
        assert (final.close_reason, final.exit_price) == ("stop_loss", exit_price)
        async with factory() as session:
            trades = list((await session.execute(select(Trade).where(Trade.position_id == position.id))).scalars())
            orders = list((await session.execute(select(Order))).scalars())
            events = list((await session.execute(select(MachineEvent))).scalars())
        buys = [t for t in trades if t.side == "BUY"]
        sells = [t for t in trades if t.side == "SELL"]
        assert len(buys) == 1 and len(sells) == 1
        # The exchange got the amount rounded to its lot step; the row keeps the requested one.
        assert buys[0].quantity == sells[0].quantity == entry.filled_quantity > 0
        assert sells[0].price == exit_price
        expected_pnl = (sells[0].price - buys[0].price) * sells[0].quantity - buys[0].fee - sells[0].fee
        assert final.pnl == expected_pnl
        assert final.size == 0

        # Exactly one entry and one stop on the exchange for it; nothing was sent after the kill.
        assert account.order_posts == posts
        assert len(account.orders_by_client_id(entry.client_order_id)) == 1
        assert len(account.orders_by_client_id(stop.client_order_id)) == 1
        remote_ids = [o.client_order_id for o in account.orders.values()]
        assert len(remote_ids) == len(set(remote_ids)) == 2, remote_ids
        assert all(o.status in ("FILLED", "CANCELED") for o in account.orders.values())
        # Orders rows agree with the exchange: one per client id, both filled with their fills.
        assert len({o.client_order_id for o in orders}) == len(orders) == 2
        by_id = {o.client_order_id: o for o in orders}
        assert by_id[stop.client_order_id].status == "filled"
        assert by_id[stop.client_order_id].filled_quantity == entry.filled_quantity
        assert by_id[entry.client_order_id].status == "filled"
        assert {t.order_id for t in trades} == {o.id for o in orders}
        # The correction is recorded.
        corrections = [e for e in events if e.kind == "reconcile_order" and stop.client_order_id in str(e.payload)]
        assert len(corrections) == 1, [(e.kind, e.payload) for e in events]
        # Balances on the exchange match: the bought BTC was sold by the stop.
        assert account.free.get("BTC", Decimal(0)) == 0
    finally:
        if tenant is not None and tenant.returncode is None:
            tenant.kill()
            await tenant.wait()
        await fake.stop()
        await engine.dispose()
