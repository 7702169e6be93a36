"""Durable writes: commit each batch to the database, or to a local journal while it is down.

The journal is a SQLite file (stdlib ``sqlite3``, ``synchronous=FULL``): an append-only table of
serialized ``WriteBatch``es. Once anything is journaled, later batches go to the journal too, so
the database always receives writes in the order they happened; a background loop replays the
journal (oldest first, each batch idempotently in its own transaction) as soon as the database
answers again, then switches back to direct commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from loguru import logger
from sqlalchemy import exc as sa_exc

from tradeengine.clock import Clock
from tradeengine.store.batch import WriteBatch, batch_from_json, batch_to_json, coalesce, commit_batch
from tradeengine.store.committer import ProcessCommitter
from tradeengine.store.engine import SessionFactory


def is_database_unavailable(error: BaseException) -> bool:
    """True for connection-level failures (retry later); False for bugs like constraint violations."""
    if isinstance(error, sa_exc.IntegrityError | sa_exc.ProgrammingError | sa_exc.DataError):
        return False
    if isinstance(error, sa_exc.DBAPIError):
        return True  # OperationalError, InterfaceError, invalidated connections
    return isinstance(error, OSError | TimeoutError | ConnectionError | sa_exc.TimeoutError)


class Journal:
    """Append-only local file of batches not yet in the database."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS refused (seq INTEGER PRIMARY KEY, body TEXT NOT NULL, error TEXT NOT NULL)"
        )

    def append(self, batch: WriteBatch) -> None:
        self._db.execute("INSERT INTO batches (body) VALUES (?)", (batch_to_json(batch),))

    def peek(self) -> tuple[int, WriteBatch] | None:
        row = self._db.execute("SELECT seq, body FROM batches ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), batch_from_json(row[1]))

    def set_aside(self, seq: int, error: str) -> None:
        """Move a batch the database refuses for good out of the way, keeping it for an operator."""
        self._db.execute("BEGIN")
        self._db.execute(
            "INSERT INTO refused (seq, body, error) SELECT seq, body, ? FROM batches WHERE seq = ?", (error, seq)
        )
        self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
        self._db.execute("COMMIT")

    def refused_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM refused").fetchone()[0])

    def remove(self, seq: int) -> None:
        self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class DurableWriter:
    """Commit batches in order; fall back to the journal while the database is unreachable."""

    def __init__(
        self,
        factory: SessionFactory,
        journal: Journal,
        clock: Clock,
        *,
        retry_interval_s: float = 2.0,
        write_behind: int = 0,
        committer: ProcessCommitter | None = None,
    ) -> None:
        """``write_behind`` > 0 buffers up to that many batches and commits them in one
        transaction (backtests on a throwaway database: throughput over per-step durability);
        0 (live) commits every batch before ``write`` returns. With a ``committer`` (write-behind
        only), full buffers are committed by its child process while this one goes on; ``flush``
        waits for them. The writer closes the committer."""
        self._factory = factory
        self._write_behind = write_behind
        self._committer = committer
        self._buffer: list[WriteBatch] = []
        self.journal = journal
        self._clock = clock
        self._retry_interval_s = retry_interval_s
        self._replayer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.pending = len(journal)
        self.journaled_total = 0
        self.replayed_total = 0
        self.last_error: str | None = None

    @property
    def degraded(self) -> bool:
        """True while writes are going to the journal."""
        return self.pending > 0

    async def write(self, batch: WriteBatch) -> bool:
        """Persist ``batch``. Returns True when committed to the database, False when journaled."""
        if not batch:
            return True
        if self._write_behind:
            self._buffer.append(batch)
            if len(self._buffer) >= self._write_behind:
                await self._send_buffer()
            return True
        return await self._commit(batch)

    async def _commit(self, batch: WriteBatch) -> bool:
        async with self._lock:
            if self.pending == 0:
                try:
                    await commit_batch(self._factory, batch)
                    return True
                except Exception as exc:
                    if not is_database_unavailable(exc):
                        raise
                    self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                    logger.warning("database unreachable ({}); journaling writes", type(exc).__name__)
            self.journal.append(batch)
            self.pending += 1
            self.journaled_total += 1
        self._ensure_replayer()
        return False

    async def flush(self) -> None:
        """Commit buffered write-behind batches (one transaction, in order) and wait for it."""
        await self._send_buffer()
        if self._committer is not None:
            await self._committer.drain()

    async def _send_buffer(self) -> None:
        """Hand the buffered batches to the committer, or merge and commit them here."""
        if not self._buffer:
            return
        # Writes made while this commit is under way (other tasks) go to the next merge; the
        # lock's FIFO order keeps merges in order.
        buffered, self._buffer = self._buffer, []
        if self._committer is not None:
            self._committer.submit(buffered)
        else:
            await self._commit(coalesce(buffered))

    def _ensure_replayer(self) -> None:
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.create_task(self._replay_loop(), name="journal-replay")

    async def _replay_loop(self) -> None:
        while self.pending:
            if await self.replay_once():
                return
            await self._clock.sleep(self._retry_interval_s)

    async def replay_once(self) -> bool:
        """Try to move the whole journal into the database; True when it is empty afterwards."""
        async with self._lock:
            while True:
                head = self.journal.peek()
                if head is None:
                    self.pending = 0
                    return True
                seq, batch = head
                try:
                    await commit_batch(self._factory, batch, idempotent=True)
                except Exception as exc:
                    if not is_database_unavailable(exc):
                        # A batch the database refuses for good would block everything behind it:
                        # keep it aside in the journal file (never silently dropped) and go on.
                        logger.error("journaled batch {} ({}) refused, set aside: {}", seq, batch.label, exc)
                        self.journal.set_aside(seq, f"{type(exc).__name__}: {str(exc)[:500]}")
                        self.pending = len(self.journal)
                        continue
                    self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                    return False
                self.journal.remove(seq)
                self.pending -= 1
                self.replayed_total += 1
                if self.pending == 0:
                    logger.info("journal replayed; writing to the database directly again")

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            if self._committer is not None:
                await self._committer.close()
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
        self.journal.close()
