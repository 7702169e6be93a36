"""Row-level security: a tenant's own Postgres role sees and writes only its own user's rows."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tradeengine.store.engine import create_engine, create_session_factory
from tradeengine.store.models import Signal, Trader, User
from tradeengine.store.tenant_roles import ensure_tenant_role, tenant_database_url
from tradeengine.store.uow import UnitOfWork

pytestmark = pytest.mark.postgres


async def _seed(url: str) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    engine = create_engine(url)
    try:
        async with UnitOfWork(create_session_factory(engine)) as uow:
            ids = []
            for email in ("a@example.com", "b@example.com"):
                user = uow.users.add(User(email=email, tier="pro"))
                await uow.flush()
                trader = uow.traders.add(
                    Trader(
                        user_id=user.id,
                        name="t",
                        signal_code="x",
                        ai_instructions="y",
                        timeframes=["1h"],
                        check_interval="1m",
                        reanalysis_interval="5m",
                    )
                )
                await uow.flush()
                uow.signals.add(
                    Signal(user_id=user.id, trader_id=trader.id, symbol="BTC/USDT", trigger_price=Decimal("100"))
                )
                ids.append((user.id, trader.id))
            await uow.commit()
            await ensure_tenant_role(uow.session, ids[0][0], "pw-a")
            await ensure_tenant_role(uow.session, ids[1][0], "pw-b")
            await uow.commit()
        return ids[0][0], ids[1][0], ids[1][1]
    finally:
        await engine.dispose()


async def _connect(url: str) -> asyncpg.Connection:
    u = make_url(url)
    return await asyncpg.connect(host=u.host, port=u.port, user=u.username, password=u.password, database=u.database)


async def test_tenant_role_cannot_read_or_write_other_tenants_signals(postgres_url: str) -> None:
    user_a, user_b, trader_b = await _seed(postgres_url)
    conn = await _connect(tenant_database_url(postgres_url, f"tenant_{user_a.hex}", "pw-a"))
    try:
        rows = await conn.fetch("SELECT user_id FROM signals")
        assert [r["user_id"] for r in rows] == [user_a]
        assert await conn.fetchval("SELECT count(*) FROM signals WHERE user_id = $1", user_b) == 0
        assert [r["id"] for r in await conn.fetch("SELECT id FROM users")] == [user_a]

        # Writes aimed at B's rows: updates/deletes match nothing; inserts are refused.
        assert await conn.execute("UPDATE signals SET status = 'closed' WHERE user_id = $1", user_b) == "UPDATE 0"
        assert await conn.execute("DELETE FROM signals WHERE user_id = $1", user_b) == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(
                "INSERT INTO signals (id, trader_id, user_id, symbol, timestamp, status, trigger_price, "
                "created_at, updated_at) VALUES ($1, $2, $3, 'ETH/USDT', now(), 'new', 1, now(), now())",
                uuid.uuid4(),
                trader_b,
                user_b,
            )
        # Its own rows are writable; its account (tier) is not.
        assert await conn.execute("UPDATE signals SET status = 'watching' WHERE user_id = $1", user_a) == "UPDATE 1"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE users SET tier = 'power' WHERE id = $1", user_a)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE signals SET user_id = $1 WHERE user_id = $2", user_b, user_a)
    finally:
        await conn.close()

    # The control plane (owner) still sees everything, and B's rows are untouched.
    admin = await _connect(postgres_url)
    try:
        statuses = dict(await admin.fetch("SELECT user_id, status FROM signals"))
        assert statuses == {user_a: "watching", user_b: "new"}
    finally:
        await admin.close()


async def test_role_without_tenant_name_sees_nothing(postgres_url: str) -> None:
    await _seed(postgres_url)
    engine = create_engine(postgres_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='te_other') "
                    "THEN CREATE ROLE te_other LOGIN; END IF; END $$"
                )
            )
            await conn.execute(text("GRANT tradeengine_tenant TO te_other"))
    finally:
        await engine.dispose()
    u = make_url(postgres_url)
    conn = await asyncpg.connect(host=u.host, port=u.port, user="te_other", database=u.database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM signals") == 0
        assert await conn.fetchval("SELECT tradeengine_tenant_user_id()") is None
    finally:
        await conn.close()


async def test_provisioning_hands_the_tenant_its_own_role_and_destroy_revokes_it(postgres_url: str) -> None:
    """Through MachineService: the tenant's DATABASE_URL sees only its user's rows, then stops working."""
    from fakes.control_harness import control_harness

    async with control_harness(postgres_url) as h:
        await h.seed_rows("alice")
        await h.seed_rows("bob")
        result = await h.machines.provision(h.users["alice"])
        env = h.fly.machines[result.machine.machine_id].config["env"]
        url = make_url(env["TRADEENGINE_DATABASE_URL"])
        assert url.username == f"tenant_{h.users['alice'].hex}"
        assert url.password
        assert url.password not in postgres_url
        conn = await _connect(env["TRADEENGINE_DATABASE_URL"])
        try:
            assert {r["user_id"] for r in await conn.fetch("SELECT user_id FROM signals")} == {h.users["alice"]}
            # The runtime's heartbeat works under RLS.
            assert (
                await conn.execute(
                    "UPDATE fly_machines SET last_heartbeat = now() WHERE user_id = $1", h.users["alice"]
                )
                == "UPDATE 1"
            )
        finally:
            await conn.close()
        await h.machines.destroy(h.users["alice"], "user_request")
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="not permitted to log in"):
            await _connect(env["TRADEENGINE_DATABASE_URL"])
