"""Persistence: models, engine/session factory, repositories, unit of work, migrations.

The only package that contains SQL. Typical use::

    engine = create_engine(settings)
    factory = create_session_factory(engine)
    async with UnitOfWork(factory) as uow:
        uow.users.add(User(email="a@b.c"))
        await uow.commit()
"""

from tradeengine.store.engine import SessionFactory, create_engine, create_session_factory
from tradeengine.store.repositories import InvalidCursorError, Page
from tradeengine.store.uow import UnitOfWork

__all__ = [
    "InvalidCursorError",
    "Page",
    "SessionFactory",
    "UnitOfWork",
    "create_engine",
    "create_session_factory",
]
