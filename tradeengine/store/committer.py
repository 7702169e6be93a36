"""Commit write-behind merges in a child process (backtests on a throwaway database).

A backtest's runtime groups its writes (``DurableWriter(write_behind=N)``) and commits them in
one transaction per N batches. Merging and committing them (``coalesce``, SQLAlchemy's per-row
parameter processing, SQLite) is CPU work of the same order as the replay itself, and in the
replay's process it holds the GIL, so a thread would not overlap with the replay. A child
process does: the replay process only pickles the batches (about a quarter of the work) and
goes on, and the merges are applied there, one at a time, in the order they were sent.

The child applies exactly what ``DurableWriter`` would (``commit_batch(coalesce(batches))``).
If one merge fails, it applies nothing after it, and the failure is raised in the replay
process at its next write or at ``drain``. A throwaway database has no journal fallback to
keep it consistent, so a failed commit ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import subprocess
import sys
import uuid
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

from tradeengine.store.batch import WriteBatch, batches_from_plain, batches_to_plain

_MAX_IN_FLIGHT = 4  # merges sent but not yet committed; bounds the child's backlog and our memory
_MAX_ERROR = 2000


def _uuid(value: int, safe: uuid.SafeUUID = uuid.SafeUUID.unknown) -> uuid.UUID:
    """Unpickle a UUID sent by ``_reduce_uuid``: the UUID ``UUID(int=value)`` is."""
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", safe)
    return made


def _reduce_uuid(value: uuid.UUID) -> tuple[Any, ...]:
    # A UUID pickles through its Python-level __getstate__/__setstate__ (3.4 µs each here);
    # a full bench run sends 110k of them. As an int: 0.95 µs. Only for this pipe's pickler.
    if value.is_safe is uuid.SafeUUID.unknown:
        return _uuid, (value.int,)
    return _uuid, (value.int, value.is_safe)


ForkingPickler.register(uuid.UUID, _reduce_uuid)


class CommitError(RuntimeError):
    """A merge the child process could not commit (the message is the database's)."""


class ProcessCommitter:
    """A child process that commits lists of write batches, in order, one transaction each."""

    def __init__(self, database_url: str) -> None:
        # A fresh interpreter (``python -m``), not a fork: the parent runs an event loop and
        # database threads that must not be copied half-way through something; and not
        # multiprocessing's spawn, which re-runs the parent's main script in the child. The URL
        # (it may hold a password) goes over the pipe, never on the command line.
        self._conn, child = multiprocessing.Pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tradeengine.store.committer", str(child.fileno())],
            pass_fds=(child.fileno(),),
        )
        child.close()
        self._conn.send(database_url)
        self._in_flight = 0
        self._error: str | None = None
        self._closed = False

    def submit(self, batches: list[WriteBatch]) -> None:
        """Send ``batches`` to be merged and committed after everything sent before."""
        self._collect(block=False)
        while self._in_flight >= _MAX_IN_FLIGHT:
            self._collect(block=True)
        self._raise_if_failed()
        self._conn.send(batches_to_plain(batches))
        self._in_flight += 1

    async def drain(self) -> None:
        """Wait until everything sent is committed; raise CommitError if something was not."""
        while self._in_flight:
            await asyncio.to_thread(self._collect, block=True)
        self._raise_if_failed()

    async def close(self) -> None:
        """Drain, then stop the child. Idempotent."""
        if self._closed:
            return
        try:
            await self.drain()
        finally:
            self._closed = True
            with contextlib.suppress(OSError):  # the child is gone already
                self._conn.send(None)
            try:
                await asyncio.to_thread(self._process.wait, 10)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._conn.close()

    def _collect(self, *, block: bool) -> None:
        while self._in_flight and (block or self._conn.poll()):
            try:
                kind, detail = self._conn.recv()
            except EOFError:
                self._in_flight = 0
                self._error = self._error or f"the commit process exited (code {self._process.poll()})"
                return
            self._in_flight -= 1
            if kind == "error" and self._error is None:
                self._error = detail
            block = False  # one blocking receive per call; then whatever is already there

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise CommitError(f"write-behind commit failed: {self._error}")


def _serve(conn: Connection) -> None:
    """The child: commit each received list of batches as one merge; stop on None or EOF."""
    from tradeengine.store.batch import coalesce, commit_batch
    from tradeengine.store.engine import create_engine, create_session_factory

    database_url: str = conn.recv()
    loop = asyncio.new_event_loop()
    engine = create_engine(database_url)
    factory = create_session_factory(engine)
    failed: str | None = None
    try:
        while True:
            try:
                batches: Any = conn.recv()
            except EOFError:
                break
            if batches is None:
                break
            if failed is not None:  # nothing after a failed merge: it may depend on the lost rows
                conn.send(("error", failed))
                continue
            try:
                loop.run_until_complete(commit_batch(factory, coalesce(batches_from_plain(batches))))
            except Exception as exc:
                failed = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]
                conn.send(("error", failed))
            else:
                conn.send(("ok", len(batches)))
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()
        conn.close()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
