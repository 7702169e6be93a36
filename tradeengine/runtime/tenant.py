"""The tenant runtime: one user's traders on timers, signal detection, analysis, execution,
position monitoring, re-analysis and recovery (seed 000 "Fly.io Machine", flows 2-4).

Hot path (every market event) does no I/O and creates no task unless something fires:
prices go to a dict, the monitor compares floats for symbols with open positions, and a
``CandleClosed`` runs the strategies subscribed to that (symbol, timeframe) synchronously.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple

from loguru import logger

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult, Analyst, PositionSnapshot
from tradeengine.ai.market_data import KlineRowCache, build_market_data
from tradeengine.clock import Clock, SimClock
from tradeengine.domain.decisions import HUNDRED, PositionBook, SizingPolicy
from tradeengine.domain.enums import (
    OPEN_ORDER_STATUSES,
    PositionSide,
    SignalStatus,
    TraderStatus,
    TradeSide,
    TradeStatus,
    TradeType,
)
from tradeengine.domain.timeframes import TimerInterval
from tradeengine.exchange.broker import Broker, OrderRequest
from tradeengine.exchange.events import (
    QUIET_FOREVER,
    ROW_CLOSE,
    ROW_TICKER,
    CandleClosed,
    CandleUpdated,
    EventRow,
    MarketEvent,
    RowHold,
    TickerUpdated,
)
from tradeengine.exchange.kline_store import KlineStore
from tradeengine.exchange.symbols import to_unified
from tradeengine.indicators.klines import Klines
from tradeengine.runtime.analysis_queue import AnalysisQueue, AnalysisTask, Priority, QueueConfig
from tradeengine.runtime.executor import SNAPSHOT_CANDLES, Executor, PriceBook, StepContext
from tradeengine.runtime.journal import DurableWriter
from tradeengine.runtime.metrics import Histogram, RuntimeCounters
from tradeengine.runtime.scheduler import Scheduler
from tradeengine.runtime.state import (
    LivePosition,
    LiveSignal,
    SeriesGate,
    SeriesStrategy,
    Strategy,
    TenantState,
    TraderRuntime,
    parse_client_order_id,
)
from tradeengine.sandbox.values import freeze_basic_ticker, freeze_store_klines
from tradeengine.store.batch import WriteBatch
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import AnalysisHistory, Order, Trader
from tradeengine.store.uow import UnitOfWork

StrategyCompiler = Callable[[str], Strategy]


class TickerStats(NamedTuple):
    """What the runtime keeps of a symbol's latest ticker (what strategies and the analyst see)."""

    last: float
    volume_24h: float
    change_24h: float  # percent
    # False: a replay row's raw change, which the event it stands for carries rounded to 4
    # places; rounded when read (``change``), as a replay writes one per candle and reads few.
    rounded: bool = True

    @property
    def change(self) -> float:
        return self.change_24h if self.rounded else round(self.change_24h, 4)


_new_tuple = tuple.__new__  # TickerStats from a tuple without the generated __new__ (per-candle path)


# Verdicts of the series form for one close (see TenantRuntime._series_verdict).
_CHECK, _SKIP, _AUDIT = object(), object(), object()
_NOW: tuple[int, float, float] = (0, -math.inf, math.inf)  # quiet_until: no hold


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    default_symbols: tuple[str, ...] = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT", "XRP/USDT")
    kline_limit: int = 500  # candles a strategy sees per timeframe (the seed's Get(sym, tf, 500))
    analysis_klines: int = 100  # candles per timeframe sent to the analyst
    max_strategy_errors: int = 5  # consecutive runtime errors that put a trader in error
    monitor_interval_s: float | None = 1.0  # None: monitor only on price events (replays)
    # A trailing extreme is saved at once when it moves more than this fraction, otherwise at
    # the next monitor interval: restarts resume trailing from (nearly) the true best price.
    extreme_save_fraction: float = 0.002
    settle_analyses: bool = False  # replay/backtest: finish analyses before the next event
    # Replays of attached series: a strategy with a series form (signal_series) answers for every
    # close at once and check_signal runs only where it says "maybe", plus every Nth other close
    # as an audit (a match there is a disagreement, see ``series_disagreements``). 0: off (live).
    series_audit_every: int = 0
    queue: QueueConfig = field(default_factory=QueueConfig)
    quote_asset: str = "USDT"
    trade_type: TradeType = TradeType.PAPER


class TenantRuntime:
    """Everything one tenant machine runs, minus HTTP and the feed's connection."""

    def __init__(
        self,
        *,
        user_id: uuid.UUID,
        clock: Clock,
        store: KlineStore,
        broker: Broker,
        analyst: Analyst,
        session_factory: SessionFactory,
        writer: DurableWriter,
        compile_strategy: StrategyCompiler,
        config: RuntimeConfig | None = None,
    ) -> None:
        self.user_id = user_id
        self.clock = clock
        self.store = store
        self.broker = broker
        self.session_factory = session_factory
        self.writer = writer
        self.compile_strategy = compile_strategy
        self.config = config or RuntimeConfig()
        self.state = TenantState()
        self.counters = RuntimeCounters()
        self.prices = PriceBook()
        self.tickers: dict[str, TickerStats] = {}
        self.scheduler = Scheduler(clock)
        self.queue = AnalysisQueue(analyst, clock, self.config.queue)
        # An analyst that reads the candles as columns gets only the rows the snapshot stores.
        self._reads_kline_rows: bool = getattr(analyst, "reads_kline_rows", True)
        self.executor = Executor(
            state=self.state,
            writer=writer,
            broker=broker,
            clock=clock,
            user_id=user_id,
            prices=self.prices,
            counters=self.counters,
            trade_type=self.config.trade_type,
            quote_asset=self.config.quote_asset,
            persist_paper_balance=self.config.trade_type is TradeType.PAPER,
        )
        # Analyses of a series reuse the candle rows formatted for its previous analysis.
        self._kline_rows = KlineRowCache()
        self.signal_latency_ms = Histogram(buckets=(0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000))
        self._check_subs: dict[tuple[str, str], list[TraderRuntime]] = {}
        self._series_on = self.config.series_audit_every > 0  # replays: see TraderRuntime.series_gates
        # Closes where check_signal matched although signal_series said no: (trader, symbol, open time).
        self.series_disagreements: list[tuple[uuid.UUID, str, int]] = []
        self._reanalysis_subs: dict[tuple[str, str], list[TraderRuntime]] = {}
        self._pending_orders: dict[str, list[Order]] = {}
        # Flips whose close committed but whose open intent did not (crash in between), by symbol.
        self._pending_flips: dict[str, list[AnalysisHistory]] = {}
        self._accepting = False
        self._started_wall = time.monotonic()
        self._last_kline_ms: int | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._settle_needed = False
        self._close_started = 0.0  # perf_counter at the current close's checks (signal latency)
        self._background: set[asyncio.Task[bool]] = set()
        # (minute, checks, triggers) cumulative samples for the seed's "last hour" metrics.
        self._samples: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=64)
        self._sample_minute = -1
        self._hold_rows: RowHold | None = None  # a replay's, once bound (QuietRows): see bind_hold

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> dict[str, int]:
        """RecoverState: load traders, signals, positions and pending orders; start timers."""
        summary = await self.recover()
        # The indicator stack (numba kernels) loads lazily and takes seconds: pay that at boot, not on the
        # first signal (whose analysis would otherwise stall the feed in a replay).
        import tradeengine.indicators.core  # noqa: F401

        self.queue.start()
        self._accepting = True
        if self.config.monitor_interval_s:
            self._monitor_task = asyncio.create_task(self._monitor_loop(), name="position-monitor")
        await self.record_event("started", "tenant runtime started", summary)
        return summary

    async def recover(self) -> dict[str, int]:
        async with UnitOfWork(self.session_factory) as uow:
            traders = await uow.traders.active(self.user_id)
            signals = await uow.signals.active(user_id=self.user_id)
            positions = await uow.positions.open_for_user(self.user_id)
            trades = {p.id: await uow.trades.for_position(p.id) for p in positions}
            pending = await uow.orders.open_orders(self.user_id)
            user = await uow.users.get(self.user_id)
            uow.session.expunge_all()  # keep loaded values: the UoW's rollback would expire them
        if user is None:
            raise ValueError(f"user_id {self.user_id} does not exist")
        self._load_traders(traders)
        self.state.signals.clear()
        self.state.active_by_key.clear()
        for row in signals:
            self.state.add_signal(
                LiveSignal(
                    id=row.id,
                    trader_id=row.trader_id,
                    symbol=row.symbol,
                    status=SignalStatus(row.status),
                    trigger_price=row.trigger_price,
                    timestamp=row.timestamp,
                    timeframe=row.timeframe,
                )
            )
        self.state.positions.clear()
        self.state.positions_by_symbol.clear()
        for prow in positions:
            side = PositionSide(prow.side)
            book = PositionBook(side)
            for trade in trades[prow.id]:
                if trade.status == TradeStatus.FILLED.value:
                    book.add_fill(TradeSide(trade.side), trade.price, trade.quantity, trade.fee)
            if book.size != prow.size:
                logger.warning(
                    "position {}: trades sum to {} but row says {}; trusting trades",
                    prow.id,
                    book.size,
                    prow.size,
                )
            extreme = prow.highest_price if side is PositionSide.LONG else prow.lowest_price
            self.state.add_position(
                LivePosition(
                    id=prow.id,
                    signal_id=prow.signal_id,
                    trader_id=prow.trader_id,
                    symbol=prow.symbol,
                    side=side,
                    book=book,
                    opened_at=prow.opened_at,
                    stop_loss=prow.stop_loss,
                    take_profit=prow.take_profit,
                    trailing_pct=prow.trailing_stop_pct / HUNDRED if prow.trailing_stop_pct is not None else None,
                    extreme=extreme,
                )
            )
        self._pending_orders = {}
        for order in pending:
            self._pending_orders.setdefault(order.symbol, []).append(order)
        await self._find_interrupted_flips({o.signal_id for o in pending})
        self._rebuild_paper_account(user.paper_balance, positions, trades)
        # Signals that were detected but never analysed (crash before the decision committed).
        for signal in list(self.state.signals.values()):
            if signal.status is SignalStatus.NEW:
                self._enqueue(signal, Priority.NEW_SIGNAL, reanalysis=False)
        summary = {
            "traders": len(self.state.traders),
            "openPositions": len(self.state.positions),
            "activeSignals": len(self.state.signals),
            "watchingSignals": self.state.watching_count(),
            "pendingOrders": sum(len(v) for v in self._pending_orders.values()),
            "interruptedFlips": sum(len(v) for v in self._pending_flips.values()),
        }
        logger.info("state recovered: {}", summary)
        return summary

    def _rebuild_paper_account(
        self, paper_balance: Decimal | None, positions: list[Any], trades: Mapping[uuid.UUID, list[Any]]
    ) -> None:
        """A paper account lives in memory; rebuild it from what the database says we hold."""
        from tradeengine.exchange.paper import PaperBroker

        if not isinstance(self.broker, PaperBroker) or self.config.trade_type is not TradeType.PAPER:
            return
        snapshot = self.broker.snapshot()
        quote = self.config.quote_asset
        free: dict[str, Decimal] = {k: Decimal(v) for k, v in snapshot["free"].items()}
        if paper_balance is not None:
            free = {quote: paper_balance}
        shorts: dict[str, dict[str, str]] = {}
        for row in positions:
            base = row.symbol.split("/")[0]
            if row.side == PositionSide.LONG.value:
                free[base] = free.get(base, Decimal(0)) + row.size
                continue
            quantity = collateral = Decimal(0)
            for trade in trades[row.id]:
                if trade.status != TradeStatus.FILLED.value:
                    continue
                if trade.side == TradeSide.SELL.value:
                    quantity += trade.quantity
                    collateral += 2 * trade.price * trade.quantity
                elif quantity > 0:
                    released = collateral if trade.quantity >= quantity else collateral * trade.quantity / quantity
                    quantity -= trade.quantity
                    collateral -= released
            if quantity > 0:
                shorts[row.symbol] = {"quantity": str(quantity), "collateral": str(collateral)}
        snapshot["free"] = {k: str(v) for k, v in free.items()}
        snapshot["shorts"] = shorts
        snapshot["reserved"] = {}
        snapshot["orders"] = []
        self.broker = PaperBroker.restore(snapshot)
        self.executor.broker = self.broker

    def _load_traders(self, rows: list[Trader]) -> None:
        previous = self.state.traders
        self._release_holds()
        self.state.traders = {}
        self.scheduler.cancel_prefix("check:")
        self.scheduler.cancel_prefix("reanalysis:")
        self._check_subs = {}
        self._reanalysis_subs = {}
        for row in rows:
            trader = self._build_trader(row, previous.get(row.id))
            if trader is None:
                continue
            self.state.traders[trader.id] = trader
            self._schedule(trader)

    def _build_trader(self, row: Trader, previous: TraderRuntime | None) -> TraderRuntime | None:
        try:
            check = TimerInterval.parse(row.check_interval, field="check_interval")
            reanalysis = TimerInterval.parse(row.reanalysis_interval, field="reanalysis_interval")
            timeframes = tuple(row.timeframes or ())
            if not timeframes:
                raise ValueError("timeframes must name at least one timeframe")
            symbols = tuple(to_unified(s) for s in (row.symbols or self.config.default_symbols))
            settings = dict(row.settings or {})
            sizing = SizingPolicy.from_settings(
                {
                    **settings,
                    "position_size_pct": row.position_size_pct,
                    "max_open_positions": row.max_open_positions,
                    "stop_loss_pct": row.stop_loss_pct,
                    "take_profit_pct": row.take_profit_pct,
                }
            )
        except ValueError as exc:
            self._fail_trader_later(row.id, f"invalid configuration: {exc}")
            return None
        strategy: Strategy | None = None
        if (
            previous is not None
            and previous.strategy is not None
            and getattr(previous, "_code", None) == row.signal_code
        ):
            strategy = previous.strategy
        else:
            try:
                strategy = self.compile_strategy(row.signal_code)
            except Exception as exc:  # compile errors are the user's, not ours
                self._fail_trader_later(row.id, f"strategy does not compile: {exc}")
                return None
        trader = TraderRuntime(
            id=row.id,
            user_id=row.user_id,
            name=row.name,
            ai_instructions=row.ai_instructions,
            timeframes=timeframes,
            symbols=symbols,
            check=check,
            reanalysis=reanalysis,
            sizing=sizing,
            trailing_stop_pct=row.trailing_stop_pct / HUNDRED if row.trailing_stop_pct is not None else None,
            settings={
                **settings,
                "position_size_pct": str(row.position_size_pct),
                "stop_loss_pct": None if row.stop_loss_pct is None else str(row.stop_loss_pct),
                "take_profit_pct": None if row.take_profit_pct is None else str(row.take_profit_pct),
            },
            strategy=strategy,
        )
        return trader

    def _schedule(self, trader: TraderRuntime) -> None:
        if trader.check.timeframe is not None:
            for symbol in trader.symbols:
                self._check_subs.setdefault((symbol, trader.check.timeframe), []).append(trader)
        else:
            self.scheduler.every(f"check:{trader.id}", trader.check.period_ms, partial(self._run_check, trader))
        if trader.reanalysis.timeframe is not None:
            for symbol in trader.symbols:
                self._reanalysis_subs.setdefault((symbol, trader.reanalysis.timeframe), []).append(trader)
        else:
            self.scheduler.every(
                f"reanalysis:{trader.id}",
                trader.reanalysis.period_ms,
                partial(self._reanalyze, trader, None),
            )

    def subscriptions(self) -> set[tuple[str, str]]:
        """Union of (symbol, timeframe) the active traders need from the feed."""
        wanted: set[tuple[str, str]] = set()
        for trader in self.state.traders.values():
            timeframes = set(trader.timeframes)
            for interval in (trader.check, trader.reanalysis):
                if interval.timeframe is not None:
                    timeframes.add(interval.timeframe)
            wanted.update((symbol, tf) for symbol in trader.symbols for tf in timeframes)
        return wanted

    async def reload_traders(self) -> int:
        """Re-read traders from the database (POST /reload-traders)."""
        async with UnitOfWork(self.session_factory) as uow:
            rows = await uow.traders.active(self.user_id)
            uow.session.expunge_all()
        self._load_traders(rows)
        await self.record_event("traders_reloaded", None, {"traders": len(self.state.traders)})
        return len(self.state.traders)

    async def prepare_shutdown(self) -> dict[str, Any]:
        """Stop taking new work (timers, detection); let in-flight analyses finish."""
        self._accepting = False
        await self.scheduler.stop()
        return {
            "success": True,
            "accepting": False,
            "queued": self.queue.depth,
            "inFlight": self.queue.in_flight,
        }

    async def shutdown(self, reason: str = "shutdown") -> dict[str, Any]:
        """Stop timers, finish in-flight work, persist, and report what stays open."""
        await self.prepare_shutdown()
        await self.queue.stop(drain=True)
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
            self._monitor_task = None
        summary = {"openPositions": len(self.state.positions), "watchingSignals": self.state.watching_count()}
        await self.record_event("stopped", reason, summary)
        if self.writer.pending:
            await self.writer.replay_once()
        return {"success": True, "message": "Machine shutting down gracefully", **summary}

    # ------------------------------------------------------------------ market events

    async def on_event(self, event: MarketEvent) -> None:
        """Feed handler: prices, monitor, then candle-close checks and re-analysis."""
        if type(event) is CandleUpdated:
            await self._on_candle(event.symbol, event.open_time, event.close)
        elif type(event) is CandleClosed:
            await self._on_candle_closed(event.symbol, event.timeframe)
        elif type(event) is TickerUpdated:
            symbol = event.symbol
            self.tickers[symbol] = TickerStats(
                float(event.last), float(event.volume_24h), float(event.change_24h_percent)
            )
            self.prices.set_exact(symbol, event.last, event.timestamp)
            await self._on_ticker(symbol)

    async def on_rows(self, at_ms: int, rows: list[EventRow]) -> None:
        """Replay handler: one instant's rows, handled exactly as the events they stand for
        (``on_event``), in the same order, without building those events (see ``EventRow``).
        The checks that decide whether anything but bookkeeping is due are inlined: a backtest
        runs this for every candle, and most candles need nothing else."""
        prices, tickers, positions = self.prices, self.tickers, self.state.positions_by_symbol
        quiet: list[str] = []  # symbols whose close needed nothing more: a hold is offered at the end
        for symbol, timeframe, kind, open_time, v0, v1, _, v3, _ in rows:
            if kind == ROW_TICKER:
                # What the TickerUpdated would carry: last, volume, change rounded to 4 places
                # (when read). The exact price is the float's shortest spelling, as the event's was.
                tickers[symbol] = _new_tuple(TickerStats, (v3, v1, v0, False))
                prices.set_float(symbol, v3, at_ms)
                if self._pending_flips:
                    await self._on_ticker(symbol)
                elif symbol in positions and not self._quiet(symbol, v3):
                    await self._monitor_symbol(symbol)  # _on_ticker without pending flips
                continue
            if self._pending_orders or self._pending_flips:
                await self._on_candle(symbol, open_time, v3)
            else:  # _on_candle without pending orders or flips
                prices.set_float(symbol, v3, open_time)
                self._last_kline_ms = open_time
                if symbol in positions and not self._quiet(symbol, v3):
                    await self._monitor_symbol(symbol)
            if kind == ROW_CLOSE and self._accepting:
                key = (symbol, timeframe)
                if key in self._check_subs or key in self._reanalysis_subs or self._settle_needed:
                    matches = self._check_close(symbol, timeframe)  # _on_candle_closed, in two parts
                    if matches is not None:
                        await self._after_close(symbol, timeframe, matches)
                    elif self._hold_rows is not None:
                        quiet.append(symbol)
                elif (minute := self.clock.now_ms() // 60_000) != self._sample_minute:
                    self._sample_counts(minute)
        # After the whole instant, which a later row of it may still change for the symbol.
        hold = self._hold_rows
        if hold is not None:
            for symbol in quiet:
                until, low, high = self.quiet_until(symbol)
                if until > at_ms:
                    hold(symbol, until, low, high)  # nothing is due here before then

    async def _on_candle(self, symbol: str, open_time: int, close: float) -> None:
        self.prices.set_float(symbol, close, open_time)
        self._last_kline_ms = open_time
        if symbol in self.state.positions_by_symbol and not self._quiet(symbol, close):
            await self._monitor_symbol(symbol)
        if self._pending_orders and symbol in self._pending_orders:
            await self._resume_orders(symbol)
        if self._pending_flips and symbol in self._pending_flips:
            await self._resume_flips(symbol)

    async def _on_ticker(self, symbol: str) -> None:
        if symbol in self.state.positions_by_symbol and not self._quiet(symbol, self.prices.last[symbol]):
            await self._monitor_symbol(symbol)
        if self._pending_flips and symbol in self._pending_flips:
            await self._resume_flips(symbol)

    async def _on_candle_closed(self, symbol: str, timeframe: str) -> None:
        matches = self._check_close(symbol, timeframe)
        if matches is not None:
            await self._after_close(symbol, timeframe, matches)

    def _check_close(self, symbol: str, timeframe: str) -> list[tuple[TraderRuntime, str]] | None:
        """The synchronous part of a candle close: metrics samples and the strategy checks.

        Returns the matches when something asynchronous is due (signals to create, signals to
        re-analyse on this close, analyses to settle), else None: most replay closes need nothing
        more, and they skip a coroutine (``_on_candle_closed`` is the two parts in a row)."""
        if not self._accepting:
            return None
        minute = self.clock.now_ms() // 60_000
        if minute != self._sample_minute:
            self._sample_counts(minute)
        key = (symbol, timeframe)
        traders = self._check_subs.get(key)
        matches: list[tuple[TraderRuntime, str]] = []
        if traders:
            self._close_started = time.perf_counter()
            shared: dict[Any, Any] = {}  # one set of frozen views per close, shared by its traders
            series_on = self._series_on
            for trader in traders:
                if trader.failed:
                    continue
                if trader.running:
                    self.counters.skipped_busy += 1
                    continue
                verdict = self._series_verdict(trader, symbol, timeframe) if series_on else _CHECK
                if verdict is _SKIP:
                    continue
                if self.state.has_active_signal(trader.id, symbol):
                    continue  # dedup: no second signal while one is new/watching/position_open
                if self._evaluate(trader, symbol, shared):
                    if verdict is _AUDIT:
                        self._series_disagreed(trader, symbol, timeframe)
                    matches.append((trader, symbol))
        if matches or self._settle_needed or (key in self._reanalysis_subs and self._has_signal_on(symbol)):
            return matches
        return None

    async def _after_close(self, symbol: str, timeframe: str, matches: list[tuple[TraderRuntime, str]]) -> None:
        """The asynchronous part of a candle close (see ``_check_close``)."""
        if matches:
            await self._create_signals(matches, timeframe, self._close_started)
        reanalysers = self._reanalysis_subs.get((symbol, timeframe))
        if reanalysers:
            for trader in reanalysers:
                await self._reanalyze(trader, symbol)
        if self._settle_needed:
            self._settle_needed = False
            await self.queue.join()

    def _series_verdict(self, trader: TraderRuntime, symbol: str, timeframe: str) -> object:
        """Whether this close of ``timeframe`` needs ``check_signal``: _CHECK, _SKIP, or _AUDIT
        (a skippable close checked anyway, every ``series_audit_every``-th one)."""
        gates = trader.series_gates
        try:
            gate = gates[symbol]
        except KeyError:
            gate = gates[symbol] = self._series_gate(trader, symbol, timeframe)
        if gate is None:
            return _CHECK
        index = self.store.attached_index(symbol, timeframe, gate.times)
        if index < 0:  # the series left attached mode: its history is no longer what the gate read
            gates[symbol] = None
            return _CHECK
        held_back = index - gate.last_index - 1
        if held_back > 0 and gate.last_index >= 0:
            # Closes the feed held back (quiet_until): each was ruled out and short of an audit,
            # so they count as the skips they would have been.
            gate.unaudited += held_back
            self.counters.series_skips += held_back
        gate.last_index = index
        if gate.mask[index]:
            return _CHECK
        gate.unaudited += 1
        if gate.unaudited < self.config.series_audit_every:
            self.counters.series_skips += 1
            return _SKIP
        gate.unaudited = 0
        return _AUDIT

    def _series_gate(self, trader: TraderRuntime, symbol: str, timeframe: str) -> SeriesGate | None:
        """Run the trader's series form over the symbol's whole attached history, once."""
        strategy = trader.strategy
        if not isinstance(strategy, SeriesStrategy) or not strategy.has_series or trader.timeframes != (timeframe,):
            return None  # the series form decides on one timeframe, the one whose closes it answers
        history = self.store.attached_history(symbol, timeframe)
        if history is None:
            return None
        window = min(self.config.kline_limit, self.store.capacity)  # what check_signal's view holds
        try:
            mask = strategy.signal_series(symbol, timeframe, history, window)
        except Exception as exc:
            self.counters.series_errors += 1
            logger.warning("trader {}: signal_series failed on {} ({}); checking every close", trader.name, symbol, exc)
            return None
        return SeriesGate(history.open_time, mask.tolist())

    def _series_disagreed(self, trader: TraderRuntime, symbol: str, timeframe: str) -> None:
        """check_signal matched where signal_series said no: closes skipped before may have been
        missed, so this is recorded (a backtest fails on it) and the pair checks every close from now."""
        open_time = self.store.last_open_time(symbol, timeframe) or 0
        self.series_disagreements.append((trader.id, symbol, open_time))
        logger.warning(
            "trader {}: signal_series said no at the {} close of {} (open {}) but check_signal matched",
            trader.name,
            timeframe,
            symbol,
            open_time,
        )
        trader.series_gates[symbol] = None

    def bind_hold(self, hold: RowHold) -> None:
        """``QuietRows``: a replay lets this runtime have a symbol's rows held back. At the end of
        each instant, ``on_rows`` offers a hold for the symbols whose close needed nothing more
        (see ``quiet_until``)."""
        self._hold_rows = hold

    def _release_holds(self) -> None:
        """Traders changed: every held symbol may be needed now."""
        if self._hold_rows is not None:
            for symbol in {symbol for symbol, _ in self.store.series()}:
                self._hold_rows(symbol, 0)

    def _has_signal_on(self, symbol: str) -> bool:
        return any(signal.symbol == symbol for signal in self.state.signals.values())

    def quiet_until(self, symbol: str) -> tuple[int, float, float]:
        """Until when (feed time, ms) ``symbol``'s rows would change nothing here but its price,
        ticker and candles, and the band its price must stay strictly inside until then; 0 means
        now. A symbol is quiet while nothing is pending for it, each of its signals waits for its
        next re-analysis on a candle close (watching, or with a position whose ``quiet_band`` the
        price stays inside: no stop, no target, no new trailing extreme), and each of its traders
        checks candle closes through a series gate whose next non-skip verdict (a flagged close or
        an audit) is later: the closes held back until then are skips, counted as such at the next
        verdict (``_series_verdict``)."""
        if not self._accepting or self._pending_orders or self._pending_flips or self._settle_needed:
            return _NOW
        until, low, high = QUIET_FOREVER, -math.inf, math.inf
        for signal in self.state.signals.values():
            if signal.symbol != symbol:
                continue
            if self.queue.is_pending(signal.id):
                return _NOW
            if signal.status is SignalStatus.POSITION_OPEN:
                if self.state.position_for_signal(signal.id) is None:
                    return _NOW
            elif signal.status is not SignalStatus.WATCHING:
                return _NOW
            trader = self.state.traders.get(signal.trader_id)
            reanalysis = trader.reanalysis if trader is not None else None
            if reanalysis is None or reanalysis.timeframe is None:
                return _NOW  # a fixed-interval re-analysis reads the symbol at any instant
            hidden = self.store.next_hidden_open_time(symbol, reanalysis.timeframe)
            if hidden is None:
                return _NOW
            until = min(until, hidden + reanalysis.period_ms)  # when that candle closes
        for position in self.state.positions_by_symbol.get(symbol, ()):
            if position.closing:
                return _NOW
            band_low, band_high = position.quiet_band
            low, high = max(low, band_low), min(high, band_high)
        if low >= high:
            return _NOW
        every = self.config.series_audit_every
        for trader in self.state.traders.values():
            if trader.failed or symbol not in trader.symbols:
                continue
            timeframe = trader.check.timeframe
            if timeframe is None or not every:
                return _NOW  # a fixed-interval check reads the symbol at any instant; no gates, every close
            gate = trader.series_gates.get(symbol)
            if gate is None or self.store.attached_index(symbol, timeframe, gate.times) < 0:
                return _NOW
            needed = gate.next_needed(every)
            if needed < len(gate.mask):
                until = min(until, gate.times.item(needed) + trader.check.period_ms)
        return until, low, high

    async def _run_check(self, trader: TraderRuntime) -> None:
        """A fixed-interval timer firing: evaluate every symbol of the trader."""
        if not self._accepting or trader.failed:
            return
        if trader.running:
            self.counters.skipped_busy += 1
            return
        trader.running = True
        try:
            started = time.perf_counter()
            matches: list[tuple[TraderRuntime, str]] = []
            for symbol in trader.symbols:
                if trader.failed:
                    break
                if self.state.has_active_signal(trader.id, symbol):
                    continue
                if self._evaluate(trader, symbol):
                    matches.append((trader, symbol))
            if matches:
                await self._create_signals(matches, trader.primary_timeframe, started)
        finally:
            trader.running = False
        if self._settle_needed:
            self._settle_needed = False
            await self.queue.join()

    def _evaluate(self, trader: TraderRuntime, symbol: str, shared: dict[Any, Any] | None = None) -> bool:
        """Run the strategy on read-only views; errors count toward putting the trader in error.

        ``shared`` caches the views and ticker of one (symbol, instant) across traders; they are
        frozen once (the sandbox then skips its own copy), which matters with many traders.
        """
        strategy = trader.strategy
        if strategy is None:
            return False
        cache = shared if shared is not None else {}
        klines = cache.get(trader.timeframes)
        if klines is None:
            store = self.store
            limit = self.config.kline_limit
            raw: dict[str, Klines] = {}
            for tf in trader.timeframes:  # a loop, not a comprehension: no extra frame per check
                raw[tf] = store.klines(symbol, tf, limit)
            if not len(raw[trader.timeframes[0]]):
                return False
            klines = cache[trader.timeframes] = freeze_store_klines(raw)
        ticker = cache.get("ticker")
        if ticker is None:
            ticker = cache["ticker"] = self._frozen_ticker(symbol)
        self.counters.checks += 1
        try:
            matched = bool(strategy.check_signal(symbol, ticker, klines))
        except Exception as exc:
            self.counters.strategy_errors += 1
            trader.consecutive_errors += 1
            if trader.consecutive_errors >= self.config.max_strategy_errors:
                trader.failed = True
                self._fail_trader_later(
                    trader.id,
                    f"strategy failed {trader.consecutive_errors} times in a row; last error: {exc}",
                )
            return False
        trader.consecutive_errors = 0
        if matched:
            self.counters.triggers += 1
        return matched

    def _frozen_ticker(self, symbol: str) -> Mapping[str, float | None]:
        """``freeze_ticker(self._ticker(symbol))`` without the intermediate dict (hot path)."""
        ticker = self.tickers.get(symbol)
        last = self.prices.last.get(symbol)
        if ticker is None:
            return freeze_basic_ticker(last, None, None)
        return freeze_basic_ticker(last if last is not None else ticker.last, ticker.volume_24h, ticker.change)

    def _ticker(self, symbol: str) -> dict[str, Any]:
        ticker = self.tickers.get(symbol)
        last = self.prices.last.get(symbol)
        if ticker is None:
            return {"symbol": symbol, "lastPrice": last, "volume24h": None, "priceChange24h": None}
        return {
            "symbol": symbol,
            "lastPrice": last if last is not None else ticker.last,
            "volume24h": ticker.volume_24h,
            "priceChange24h": ticker.change,
        }

    async def _create_signal(
        self, trader: TraderRuntime, symbol: str, timeframe: str, started: float, *, enqueue: bool = True
    ) -> None:
        await self._create_signals([(trader, symbol)], timeframe, started, enqueue=enqueue)

    async def _create_signals(
        self,
        matches: list[tuple[TraderRuntime, str]],
        timeframe: str,
        started: float,
        *,
        enqueue: bool = True,
    ) -> None:
        """Commit the signals of one instant in one transaction, then queue their analyses."""
        now = self.clock.now()
        batch = WriteBatch("signals")
        created: list[LiveSignal] = []
        for trader, symbol in matches:
            price = self.prices.decimal(symbol)
            if price is None:
                continue
            signal = LiveSignal(
                id=uuid.uuid4(),
                trader_id=trader.id,
                symbol=symbol,
                status=SignalStatus.NEW,
                trigger_price=price,
                timestamp=now,
                timeframe=timeframe,
            )
            batch.insert(
                "signals",
                id=signal.id,
                trader_id=trader.id,
                user_id=self.user_id,
                symbol=symbol,
                timestamp=now,
                status=SignalStatus.NEW.value,
                trigger_price=price,
                current_price=price,
                timeframe=timeframe,
                created_at=now,
                updated_at=now,
            )
            created.append(signal)
        if not created:
            return
        await self.writer.write(batch)
        latency = (time.perf_counter() - started) * 1000
        for signal in created:
            self.signal_latency_ms.observe(latency)
            self.state.add_signal(signal)
            self.counters.signals_created += 1
        if enqueue:
            for signal in created:
                self._enqueue(signal, Priority.NEW_SIGNAL, reanalysis=False)

    async def inject_signal(self, trader_id: uuid.UUID, symbol: str, *, analyse: bool = True) -> LiveSignal:
        """Create a signal as if the trader's strategy had matched now (tests, manual signals)."""
        trader = self.state.traders[trader_id]
        if self.state.has_active_signal(trader_id, symbol):
            raise ValueError(f"trader {trader_id} already has an active signal on {symbol}")
        if self._hold_rows is not None:
            self._hold_rows(symbol, 0)
        if analyse:
            await self._create_signal(trader, symbol, trader.primary_timeframe, time.perf_counter())
        else:
            await self._create_signal(trader, symbol, trader.primary_timeframe, time.perf_counter(), enqueue=False)
        return self.state.signals[self.state.active_by_key[(trader_id, symbol)]]

    # ------------------------------------------------------------------ analysis

    def _enqueue(self, signal: LiveSignal, priority: Priority, *, reanalysis: bool) -> None:
        trader = self.state.traders.get(signal.trader_id)
        if trader is None or self.queue.is_pending(signal.id):
            return
        try:
            request = self._analysis_request(trader, signal, reanalysis=reanalysis)
        except ValueError as exc:
            logger.warning("cannot build market data for {}: {}", signal.symbol, exc)
            return
        accepted = self.queue.submit(AnalysisTask(request, priority, self._on_analysis, self._on_analysis_failed))
        if accepted and self.config.settle_analyses:
            self._settle_needed = True

    def _analysis_request(self, trader: TraderRuntime, signal: LiveSignal, *, reanalysis: bool) -> AnalysisRequest:
        klines: dict[str, Klines] = {}
        primary = trader.primary_timeframe
        for tf in (primary, *[t for t in trader.timeframes if t != primary]):
            klines[tf] = self.store.klines(signal.symbol, tf, max(self.config.analysis_klines * 3, 250))
        limit = self.config.analysis_klines
        reads_rows = self._reads_kline_rows
        market_data = build_market_data(
            signal.symbol,
            self._ticker(signal.symbol),
            klines,
            limit=limit,
            primary_timeframe=primary,
            rows_cache=self._kline_rows,
            rows_kept=None if reads_rows else SNAPSHOT_CANDLES,
        )
        position = self.state.position_for_signal(signal.id)
        snapshot = None
        if position is not None:
            price = self.prices.decimal(signal.symbol) or position.entry_price
            unrealized = position.book.unrealized_pnl(price)
            cost = position.entry_price * position.size
            snapshot = PositionSnapshot(
                position_id=position.id,
                side=position.side,
                entry_price=position.entry_price,
                size=position.size,
                stop_loss=position.stop_loss,
                take_profit=position.take_profit,
                unrealized_pnl=unrealized,
                unrealized_pnl_percent=(unrealized / cost * HUNDRED) if cost else Decimal(0),
            )
        primary_klines = klines[primary]
        return AnalysisRequest(
            correlation_id=f"{signal.id}:{self.clock.now_ms()}",
            user_id=self.user_id,
            trader_id=trader.id,
            signal_id=signal.id,
            symbol=signal.symbol,
            ai_instructions=trader.ai_instructions,
            market_data=market_data,
            position=snapshot,
            is_reanalysis=reanalysis,
            trader_settings=trader.settings,
            candle_key=int(primary_klines.open_time[-1]) if len(primary_klines) else None,
            candles={
                tf: self._kline_rows.candles(signal.symbol, tf)
                if reads_rows
                else self.store.lasting_klines(signal.symbol, tf, limit)
                for tf in klines
            },
        )

    async def _on_analysis(self, request: AnalysisRequest, result: AnalysisResult) -> None:
        await self.executor.apply_analysis(request.signal_id, request, result)

    async def _on_analysis_failed(self, request: AnalysisRequest, error: str) -> None:
        self.counters.errors += 1
        await self.record_event("analysis_failed", error[:500], {"signalId": str(request.signal_id)})

    async def _reanalyze(self, trader: TraderRuntime, symbol: str | None) -> None:
        """Re-analysis timer: watching signals and open positions (and never-analysed new ones)."""
        if not self._accepting or trader.failed:
            return
        for signal in list(self.state.signals.values()):
            if signal.trader_id != trader.id or (symbol is not None and signal.symbol != symbol):
                continue
            if self.queue.is_pending(signal.id):
                continue
            if signal.status is SignalStatus.POSITION_OPEN:
                priority = Priority.POSITION
            elif signal.status is SignalStatus.WATCHING:
                priority = Priority.WATCHING
            else:
                priority = Priority.NEW_SIGNAL
            self.counters.reanalyses += 1
            self._enqueue(signal, priority, reanalysis=signal.status is not SignalStatus.NEW)
        if symbol is None and self._settle_needed:
            self._settle_needed = False
            await self.queue.join()

    # ------------------------------------------------------------------ position monitor

    def _quiet(self, symbol: str, price: float) -> bool:
        """True (and counted as a monitor check) when ``price`` triggers nothing for any position
        on ``symbol`` (``LivePosition.quiet``): then ``_monitor_symbol`` would do nothing, and the
        common case costs no coroutine. Closing positions are skipped by the monitor anyway."""
        for position in self.state.positions_by_symbol.get(symbol, ()):
            if not position.quiet(price):
                return False
        self.counters.monitor_checks += 1
        return True

    async def _monitor_symbol(self, symbol: str) -> None:
        price = self.prices.last[symbol]
        self.counters.monitor_checks += 1
        fraction = self.config.extreme_save_fraction
        for position in list(self.state.positions_by_symbol.get(symbol, ())):
            if position.closing:
                continue
            reason = position.trigger(price)
            if reason is not None:
                await self.executor.close_position(position, reason)
            elif position.extreme_unsaved(fraction):
                await self.executor.persist_extreme(position)

    async def _monitor_loop(self) -> None:
        interval = self.config.monitor_interval_s or 1.0
        while True:
            await self.clock.sleep(interval)
            for symbol in list(self.state.positions_by_symbol):
                if symbol in self.prices.last:
                    try:
                        await self._monitor_symbol(symbol)
                        await self._save_extremes(symbol)
                    except Exception:
                        logger.exception("position monitor failed for {}", symbol)

    async def _save_extremes(self, symbol: str) -> None:
        """Once per monitor interval: save every trailing extreme that moved at all."""
        for position in list(self.state.positions_by_symbol.get(symbol, ())):
            if not position.closing and position.extreme_unsaved(0.0):
                await self.executor.persist_extreme(position)

    async def close_position_manually(self, position_id: uuid.UUID) -> bool:
        position = self.state.positions.get(position_id)
        if position is None:
            return False
        await self.executor.close_position(position, "manual")
        return True

    # ------------------------------------------------------------------ recovery of orders

    async def _find_interrupted_flips(self, signals_with_orders: set[uuid.UUID | None]) -> None:
        """Active signals with no position and no pending order whose latest analysis is a flip
        with the close applied: the crash came before the open's intent committed."""
        self._pending_flips = {}
        candidates = [
            s
            for s in self.state.signals.values()
            if s.status is SignalStatus.POSITION_OPEN
            and s.id not in signals_with_orders
            and self.state.position_for_signal(s.id) is None
        ]
        if not candidates:
            return
        async with UnitOfWork(self.session_factory) as uow:
            # All of them, not the latest: analyses can share a timestamp (same-millisecond replays).
            histories = [await uow.analyses.for_signal(s.id) for s in candidates]
            uow.session.expunge_all()
        for signal, analyses in zip(candidates, histories, strict=True):
            # A flip whose open step ran (applied, failed or rejected) has left the flip_close state.
            interrupted = [
                a
                for a in analyses
                if (a.meta or {}).get("flip")
                and ((a.meta or {}).get("execution") or {}).get("step") == "flip_close"
                and ((a.meta or {}).get("execution") or {}).get("status") == "applied"
            ]
            if interrupted:
                self._pending_flips.setdefault(signal.symbol, []).append(interrupted[-1])
            else:
                logger.warning("signal {} has an open-position status but no position", signal.id)

    async def _resume_flips(self, symbol: str) -> None:
        for analysis in self._pending_flips.pop(symbol, []):
            signal = self.state.signals.get(analysis.signal_id)
            trader = self.state.traders.get(analysis.trader_id)
            if signal is None or trader is None:
                logger.warning("interrupted flip {} has no active signal/trader; leaving it", analysis.id)
                continue
            try:
                await self.executor.resume_flip_open(analysis.id, trader, signal, dict(analysis.meta or {}))
            except Exception:
                logger.exception("could not resume the open half of flip {}", analysis.id)

    async def _resume_orders(self, symbol: str) -> None:
        rows = self._pending_orders.pop(symbol, [])
        for row in rows:
            try:
                await self._resume_order(row)
            except Exception:
                logger.exception("could not resume order {}", row.client_order_id)

    async def _resume_order(self, row: Order) -> None:
        """Finish an order whose intent committed before a crash: apply what the broker has, or
        send the very same request again (same client id, so never a second order)."""
        parsed = parse_client_order_id(row.client_order_id)
        if parsed is None or row.status not in {s.value for s in OPEN_ORDER_STATUSES}:
            return
        owner, step, _attempt = parsed
        signal = self.state.signals.get(row.signal_id) if row.signal_id else None
        trader = self.state.traders.get(row.trader_id) if row.trader_id else None
        if signal is None or trader is None:
            logger.warning("pending order {} has no active signal/trader; leaving it", row.client_order_id)
            return
        from tradeengine.domain.enums import OrderPurpose, OrderType

        request = OrderRequest(
            client_order_id=row.client_order_id,
            symbol=row.symbol,
            side=TradeSide(row.side),
            type=OrderType(row.type),
            quantity=row.quantity,
            purpose=OrderPurpose(row.purpose),
            reduce_only=step not in ("open", "flip_open", "scale_in"),
        )
        async with self.executor.lock:
            state = await self.broker.fetch_order(row.client_order_id, row.symbol)
            if state is None:
                state = await self.executor._place(request)
            meta: dict[str, Any] | None = None
            analysis_id: uuid.UUID | None = None
            stop = take = None
            follow: StepContext | None = None
            if step not in ("stop_loss", "take_profit", "trailing_stop", "manual"):
                analysis_id = owner
                async with UnitOfWork(self.session_factory) as uow:
                    analysis = await uow.analyses.get(owner)
                    uow.session.expunge_all()
                if analysis is not None:
                    meta = dict(analysis.meta or {})
                    from tradeengine.runtime.executor import parsed_or_none

                    md = parsed_or_none(analysis.meta)
                    if md is not None:
                        stop, take = md.stop_loss, md.take_profit
                    plan = meta.get("flip")
                    if plan and step in ("flip_close", "flip_open"):
                        follow = self.executor.flip_follow_up(owner, trader, signal, plan)
                        stop, take = follow.stop_loss, follow.take_profit
            position = self.state.positions.get(row.position_id) if row.position_id else None
            side = None
            if step in ("open", "flip_open"):
                side = PositionSide.LONG if row.side == TradeSide.BUY.value else PositionSide.SHORT
            ctx = StepContext(
                step,
                owner,
                trader,
                signal,
                analysis_id=analysis_id,
                position=position,
                side=side,
                stop_loss=stop,
                take_profit=take,
                follow_up=follow if step == "flip_close" else None,
            )
            await self.executor.complete(ctx, row.id, request, state, meta=meta)

    # ------------------------------------------------------------------ errors, events

    def _fail_trader_later(self, trader_id: uuid.UUID, message: str) -> None:
        """Put a trader in status error (committed in the background; the others keep running)."""
        logger.warning("trader {} -> error: {}", trader_id, message)
        self.counters.errors += 1
        batch = WriteBatch("trader_error")
        now = self.clock.now()
        batch.update(
            "traders",
            trader_id,
            status=TraderStatus.ERROR.value,
            error_message=message[:1000],
            updated_at=now,
        )
        batch.insert(
            "machine_events",
            id=uuid.uuid4(),
            user_id=self.user_id,
            kind="trader_error",
            message=message[:1000],
            payload={"traderId": str(trader_id)},
            created_at=now,
        )
        task = asyncio.get_running_loop().create_task(self.writer.write(batch))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush(self) -> None:
        """Wait for background writes and analyses (tests, replays, shutdown)."""
        await self.queue.join()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.writer.flush()

    async def record_event(
        self,
        kind: str,
        message: str | None,
        payload: Mapping[str, Any] | None = None,
        machine_id: uuid.UUID | None = None,
    ) -> None:
        batch = WriteBatch(f"event:{kind}")
        batch.insert(
            "machine_events",
            id=uuid.uuid4(),
            user_id=self.user_id,
            machine_id=machine_id,
            kind=kind,
            message=message,
            payload=dict(payload or {}),
            created_at=self.clock.now(),
        )
        try:
            await self.writer.write(batch)
        except Exception:
            logger.exception("could not record machine event {}", kind)

    # ------------------------------------------------------------------ health and metrics

    def uptime_s(self) -> float:
        return time.monotonic() - self._started_wall

    def memory_mb(self) -> float:
        try:
            with open(f"/proc/{os.getpid()}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _sample_counts(self, minute: int) -> None:
        self._sample_minute = minute
        self._samples.append((minute, self.counters.checks, self.counters.triggers))

    def last_hour(self) -> tuple[int, int]:
        """Checks and triggers in the last 60 minutes of clock time."""
        minute = self.clock.now_ms() // 60_000
        base_checks = base_triggers = 0
        for sample_minute, checks, triggers in self._samples:
            if sample_minute >= minute - 60:
                base_checks, base_triggers = checks, triggers
                break
        else:
            if self._samples:
                _, base_checks, base_triggers = self._samples[-1]
        return self.counters.checks - base_checks, self.counters.triggers - base_triggers

    def snapshot_metrics(self) -> dict[str, Any]:
        c = self.counters
        checks_1h, triggers_1h = self.last_hour()
        return {
            "activeTraders": sum(1 for t in self.state.traders.values() if not t.failed),
            "signalsChecked1h": checks_1h,
            "signalsTriggered1h": triggers_1h,
            "signalsChecked": c.checks,
            "signalsTriggered": c.triggers,
            "signalsCreated": c.signals_created,
            "openPositions": len(self.state.positions),
            "watchingSignals": self.state.watching_count(),
            "memoryUsageMB": round(self.memory_mb(), 1),
            "lastKlineUpdate": self._last_kline_ms,
            "queueDepth": self.queue.depth,
            "analysesInFlight": self.queue.in_flight,
            "analysisCircuit": self.queue.breaker_state,
            "journalPending": self.writer.pending,
            "timersSkipped": self.scheduler.skipped + c.skipped_busy,
        }


def is_sim(clock: Clock) -> bool:
    return isinstance(clock, SimClock)
