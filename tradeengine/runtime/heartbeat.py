"""Heartbeat: every ``interval`` seconds stamp ``fly_machines.last_heartbeat`` for this tenant.

Written straight to the database, not through the journal: a heartbeat that could not be
delivered is stale by the time the database returns, so replaying it would only lie.
"""

from __future__ import annotations

import asyncio
import uuid

from loguru import logger
from sqlalchemy import update

from tradeengine.clock import Clock
from tradeengine.domain.enums import MachineStatus
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import FlyMachine


class Heartbeat:
    def __init__(
        self,
        factory: SessionFactory,
        clock: Clock,
        user_id: uuid.UUID,
        interval_s: float = 30.0,
        machine_id: str | None = None,
    ) -> None:
        self._factory = factory
        self._clock = clock
        self._user_id = user_id
        self._interval_s = interval_s
        self._machine_id = machine_id  # provider id (fly_machines.machine_id); None: the user's live row
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    async def beat(self) -> bool:
        """Stamp the heartbeat once; True when a machine row was updated."""
        statement = update(FlyMachine).values(last_heartbeat=self._clock.now())
        if self._machine_id is not None:
            statement = statement.where(FlyMachine.machine_id == self._machine_id)
        else:
            statement = statement.where(
                FlyMachine.user_id == self._user_id,
                FlyMachine.status.in_([MachineStatus.STARTING.value, MachineStatus.RUNNING.value]),
            )
        try:
            async with self._factory() as session:
                result = await session.execute(statement)
                await session.commit()
        except Exception as exc:
            self.failed += 1
            self.last_error = f"{type(exc).__name__}"
            logger.warning("heartbeat failed: {}", type(exc).__name__)
            return False
        self.sent += 1
        return bool(getattr(result, "rowcount", 0))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="heartbeat")

    async def _loop(self) -> None:
        while True:
            await self.beat()
            await self._clock.sleep(self._interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
