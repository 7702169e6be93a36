"""Run a backtest through the tenant runtime: the live code path on a SimClock with the replay feed,
the paper broker and an analyst, against a throwaway SQLite database (or one you name).

    result = await run_backtest(BacktestConfig(traders=(spec,), data_dir=Path("data")))
    result.summary.total_return, result.trades, result.curve

Nothing here decides trades: the runtime does (``build_tenant``); this module creates the user and
traders, drives the replay, then reads back what the runtime stored and computes the metrics.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from tradeengine.ai.analyst import Analyst
from tradeengine.backtest.errors import BacktestError
from tradeengine.backtest.metrics import EquityCurve, Fill, MarkSeries, Summary, TradeRecord, summarize
from tradeengine.clock import SimClock, datetime_to_ms, ms_to_datetime
from tradeengine.examples import ExampleStrategy
from tradeengine.exchange.events import EventRow
from tradeengine.exchange.symbols import timeframe_ms, to_unified
from tradeengine.indicators.klines import Klines
from tradeengine.runtime.bootstrap import SERIES_AUDIT_EVERY
from tradeengine.runtime.heap import frozen_heap

AnalystName = Literal["offline", "cached", "gemini"]
ANALYSTS: tuple[str, ...] = ("offline", "cached", "gemini")
WRITE_BEHIND = 256  # write batches per transaction on a throwaway database
DEFAULT_INSTRUCTIONS = "Trade the signal with disciplined risk management."
DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT", "XRP/USDT")
DATA_HINT = (
    "fill it with `make demo` (copies ../shared/data/market when it exists) or "
    "`tradeengine download-data --symbols BTC/USDT,ETH/USDT --timeframes 5m,1h --days 90 --out {dir}`"
)


@dataclass(frozen=True, slots=True)
class TraderSpec:
    """A trader to create in the backtest database (the columns of ``traders``)."""

    name: str
    source: str
    timeframes: tuple[str, ...] = ("1h",)
    check_interval: str | None = None  # default: "<first timeframe>_close"
    reanalysis_interval: str | None = None  # default: same as check_interval
    ai_instructions: str = DEFAULT_INSTRUCTIONS
    symbols: tuple[str, ...] | None = None  # None: the backtest's symbols
    position_size_pct: Decimal = Decimal(10)
    max_open_positions: int = 1
    stop_loss_pct: Decimal | None = Decimal(2)
    take_profit_pct: Decimal | None = Decimal(4)
    trailing_stop_pct: Decimal | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_example(cls, found: ExampleStrategy) -> TraderSpec:
        """A trader running a shipped example as the example describes it."""
        return cls(
            name=found.name,
            source=found.source,
            timeframes=found.timeframes,
            check_interval=found.check_interval,
            reanalysis_interval=found.reanalysis_interval,
            ai_instructions=found.ai_instructions,
        )

    @property
    def check(self) -> str:
        return self.check_interval or f"{self.timeframes[0]}_close"

    @property
    def reanalysis(self) -> str:
        return self.reanalysis_interval or self.check


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    traders: tuple[TraderSpec, ...]
    data_dir: Path
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    start: datetime | None = None  # candles closing at or before it only warm up indicators
    end: datetime | None = None
    balance: Decimal = Decimal(10000)
    fee_rate: Decimal = Decimal("0.001")
    slippage_bps: Decimal = Decimal(0)
    analyst: AnalystName = "offline"
    analyst_policy: Literal["rules", "always_open"] = "rules"  # offline analyst only
    database_url: str | None = None  # None: a throwaway SQLite file, deleted afterwards
    keep_database: bool = False
    cache_path: Path | None = None  # analyst "cached": where answers are kept between runs
    # Strategies with a series form (signal_series): "use" skips check_signal where it says no
    # (auditing a sample of those closes), "verify" checks every close anyway and fails on any
    # disagreement, "off" ignores it.
    signal_series: Literal["use", "verify", "off"] = "use"
    # Hold back the rows of a symbol while they would change nothing but its price (the series
    # form rules its closes out, no re-analysis due, the price clear of its positions' stops; see
    # QuietRows). False: every row to the runtime. The trades, the rows stored and the counters are
    # the same either way; only the progress bar's equity may lag on a held symbol's price.
    hold_quiet_rows: bool = True


@dataclass(frozen=True, slots=True)
class ProgressSnapshot:
    """What a progress display shows; taken every few hundred candle closes."""

    closed: int
    total: int
    sim_ms: int
    signals: int
    decisions: int
    open_positions: int
    equity: Decimal | None


ProgressCallback = Callable[[ProgressSnapshot], None]


@dataclass(frozen=True, slots=True)
class BacktestResult:
    summary: Summary
    trades: tuple[TradeRecord, ...]
    fills: tuple[Fill, ...]
    curve: EquityCurve
    user_id: uuid.UUID
    database_url: str | None  # None when the throwaway database was deleted
    candles: int  # candle closes delivered
    replay_seconds: float  # wall time of the replay through the runtime
    total_seconds: float  # including setup, migrations and reading results back
    checks: int = 0  # check_signal calls
    series_skips: int = 0  # closes a series form answered without a check_signal call

    @property
    def candles_per_second(self) -> float:
        return self.candles / self.replay_seconds if self.replay_seconds > 0 else 0.0


# ---------------------------------------------------------------------- data


def check_data_dir(data_dir: Path, symbols: Sequence[str]) -> None:
    """Raise BacktestError (with the fixing command) when the data directory cannot serve a replay."""
    hint = DATA_HINT.format(dir=data_dir)
    if not data_dir.is_dir():
        raise BacktestError(f"--data: directory {data_dir} does not exist; {hint}")
    if not any(data_dir.glob("*.json")):
        raise BacktestError(f"--data: no candle files (*.json) in {data_dir}; {hint}")
    for symbol in symbols:
        stem = to_unified(symbol).replace("/", "_")
        if not any(data_dir.glob(f"{stem}-*.json")):
            raise BacktestError(f"--data: no candle file for {symbol} ({stem}-<timeframe>.json) in {data_dir}; {hint}")


def _file_timeframes(data_dir: Path, symbol: str) -> list[str]:
    found = []
    for path in data_dir.glob(f"{to_unified(symbol).replace('/', '_')}-*.json"):
        tf = path.stem.rsplit("-", 1)[1]
        try:
            timeframe_ms(tf)
        except ValueError:
            continue
        found.append(tf)
    return sorted(found, key=timeframe_ms)


def load_series(data_dir: Path, symbol: str, timeframe: str) -> Klines:
    """Candles of ``symbol`` at ``timeframe``: the file, or resampled from a smaller one."""
    from tradeengine.exchange.files import data_path, load_candles
    from tradeengine.exchange.replay import resample

    files = _file_timeframes(data_dir, symbol)
    if timeframe in files:
        return load_candles(data_path(data_dir, to_unified(symbol), timeframe))
    target = timeframe_ms(timeframe)
    divisors = [tf for tf in files if target % timeframe_ms(tf) == 0 and timeframe_ms(tf) < target]
    if not divisors:
        raise BacktestError(
            f"--timeframes: no candle file for {symbol} {timeframe} (nor a smaller timeframe "
            f"that divides it) in {data_dir}"
        )
    source = divisors[-1]
    return resample(load_candles(data_path(data_dir, to_unified(symbol), source)), source, timeframe)


_SERIES_AUDIT = {"use": SERIES_AUDIT_EVERY, "verify": 1, "off": 0}


def _disagreement_message(found: Sequence[tuple[uuid.UUID, str, int]], names: Mapping[uuid.UUID, str]) -> str:
    trader_id, symbol, open_ms = found[0]
    when = ms_to_datetime(open_ms).strftime("%Y-%m-%d %H:%M UTC")
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return (
        f"strategy {names.get(trader_id, trader_id)!r}: check_signal matched on {symbol} at the candle "
        f"opening {when} where signal_series said no{more}. Closes signal_series ruled out are not "
        "checked, so signals may have been missed and no results are reported. Make signal_series "
        "true wherever check_signal can be, or run with --signal-series off."
    )


def _first_open_ms(config: BacktestConfig, symbols: Sequence[str]) -> int:
    """Earliest candle open time among the files the traders will replay (a cheap first-row read)."""
    import json

    first: list[int] = []
    for spec in config.traders:
        for symbol in spec.symbols or symbols:
            for path in config.data_dir.glob(f"{to_unified(symbol).replace('/', '_')}-*.json"):
                with path.open() as handle:
                    head = handle.read(200)
                try:
                    first.append(int(json.loads(head[: head.index("]") + 1] + "]")[0][0]))
                except (ValueError, IndexError, TypeError):
                    continue
    return min(first) if first else 0


def _marks(
    data_dir: Path, wanted: set[tuple[str, str]], start_ms: int | None, end_ms: int | None
) -> dict[str, MarkSeries]:
    """Close prices of each symbol's smallest replayed timeframe, within the replayed window."""
    smallest: dict[str, str] = {}
    for symbol, tf in wanted:
        if symbol not in smallest or timeframe_ms(tf) < timeframe_ms(smallest[symbol]):
            smallest[symbol] = tf
    marks: dict[str, MarkSeries] = {}
    for symbol, tf in smallest.items():
        k = load_series(data_dir, symbol, tf)
        close_ms = k.open_time + timeframe_ms(tf)
        keep = close_ms > (start_ms if start_ms is not None else -1)
        if end_ms is not None:
            keep &= close_ms <= end_ms
        marks[symbol] = MarkSeries(close_ms[keep].astype("int64"), k.close[keep].copy())
    return marks


# ---------------------------------------------------------------------- database


async def _seed(url: str, user_id: uuid.UUID, config: BacktestConfig) -> dict[uuid.UUID, str]:
    from tradeengine.clock import ms_to_datetime
    from tradeengine.settings import load_settings
    from tradeengine.store.engine import create_engine, create_session_factory
    from tradeengine.store.models import Trader, User
    from tradeengine.store.uow import UnitOfWork

    engine = create_engine(load_settings(database_url=url))
    names: dict[uuid.UUID, str] = {}
    # Rows get the replay's start as their timestamps: the backtest database reads like history.
    stamp = ms_to_datetime(datetime_to_ms(config.start)) if config.start else None
    try:
        async with UnitOfWork(create_session_factory(engine)) as uow:
            user = User(id=user_id, email=f"backtest-{user_id}@tradeengine.local", paper_balance=config.balance)
            if stamp:
                user.created_at = user.updated_at = stamp
            uow.users.add(user)
            for spec in config.traders:
                trader_id = uuid.uuid4()
                names[trader_id] = spec.name
                uow.traders.add(
                    Trader(
                        id=trader_id,
                        user_id=user_id,
                        name=spec.name,
                        signal_code=spec.source,
                        ai_instructions=spec.ai_instructions,
                        timeframes=list(spec.timeframes),
                        check_interval=spec.check,
                        reanalysis_interval=spec.reanalysis,
                        symbols=list(spec.symbols or config.symbols),
                        position_size_pct=spec.position_size_pct,
                        max_open_positions=spec.max_open_positions,
                        stop_loss_pct=spec.stop_loss_pct,
                        take_profit_pct=spec.take_profit_pct,
                        trailing_stop_pct=spec.trailing_stop_pct,
                        settings=dict(spec.settings),
                    )
                )
            await uow.commit()
    finally:
        await engine.dispose()
    return names


async def trader_spec_from_database(url: str, trader_id: uuid.UUID) -> TraderSpec:
    """Copy an existing trader's configuration (``--trader-id``) out of a platform database."""
    from tradeengine.settings import load_settings
    from tradeengine.store.engine import create_engine, create_session_factory
    from tradeengine.store.uow import UnitOfWork

    engine = create_engine(load_settings(database_url=url))
    try:
        async with UnitOfWork(create_session_factory(engine)) as uow:
            row = await uow.traders.get(trader_id)
            if row is None:
                raise BacktestError(f"--trader-id: no trader {trader_id} in the database")
            return TraderSpec(
                name=row.name,
                source=row.signal_code,
                timeframes=tuple(row.timeframes),
                check_interval=row.check_interval,
                reanalysis_interval=row.reanalysis_interval,
                ai_instructions=row.ai_instructions,
                symbols=tuple(row.symbols) if row.symbols else None,
                position_size_pct=row.position_size_pct,
                max_open_positions=row.max_open_positions,
                stop_loss_pct=row.stop_loss_pct,
                take_profit_pct=row.take_profit_pct,
                trailing_stop_pct=row.trailing_stop_pct,
                settings=dict(row.settings or {}),
            )
    finally:
        await engine.dispose()


async def read_results(url: str, user_id: uuid.UUID) -> tuple[list[TradeRecord], list[Fill], int, int]:
    """Positions (as trade records), filled trades, and the signal / analysis counts of one user."""
    from sqlalchemy import func, select

    from tradeengine.settings import load_settings
    from tradeengine.store.engine import create_engine, create_session_factory
    from tradeengine.store.models import AnalysisHistory, Position, Signal, Trade, Trader

    engine = create_engine(load_settings(database_url=url))
    try:
        async with create_session_factory(engine)() as session:
            names = dict(
                (await session.execute(select(Trader.id, Trader.name).where(Trader.user_id == user_id))).tuples().all()
            )
            positions = (
                await session.scalars(
                    select(Position).where(Position.user_id == user_id).order_by(Position.opened_at, Position.id)
                )
            ).all()
            trade_rows = (
                await session.scalars(
                    select(Trade)
                    .where(Trade.user_id == user_id, Trade.status == "filled")
                    .order_by(Trade.executed_at, Trade.id)
                )
            ).all()
            signals = int(
                (await session.scalar(select(func.count()).select_from(Signal).where(Signal.user_id == user_id))) or 0
            )
            analyses = int(
                (
                    await session.scalar(
                        select(func.count()).select_from(AnalysisHistory).where(AnalysisHistory.user_id == user_id)
                    )
                )
                or 0
            )
    finally:
        await engine.dispose()
    entry_qty: dict[uuid.UUID, Decimal] = {}
    sides = {p.id: p.side for p in positions}
    fills: list[Fill] = []
    for t in trade_rows:
        fills.append(Fill(t.symbol, t.side, t.price, t.quantity, t.fee, t.executed_at))
        opening = "BUY" if sides.get(t.position_id) == "long" else "SELL"
        if t.side == opening:
            entry_qty[t.position_id] = entry_qty.get(t.position_id, Decimal(0)) + t.quantity
    records = [
        TradeRecord(
            position_id=str(p.id),
            trader=names.get(p.trader_id, str(p.trader_id)),
            symbol=p.symbol,
            side=p.side,
            opened_at=p.opened_at,
            closed_at=p.closed_at,
            entry_price=p.entry_price,
            exit_price=p.exit_price,
            quantity=entry_qty.get(p.id, p.size),
            fees=p.fees,
            pnl=p.pnl if p.status == "closed" else None,
            pnl_percent=p.pnl_percent if p.status == "closed" else None,
            close_reason=p.close_reason,
        )
        for p in positions
    ]
    return records, fills, signals, analyses


# ---------------------------------------------------------------------- the run


def _build_analyst(config: BacktestConfig, settings: Any) -> Analyst | None:
    """None: let the tenant's composition root build it from settings (gemini)."""
    if config.analyst == "offline":
        from tradeengine.ai.offline import OfflineAnalyst

        return OfflineAnalyst(config.analyst_policy)
    if settings.gemini_api_key is None:
        raise BacktestError(f"--analyst {config.analyst}: needs TRADEENGINE_GEMINI_API_KEY")
    if config.analyst == "cached":
        from tradeengine.ai.gemini import GeminiClient
        from tradeengine.ai.gemini_analyst import GeminiAnalyst
        from tradeengine.backtest.cached import FileCachedAnalyst

        path = config.cache_path or (config.data_dir / "analysis-cache.jsonl")
        return FileCachedAnalyst(GeminiAnalyst(GeminiClient.from_settings(settings)), path)
    return None


async def _close_analyst(analyst: Any) -> None:
    """Close the HTTP client of an analyst this module built (cached Gemini)."""
    client = getattr(getattr(analyst, "inner", None), "client", None)
    close = getattr(client, "aclose", None)
    if close is not None:
        await close()


async def run_backtest(
    config: BacktestConfig,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = 500,
    analyst: Analyst | None = None,
) -> BacktestResult:
    """Replay ``config.data_dir`` through a tenant runtime and return the metrics of what it did."""
    from tradeengine.exchange.replay import ReplayFeed
    from tradeengine.runtime.bootstrap import build_tenant
    from tradeengine.settings import SettingsError, load_settings
    from tradeengine.store.migrations import upgrade_async

    started = time.perf_counter()
    if not config.traders:
        raise BacktestError("--strategy: a backtest needs at least one trader")
    symbols = tuple(to_unified(s) for s in config.symbols)
    wanted_symbols = sorted({to_unified(s) for spec in config.traders for s in (spec.symbols or symbols)})
    check_data_dir(config.data_dir, wanted_symbols)
    if config.start and config.end and config.end <= config.start:
        raise BacktestError("--to: must be after --from")
    start_ms = datetime_to_ms(config.start) if config.start else None
    end_ms = datetime_to_ms(config.end) if config.end else None

    work = Path(tempfile.mkdtemp(prefix="tradeengine-backtest-"))
    url = config.database_url or f"sqlite+aiosqlite:///{work / 'backtest.db'}"
    user_id = uuid.uuid4()
    owned: Analyst | None = None
    try:
        try:
            settings = load_settings(
                database_url=url,
                user_id=str(user_id),
                feed="replay",
                replay_data_dir=config.data_dir,
                replay_speed=0,
                broker="paper",
                paper_balance=config.balance,
                fee_rate=config.fee_rate,
                slippage_bps=config.slippage_bps,
                analyst="gemini" if config.analyst != "offline" else "offline",
                journal_path=work / "journal.db",
                default_symbols=symbols,
                heartbeat_interval_s=3600,
            )
        except SettingsError as exc:
            raise BacktestError(str(exc)) from None
        if analyst is None:
            analyst = owned = _build_analyst(config, settings)
        await upgrade_async(url)
        await _seed(url, user_id, config)
        # Timers align to the clock's start: begin at the data, not at the epoch (or a fixed-interval
        # timer would first tick through fifty years of empty boundaries).
        clock = SimClock(start_ms if start_ms is not None else _first_open_ms(config, symbols))
        counts = {"closed": 0}
        replay_started = replay_ended = 0.0
        made: list[ReplayFeed] = []

        def replay_feed(clock_: Any, store: Any, wanted: set[tuple[str, str]]) -> ReplayFeed | None:
            if not wanted:
                return None
            made.append(
                ReplayFeed.from_directory(
                    config.data_dir,
                    sorted({s for s, _ in wanted}),
                    sorted({tf for _, tf in wanted}, key=timeframe_ms),
                    clock=clock_,
                    store=store,
                    start_ms=start_ms,
                    end_ms=end_ms,
                )
            )
            return made[-1]

        # A throwaway database needs no commit per state change (nothing survives a crash anyway):
        # let the runtime group writes (same rows, far fewer transactions).
        write_behind = 0 if config.database_url is not None else WRITE_BEHIND
        async with build_tenant(
            settings,
            clock=clock,
            analyst=analyst,
            start_feed=False,
            feed_factory=replay_feed,
            write_behind=write_behind,
            series_audit_every=_SERIES_AUDIT[config.signal_series],
        ) as tenant:
            runtime = tenant.runtime
            wanted = runtime.subscriptions()
            if not made:
                raise BacktestError("--strategy: no trader is active (did every strategy fail to compile?)")
            feed = made[0]
            total = feed.candle_count()

            def snapshot() -> ProgressSnapshot:
                equity: Decimal | None = None
                try:
                    prices = {s: p for s in runtime.prices.last if (p := runtime.prices.decimal(s)) is not None}
                    equity = runtime.broker.equity("USDT", prices)  # type: ignore[attr-defined]
                except (AttributeError, ValueError):
                    equity = None
                c = runtime.counters
                return ProgressSnapshot(
                    counts["closed"],
                    total,
                    clock.now_ms(),
                    c.signals_created,
                    c.decisions,
                    len(runtime.state.positions),
                    equity,
                )

            quiet = runtime if config.hold_quiet_rows else None
            if progress is None:
                feed.subscribe_rows(runtime.on_rows, quiet)
            else:
                every = max(progress_every, 1)

                async def on_rows(at: int, rows: list[EventRow]) -> None:
                    await runtime.on_rows(at, rows)
                    before, counts["closed"] = counts["closed"], feed.status().candles_closed
                    if counts["closed"] // every != before // every:
                        progress(snapshot())

                feed.subscribe_rows(on_rows, quiet)
            replay_started = time.perf_counter()
            with frozen_heap():  # the boot-time heap never needs collecting during a replay
                await feed.run()
                await runtime.flush()
            replay_ended = time.perf_counter()
            if runtime.series_disagreements:
                names = {tid: trader.name for tid, trader in runtime.state.traders.items()}
                raise BacktestError(_disagreement_message(runtime.series_disagreements, names))
            closed = feed.status().candles_closed
            counts["closed"] = closed
            checks, series_skips = runtime.counters.checks, runtime.counters.series_skips
            if progress is not None:
                progress(snapshot())
        trades, fills, signals, analyses = await read_results(url, user_id)
        marks = _marks(config.data_dir, wanted, start_ms, end_ms)
        grid_start = min((int(m.close_ms[0]) for m in marks.values() if len(m.close_ms)), default=0)
        grid_end = max((int(m.close_ms[-1]) for m in marks.values() if len(m.close_ms)), default=0)
        # The period starts when the first replayed candle opened, so it covers that candle too.
        first_tf = min((tf for _, tf in wanted), key=timeframe_ms)
        summary, curve = summarize(
            initial=config.balance,
            trades=trades,
            fills=fills,
            marks=marks,
            start_ms=start_ms if start_ms is not None else grid_start - timeframe_ms(first_tf),
            end_ms=grid_end,
            candles=closed,
            signals=signals,
            analyses=analyses,
        )
        keep = config.database_url is not None or config.keep_database
        if config.keep_database and config.database_url is None:
            kept = Path.cwd() / f"backtest-{user_id.hex[:8]}.db"
            shutil.copyfile(work / "backtest.db", kept)
            url = f"sqlite+aiosqlite:///{kept}"
        return BacktestResult(
            summary=summary,
            trades=tuple(trades),
            fills=tuple(fills),
            curve=curve,
            user_id=user_id,
            database_url=url if keep else None,
            candles=closed,
            replay_seconds=replay_ended - replay_started,
            total_seconds=time.perf_counter() - started,
            checks=checks,
            series_skips=series_skips,
        )
    finally:
        if owned is not None:
            await _close_analyst(owned)
        shutil.rmtree(work, ignore_errors=True)
