"""Unit of work: one session, all repositories, explicit commit, rollback by default."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncSession

from tradeengine.store.engine import SessionFactory
from tradeengine.store.repositories import (
    AnalysisRepository,
    EventRepository,
    MachineRepository,
    OrderRepository,
    PositionRepository,
    PromptRepository,
    SignalAnalysisRepository,
    SignalRepository,
    TradeRepository,
    TraderRepository,
    UserRepository,
)


class UnitOfWork:
    """``async with UnitOfWork(factory) as uow: ...; await uow.commit()``.

    Leaving the block without ``commit()`` (or by an exception) rolls everything back, so a
    failure half-way never stores half a change. Objects loaded inside stay readable afterwards
    (detached); use a new unit of work to change them.
    """

    users: UserRepository
    machines: MachineRepository
    traders: TraderRepository
    signals: SignalRepository
    positions: PositionRepository
    orders: OrderRepository
    trades: TradeRepository
    analyses: AnalysisRepository
    signal_analyses: SignalAnalysisRepository
    prompts: PromptRepository
    events: EventRepository

    def __init__(self, session_factory: SessionFactory) -> None:
        self._factory = session_factory
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        if self._session is None:
            raise RuntimeError("UnitOfWork used outside 'async with'")
        return self._session

    async def __aenter__(self) -> UnitOfWork:
        if self._session is not None:
            raise RuntimeError("UnitOfWork is not re-entrant; create a new one")
        s = self._session = self._factory()
        self.users = UserRepository(s)
        self.machines = MachineRepository(s)
        self.traders = TraderRepository(s)
        self.signals = SignalRepository(s)
        self.positions = PositionRepository(s)
        self.orders = OrderRepository(s)
        self.trades = TradeRepository(s)
        self.analyses = AnalysisRepository(s)
        self.signal_analyses = SignalAnalysisRepository(s)
        self.prompts = PromptRepository(s)
        self.events = EventRepository(s)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self.session, None
        try:
            if exc_type is not None:
                await session.rollback()
        finally:
            # close() ends the transaction without committing (the connection is rolled back as
            # it returns to the pool) but, unlike rollback(), leaves loaded objects readable.
            await session.close()

    async def commit(self) -> None:
        await self.session.commit()

    async def rollback(self) -> None:
        await self.session.rollback()

    async def flush(self) -> None:
        await self.session.flush()
