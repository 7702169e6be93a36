"""``tradeengine download-data``: fetch candle history into freqtrade JSON files, resumably."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.progress import Progress

    from tradeengine.exchange.files import Gap

_DAY_MS = 86_400_000


@dataclass
class SeriesReport:
    """What one (symbol, timeframe) download did."""

    symbol: str
    timeframe: str
    path: Path
    fetched: int  # closed candles received
    added: int  # candles new to the file
    total: int  # candles in the file now
    gaps: list[Gap] = field(default_factory=list)


async def download(
    exchange: Any,
    symbols: list[str],
    timeframes: list[str],
    days: float,
    out_dir: Path,
    *,
    progress: Progress | None = None,
    page_limit: int = 1000,
) -> list[SeriesReport]:
    """Download ``days`` of closed candles per series into ``out_dir``; existing files are extended.

    Pages through ``fetch_ohlcv`` (ccxt's rate limiter paces the requests). The exchange's own
    clock decides which candles are closed; the still-open candle is never written. Missing
    candles are reported as gaps, never filled.
    """
    from tradeengine.exchange.files import (
        data_path,
        find_gaps,
        load_freqtrade_json,
        merge_klines,
        write_freqtrade_json,
    )
    from tradeengine.exchange.symbols import timeframe_ms, to_unified
    from tradeengine.indicators.klines import Klines

    try:
        now_ms = int(await exchange.fetch_time())
    except Exception:  # not every exchange exposes its time; fall back to ours
        now_ms = exchange.milliseconds()
    reports = []
    for raw_symbol in symbols:
        symbol = to_unified(raw_symbol)
        for timeframe in timeframes:
            step = timeframe_ms(timeframe)
            path = data_path(out_dir, symbol, timeframe)
            existing = load_freqtrade_json(path) if path.exists() else Klines.empty()
            start = (now_ms - int(days * _DAY_MS)) // step * step
            end = now_ms // step * step  # open time of the still-open candle: excluded
            ranges: list[tuple[int, int]] = []
            if len(existing) == 0:
                ranges.append((start, end))
            else:
                first, last = int(existing.open_time[0]), int(existing.open_time[-1])
                if start < first:
                    ranges.append((start, first))
                ranges.append((max(last + step, start), end))
            expected = sum(max((hi - lo) // step, 0) for lo, hi in ranges)
            task = progress.add_task(f"{symbol} {timeframe}", total=expected or 1) if progress else None
            rows: list[list[Any]] = []
            for lo, hi in ranges:
                cursor = lo
                while cursor < hi:
                    page = await exchange.fetch_ohlcv(symbol, timeframe, since=cursor, limit=page_limit)
                    page = [row for row in page if cursor <= int(row[0]) < hi]
                    if not page:
                        break
                    rows.extend(page)
                    cursor = int(page[-1][0]) + step
                    if progress is not None and task is not None:
                        progress.update(task, completed=min((cursor - lo) // step, expected))
            new = Klines.from_rows(rows)
            merged = merge_klines(existing, new)
            added = len(merged) - len(existing)
            if added or not path.exists():
                write_freqtrade_json(path, merged)
            if progress is not None and task is not None:
                progress.update(task, completed=expected or 1)
            reports.append(
                SeriesReport(
                    symbol, timeframe, path, len(new), added, len(merged), find_gaps(merged.open_time, timeframe)
                )
            )
    return reports


async def _run(
    exchange_id: str, rest_url: str | None, symbols: list[str], timeframes: list[str], days: float, out_dir: Path
) -> list[SeriesReport]:
    from rich.progress import Progress

    from tradeengine.exchange.ccxt_feed import build_exchange

    exchange = build_exchange(exchange_id, rest_url=rest_url)
    try:
        with Progress(transient=False) as progress:
            return await download(exchange, symbols, timeframes, days, out_dir, progress=progress)
    finally:
        await exchange.close()


def download_data_command(
    exchange: Annotated[str, typer.Option(help="ccxt exchange id.")] = "binance",
    symbols: Annotated[str, typer.Option(help="Comma-separated, e.g. BTC/USDT,ETH/USDT.")] = "BTC/USDT",
    timeframes: Annotated[str, typer.Option(help="Comma-separated, e.g. 5m,1h.")] = "5m,1h",
    days: Annotated[float, typer.Option(help="How far back to download.", min=0.001)] = 30,
    out: Annotated[Path, typer.Option(help="Directory for the freqtrade JSON files.")] = Path("./data"),
    exchange_url: Annotated[
        str | None, typer.Option(help="REST root URL override (default: TRADEENGINE_EXCHANGE_REST_URL).")
    ] = None,
) -> None:
    """Download candle history as freqtrade JSON; re-running appends only what is new."""
    from rich.console import Console

    from tradeengine.clock import ms_to_datetime
    from tradeengine.exchange.symbols import timeframe_ms, to_unified
    from tradeengine.settings import SettingsError, load_settings

    console = Console(stderr=True)

    def fail(message: str) -> typer.Exit:
        console.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
        return typer.Exit(2)

    symbol_list = [s.strip() for s in symbols.split(",") if s.strip()]
    timeframe_list = [t.strip() for t in timeframes.split(",") if t.strip()]
    if not symbol_list:
        raise fail("--symbols: give at least one symbol")
    if not timeframe_list:
        raise fail("--timeframes: give at least one timeframe")
    try:
        symbol_list = [to_unified(s) for s in symbol_list]
    except ValueError as exc:
        raise fail(f"--symbols: {exc}") from None
    for timeframe in timeframe_list:
        try:
            timeframe_ms(timeframe)
        except ValueError as exc:
            raise fail(f"--timeframes: {exc}") from None
    if exchange_url is None:
        try:
            exchange_url = load_settings().exchange_rest_url
        except SettingsError as exc:
            raise fail(str(exc)) from None
    try:
        reports = asyncio.run(_run(exchange, exchange_url, symbol_list, timeframe_list, days, out))
    except ValueError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # network and exchange errors: one line, no traceback
        raise fail(f"download failed: {type(exc).__name__}: {exc}") from None
    for report in reports:
        console.print(f"{report.symbol} {report.timeframe}: +{report.added} candles, {report.total} in {report.path}")
        for gap in report.gaps:
            after = ms_to_datetime(gap.after)
            console.print(f"  gap: {gap.missing} candle(s) missing after {after:%Y-%m-%d %H:%M} UTC")
    total_gaps = sum(len(r.gaps) for r in reports)
    console.print(f"done: {len(reports)} series, {total_gaps} gap(s) reported (not filled)")
