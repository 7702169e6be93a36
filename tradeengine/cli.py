"""The ``tradeengine`` command line.

Feature modules keep their command implementations to themselves and are registered in the block
at the bottom; heavy imports happen inside commands so ``tradeengine --help`` stays fast.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

from tradeengine import __version__
from tradeengine.backtest.command import backtest_command
from tradeengine.backtest.demo import demo_command
from tradeengine.exchange.download import download_data_command
from tradeengine.machines.commands import machines_app, tenants_app, users_app
from tradeengine.settings import Mode, Settings, SettingsError, load_settings

app = typer.Typer(
    name="tradeengine",
    help="AI-assisted crypto trading: control plane, tenant runtimes, backtests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema migrations (alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console(stderr=True)

DatabaseOption = Annotated[
    str | None, typer.Option("--database", "-d", help="Database URL (default: TRADEENGINE_DATABASE_URL).")
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error (no traceback) and return the exit to raise."""
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise fail(str(exc)) from None


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def serve(
    mode: Annotated[Mode | None, typer.Option(help="control or tenant (default: TRADEENGINE_MODE).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port.")] = None,
    user_id: Annotated[str | None, typer.Option("--user-id", help="Tenant mode: whose runtime this is.")] = None,
) -> None:
    """Run the HTTP server until SIGTERM/SIGINT."""
    from tradeengine.bootstrap import build_app
    from tradeengine.logging import configure_logging
    from tradeengine.server import serve_until_signalled

    settings = settings_or_exit(mode=mode, host=host, port=port, user_id=user_id)
    if settings.mode is Mode.TENANT and not settings.user_id:
        raise fail("tenant mode needs --user-id (or TRADEENGINE_USER_ID)")
    configure_logging(settings)
    asyncio.run(serve_until_signalled(build_app(settings), settings))


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database: DatabaseOption = None,
) -> None:
    """Migrate the schema up to REVISION."""
    from tradeengine.store.migrations import upgrade

    settings = settings_or_exit(database_url=database)
    upgrade(settings.database_url, revision)
    console.print(f"database at [bold]{revision}[/]")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. base or -1.")],
    database: DatabaseOption = None,
) -> None:
    """Migrate the schema down to REVISION."""
    from tradeengine.store.migrations import downgrade

    settings = settings_or_exit(database_url=database)
    downgrade(settings.database_url, revision)
    console.print(f"database at [bold]{revision}[/]")


@db_app.command("current")
def db_current(database: DatabaseOption = None) -> None:
    """Print the schema revision the database is at."""
    from tradeengine.store.migrations import current

    settings = settings_or_exit(database_url=database)
    typer.echo(current(settings.database_url) or "none")


# --- commands registered by feature modules (implementations live in their modules) ---
app.command("download-data")(download_data_command)
app.command("backtest")(backtest_command)
app.command("demo")(demo_command)
app.add_typer(users_app, name="users")
app.add_typer(tenants_app, name="tenants")
app.add_typer(machines_app, name="machines")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
