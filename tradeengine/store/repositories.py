"""Repositories: the only place that builds queries. One generic base, thin subclasses.

Lists are newest first with an opaque cursor: pass ``page.next_cursor`` back as ``cursor`` to
get the next page; ``None`` means there is no more.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from tradeengine.domain.enums import (
    ACTIVE_SIGNAL_STATUSES,
    OPEN_ORDER_STATUSES,
    MachineStatus,
    PositionStatus,
    TraderStatus,
)
from tradeengine.store.models import (
    AIPrompt,
    AnalysisHistory,
    Base,
    FlyMachine,
    MachineEvent,
    Order,
    Position,
    Signal,
    SignalAnalysis,
    Trade,
    Trader,
    User,
)

M = TypeVar("M", bound=Base)

MAX_LIMIT = 500


class InvalidCursorError(ValueError):
    """The ``cursor`` argument is not one this repository issued."""


@dataclass(frozen=True, slots=True)
class Page(Generic[M]):
    items: list[M]
    next_cursor: str | None


def encode_cursor(ts: datetime, row_id: uuid.UUID) -> str:
    raw = f"{ts.isoformat()}|{row_id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ts_text, id_hex = base64.urlsafe_b64decode(padded.encode()).decode().split("|")
        ts = datetime.fromisoformat(ts_text)
        if ts.tzinfo is None:
            raise ValueError("naive")
        return ts, uuid.UUID(hex=id_hex)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursorError(f"cursor: not a valid page cursor: {cursor!r}") from exc


class Repository(Generic[M]):
    """Generic CRUD + filtered, cursor-paginated listing for one model.

    ``time_column`` orders lists (newest first, ties broken by id) and backs ``since``/``until``.
    """

    model: type[M]
    time_column: str = "created_at"

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _col(self, name: str) -> InstrumentedAttribute[Any]:
        col = getattr(self.model, name, None)
        if col is None:
            raise ValueError(f"{name}: {self.model.__tablename__} has no such column to filter on")
        return col  # type: ignore[no-any-return]

    async def get(self, id_: uuid.UUID) -> M | None:
        return await self.session.get(self.model, id_)

    async def get_for_update(self, id_: uuid.UUID) -> M | None:
        """Load with a row lock (SELECT .. FOR UPDATE on Postgres; SQLite locks the whole DB on write)."""
        return await self.session.get(self.model, id_, with_for_update=True, populate_existing=True)

    def add(self, obj: M) -> M:
        self.session.add(obj)
        return obj

    def add_all(self, objs: Iterable[M]) -> None:
        self.session.add_all(list(objs))

    async def delete(self, obj: M) -> None:
        await self.session.delete(obj)

    async def delete_by_id(self, id_: uuid.UUID) -> bool:
        result = await self.session.execute(delete(self.model).where(self._col("id") == id_))
        return bool(getattr(result, "rowcount", 0))

    async def flush(self) -> None:
        await self.session.flush()

    async def _scalars(self, stmt: Select[tuple[M]]) -> list[M]:
        return list((await self.session.execute(stmt)).scalars().all())

    def _filters(self, **filters: Any) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        for name, value in filters.items():
            if value is None:
                continue
            col = self._col(name)
            if isinstance(value, (list, tuple, set, frozenset)):
                clauses.append(col.in_([str(v) if isinstance(v, str) else v for v in value]))
            else:
                clauses.append(col == value)
        return clauses

    async def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
        **filters: Any,
    ) -> Page[M]:
        """Rows matching ``filters`` (column=value, or column=[values]; None = any), newest first.

        ``since`` is inclusive, ``until`` exclusive, both on ``time_column``.
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit: must be between 1 and {MAX_LIMIT}, got {limit}")
        tcol = self._col(self.time_column)
        idcol = self._col("id")
        clauses = self._filters(**filters)
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name}: must be a timezone-aware datetime")
        if since is not None:
            clauses.append(tcol >= since)
        if until is not None:
            clauses.append(tcol < until)
        if cursor is not None:
            ts, last_id = decode_cursor(cursor)
            clauses.append(or_(tcol < ts, and_(tcol == ts, idcol < last_id)))
        stmt = select(self.model).where(*clauses).order_by(tcol.desc(), idcol.desc()).limit(limit + 1)
        rows = await self._scalars(stmt)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = encode_cursor(getattr(last, self.time_column), last.id)  # type: ignore[attr-defined]
        return Page(rows, next_cursor)

    async def list_for_user(
        self,
        user_id: uuid.UUID,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
        **filters: Any,
    ) -> Page[M]:
        """``list`` restricted to one user, e.g. ``list_for_user(uid, status="open", symbol="BTCUSDT")``."""
        return await self.list(user_id=user_id, since=since, until=until, cursor=cursor, limit=limit, **filters)

    async def count(self, **filters: Any) -> int:
        from sqlalchemy import func

        stmt = select(func.count()).select_from(self.model).where(*self._filters(**filters))
        return int((await self.session.execute(stmt)).scalar_one())


class UserRepository(Repository[User]):
    model = User

    async def get_by_email(self, email: str) -> User | None:
        return (await self.session.execute(select(User).where(User.email == email))).scalar_one_or_none()


class MachineRepository(Repository[FlyMachine]):
    model = FlyMachine

    async def get_by_machine_id(self, machine_id: str) -> FlyMachine | None:
        stmt = select(FlyMachine).where(FlyMachine.machine_id == machine_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def current_for_user(self, user_id: uuid.UUID) -> FlyMachine | None:
        """The user's newest machine that is not destroyed."""
        stmt = (
            select(FlyMachine)
            .where(FlyMachine.user_id == user_id, FlyMachine.status != MachineStatus.DESTROYED.value)
            .order_by(FlyMachine.created_at.desc(), FlyMachine.id.desc())
            .limit(1)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def with_status(self, statuses: Iterable[MachineStatus | str]) -> list[FlyMachine]:
        stmt = select(FlyMachine).where(FlyMachine.status.in_([str(s) for s in statuses]))
        return await self._scalars(stmt.order_by(FlyMachine.created_at))

    async def heartbeat_older_than(self, cutoff: datetime) -> list[FlyMachine]:
        """Running machines whose last heartbeat (or creation, if none yet) is before ``cutoff``."""
        seen = FlyMachine.last_heartbeat
        stmt = select(FlyMachine).where(
            FlyMachine.status == MachineStatus.RUNNING.value,
            or_(seen < cutoff, and_(seen.is_(None), FlyMachine.created_at < cutoff)),
        )
        return await self._scalars(stmt)


class TraderRepository(Repository[Trader]):
    model = Trader

    async def active(self, user_id: uuid.UUID | None = None) -> list[Trader]:
        stmt = select(Trader).where(Trader.status == TraderStatus.ACTIVE.value)
        if user_id is not None:
            stmt = stmt.where(Trader.user_id == user_id)
        return await self._scalars(stmt.order_by(Trader.created_at, Trader.id))


class SignalRepository(Repository[Signal]):
    model = Signal
    time_column = "timestamp"

    async def active_for_trader_symbol(self, trader_id: uuid.UUID, symbol: str) -> Signal | None:
        """The newest signal of this trader on this symbol still in new/watching/position_open."""
        stmt = (
            select(Signal)
            .where(
                Signal.trader_id == trader_id,
                Signal.symbol == symbol,
                Signal.status.in_([s.value for s in ACTIVE_SIGNAL_STATUSES]),
            )
            .order_by(Signal.timestamp.desc(), Signal.id.desc())
            .limit(1)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def active(self, user_id: uuid.UUID | None = None, trader_id: uuid.UUID | None = None) -> list[Signal]:
        stmt = select(Signal).where(
            Signal.status.in_([s.value for s in ACTIVE_SIGNAL_STATUSES]),
            *self._filters(user_id=user_id, trader_id=trader_id),
        )
        return await self._scalars(stmt.order_by(Signal.timestamp, Signal.id))


class PositionRepository(Repository[Position]):
    model = Position
    time_column = "opened_at"

    async def open_for_user(self, user_id: uuid.UUID, symbol: str | None = None) -> list[Position]:
        return await self._open(user_id=user_id, symbol=symbol)

    async def open_for_trader(self, trader_id: uuid.UUID) -> list[Position]:
        return await self._open(trader_id=trader_id)

    async def all_open(self) -> list[Position]:
        return await self._open()

    async def open_for_signal(self, signal_id: uuid.UUID) -> Position | None:
        rows = await self._open(signal_id=signal_id)
        return rows[0] if rows else None

    async def _open(self, **filters: Any) -> list[Position]:
        stmt = select(Position).where(Position.status == PositionStatus.OPEN.value, *self._filters(**filters))
        return await self._scalars(stmt.order_by(Position.opened_at, Position.id))


class OrderRepository(Repository[Order]):
    model = Order

    async def get_by_client_order_id(self, client_order_id: str) -> Order | None:
        stmt = select(Order).where(Order.client_order_id == client_order_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def get_by_exchange_order_id(self, exchange_order_id: str) -> Order | None:
        stmt = select(Order).where(Order.exchange_order_id == exchange_order_id)
        return (await self.session.execute(stmt)).scalars().first()

    async def open_orders(self, user_id: uuid.UUID | None = None, symbol: str | None = None) -> list[Order]:
        """Orders in pending/open/partially_filled (what crash recovery must reconcile)."""
        stmt = select(Order).where(
            Order.status.in_([s.value for s in OPEN_ORDER_STATUSES]),
            *self._filters(user_id=user_id, symbol=symbol),
        )
        return await self._scalars(stmt.order_by(Order.created_at, Order.id))

    async def for_position(self, position_id: uuid.UUID) -> list[Order]:
        stmt = select(Order).where(Order.position_id == position_id)
        return await self._scalars(stmt.order_by(Order.created_at, Order.id))


class TradeRepository(Repository[Trade]):
    model = Trade
    time_column = "executed_at"

    async def for_position(self, position_id: uuid.UUID) -> list[Trade]:
        stmt = select(Trade).where(Trade.position_id == position_id)
        return await self._scalars(stmt.order_by(Trade.executed_at, Trade.id))


class AnalysisRepository(Repository[AnalysisHistory]):
    """analysis_history rows."""

    model = AnalysisHistory
    time_column = "timestamp"

    async def for_signal(self, signal_id: uuid.UUID) -> list[AnalysisHistory]:
        stmt = select(AnalysisHistory).where(AnalysisHistory.signal_id == signal_id)
        return await self._scalars(stmt.order_by(AnalysisHistory.timestamp, AnalysisHistory.id))

    async def latest_for_signal(self, signal_id: uuid.UUID) -> AnalysisHistory | None:
        stmt = (
            select(AnalysisHistory)
            .where(AnalysisHistory.signal_id == signal_id)
            .order_by(AnalysisHistory.timestamp.desc(), AnalysisHistory.id.desc())
            .limit(1)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()


class SignalAnalysisRepository(Repository[SignalAnalysis]):
    model = SignalAnalysis

    async def for_signal(self, signal_id: uuid.UUID) -> list[SignalAnalysis]:
        stmt = select(SignalAnalysis).where(SignalAnalysis.signal_id == signal_id)
        return await self._scalars(stmt.order_by(SignalAnalysis.created_at, SignalAnalysis.id))


class PromptRepository(Repository[AIPrompt]):
    model = AIPrompt

    async def active(self, type_: str) -> AIPrompt | None:
        """The active prompt of a type, highest version first."""
        stmt = (
            select(AIPrompt)
            .where(AIPrompt.type == type_, AIPrompt.is_active.is_(True))
            .order_by(AIPrompt.version.desc())
            .limit(1)
        )
        return (await self.session.execute(stmt)).scalar_one_or_none()


class EventRepository(Repository[MachineEvent]):
    model = MachineEvent

    def record(
        self,
        user_id: uuid.UUID,
        kind: str,
        *,
        machine_id: uuid.UUID | None = None,
        message: str | None = None,
        payload: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> MachineEvent:
        event = MachineEvent(user_id=user_id, kind=kind, machine_id=machine_id, message=message, payload=payload)
        if at is not None:
            event.created_at = at
        self.session.add(event)
        return event

    async def latest(self, machine_id: uuid.UUID, kind: str | None = None) -> MachineEvent | None:
        stmt = select(MachineEvent).where(MachineEvent.machine_id == machine_id, *self._filters(kind=kind))
        stmt = stmt.order_by(MachineEvent.created_at.desc(), MachineEvent.id.desc()).limit(1)
        return (await self.session.execute(stmt)).scalar_one_or_none()


__all__: Sequence[str] = [
    "MAX_LIMIT",
    "AnalysisRepository",
    "EventRepository",
    "InvalidCursorError",
    "MachineRepository",
    "OrderRepository",
    "Page",
    "PositionRepository",
    "PromptRepository",
    "Repository",
    "SignalAnalysisRepository",
    "SignalRepository",
    "TradeRepository",
    "TraderRepository",
    "UserRepository",
    "decode_cursor",
    "encode_cursor",
]
