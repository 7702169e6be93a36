"""``tradeengine demo``: the whole system on embedded defaults, in one command.

1. Migrate a SQLite file; create a demo user (tier pro) and three traders from the example
   strategies (``tradeengine/examples``) with their AI instructions.
2. Start the control plane (hypercorn, in this process) with the local machine provider.
3. Provision the user's machine through the API: a ``tradeengine serve --mode tenant`` process that
   replays the last ``--days`` of real candles on a SimClock (CPU speed) with the offline analyst.
4. Show live progress (candles, signals, decisions, open positions, equity) from the tenant's health
   endpoint and the database.
5. When the replay ends: the backtest-style report (CSV, PNG, JSON, HTML) from what the tenant stored.
   ``--keep-running`` leaves the API up for curl; otherwise the machine is destroyed and we exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tradeengine.backtest.errors import BacktestError

DEMO_EMAIL = "demo@tradeengine.local"
BALANCE = Decimal(10000)
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class DemoPaths:
    workdir: Path
    replay_dir: Path
    database: Path
    out: Path

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.database}"


def write_replay_window(data_dir: Path, replay_dir: Path, symbols: tuple[str, ...], days: float) -> int:
    """Copy the last ``days`` of each symbol's candle files (same freqtrade JSON) for the tenant to
    replay; all symbols end at their common last candle so the replay is synchronized."""
    from tradeengine.exchange.files import load_candles
    from tradeengine.exchange.symbols import timeframe_ms

    replay_dir.mkdir(parents=True, exist_ok=True)
    files = [p for s in symbols for p in sorted(data_dir.glob(f"{s.replace('/', '_')}-*.json"))]
    loaded = {}
    for path in files:
        timeframe = path.stem.rsplit("-", 1)[1]
        try:
            step = timeframe_ms(timeframe)
        except ValueError:
            continue
        loaded[path] = (load_candles(path), step)
    if not loaded:
        raise BacktestError(f"--data: no candle files for {', '.join(symbols)} in {data_dir}")
    end = min(int(k.open_time[-1]) + step for k, step in loaded.values())  # common last close
    start = end - int(days * DAY_MS)
    written = 0
    for path, (k, step) in loaded.items():
        close = k.open_time + step
        keep = (k.open_time >= start) & (close <= end)
        rows = [
            [int(t), float(o), float(h), float(lo), float(c), float(v)]
            for t, o, h, lo, c, v in zip(
                k.open_time[keep],
                k.open[keep],
                k.high[keep],
                k.low[keep],
                k.close[keep],
                k.volume[keep],
                strict=True,
            )
        ]
        (replay_dir / path.name).write_text(json.dumps(rows, separators=(",", ":")))
        written += len(rows)
    return written


async def seed_demo(url: str, symbols: tuple[str, ...]) -> uuid.UUID:
    """The demo user (tier pro, 10,000 USDT paper) and one trader per example strategy."""
    from sqlalchemy import delete

    from tradeengine.examples import EXAMPLES
    from tradeengine.settings import load_settings
    from tradeengine.store.engine import create_engine, create_session_factory
    from tradeengine.store.models import Trader, User
    from tradeengine.store.uow import UnitOfWork

    engine = create_engine(load_settings(database_url=url))
    try:
        async with UnitOfWork(create_session_factory(engine)) as uow:
            user = await uow.users.get_by_email(DEMO_EMAIL)
            if user is None:
                user = uow.users.add(User(email=DEMO_EMAIL, tier="pro", paper_balance=BALANCE))
                await uow.flush()
            await uow.session.execute(delete(Trader).where(Trader.user_id == user.id))
            for item in EXAMPLES:
                uow.traders.add(
                    Trader(
                        user_id=user.id,
                        name=item.name,
                        description=item.description,
                        signal_code=item.source,
                        ai_instructions=item.ai_instructions,
                        timeframes=list(item.timeframes),
                        check_interval=item.check_interval,
                        reanalysis_interval=item.reanalysis_interval,
                        symbols=list(symbols),
                        max_open_positions=len(symbols),
                    )
                )
            user_id = user.id
            await uow.commit()
    finally:
        await engine.dispose()
    return user_id


def expected_closes(replay_dir: Path, symbols: tuple[str, ...]) -> int:
    """Candle closes the tenant will deliver: every (symbol, timeframe) the example traders use."""
    from tradeengine.backtest.runner import load_series
    from tradeengine.domain.timeframes import TimerInterval
    from tradeengine.examples import EXAMPLES

    wanted: set[tuple[str, str]] = set()
    for item in EXAMPLES:
        tfs = set(item.timeframes)
        for text in (item.check_interval, item.reanalysis_interval):
            parsed = TimerInterval.parse(text)
            if parsed.timeframe is not None:
                tfs.add(parsed.timeframe)
        wanted.update((s, tf) for s in symbols for tf in tfs)
    return sum(len(load_series(replay_dir, s, tf)) for s, tf in wanted)


async def _get_json(session: Any, url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as resp:
        if resp.status >= 400:
            return None
        return await resp.json()


async def _counts(url: str, user_id: uuid.UUID) -> dict[str, int]:
    from sqlalchemy import func, select

    from tradeengine.settings import load_settings
    from tradeengine.store.engine import create_engine
    from tradeengine.store.models import AnalysisHistory, Position, Signal

    engine = create_engine(load_settings(database_url=url))
    try:
        async with engine.connect() as conn:

            async def count(model: Any, *where: Any) -> int:
                stmt = select(func.count()).select_from(model).where(model.user_id == user_id, *where)
                return int((await conn.scalar(stmt)) or 0)

            return {
                "signals": await count(Signal),
                "decisions": await count(AnalysisHistory),
                "open": await count(Position, Position.status == "open"),
                "closed_positions": await count(Position, Position.status == "closed"),
            }
    finally:
        await engine.dispose()


async def run_demo(
    data_dir: Path,
    paths: DemoPaths,
    *,
    days: float,
    port: int,
    keep_running: bool,
    console: Console,
    timeout_s: float = 1800,
    tables_to_stderr: bool = False,
) -> dict[str, Any]:
    """Run the demo flow (see the module docstring); return the summary dict and file paths."""
    import aiohttp
    from hypercorn.asyncio import serve
    from rich.live import Live
    from rich.table import Table

    from tradeengine.api.auth import issue_user_token
    from tradeengine.backtest.command import symbols_in
    from tradeengine.backtest.metrics import summarize
    from tradeengine.backtest.report import per_symbol_table, summary_table, write_reports
    from tradeengine.backtest.runner import _marks, check_data_dir, read_results
    from tradeengine.bootstrap import build_control_app
    from tradeengine.clock import ms_to_datetime
    from tradeengine.server import hypercorn_config
    from tradeengine.settings import load_settings
    from tradeengine.store.migrations import upgrade_async

    symbols = symbols_in(data_dir)
    check_data_dir(data_dir, symbols)
    if paths.workdir.exists():
        shutil.rmtree(paths.workdir)
    paths.workdir.mkdir(parents=True)
    candles = write_replay_window(data_dir, paths.replay_dir, symbols, days)
    console.print(f"replay window: last {days:g} days of {', '.join(symbols)} ({candles:,} candles in files)")
    url = paths.database_url
    await upgrade_async(url)
    user_id = await seed_demo(url, symbols)
    total = expected_closes(paths.replay_dir, symbols)

    jwt_secret = secrets.token_urlsafe(32)
    # The tenant process inherits this environment through the local machine provider.
    tenant_env = {
        "TRADEENGINE_FEED": "replay",
        "TRADEENGINE_REPLAY_DATA_DIR": str(paths.replay_dir.resolve()),
        "TRADEENGINE_REPLAY_SPEED": "0",
        "TRADEENGINE_ANALYST": "offline",
        "TRADEENGINE_BROKER": "paper",
        "TRADEENGINE_PAPER_BALANCE": str(BALANCE),
        "TRADEENGINE_JOURNAL_PATH": str((paths.workdir / "tenant-journal.db").resolve()),
        "TRADEENGINE_DEFAULT_SYMBOLS": json.dumps(list(symbols)),
        "TRADEENGINE_LOG_LEVEL": "WARNING",
    }
    os.environ.update(tenant_env)
    settings = load_settings(
        mode="control",
        host="127.0.0.1",
        port=port,
        database_url=url,
        jwt_secret=jwt_secret,
        master_key=secrets.token_urlsafe(32),  # demo only: tenant tokens live as long as this process
        machine_provider="local",
        analyst="offline",
    )
    token = issue_user_token(jwt_secret, user_id, ttl_s=7 * 86400, email=DEMO_EMAIL)
    base = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve(build_control_app(settings), hypercorn_config(settings), shutdown_trigger=stop.wait)
    )
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                if server.done():
                    server.result()  # surfaces why the control plane did not start
                with contextlib.suppress(aiohttp.ClientError):
                    if await _get_json(session, f"{base}/health") is not None:
                        break
                await asyncio.sleep(0.1)
            console.print(f"control plane on {base}")
            async with session.post(f"{base}/v1/machines/provision", json={}, headers=headers) as resp:
                body = await resp.json()
                if resp.status >= 400:
                    raise BacktestError(f"provisioning the demo tenant failed ({resp.status}): {body}")
            machine = body["machine"]
            machine_id = str(machine.get("machineId") or machine.get("machine_id"))
            tenant_url = f"http://127.0.0.1:{machine_id.rsplit('-', 1)[1]}"
            console.print(f"tenant machine {machine_id} at {tenant_url} (replaying on a SimClock)")

            started = time.monotonic()
            finished = False
            last: dict[str, Any] = {}
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                while not finished:
                    if time.monotonic() - started > timeout_s:
                        raise BacktestError(f"the demo replay did not finish within {timeout_s:.0f}s")
                    health = None
                    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                        health = await _get_json(session, f"{tenant_url}/health")
                    counts = await _counts(url, user_id)
                    feed = (health or {}).get("feed") or {}
                    closed = int(feed.get("candlesClosed") or 0)
                    last_ms = feed.get("lastMessageMs")
                    # The replay feed reports itself disconnected once it has delivered everything.
                    finished = health is not None and closed > 0 and not feed.get("connected", True)
                    table = Table(title="tradeengine demo", show_header=False, title_justify="left")
                    table.add_column("what", style="bold")
                    table.add_column("value", justify="right")
                    table.add_row("candles replayed", f"{closed:,} / {total:,}")
                    table.add_row(
                        "simulated time", f"{ms_to_datetime(int(last_ms)):%Y-%m-%d %H:%M}" if last_ms else "-"
                    )
                    table.add_row("signals", str(counts["signals"]))
                    table.add_row("decisions (analyses)", str(counts["decisions"]))
                    table.add_row("open positions", str(counts["open"]))
                    table.add_row("closed positions", str(counts["closed_positions"]))
                    state = "replay finished" if finished else (health or {}).get("status", "starting")
                    table.add_row("tenant", state)
                    live.update(table)
                    last = {"closed": closed, **counts}
                    if not finished:
                        await asyncio.sleep(0.5)
            replay_seconds = time.monotonic() - started

            trades, fills, signals, analyses = await read_results(url, user_id)
            wanted = {(s, tf) for s in symbols for tf in ("5m", "1h")}
            wanted = {(s, tf) for s, tf in wanted if (paths.replay_dir / f"{s.replace('/', '_')}-{tf}.json").exists()}
            marks = _marks(paths.replay_dir, wanted, None, None)
            start_ms = min(int(m.close_ms[0]) for m in marks.values()) - 300_000
            end_ms = max(int(m.close_ms[-1]) for m in marks.values())
            summary, curve = summarize(
                initial=BALANCE,
                trades=trades,
                fills=fills,
                marks=marks,
                start_ms=start_ms,
                end_ms=end_ms,
                candles=last.get("closed", 0),
                signals=signals,
                analyses=analyses,
            )
            files = write_reports(
                paths.out,
                summary,
                trades,
                curve,
                title="tradeengine demo: three example traders",
                extra={
                    "replaySeconds": round(replay_seconds, 2),
                    "traders": sorted({t.trader for t in trades}),
                },
            )
            out = console if tables_to_stderr else Console()
            out.print(summary_table(summary))
            out.print(per_symbol_table(summary))
            out.print(f"report: [bold]{files.report_html}[/]  trades: {files.trades_csv}  chart: {files.equity_png}")
            if keep_running:
                out.print(f"\nThe API stays up on {base} (Ctrl-C to stop). Try:\n")
                out.print(f'  export TOKEN="{token}"', soft_wrap=True, highlight=False)
                for path in (
                    "/v1/me",
                    "/v1/traders",
                    "/v1/positions?status=closed",
                    "/v1/trades",
                    "/v1/machines/me",
                ):
                    out.print(f'  curl -s -H "Authorization: Bearer $TOKEN" {base}{path}', highlight=False)
                await stop.wait()
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(f"{base}/v1/machines/destroy", json={}, headers=headers) as resp:
                    await resp.read()
            return {"summary": summary.to_dict(), "files": files.as_dict(), "userId": str(user_id)}
    finally:
        stop.set()
        with contextlib.suppress(NotImplementedError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server, timeout=30)
        for key in tenant_env:
            os.environ.pop(key, None)


def demo_command(
    data: Annotated[Path, typer.Option("--data", help="Directory of freqtrade JSON candle files.")] = Path("data"),
    workdir: Annotated[Path, typer.Option("--workdir", help="Demo database, replay files, logs.")] = Path("data/demo"),
    out: Annotated[Path | None, typer.Option("--out", help="Report directory (default: WORKDIR/report).")] = None,
    days: Annotated[float | None, typer.Option(help="Replay the last N days (default 14; 1 with --once).")] = None,
    port: Annotated[int, typer.Option(help="Control-plane port.")] = 8080,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the API up after the replay (Ctrl-C stops).")
    ] = False,
    once: Annotated[bool, typer.Option("--once", help="A short replay (1 day) and exit: for CI.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout at the end.")] = False,
) -> None:
    """Run the whole system locally: control plane, a replaying tenant, three example traders, a report."""
    from loguru import logger

    console = Console(stderr=True)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    if once and keep_running:
        console.print("[bold red]error:[/] --once and --keep-running exclude each other", markup=True)
        raise typer.Exit(2)
    # 14 days: the MACD trader needs ~6 days of 4h candles before it can fire at all.
    window = days if days is not None else (1.0 if once else 14.0)
    if window <= 0:
        console.print("[bold red]error:[/] --days: must be positive", markup=True)
        raise typer.Exit(2)
    paths = DemoPaths(workdir, workdir / "replay", workdir / "demo.db", out or workdir / "report")
    try:
        result = asyncio.run(
            run_demo(
                data,
                paths,
                days=window,
                port=port,
                keep_running=keep_running,
                console=console,
                tables_to_stderr=as_json,
            )
        )
    except BacktestError as exc:
        console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
