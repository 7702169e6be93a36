"""Engine setup per backend, and the test Postgres fixtures other suites rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PostgresServer
from sqlalchemy import text

from tradeengine.settings import Settings
from tradeengine.store import migrations
from tradeengine.store.engine import create_engine, create_session_factory
from tradeengine.store.uow import UnitOfWork


async def test_sqlite_engine_sets_pragmas(tmp_path: Path) -> None:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"))
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one() == 5000
    finally:
        await engine.dispose()


async def test_in_memory_sqlite_shares_one_database() -> None:
    engine = create_engine("sqlite+aiosqlite:///:memory:")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
    finally:
        await engine.dispose()


def test_unsupported_backend_names_the_setting() -> None:
    with pytest.raises(ValueError, match="database_url"):
        create_engine("mysql+aiomysql://u@h/db")


@pytest.mark.postgres
async def test_own_postgres_can_be_stopped_and_started(own_postgres: PostgresServer) -> None:
    url = own_postgres.url("postgres")
    await migrations.upgrade_async(url)
    engine = create_engine(url)
    factory = create_session_factory(engine)
    try:
        async with UnitOfWork(factory) as uow:
            from fakes.store_rows import make_user

            uow.users.add(make_user(email="durable@example.com"))
            await uow.commit()
        own_postgres.stop()
        assert not own_postgres.running
        with pytest.raises(OSError):  # asyncpg: connection refused
            async with UnitOfWork(factory) as uow:
                await uow.users.get_by_email("durable@example.com")
        own_postgres.start()
        async with UnitOfWork(factory) as uow:
            assert await uow.users.get_by_email("durable@example.com") is not None
    finally:
        await engine.dispose()
