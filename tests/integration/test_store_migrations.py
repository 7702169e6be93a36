"""Alembic chain on real Postgres and SQLite: creates every table, matches the models, reversible."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from tradeengine.store import migrations
from tradeengine.store.models import Base

SEED_TABLES = {
    "users",
    "fly_machines",
    "traders",
    "signals",
    "positions",
    "trades",
    "analysis_history",
    "signal_analyses",
    "ai_prompts",
    "orders",
    "machine_events",
}
# Later issues add tables (e.g. ai_rate_limits, migration 0002) with a migration; every model
# table must exist after upgrade.
EXPECTED_TABLES = set(Base.metadata.tables)


async def _inspect(url: str, fn: Callable[[Connection], Any]) -> Any:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


def _diff(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


@pytest.fixture
def empty_url(backend: str, new_db_url: Callable[..., str]) -> str:
    return new_db_url(backend, migrated=False)


def test_models_cover_every_seed_table() -> None:
    assert SEED_TABLES <= EXPECTED_TABLES


async def test_upgrade_creates_every_table_and_matches_models(empty_url: str) -> None:
    assert await _inspect(empty_url, _tables) == set()
    assert migrations.current(empty_url) is None

    await migrations.upgrade_async(empty_url)

    assert await _inspect(empty_url, _tables) == EXPECTED_TABLES
    assert migrations.current(empty_url) == migrations.head()
    assert await _inspect(empty_url, _diff) == []


async def test_downgrade_base_then_upgrade_head(empty_url: str) -> None:
    await migrations.upgrade_async(empty_url)
    await migrations.downgrade_async(empty_url, "base")
    assert await _inspect(empty_url, _tables) == set()
    assert migrations.current(empty_url) is None

    await migrations.upgrade_async(empty_url, "head")
    assert await _inspect(empty_url, _tables) == EXPECTED_TABLES
    assert await _inspect(empty_url, _diff) == []


def test_sync_api_works_outside_an_event_loop(new_db_url: Callable[..., str]) -> None:
    url = new_db_url("sqlite", migrated=False)
    migrations.upgrade(url)
    assert migrations.current(url) == migrations.head()
    migrations.downgrade(url, "base")
    assert migrations.current(url) is None


def test_head_is_a_single_revision() -> None:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    assert migrations.head() == script.get_current_head()
