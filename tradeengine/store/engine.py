"""Engine and session factory for Postgres (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from tradeengine.settings import Settings

SessionFactory = async_sessionmaker[AsyncSession]


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets readers run beside one writer, and
    # busy_timeout makes a second writer wait instead of failing at once with "database is locked".
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def create_engine(settings_or_url: Settings | str, *, pool_size: int | None = None, echo: bool = False) -> AsyncEngine:
    """An AsyncEngine for ``settings.database_url`` (or a URL), configured per backend."""
    if isinstance(settings_or_url, Settings):
        url = settings_or_url.database_url
        size = pool_size or settings_or_url.database_pool_size
    else:
        url = settings_or_url
        size = pool_size or 5
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        kwargs: dict[str, Any] = {}
        if parsed.database in (None, "", ":memory:"):
            # One shared connection, or every checkout would see a different empty database.
            kwargs["poolclass"] = StaticPool
        engine = create_async_engine(url, echo=echo, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    if backend == "postgresql":
        return create_async_engine(
            url,
            echo=echo,
            pool_size=size,
            max_overflow=size,
            pool_pre_ping=True,
            pool_recycle=1800,
        )
    raise ValueError(f"database_url: unsupported backend {backend!r} (use sqlite+aiosqlite or postgresql+asyncpg)")


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions that keep loaded attributes after commit (no surprise lazy loads in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=True)
