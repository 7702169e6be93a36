"""Run alembic from Python (the CLI's ``tradeengine db ...`` calls these).

The migration scripts ship inside the package (``tradeengine/store/alembic``) so an installed
package (the Docker image) finds them from any working directory; the top-level ``alembic.ini``
points there for the ``alembic`` command in a dev checkout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

SCRIPT_LOCATION = Path(__file__).resolve().parent / "alembic"

T = TypeVar("T")


def alembic_config(url: str) -> Config:
    """An alembic Config for ``url`` that needs no ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    # Passed through attributes, not the ini option, so '%' in passwords needs no escaping.
    cfg.attributes["sqlalchemy.url"] = url
    return cfg


def _off_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` here, or in a worker thread if this thread already runs an event loop
    (env.py uses asyncio.run, which can't nest)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def upgrade(url: str, revision: str = "head") -> None:
    _off_loop(lambda: command.upgrade(alembic_config(url), revision))


def downgrade(url: str, revision: str) -> None:
    _off_loop(lambda: command.downgrade(alembic_config(url), revision))


def head() -> str | None:
    """The newest revision in the scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_async(url: str) -> str | None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision())
    finally:
        await engine.dispose()


def current(url: str) -> str | None:
    """The revision the database is at, or None for an unmigrated database."""
    return _off_loop(lambda: asyncio.run(current_async(url)))


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


async def downgrade_async(url: str, revision: str) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)
