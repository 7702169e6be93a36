"""``tradeengine backtest``: replay history through the tenant runtime and write a report."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from tradeengine.backtest.errors import BacktestError

if TYPE_CHECKING:
    from tradeengine.backtest.runner import BacktestConfig, TraderSpec

ANALYSTS = ("offline", "cached", "gemini")
DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT", "XRP/USDT")


def _fail(console: Console, message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    return typer.Exit(2)


def parse_when(value: str | None, option: str) -> datetime | None:
    """``2021-01-01`` or ``2021-01-01T12:00`` (UTC unless an offset is given)."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BacktestError(f"{option}: {value!r} is not a date like 2021-01-01 or 2021-01-01T12:00") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse_decimal(value: str, option: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise BacktestError(f"{option}: {value!r} is not a number") from None
    if not number.is_finite() or number < 0:
        raise BacktestError(f"{option}: must be a non-negative number, got {value}")
    return number


def split_list(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def symbols_in(data_dir: Path) -> tuple[str, ...]:
    """The default symbols that have a file in ``data_dir`` (all defaults when none has)."""
    present = tuple(s for s in DEFAULT_SYMBOLS if any(data_dir.glob(f"{s.replace('/', '_')}-*.json")))
    return present or DEFAULT_SYMBOLS


def strategy_spec(
    strategy: str, timeframes: tuple[str, ...], check_interval: str | None, ai_instructions: str | None
) -> TraderSpec:
    """A trader from a strategy file, or from an example's name (``rsi_reversal``)."""
    from tradeengine.backtest.runner import DEFAULT_INSTRUCTIONS, TraderSpec
    from tradeengine.examples import example

    path = Path(strategy)
    if path.is_file():
        return TraderSpec(
            name=path.stem,
            source=path.read_text(),
            timeframes=timeframes or ("1h",),
            check_interval=check_interval,
            ai_instructions=ai_instructions or DEFAULT_INSTRUCTIONS,
        )
    try:
        found = example(strategy)
    except KeyError as exc:
        raise BacktestError(f"--strategy: {strategy} is not a file, and {exc.args[0]}") from None
    return replace(
        TraderSpec.from_example(found),
        timeframes=timeframes or found.timeframes,
        check_interval=check_interval or found.check_interval,
        ai_instructions=ai_instructions or found.ai_instructions,
    )


def backtest_command(
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="Strategy source file (check_signal), or an example: rsi_reversal, macd_trend, bollinger_breakout.",
        ),
    ] = None,
    trader_id: Annotated[
        str | None,
        typer.Option("--trader-id", help="Backtest an existing trader (read from --trader-database)."),
    ] = None,
    trader_database: Annotated[
        str | None,
        typer.Option("--trader-database", help="Where --trader-id lives (default: TRADEENGINE_DATABASE_URL)."),
    ] = None,
    data: Annotated[Path, typer.Option("--data", help="Directory of freqtrade JSON candle files.")] = Path("data"),
    symbols: Annotated[
        str | None,
        typer.Option(help="Comma-separated (default: the trader's, else every default symbol with a file in --data)."),
    ] = None,
    timeframes: Annotated[
        str | None,
        typer.Option(help="Comma-separated; the first is the primary (default: 1h, or the trader's/example's)."),
    ] = None,
    check_interval: Annotated[
        str | None,
        typer.Option("--check-interval", help="When the strategy runs, e.g. 1h_close (default: <primary>_close)."),
    ] = None,
    ai_instructions: Annotated[
        str | None, typer.Option("--ai-instructions", help="Instructions for the analyst.")
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Start (UTC), e.g. 2021-01-01; earlier candles only warm indicators up."),
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="End (UTC), inclusive of candles closing by then.")] = None,
    balance: Annotated[str, typer.Option(help="Starting paper balance (USDT).")] = "10000",
    fee: Annotated[str, typer.Option(help="Taker fee rate, e.g. 0.001 = 0.1%.")] = "0.001",
    slippage_bps: Annotated[str, typer.Option("--slippage-bps", help="Slippage in basis points.")] = "0",
    analyst: Annotated[str, typer.Option(help="offline | cached | gemini.")] = "offline",
    policy: Annotated[str, typer.Option(help="Offline analyst policy: rules | always_open.")] = "rules",
    out: Annotated[Path, typer.Option("--out", help="Directory for the report files.")] = Path("reports/backtest"),
    database: Annotated[
        str | None,
        typer.Option("--database", help="Run against this database (kept) instead of a throwaway SQLite file."),
    ] = None,
    signal_series: Annotated[
        str,
        typer.Option(
            "--signal-series",
            help="A strategy's series form: use (check_signal only where it says maybe, audited), "
            "verify (check every close, fail on any disagreement) or off.",
        ),
    ] = "use",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Backtest a strategy on history through the tenant runtime (SimClock, replay feed, paper broker)."""
    from loguru import logger

    from tradeengine.backtest.runner import BacktestConfig

    console = Console(stderr=True)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")  # the progress bar is the output; warnings still show
    try:
        if (strategy is None) == (trader_id is None):
            raise BacktestError("give exactly one of --strategy FILE and --trader-id ID")
        if analyst not in ANALYSTS:
            raise BacktestError(f"--analyst: must be one of {', '.join(ANALYSTS)}, got {analyst!r}")
        if policy not in ("rules", "always_open"):
            raise BacktestError(f"--policy: must be rules or always_open, got {policy!r}")
        if signal_series not in ("use", "verify", "off"):
            raise BacktestError(f"--signal-series: must be use, verify or off, got {signal_series!r}")
        tf = split_list(timeframes)
        if strategy is not None:
            spec = strategy_spec(strategy, tf, check_interval, ai_instructions)
        else:
            spec = asyncio.run(_trader_spec(trader_id or "", trader_database))
        symbol_list = split_list(symbols) or spec.symbols or symbols_in(data)
        config = BacktestConfig(
            traders=(spec,),
            data_dir=data,
            symbols=tuple(symbol_list),
            start=parse_when(from_, "--from"),
            end=parse_when(to, "--to"),
            balance=parse_decimal(balance, "--balance"),
            fee_rate=parse_decimal(fee, "--fee"),
            slippage_bps=parse_decimal(slippage_bps, "--slippage-bps"),
            analyst=analyst,  # type: ignore[arg-type]
            analyst_policy=policy,  # type: ignore[arg-type]
            database_url=database,
            cache_path=out / "analysis-cache.jsonl",
            signal_series=signal_series,  # type: ignore[arg-type]
        )
        if config.balance <= 0:
            raise BacktestError("--balance: must be positive")
        from tradeengine.backtest.runner import check_data_dir

        check_data_dir(data, config.symbols)  # before the progress bar: a clear message, fast
        result, files = run_with_progress(config, out, console, title=f"Backtest: {spec.name}")
    except BacktestError as exc:
        raise _fail(console, str(exc)) from None
    if as_json:
        payload: dict[str, Any] = {
            **result.summary.to_dict(),
            "files": files.as_dict(),
            "candlesPerSecond": round(result.candles_per_second, 1),
            "strategyChecks": result.checks,
            "closesAnsweredBySeriesForm": result.series_skips,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    from tradeengine.backtest.report import per_symbol_table, summary_table

    out_console = Console()
    out_console.print(summary_table(result.summary))
    out_console.print(per_symbol_table(result.summary))
    out_console.print(
        f"report: [bold]{files.report_html}[/]  trades: {files.trades_csv}  "
        f"chart: {files.equity_png}  summary: {files.summary_json}"
    )
    out_console.print(
        f"{result.candles:,} candles in {result.replay_seconds:.1f}s "
        f"({result.candles_per_second:,.0f} candles/s through the tenant runtime)"
    )


async def _trader_spec(trader_id: str, url: str | None) -> TraderSpec:
    from tradeengine.backtest.runner import trader_spec_from_database
    from tradeengine.settings import SettingsError, load_settings

    try:
        parsed = uuid.UUID(trader_id)
    except ValueError:
        raise BacktestError(f"--trader-id: {trader_id!r} is not a UUID") from None
    try:
        source = url or load_settings().database_url
    except SettingsError as exc:
        raise BacktestError(str(exc)) from None
    return await trader_spec_from_database(source, parsed)


def run_with_progress(config: BacktestConfig, out: Path, console: Console, *, title: str) -> tuple[Any, Any]:
    """Run the backtest under a rich progress bar (on stderr) and write the reports."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tradeengine.backtest.report import write_reports
    from tradeengine.backtest.runner import ProgressSnapshot, run_backtest
    from tradeengine.clock import ms_to_datetime

    with Progress(
        TextColumn("[bold]replay[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("replay", total=None, detail="loading")

        def update(s: ProgressSnapshot) -> None:
            equity = f"{s.equity:,.2f}" if s.equity is not None else "n/a"
            bar.update(
                task,
                completed=s.closed,
                total=s.total,
                detail=f"{ms_to_datetime(s.sim_ms):%Y-%m-%d %H:%M}  signals {s.signals}  "
                f"decisions {s.decisions}  open {s.open_positions}  equity {equity}",
            )

        result = asyncio.run(run_backtest(config, progress=update))
    files = write_reports(
        out,
        result.summary,
        result.trades,
        result.curve,
        title=title,
        extra={"candlesPerSecond": round(result.candles_per_second, 1)},
    )
    return result, files
