"""Write batches: the tenant runtime's write path, one transaction per batch.

A ``WriteBatch`` is a list of plain operations (insert a row, update a row by id) with explicit
values, including ids and timestamps chosen by the caller. Because it is plain data it can be
serialized to the local journal when the database is unreachable and replayed later, in order,
with exactly the same effect. Replays are idempotent: an insert whose id already exists is
skipped, so a batch that committed just before the connection dropped is not applied twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import Base


@dataclass(frozen=True, slots=True)
class Insert:
    table: str
    values: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Update:
    """Update the row ``id``; ``increment`` adds to numeric columns (e.g. ``version``)."""

    table: str
    id: uuid.UUID
    values: Mapping[str, Any]
    increment: Mapping[str, int] = field(default_factory=dict)


Operation = Insert | Update


@dataclass(slots=True)
class WriteBatch:
    """Operations committed together. ``label`` names the state change in logs and the journal."""

    label: str
    operations: list[Operation] = field(default_factory=list)

    def insert(self, table: str, **values: Any) -> None:
        self.operations.append(Insert(table, values))

    def update(self, table: str, id_: uuid.UUID, *, increment: Mapping[str, int] | None = None, **values: Any) -> None:
        self.operations.append(Update(table, id_, values, dict(increment or {})))

    def __bool__(self) -> bool:
        return bool(self.operations)


def _table(name: str) -> Table:
    table = Base.metadata.tables.get(name)
    if table is None:
        raise ValueError(f"unknown table {name!r} in write batch")
    return table


async def apply_batch(session: AsyncSession, batch: WriteBatch, *, idempotent: bool = False) -> None:
    """Execute ``batch`` in ``session`` (the caller commits). With ``idempotent``, inserts whose
    primary key already exists are skipped (journal replay after an ambiguous commit).

    Consecutive inserts into one table with the same columns, and consecutive updates of one table
    setting the same columns, go out as one executemany: on SQLite every statement is a thread hop,
    and a backtest's write-behind batch has thousands.
    """
    run: list[Operation] = []
    run_key: tuple[Any, ...] | None = None

    async def flush_run() -> None:
        nonlocal run, run_key
        if run and run_key is not None:
            table = _table(run_key[1])
            if run_key[0] == "insert":
                await session.execute(table.insert(), [dict(op.values) for op in run])
            elif len(run) == 1:
                await _update_one(session, table, run[0])  # type: ignore[arg-type]
            else:
                columns = run_key[2]
                statement = (
                    update(table)
                    .where(table.c.id == bindparam("_row_id"))
                    .values({c: bindparam(f"_v_{c}") for c in columns})
                )
                params = [
                    {"_row_id": op.id, **{f"_v_{c}": op.values[c] for c in columns}}  # type: ignore[union-attr]
                    for op in run
                ]
                await session.execute(statement, params)
        run, run_key = [], None

    for op in batch.operations:
        table = _table(op.table)
        if isinstance(op, Insert):
            if idempotent and "id" in op.values:
                await flush_run()
                found = await session.execute(select(table.c.id).where(table.c.id == op.values["id"]))
                if found.first() is not None:
                    continue
            key: tuple[Any, ...] = ("insert", op.table, frozenset(op.values))
        elif op.increment:
            await flush_run()
            await _update_one(session, table, op)
            continue
        else:
            key = ("update", op.table, tuple(sorted(op.values)))
        if key != run_key:
            await flush_run()
            run_key = key
        run.append(op)
    await flush_run()


async def _update_one(session: AsyncSession, table: Table, op: Update) -> None:
    values: dict[str, Any] = dict(op.values)
    for column, amount in op.increment.items():
        values[column] = table.c[column] + amount
    await session.execute(update(table).where(table.c.id == op.id).values(**values))


async def commit_batch(factory: SessionFactory, batch: WriteBatch, *, idempotent: bool = False) -> None:
    """Apply ``batch`` in its own transaction and commit it."""
    async with factory() as session:
        await apply_batch(session, batch, idempotent=idempotent)
        await session.commit()


# -- plain tuples, for pickling to the committer process ---------------------------------------

PlainBatch = tuple[str, list[tuple[Any, ...]]]


def batches_to_plain(batches: list[WriteBatch]) -> list[PlainBatch]:
    """The batches as tuples of built-in values: pickled in C, about twice as fast as the frozen
    dataclasses (whose state goes through Python-level ``__getstate__``/``__setstate__``)."""
    return [(batch.label, [_plain(op) for op in batch.operations]) for batch in batches]


def _plain(op: Operation) -> tuple[Any, ...]:
    if isinstance(op, Insert):
        return (op.table, op.values)
    return (op.table, op.values, op.id, op.increment)


def batches_from_plain(plain: list[PlainBatch]) -> list[WriteBatch]:
    """``batches_to_plain``, undone."""
    return [
        WriteBatch(label, [Insert(*op) if len(op) == 2 else Update(op[0], op[2], op[1], op[3]) for op in ops])
        for label, ops in plain
    ]


# -- JSON codec for the journal --------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$u": str(value)}
    if isinstance(value, datetime):
        return {"$t": value.isoformat()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {"$o": {str(k): _encode(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "$d" in value:
            return Decimal(value["$d"])
        if "$u" in value:
            return uuid.UUID(value["$u"])
        if "$t" in value:
            return datetime.fromisoformat(value["$t"])
        if "$o" in value:
            return {k: _decode(v) for k, v in value["$o"].items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def batch_to_json(batch: WriteBatch) -> str:
    ops: list[dict[str, Any]] = []
    for op in batch.operations:
        if isinstance(op, Insert):
            ops.append({"op": "insert", "table": op.table, "values": _encode(dict(op.values))})
        else:
            ops.append(
                {
                    "op": "update",
                    "table": op.table,
                    "id": str(op.id),
                    "values": _encode(dict(op.values)),
                    "increment": dict(op.increment),
                }
            )
    return json.dumps({"label": batch.label, "ops": ops}, separators=(",", ":"))


def batch_from_json(text: str) -> WriteBatch:
    data = json.loads(text)
    batch = WriteBatch(str(data["label"]))
    for op in data["ops"]:
        values = _decode(op["values"])
        if op["op"] == "insert":
            batch.operations.append(Insert(op["table"], values))
        else:
            batch.operations.append(
                Update(
                    op["table"],
                    uuid.UUID(op["id"]),
                    values,
                    {k: int(v) for k, v in op.get("increment", {}).items()},
                )
            )
    return batch


def coalesce(batches: list[WriteBatch], label: str = "write-behind") -> WriteBatch:
    """Merge batches into one with the same end state and fewer statements.

    Inserts are ordered parents-first by table (foreign keys), then grouped by the columns they
    set (so each group is one executemany), in arrival order within a group. An update of a row
    inserted in the same merge is folded into that insert, unless it sets a foreign key to a row
    this merge does not insert (that row may only exist later: it stays an update). The
    remaining updates are merged per row (later values win, increments add up) and run after all
    inserts. Valid because our updates never make an insert possible (foreign keys point at rows
    that are inserted, not updated, into existence), the parents a merge inserts are inserted
    before its children, and no table refers to itself. Ids are chosen by the writer, so the
    order of inserts within a table changes no row.
    """
    inserts: list[Insert] = []
    inserted: dict[tuple[str, Any], dict[str, Any]] = {}
    updates: dict[tuple[str, uuid.UUID], tuple[dict[str, Any], dict[str, int]]] = {}
    for batch in batches:
        for op in batch.operations:
            if isinstance(op, Insert):
                values = dict(op.values)
                inserts.append(Insert(op.table, values))
                if "id" in values:
                    inserted[(op.table, values["id"])] = values
                continue
            target = inserted.get((op.table, op.id))
            if target is not None and not _parents_inserted(_table(op.table), op.values, inserted):
                target = None
            if target is not None:
                target.update(op.values)
                for column, amount in op.increment.items():
                    target[column] = (target.get(column) or 0) + amount
                continue
            values_acc, increments = updates.setdefault((op.table, op.id), ({}, {}))
            values_acc.update(op.values)
            for column, amount in op.increment.items():
                increments[column] = increments.get(column, 0) + amount
    merged = WriteBatch(label)
    rank = {table.name: i for i, table in enumerate(Base.metadata.sorted_tables)}
    shapes: dict[tuple[str, frozenset[str]], int] = {}  # (table, columns) -> order of first arrival
    for op in inserts:
        shapes.setdefault((op.table, frozenset(op.values)), len(shapes))
    merged.operations.extend(sorted(inserts, key=lambda op: (rank[op.table], shapes[(op.table, frozenset(op.values))])))
    pending = [Update(name, id_, values, increments) for (name, id_), (values, increments) in updates.items()]
    merged.operations.extend(sorted(pending, key=lambda op: (op.table, tuple(sorted(op.values)))))
    return merged


def _parents_inserted(table: Table, values: Mapping[str, Any], inserted: Mapping[tuple[str, Any], Any]) -> bool:
    """True when every foreign key ``values`` sets is NULL or names a row of this merge."""
    for column, value in values.items():
        keys = table.c[column].foreign_keys
        if keys and value is not None and not any((key.column.table.name, value) in inserted for key in keys):
            return False
    return True
