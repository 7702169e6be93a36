"""Admin commands: ``users create``, ``tenants provision|destroy|list``, ``machines update``.

The async functions do the work (and are what tests call); the typer apps at the bottom are the
thin command-line layer the CLI registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tradeengine.domain.enums import MachineStatus, SubscriptionStatus, Tier
from tradeengine.machines.provider import MachineError
from tradeengine.settings import MachineProviderKind, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    # The store (SQLAlchemy) is imported inside the commands: `tradeengine --help` stays fast.
    from tradeengine.machines.service import MachineService, UpdateOutcome
    from tradeengine.store.engine import SessionFactory
    from tradeengine.store.models import FlyMachine, User


T = TypeVar("T")


class CommandError(Exception):
    """A problem the operator can fix; printed without a traceback."""


@dataclass(frozen=True, slots=True)
class TenantRow:
    email: str
    tier: str
    user_id: uuid.UUID
    machine_id: str | None
    status: str | None
    url: str | None
    last_heartbeat: datetime | None
    created_at: datetime | None


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[SessionFactory]:
    from tradeengine.store.engine import create_engine, create_session_factory

    engine = create_engine(settings)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _machines(
    settings: Settings, factory: SessionFactory, provider: MachineProviderKind | None
) -> AsyncIterator[MachineService]:
    from tradeengine.machines.factory import build_machine_service, build_provider, secret_box

    try:
        built = build_provider(settings, provider, detach_local=True)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    box, _ = secret_box(settings)
    try:
        yield build_machine_service(settings, factory, built, box)
    finally:
        await built.aclose()


async def _user_by_email(factory: SessionFactory, email: str) -> User:
    from tradeengine.store.uow import UnitOfWork

    async with UnitOfWork(factory) as uow:
        user = await uow.users.get_by_email(email.strip().lower())
    if user is None:
        raise CommandError(f"--email: no user {email!r} (create it with: tradeengine users create)")
    return user


async def create_user(settings: Settings, email: str, tier: Tier) -> User:
    """Create a user (idempotent on email: an existing user gets the new tier)."""
    from tradeengine.store.models import User
    from tradeengine.store.uow import UnitOfWork

    address = email.strip().lower()
    if "@" not in address or address.startswith("@") or address.endswith("@"):
        raise CommandError(f"--email: {email!r} is not an email address")
    async with _database(settings) as factory, UnitOfWork(factory) as uow:
        user = await uow.users.get_by_email(address)
        if user is None:
            user = uow.users.add(
                User(email=address, tier=tier.value, subscription_status=SubscriptionStatus.ACTIVE.value)
            )
        else:
            user.tier = tier.value
        await uow.commit()
        return user


async def provision_tenant(
    settings: Settings, email: str, provider: MachineProviderKind | None = None
) -> tuple[FlyMachine, bool]:
    from tradeengine.machines.service import ProvisioningError

    async with _database(settings) as factory:
        user = await _user_by_email(factory, email)
        async with _machines(settings, factory, provider) as machines:
            try:
                result = await machines.provision(user.id)
            except (ProvisioningError, MachineError) as exc:
                raise CommandError(str(exc)) from None
        return result.machine, result.created


async def destroy_tenant(
    settings: Settings, email: str, reason: str, provider: MachineProviderKind | None = None
) -> tuple[int, int, bool]:
    """Returns (open positions, watching signals, tenant answered the graceful shutdown)."""
    async with _database(settings) as factory:
        user = await _user_by_email(factory, email)
        async with _machines(settings, factory, _provider_of(await _current(factory, user.id), provider)) as m:
            try:
                result = await m.destroy(user.id, reason)
            except MachineError as exc:
                raise CommandError(str(exc)) from None
        return result.final_state.open_positions, result.final_state.watching_signals, result.tenant_reached


async def _current(factory: SessionFactory, user_id: uuid.UUID) -> FlyMachine | None:
    from tradeengine.store.uow import UnitOfWork

    async with UnitOfWork(factory) as uow:
        return await uow.machines.current_for_user(user_id)


def _provider_of(machine: FlyMachine | None, given: MachineProviderKind | None) -> MachineProviderKind | None:
    # A machine id says who runs it; destroying through the wrong provider would leave it running.
    if given is not None or machine is None:
        return given
    return MachineProviderKind.LOCAL if machine.machine_id.startswith("local-") else MachineProviderKind.FLY


async def list_tenants(settings: Settings) -> list[TenantRow]:
    from tradeengine.store.uow import UnitOfWork

    rows: list[TenantRow] = []
    async with _database(settings) as factory, UnitOfWork(factory) as uow:
        cursor: str | None = None
        while True:
            page = await uow.users.list(cursor=cursor, limit=500)
            for user in page.items:
                machine = await uow.machines.current_for_user(user.id)
                rows.append(
                    TenantRow(
                        email=user.email, tier=user.tier, user_id=user.id,
                        machine_id=machine.machine_id if machine else None,
                        status=machine.status if machine else None,
                        url=machine.url if machine else None,
                        last_heartbeat=machine.last_heartbeat if machine else None,
                        created_at=machine.created_at if machine else None,
                    )
                )  # fmt: skip
            cursor = page.next_cursor
            if cursor is None:
                break
    return sorted(rows, key=lambda r: r.email)


async def update_machines(
    settings: Settings, image: str, provider: MachineProviderKind | None = None
) -> list[UpdateOutcome]:
    if not image.strip():
        raise CommandError("--image: must not be empty")
    async with _database(settings) as factory, _machines(settings, factory, provider) as machines:
        return await machines.rolling_update(image.strip())


# --- the command-line layer ----------------------------------------------------------------------

users_app = typer.Typer(help="Users of the platform.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenant machines: provision, destroy, list.", no_args_is_help=True)
machines_app = typer.Typer(help="Fleet operations on tenant machines.", no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)

EmailOption = Annotated[str, typer.Option("--email", help="The user's email address.")]
ProviderOption = Annotated[
    MachineProviderKind | None,
    typer.Option("--provider", help="fly or local (default: TRADEENGINE_MACHINE_PROVIDER)."),
]


def _run(work: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(work)
    except CommandError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


@users_app.command("create")
def users_create(
    email: EmailOption,
    tier: Annotated[Tier, typer.Option("--tier", help="free, pro, elite or power.")] = Tier.PRO,
) -> None:
    """Create a user (or change an existing user's tier)."""
    user = _run(create_user(_settings(), email, tier))
    _out.print(f"user {user.email} ({user.tier}) id {user.id}", highlight=False)


@users_app.command("token")
def users_token(
    email: EmailOption,
    ttl: Annotated[int, typer.Option("--ttl", help="Lifetime in seconds.", min=60)] = 3600,
) -> None:
    """Print a user access token signed with TRADEENGINE_JWT_SECRET (for curl and the demo)."""
    from tradeengine.api.auth import issue_user_token

    settings = _settings()
    if settings.jwt_secret is None:
        _err.print("[bold red]error:[/] TRADEENGINE_JWT_SECRET is not set", highlight=False)
        raise typer.Exit(2)
    secret = settings.jwt_secret.get_secret_value()

    async def lookup() -> User:
        async with _database(settings) as factory:
            return await _user_by_email(factory, email)

    user = _run(lookup())
    typer.echo(issue_user_token(secret, user.id, audience=settings.jwt_audience, ttl_s=ttl, email=user.email))


@tenants_app.command("provision")
def tenants_provision(email: EmailOption, provider: ProviderOption = None) -> None:
    """Provision the user's machine (idempotent) and wait until it runs."""
    machine, created = _run(provision_tenant(_settings(), email, provider))
    verb = "created" if created else "already had"
    _out.print(f"{email}: {verb} machine {machine.machine_id} ({machine.status}) at {machine.url}", highlight=False)


@tenants_app.command("destroy")
def tenants_destroy(
    email: EmailOption,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded with the final state).")],
    provider: ProviderOption = None,
) -> None:
    """Shut the user's tenant down gracefully and destroy its machine."""
    if not reason.strip():
        _err.print("[bold red]error:[/] --reason: must not be empty", highlight=False)
        raise typer.Exit(2)
    positions, watching, graceful = _run(destroy_tenant(_settings(), email, reason.strip(), provider))
    how = "gracefully" if graceful else "without a graceful shutdown (tenant unreachable)"
    _out.print(f"{email}: destroyed {how}; open positions {positions}, watching signals {watching}", highlight=False)


@tenants_app.command("list")
def tenants_list() -> None:
    """Every user with their machine's status and last heartbeat."""
    rows = _run(list_tenants(_settings()))
    table = Table(title="tenants")
    for column in ("email", "tier", "machine", "status", "last heartbeat", "url"):
        table.add_column(column)
    for row in rows:
        style = "red" if row.status == MachineStatus.ERROR.value else None
        table.add_row(
            row.email, row.tier, row.machine_id or "-", row.status or "-",
            row.last_heartbeat.strftime("%Y-%m-%d %H:%M:%S") if row.last_heartbeat else "-",
            row.url or "-", style=style,
        )  # fmt: skip
    _out.print(table)


@machines_app.command("update")
def machines_update(
    image: Annotated[str, typer.Option("--image", help="The new image, e.g. registry.fly.io/tradeengine:v1.2.0.")],
    provider: ProviderOption = None,
) -> None:
    """Rolling update: one machine at a time; failures are reported and the rollout continues."""
    outcomes = _run(update_machines(_settings(), image, provider))
    table = Table(title=f"rolling update to {image}")
    for column in ("machine", "user", "result", "step", "seconds", "error"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(
            o.machine_id, str(o.user_id), "[green]ok[/]" if o.ok else "[red]failed[/]", o.step,
            f"{o.seconds:.1f}", o.error or "",
        )  # fmt: skip
    _out.print(table)
    failed = sum(1 for o in outcomes if not o.ok)
    _out.print(f"{len(outcomes) - failed} updated, {failed} failed", highlight=False)
    if failed:
        raise typer.Exit(1)
