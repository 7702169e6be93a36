"""Shared fixtures: a real Postgres per test session, migrated SQLite/Postgres databases per test.

Fixtures for everyone:
- ``db_url``          a fresh, migrated database URL; parametrized over ["sqlite", "postgres"]
- ``sqlite_url`` / ``postgres_url``   the same for one backend only
- ``engine``, ``session_factory``, ``uow``   built on ``db_url``
- ``new_db_url``      factory ``new_db_url(backend, migrated=True) -> str`` for tests needing several
- ``postgres_admin_url``   superuser URL of the shared server (database ``postgres``)
- ``own_postgres``    a private Postgres server (fresh cluster) the test may ``stop()``/``start()``;
                      never stop the shared one, other tests use it.

``TRADEENGINE_TEST_DATABASE_URL`` (postgresql+asyncpg://user@host:port/db, a superuser) makes the
session use that server instead of starting one. Migrations run once per session per backend;
each test gets a copy (``CREATE DATABASE .. TEMPLATE`` / file copy), so tests are isolated and fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tradeengine.store import migrations
from tradeengine.store.engine import SessionFactory, create_engine, create_session_factory
from tradeengine.store.uow import UnitOfWork

T = TypeVar("T")
TEST_DB_ENV = "TRADEENGINE_TEST_DATABASE_URL"
BACKENDS = ["sqlite", "postgres"]


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even if this thread has a running loop."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: p.parts)
    if candidates:
        return str(candidates[-1])
    raise RuntimeError(f"{name} not found: install postgresql or set {TEST_DB_ENV}")


class PostgresServer:
    """A throwaway Postgres cluster in a temp dir (fsync off). Runs as user postgres when root."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="te-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "log"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.dir, user="postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}\n{log[-2000:]}")

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "start", "-o", opts)

    def stop(self, mode: str = "fast") -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


async def _admin(admin_url: str, *statements: str) -> None:
    import asyncpg

    u = make_url(admin_url)
    conn = await asyncpg.connect(host=u.host, port=u.port, user=u.username, password=u.password, database=u.database)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """Superuser URL of the session's Postgres (started here unless TRADEENGINE_TEST_DATABASE_URL)."""
    external = os.environ.get(TEST_DB_ENV)
    if external:
        yield external
        return
    server = PostgresServer()
    try:
        server.start()
        yield server.admin_url
    finally:
        server.destroy()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A private, running Postgres server the test may stop and start (costs ~1-2 s)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


async def _server_version(admin_url: str) -> int:
    import asyncpg

    u = make_url(admin_url)
    conn = await asyncpg.connect(host=u.host, port=u.port, user=u.username, password=u.password, database=u.database)
    try:
        return int(await conn.fetchval("SHOW server_version_num"))
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def _pg_template(postgres_admin_url: str) -> Iterator[tuple[str, str]]:
    """(template database name, extra CREATE DATABASE options); dropped at session end."""
    name = f"te_tmpl_{uuid.uuid4().hex[:8]}"
    run_async(lambda: _admin(postgres_admin_url, f'CREATE DATABASE "{name}"'))
    try:
        migrations.upgrade(_with_database(postgres_admin_url, name))
        # Postgres 15+ copies a small template ~3x faster by files than through the WAL (measured).
        version = run_async(lambda: _server_version(postgres_admin_url))
        yield name, " STRATEGY FILE_COPY" if version >= 150000 else ""
    finally:
        # Matters on an external server (TRADEENGINE_TEST_DATABASE_URL); ours is deleted anyway.
        with contextlib.suppress(Exception):
            run_async(lambda: _admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrations.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def new_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory: ``new_db_url("sqlite"|"postgres", migrated=True) -> url`` of a fresh database."""
    created: list[str] = []
    admin: list[str] = []

    def make(backend: str, migrated: bool = True) -> str:
        if backend == "sqlite":
            path = tmp_path / f"db-{uuid.uuid4().hex[:8]}.db"
            if migrated:
                shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
            return f"sqlite+aiosqlite:///{path}"
        if backend == "postgres":
            admin_url: str = request.getfixturevalue("postgres_admin_url")
            name = f"te_{uuid.uuid4().hex[:12]}"
            if migrated:
                template, options = request.getfixturevalue("_pg_template")
                sql = f'CREATE DATABASE "{name}" TEMPLATE "{template}"{options}'
            else:
                sql = f'CREATE DATABASE "{name}"'
            run_async(lambda: _admin(admin_url, sql))
            created.append(name)
            admin[:] = [admin_url]
            return _with_database(admin_url, name)
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    yield make
    for name in created:
        run_async(lambda n=name: _admin(admin[0], f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))  # type: ignore[misc]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, new_db_url: Callable[..., str]) -> str:
    """A fresh migrated database on each backend (the test runs once per backend)."""
    return new_db_url(backend)


@pytest.fixture
def sqlite_url(new_db_url: Callable[..., str]) -> str:
    return new_db_url("sqlite")


@pytest.fixture
def postgres_url(new_db_url: Callable[..., str]) -> str:
    return new_db_url("postgres")


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(db_url)
    yield eng
    await eng.dispose()


@pytest.fixture
def session_factory(engine: AsyncEngine) -> SessionFactory:
    return create_session_factory(engine)


@pytest.fixture
async def uow(session_factory: SessionFactory) -> AsyncIterator[UnitOfWork]:
    """An open unit of work; the test must ``await uow.commit()`` to keep changes."""
    async with UnitOfWork(session_factory) as unit:
        yield unit
