"""kill -9 of a live-execution process at the worst moments, then a restart against the same
database and fake exchange: the fill is reconciled, nothing is sent twice, the position is right.

The killed process is ``tests/fakes/live_worker.py`` (settings from the environment like a
tenant, the real CcxtBroker, OrderLog and Reconciler); the full tenant runtime is not used here.
One scenario covers both crash windows because every process start pays ccxt's import time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fakes.binance import FakeBinance
from fakes.binance_account import FakeBinanceAccount
from fakes.live_env import API_KEY, SECRET, Seeded, seed, start_exchange

from tradeengine.runtime.state import client_order_id
from tradeengine.store.engine import SessionFactory
from tradeengine.store.uow import UnitOfWork

WORKER = Path(__file__).resolve().parents[1] / "fakes" / "live_worker.py"
REPO = Path(__file__).resolve().parents[2]
SIZE = Decimal("0.05")


@pytest.fixture
async def exchange() -> AsyncIterator[tuple[FakeBinance, FakeBinanceAccount]]:
    fake, account = await start_exchange({"USDT": Decimal("10000"), "BTC": SIZE})
    try:
        yield fake, account
    finally:
        await fake.stop()


def worker_env(fake: FakeBinance, db_url: str, seeded: Seeded, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEENGINE_")}
    env.update(
        {
            "TRADEENGINE_BROKER": "live",
            "TRADEENGINE_EXCHANGE_API_KEY": API_KEY,
            "TRADEENGINE_EXCHANGE_SECRET": SECRET,
            "TRADEENGINE_EXCHANGE_REST_URL": fake.base_url,
            "TRADEENGINE_DATABASE_URL": db_url,
            "TRADEENGINE_USER_ID": str(seeded.user_id),
            "TRADEENGINE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
            "LIVE_SIGNAL_ID": str(seeded.signal_id),
            "LIVE_TRADER_ID": str(seeded.trader_id),
        }
    )
    env.update(extra)
    return env


async def start(command: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        command,
        env=env,
        cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def next_line(proc: asyncio.subprocess.Process, limit_s: float = 60) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), limit_s)
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"worker ended early: {(await proc.stderr.read()).decode()[-3000:]}")
    return dict(json.loads(line))


async def kill9(proc: asyncio.subprocess.Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL


async def run_to_end(command: str, env: dict[str, str]) -> list[dict[str, Any]]:
    proc = await start(command, env)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


async def wait_for(predicate: Any, limit_s: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.postgres
async def test_kill_9_while_an_entry_fills_and_a_stop_fills_while_dead_then_restart(
    exchange: tuple[FakeBinance, FakeBinanceAccount], postgres_url: str
) -> None:
    """Position A (seeded, 0.05 BTC) gets an exchange stop; then an entry for a new position B is
    recorded and sent; the exchange fills it but its answer stalls; kill -9. While the process is
    dead the market falls through A's stop. The restart must: close A at the stop with P&L, open
    B from the adopted fill, and send nothing twice."""
    from tradeengine.store.engine import create_engine, create_session_factory

    engine = create_engine(postgres_url)
    try:
        await _scenario(exchange, create_session_factory(engine), postgres_url)
    finally:
        await engine.dispose()


async def _scenario(exchange: tuple[FakeBinance, FakeBinanceAccount], factory: SessionFactory, db_url: str) -> None:
    fake, account = exchange
    seeded = await seed(factory, position_size=SIZE)
    coid = client_order_id(uuid.uuid4(), "open")
    env = worker_env(
        fake,
        db_url,
        seeded,
        LIVE_CLIENT_ID=coid,
        LIVE_QUANTITY="0.01",
        LIVE_POSITION_ID=str(seeded.position_id),
        LIVE_STOP_QUANTITY=str(SIZE),
        LIVE_STOP="38000",
    )
    account.stall_next(1, seconds=5, order_type="MARKET")  # filled on the exchange, answer late
    proc = await start("protect-then-place", env)
    protected = await next_line(proc)
    assert (protected["step"], protected["status"]) == ("protected", "open")
    assert (await next_line(proc))["step"] == "recorded"
    await wait_for(lambda: account.order_posts == 2)  # the stop, then the entry
    await kill9(proc)

    async with UnitOfWork(factory) as uow:
        row = await uow.orders.get_by_client_order_id(coid)
        assert row is not None
        assert row.status == "pending"  # the intent survived the kill
    assert account.orders_by_client_id(coid)[0].status == "FILLED"
    account.set_price("BTC/USDT", Decimal("37900"))  # while dead: through the stop (limit 37 810)

    lines = await run_to_end("recover", env)
    assert lines[0]["step"] == "reconciled"
    assert (lines[0]["fills"], lines[0]["opened"], lines[0]["closed"]) == (2, 1, 1)
    assert lines[1] == {"step": "resumed", "status": "filled", "filled": "0.01"}
    assert account.order_posts == 2  # nothing was sent again
    assert len(account.orders_by_client_id(coid)) == 1
    async with UnitOfWork(factory) as uow:
        a = await uow.positions.get(seeded.position_id)  # type: ignore[arg-type]
        assert a is not None
        assert (a.status, a.close_reason, a.exit_price) == ("closed", "stop_loss", Decimal("37900.00000000"))
        assert a.pnl == Decimal("-108.89500000")  # (37900 - 40000) * 0.05 - fees 2 + 1.895
        row = await uow.orders.get_by_client_order_id(coid)
        assert row is not None
        assert row.status == "filled"
        assert row.position_id is not None
        b = await uow.positions.get(row.position_id)
        assert b is not None
        assert (b.status, b.side, b.size, b.entry_price) == (
            "open",
            "long",
            Decimal("0.01000000"),
            Decimal("40000.00000000"),
        )
        trades = await uow.trades.for_position(b.id)
        assert [(t.side, t.quantity, t.fee) for t in trades] == [("BUY", Decimal("0.01000000"), Decimal("0.40000000"))]
        corrections = await uow.events.list(user_id=seeded.user_id, kind="reconcile_order")
        assert len(corrections.items) == 2
    assert account.free["BTC"] == Decimal("0.01")  # 0.05 sold by the stop, 0.01 bought
