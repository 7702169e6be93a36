"""kill -9 a real tenant process mid-run, restart it, and check nothing was lost or applied twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes.runtime_world import seed_user
from sqlalchemy import func, select

from tradeengine.store.engine import create_engine, create_session_factory
from tradeengine.store.models import AnalysisHistory, Order, Position, Signal, Trade, User

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
DAY = 86_400_000
T0 = 1_606_780_800_000
TOKEN = "tet_recovery-test-token"

OFTEN = """
def check_signal(symbol, ticker, klines):
    k = klines["5m"]
    return len(k.close) > 30 and k.close[-1] < k.open[-1] * 0.997
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(db_url: str, user_id: str, tmp: Path, port: int, start_ms: int, end_ms: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TRADEENGINE_DATABASE_URL": db_url,
        "TRADEENGINE_FEED": "replay",
        "TRADEENGINE_REPLAY_DATA_DIR": str(DATA),
        "TRADEENGINE_REPLAY_START_MS": str(start_ms),
        "TRADEENGINE_REPLAY_END_MS": str(end_ms),
        "TRADEENGINE_ANALYST": "offline",
        "TRADEENGINE_TENANT_TOKEN": TOKEN,
        "TRADEENGINE_JOURNAL_PATH": str(tmp / "journal.db"),
        "TRADEENGINE_LOG_LEVEL": "WARNING",
        "TRADEENGINE_LOG_FORMAT": "text",
    }
    exe = Path(sys.executable).with_name("tradeengine")
    return subprocess.Popen(
        [
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
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "log", "ab"),
    )


async def _count(factory: Any, model: Any) -> int:
    async with factory() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def _wait(predicate: Callable[[], Any], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
async def test_kill_9_then_restart_loses_nothing_and_doubles_nothing(
    new_db_url: Callable[..., str], tmp_path: Path
) -> None:
    db_url = new_db_url("sqlite")
    engine = create_engine(db_url)
    factory = create_session_factory(engine)
    user_id, _ = await seed_user(
        factory,
        [
            {
                "name": "often",
                "signal_code": OFTEN,
                "symbols": ["BTC/USDT", "ETH/USDT"],
                "max_open_positions": 2,
            }
        ],
    )
    port = _free_port()
    first = _spawn(db_url, str(user_id), tmp_path, port, T0 + 2 * DAY, T0 + 20 * DAY)
    try:
        await _wait(lambda: _orders_at_least(factory, 4), 180, "the first run to trade")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    before = {
        name: await _count(factory, model)
        for name, model in (
            ("signals", Signal),
            ("analyses", AnalysisHistory),
            ("orders", Order),
            ("trades", Trade),
        )
    }
    async with factory() as session:
        last_signal = (await session.execute(select(func.max(Signal.timestamp)))).scalar_one()
    resume_ms = (int(last_signal.timestamp() * 1000) // 300_000 + 1) * 300_000

    second = _spawn(db_url, str(user_id), tmp_path, port, resume_ms, resume_ms + DAY)
    try:
        async with aiohttp.ClientSession() as http:

            async def replay_done() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        body = await resp.json()
                except aiohttp.ClientError:
                    return False
                return body.get("websocketConnected") is False and body.get("status") != "stopped"

            await _wait(replay_done, 180, "the second run to finish its replay")
            async with http.get(
                f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                assert resp.status == 200
            async with http.post(
                f"http://127.0.0.1:{port}/shutdown",
                json={"reason": "test"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                final = await resp.json()
        assert final["success"] is True
        assert "openPositions" in final
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        if second.poll() is None:
            second.kill()

    # Nothing lost: everything the first run committed is still there, and the second run went on.
    for name, model in (
        ("signals", Signal),
        ("analyses", AnalysisHistory),
        ("orders", Order),
        ("trades", Trade),
    ):
        assert await _count(factory, model) >= before[name], name
    async with factory() as session:
        orders = list((await session.execute(select(Order))).scalars())
        trades = list((await session.execute(select(Trade))).scalars())
        positions = list((await session.execute(select(Position))).scalars())
        signals = list((await session.execute(select(Signal))).scalars())
        user = await session.get(User, user_id)
    # No order left half-done, none doubled: one order per (decision, step), one fill per order.
    assert all(o.status in ("filled", "rejected", "expired") for o in orders), [o.status for o in orders]
    assert len({o.client_order_id for o in orders}) == len(orders)
    fills_per_order: dict[Any, int] = {}
    for t in trades:
        fills_per_order[t.order_id] = fills_per_order.get(t.order_id, 0) + 1
    assert all(n == 1 for n in fills_per_order.values())
    # At most one active signal per trader and symbol.
    active = [(s.trader_id, s.symbol) for s in signals if s.status != "closed"]
    assert len(active) == len(set(active))
    # Positions match their fills; the paper cash is exactly the start plus every fill's cash flow.
    for p in positions:
        mine = [t for t in trades if t.position_id == p.id]
        bought = sum((t.quantity for t in mine if t.side == "BUY"), Decimal(0))
        sold = sum((t.quantity for t in mine if t.side == "SELL"), Decimal(0))
        assert p.size == bought - sold
        assert (p.status == "closed") == (p.size == 0)
    cash = Decimal(10000)
    for t in trades:
        cash += (t.price * t.quantity if t.side == "SELL" else -t.price * t.quantity) - t.fee
    # NUMERIC(20, 8) rounds the stored cash; the account is rebuilt from it on restart.
    assert user is not None
    assert user.paper_balance is not None
    assert abs(user.paper_balance - cash) <= Decimal("1e-8")
    await engine.dispose()


async def _orders_at_least(factory: Any, n: int) -> bool:
    return await _count(factory, Order) >= n
