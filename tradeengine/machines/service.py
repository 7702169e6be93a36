"""Machine lifecycle: provisioning (idempotent per user), destroy, rolling updates, dead-machine sweep.

The seed's provision-machine / destroy-machine edge functions, its rolling-update script and its
pg_cron heartbeat monitor, as one service over the ``MachineProvider`` port and the store.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from loguru import logger

from tradeengine.clock import Clock, LiveClock
from tradeengine.domain.enums import MachineStatus, SignalStatus, Tier
from tradeengine.domain.secrets import (
    TENANT_TOKEN_PREFIX,
    SecretBox,
    SecretDecryptionError,
    tenant_token_hash,
)
from tradeengine.machines.provider import (
    TENANT_PORT,
    TIER_MEMORY_MB,
    MachineError,
    MachineInfo,
    MachineProvider,
    MachineSpec,
)
from tradeengine.machines.tenant_client import FinalState, TenantClient, TenantUnreachableError
from tradeengine.store.engine import SessionFactory, is_sqlite
from tradeengine.store.models import FlyMachine, User
from tradeengine.store.tenant_roles import (
    disable_tenant_role,
    ensure_tenant_role,
    new_role_password,
    tenant_database_url,
)
from tradeengine.store.uow import UnitOfWork

HEARTBEAT_TIMEOUT = timedelta(minutes=2)
_PENDING_PREFIX = "pending-"
_LIVE_STATUSES = (MachineStatus.PROVISIONING, MachineStatus.STARTING, MachineStatus.RUNNING)


class ProvisioningError(Exception):
    """Provisioning cannot proceed; the message is safe to show the user."""


class UserNotFoundError(ProvisioningError):
    pass


class TierNotAllowedError(ProvisioningError):
    pass


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """What every tenant gets, from settings."""

    image: str
    database_url: str  # the control plane's URL; tenants get their own role on Postgres
    control_url: str | None = None
    region: str | None = None
    start_timeout_s: float = 60.0
    health_timeout_s: float = 30.0
    update_pause_s: float = 0.0  # the seed waits 5 s between machines
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    machine: FlyMachine
    created: bool


@dataclass(frozen=True, slots=True)
class DestroyResult:
    final_state: FinalState
    tenant_reached: bool
    machine: FlyMachine | None


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """One row of the rolling-update report."""

    machine_id: str
    user_id: uuid.UUID
    ok: bool
    step: str  # the last step reached: prepare, update, wait, health, done
    error: str | None
    seconds: float


TenantClientFactory = Callable[[str, str], TenantClient]


class MachineService:
    """Everything the control plane does to tenant machines."""

    def __init__(
        self,
        session_factory: SessionFactory,
        provider: MachineProvider,
        config: MachineConfig,
        secrets: SecretBox,
        *,
        clock: Clock | None = None,
        tenant_client: TenantClientFactory = TenantClient,
    ) -> None:
        self._factory = session_factory
        self.provider = provider
        self.config = config
        self._secrets = secrets
        self._clock = clock or LiveClock()
        self._tenant_client = tenant_client
        self._user_locks: dict[uuid.UUID, asyncio.Lock] = {}

    # --- tokens --------------------------------------------------------------------------------

    def tenant_token(self, machine: FlyMachine) -> str:
        """The bearer token of one machine record, recomputed from the master key (never stored)."""
        return TENANT_TOKEN_PREFIX + self._secrets.derive_token(f"tenant:{machine.user_id}:{machine.id}")

    def client_for(self, machine: FlyMachine) -> TenantClient | None:
        if not machine.url:
            return None
        return self._tenant_client(machine.url, self.tenant_token(machine))

    # --- queries -------------------------------------------------------------------------------

    async def current(self, user_id: uuid.UUID) -> FlyMachine | None:
        async with UnitOfWork(self._factory) as uow:
            return await uow.machines.current_for_user(user_id)

    async def user_for_tenant_token(self, token_hash: str) -> uuid.UUID | None:
        """``TenantTokenLookup`` for the API's auth: only live machines' tokens are valid."""
        async with UnitOfWork(self._factory) as uow:
            page = await uow.machines.list(tenant_token_hash=token_hash, limit=1)
        if not page.items or page.items[0].status == MachineStatus.DESTROYED.value:
            return None
        return page.items[0].user_id

    # --- provisioning ----------------------------------------------------------------------------

    async def provision(self, user_id: uuid.UUID) -> ProvisionResult:
        """Give the user a running machine; a user who has one gets it back (``created`` False)."""
        lock = self._user_locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            claimed = await self._claim(user_id)
            if isinstance(claimed, ProvisionResult):
                return claimed
            record, user = claimed
            try:
                return ProvisionResult(await self._create(record, user), created=True)
            except MachineError as exc:
                await self._mark(record.id, MachineStatus.ERROR, kind="provision_failed", message=str(exc))
                raise

    async def _claim(self, user_id: uuid.UUID) -> ProvisionResult | tuple[FlyMachine, User]:
        """Check for a machine and, if none, insert a placeholder row in the same transaction
        (the user row is locked on Postgres), so concurrent calls cannot create two machines."""
        async with UnitOfWork(self._factory) as uow:
            user = await uow.users.get_for_update(user_id)
            if user is None:
                raise UserNotFoundError(f"user {user_id} not found")
            tier = Tier(user.tier)
            if tier not in TIER_MEMORY_MB:
                raise TierNotAllowedError(f"tier {tier.value} has no trading machine; upgrade to pro, elite or power")
            existing = await uow.machines.current_for_user(user_id)
            if existing is not None and existing.status != MachineStatus.ERROR.value:
                return ProvisionResult(existing, created=False)
            if existing is not None:
                # A failed machine is replaced, not resurrected: retire it first.
                await self._retire(uow, existing, "replaced after error")
            record = uow.machines.add(
                FlyMachine(
                    user_id=user_id,
                    machine_id=f"{_PENDING_PREFIX}{uuid.uuid4().hex}",
                    status=MachineStatus.PROVISIONING.value,
                    memory_mb=TIER_MEMORY_MB[tier],
                    region=self.config.region,
                    image=self.config.image,
                )
            )
            await uow.flush()
            record.tenant_token_hash = tenant_token_hash(self.tenant_token(record))
            uow.events.record(
                user_id,
                "provisioning",
                machine_id=record.id,
                at=self._clock.now(),
                payload={"provider": self.provider.name, "tier": tier.value},
            )
            await uow.commit()
            return record, user

    async def _retire(self, uow: UnitOfWork, machine: FlyMachine, why: str) -> None:
        if not machine.machine_id.startswith(_PENDING_PREFIX):
            try:
                await self.provider.destroy(machine.machine_id)
            except MachineError as exc:
                logger.warning("could not destroy failed machine {}: {}", machine.machine_id, exc)
        machine.status = MachineStatus.DESTROYED.value
        machine.destroyed_at = self._clock.now()
        machine.tenant_token_hash = None
        uow.events.record(machine.user_id, "destroyed", machine_id=machine.id, message=why, at=self._clock.now())

    async def _tenant_env(self, record: FlyMachine, user: User) -> dict[str, str]:
        env = {
            "TRADEENGINE_MODE": "tenant",
            "TRADEENGINE_USER_ID": str(user.id),
            "TRADEENGINE_TENANT_TOKEN": self.tenant_token(record),
            "TRADEENGINE_PORT": str(TENANT_PORT),
            "TRADEENGINE_HOST": "0.0.0.0" if self.provider.name == "fly" else "127.0.0.1",  # noqa: S104
            **self.config.extra_env,
        }
        if self.config.control_url:
            env["TRADEENGINE_CONTROL_URL"] = self.config.control_url
        env["TRADEENGINE_DATABASE_URL"] = await self._tenant_database_url(user.id)
        keys = self._exchange_keys(user)
        if keys is not None:
            env["TRADEENGINE_EXCHANGE_API_KEY"], env["TRADEENGINE_EXCHANGE_SECRET"] = keys
        return env

    async def _tenant_database_url(self, user_id: uuid.UUID) -> str:
        if is_sqlite(self.config.database_url):
            return self.config.database_url  # no roles on SQLite (documented)
        password = new_role_password()
        async with UnitOfWork(self._factory) as uow:
            role = await ensure_tenant_role(uow.session, user_id, password)
            await uow.commit()
        return tenant_database_url(self.config.database_url, role, password)

    def _exchange_keys(self, user: User) -> tuple[str, str] | None:
        if not user.binance_api_key or not user.binance_secret_key:
            return None
        try:
            return (
                self._secrets.decrypt(user.binance_api_key, user_id=user.id, field="binance_api_key"),
                self._secrets.decrypt(user.binance_secret_key, user_id=user.id, field="binance_secret_key"),
            )
        except SecretDecryptionError as exc:
            # Provision anyway (paper trading works); the user must re-enter the keys.
            logger.error("user {}: stored exchange keys unreadable: {}", user.id, exc)
            return None

    async def _create(self, record: FlyMachine, user: User) -> FlyMachine:
        spec = MachineSpec(
            name=f"tenant-{user.id.hex[:12]}-{record.id.hex[:6]}",
            user_id=str(user.id),
            image=self.config.image,
            env=await self._tenant_env(record, user),
            memory_mb=record.memory_mb or 256,
            region=self.config.region,
            metadata={"user_id": str(user.id), "record_id": str(record.id), "role": "tenant"},
        )
        info = await self.provider.create(spec)
        await self._apply(record.id, info, kind="created")
        started = await self.provider.wait_started(info.machine_id, timeout_s=self.config.start_timeout_s)
        return await self._apply(record.id, started, kind="started")

    async def _apply(self, record_id: uuid.UUID, info: MachineInfo, *, kind: str) -> FlyMachine:
        async with UnitOfWork(self._factory) as uow:
            record = await uow.machines.get(record_id)
            assert record is not None
            record.machine_id = info.machine_id
            record.status = info.status.value
            record.url = info.base_url
            record.ip_address = info.ip_address
            record.region = info.region or record.region
            record.image = info.image or record.image
            uow.events.record(
                record.user_id,
                kind,
                machine_id=record.id,
                at=self._clock.now(),
                payload={"state": info.state, "machine_id": info.machine_id},
            )
            await uow.commit()
            return record

    async def _mark(self, record_id: uuid.UUID, status: MachineStatus, *, kind: str, message: str) -> None:
        async with UnitOfWork(self._factory) as uow:
            record = await uow.machines.get(record_id)
            if record is None:
                return
            record.status = status.value
            uow.events.record(record.user_id, kind, machine_id=record.id, message=message[:2000], at=self._clock.now())
            await uow.commit()

    # --- destroy -------------------------------------------------------------------------------

    async def destroy(self, user_id: uuid.UUID, reason: str) -> DestroyResult:
        """Ask the tenant to shut down gracefully, destroy the machine, record the final state.

        With no machine, the final state is counted from the database (nothing to shut down)."""
        lock = self._user_locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            machine = await self.current(user_id)
            if machine is None:
                return DestroyResult(await self._counted_state(user_id), tenant_reached=False, machine=None)
            final: FinalState | None = None
            client = self.client_for(machine)
            if client is not None and machine.status == MachineStatus.RUNNING.value:
                try:
                    final = await client.shutdown(reason)
                except TenantUnreachableError as exc:
                    logger.warning("tenant of user {} did not shut down gracefully: {}", user_id, exc)
            reached = final is not None
            if final is None:
                final = await self._counted_state(user_id)
            if not machine.machine_id.startswith(_PENDING_PREFIX):
                await self.provider.destroy(machine.machine_id)
            async with UnitOfWork(self._factory) as uow:
                record = await uow.machines.get(machine.id)
                assert record is not None
                record.status = MachineStatus.DESTROYED.value
                record.destroyed_at = self._clock.now()
                record.tenant_token_hash = None
                record.final_state = {
                    "openPositions": final.open_positions,
                    "watchingSignals": final.watching_signals,
                    "reason": reason,
                    "graceful": reached,
                }
                uow.events.record(
                    user_id,
                    "destroyed",
                    machine_id=record.id,
                    message=reason,
                    payload=record.final_state,
                    at=self._clock.now(),
                )
                if not is_sqlite(self.config.database_url):
                    await disable_tenant_role(uow.session, user_id)
                await uow.commit()
                return DestroyResult(final, tenant_reached=reached, machine=record)

    async def _counted_state(self, user_id: uuid.UUID) -> FinalState:
        async with UnitOfWork(self._factory) as uow:
            open_positions = len(await uow.positions.open_for_user(user_id))
            watching = await uow.signals.count(user_id=user_id, status=SignalStatus.WATCHING.value)
        return FinalState(open_positions=open_positions, watching_signals=watching)

    # --- reload --------------------------------------------------------------------------------

    async def notify_reload(self, user_id: uuid.UUID) -> bool:
        """Tell the user's tenant its traders changed; False if there is none or it didn't answer
        (the tenant reloads from the database at its next start anyway)."""
        machine = await self.current(user_id)
        if machine is None or machine.status != MachineStatus.RUNNING.value:
            return False
        client = self.client_for(machine)
        if client is None:
            return False
        try:
            await client.reload_traders()
        except TenantUnreachableError as exc:
            logger.warning("reload-traders for user {} failed: {}", user_id, exc)
            return False
        return True

    # --- rolling update ----------------------------------------------------------------------------

    async def rolling_update(self, image: str) -> list[UpdateOutcome]:
        """Update running machines one at a time; a failure is recorded and the rollout goes on."""
        async with UnitOfWork(self._factory) as uow:
            machines = await uow.machines.with_status([MachineStatus.RUNNING])
        outcomes: list[UpdateOutcome] = []
        for index, machine in enumerate(machines):
            if index and self.config.update_pause_s:
                await self._clock.sleep(self.config.update_pause_s)
            outcomes.append(await self._update_one(machine, image))
        return outcomes

    async def _update_one(self, machine: FlyMachine, image: str) -> UpdateOutcome:
        started = time.monotonic()
        step = "prepare"
        client = self.client_for(machine)
        try:
            if client is not None:
                try:
                    await client.prepare_shutdown()
                except TenantUnreachableError as exc:
                    # An unresponsive tenant is exactly what an update may fix: go on.
                    logger.warning("prepare-shutdown of {} failed: {}", machine.machine_id, exc)
            step = "update"
            await self._mark(machine.id, MachineStatus.STARTING, kind="updating", message=image)
            await self.provider.update_image(machine.machine_id, image)
            step = "wait"
            info = await self.provider.wait_started(machine.machine_id, timeout_s=self.config.start_timeout_s)
            step = "health"
            await self._wait_healthy(client)
            await self._apply(machine.id, info, kind="updated")
            step = "done"
            return UpdateOutcome(machine.machine_id, machine.user_id, True, step, None, time.monotonic() - started)
        except (MachineError, TenantUnreachableError) as exc:
            await self._mark(machine.id, MachineStatus.ERROR, kind="update_failed", message=f"{step}: {exc}")
            logger.error("update of {} failed at {}: {}", machine.machine_id, step, exc)
            return UpdateOutcome(machine.machine_id, machine.user_id, False, step, str(exc), time.monotonic() - started)

    async def _wait_healthy(self, client: TenantClient | None) -> None:
        if client is None:
            return
        deadline = time.monotonic() + self.config.health_timeout_s
        while True:
            try:
                await client.health()
                return
            except TenantUnreachableError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    # --- dead machines ---------------------------------------------------------------------------

    async def sweep_dead_machines(self, max_silence: timedelta = HEARTBEAT_TIMEOUT) -> list[FlyMachine]:
        """Mark running machines silent for longer than ``max_silence`` as ``error`` (the seed's
        pg_cron job, done in the app so it works on SQLite too)."""
        now = self._clock.now()
        async with UnitOfWork(self._factory) as uow:
            dead = await uow.machines.heartbeat_older_than(now - max_silence)
            for machine in dead:
                machine.status = MachineStatus.ERROR.value
                last = machine.last_heartbeat.isoformat() if machine.last_heartbeat else None
                uow.events.record(
                    machine.user_id,
                    "heartbeat_lost",
                    machine_id=machine.id,
                    at=now,
                    message=f"no heartbeat for more than {int(max_silence.total_seconds())} s",
                    payload={"lastHeartbeat": last},
                )
            await uow.commit()
        for machine in dead:
            logger.warning("machine {} of user {} lost its heartbeat", machine.machine_id, machine.user_id)
        return dead

    async def run_sweeper(self, interval_s: float = 60.0) -> None:
        """Sweep forever (a lifespan task); errors are logged, never fatal."""
        while True:
            # Sleep first: right after a (re)start tenants may not have had the chance to beat yet.
            await self._clock.sleep(interval_s)
            try:
                await self.sweep_dead_machines()
            except Exception as exc:  # the sweeper must outlive a database blip
                logger.error("dead-machine sweep failed: {}", type(exc).__name__)
