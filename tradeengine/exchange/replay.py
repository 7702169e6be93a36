"""ReplayFeed: candles from files, in time order across symbols and timeframes, driven by a Clock."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
from loguru import logger
from numpy.typing import NDArray

from tradeengine.clock import Clock, SimClock
from tradeengine.exchange.events import (
    QUIET_FOREVER,
    ROW_CLOSE,
    ROW_TICKER,
    ROW_UPDATE,
    CandleClosed,
    CandleUpdated,
    EventRow,
    MarketEvent,
    QuietRows,
    TickerUpdated,
)
from tradeengine.exchange.feed import EventHandler, FeedStatus
from tradeengine.exchange.files import data_path, load_candles
from tradeengine.exchange.kline_store import KlineStore
from tradeengine.exchange.symbols import timeframe_ms, to_unified
from tradeengine.indicators.klines import Klines

KIND_UPDATE = ROW_UPDATE  # the open candle changed (intra-candle update from a smaller timeframe)
KIND_CLOSE = ROW_CLOSE  # the candle closed
KIND_TICKER = ROW_TICKER  # ticker derived from the symbol's smallest timeframe; columns: see ReplayBatch

_DAY_MS = 86_400_000


def resample(klines: Klines, source_timeframe: str, target_timeframe: str, *, drop_incomplete: bool = True) -> Klines:
    """Aggregate candles into a larger timeframe aligned to the epoch (UTC), e.g. 1h -> 4h.

    Buckets with missing source candles are kept (built from what exists); the trailing bucket
    is dropped when ``drop_incomplete`` and its last source candle has not closed at bucket end.
    """
    source_ms, target_ms = timeframe_ms(source_timeframe), timeframe_ms(target_timeframe)
    if target_ms % source_ms or target_ms <= source_ms:
        raise ValueError(f"cannot resample {source_timeframe} into {target_timeframe}: not a multiple")
    if len(klines) == 0:
        return Klines.empty()
    buckets = klines.open_time - klines.open_time % target_ms
    starts = np.flatnonzero(np.concatenate(([True], buckets[1:] != buckets[:-1])))
    ends = np.concatenate((starts[1:], [len(klines)])) - 1
    result = Klines(
        buckets[starts].copy(),
        klines.open[starts].copy(),
        np.maximum.reduceat(klines.high, starts),
        np.minimum.reduceat(klines.low, starts),
        klines.close[ends].copy(),
        np.add.reduceat(klines.volume, starts),
    )
    if drop_incomplete and int(klines.open_time[-1]) + source_ms < int(buckets[-1]) + target_ms:
        keep = slice(0, len(result) - 1)
        return Klines(
            result.open_time[keep],
            result.open[keep],
            result.high[keep],
            result.low[keep],
            result.close[keep],
            result.volume[keep],
        )
    return result


def _partials(
    source: Klines, source_ms: int, target_ms: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Running aggregates of each target candle after each of its source candles but the last.

    Returns (available_ms, target_open_time, values[5, n]) for the still-open target candles.
    """
    buckets = source.open_time - source.open_time % target_ms
    starts = np.flatnonzero(np.concatenate(([True], buckets[1:] != buckets[:-1])))
    group = np.repeat(np.arange(len(starts)), np.diff(np.concatenate((starts, [len(source)]))))
    # Running max/min within each target candle: lay candles out as (candle, slot) with NaN
    # for missing slots, then fmax/fmin-accumulate along the slot axis (NaN-ignoring).
    slot = ((source.open_time - buckets) // source_ms).astype(np.int64)
    grid = np.full((len(starts), target_ms // source_ms), np.nan)
    grid[group, slot] = source.high
    high = np.fmax.accumulate(grid, axis=1)[group, slot]
    grid[:] = np.nan
    grid[group, slot] = source.low
    low = np.fmin.accumulate(grid, axis=1)[group, slot]
    volume_cum = np.cumsum(source.volume)
    volume = volume_cum - np.concatenate(([0.0], volume_cum))[starts][group]
    opens = source.open[starts][group]
    is_last = source.open_time + source_ms >= buckets + target_ms
    keep = ~is_last
    values = np.vstack((opens[keep], high[keep], low[keep], source.close[keep], volume[keep]))
    return (source.open_time[keep] + source_ms), buckets[keep].astype(np.int64), values


def _tickers(klines: Klines, step_ms: int) -> NDArray[np.float64]:
    """Ticker columns per candle close: (change_24h_percent, volume_24h, quote_volume_24h, last, 0)."""
    close_time = klines.open_time + step_ms
    first = np.searchsorted(klines.open_time, close_time - _DAY_MS, side="left")
    index = np.arange(len(klines))
    volume_cum = np.concatenate(([0.0], np.cumsum(klines.volume)))
    quote_cum = np.concatenate(([0.0], np.cumsum(klines.volume * klines.close)))
    volume_24h = volume_cum[index + 1] - volume_cum[first]
    quote_24h = quote_cum[index + 1] - quote_cum[first]
    opened = klines.open[first]
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.where(opened > 0, (klines.close - opened) / opened * 100.0, 0.0)
    return np.vstack((change, volume_24h, quote_24h, klines.close, np.zeros(len(klines))))


@dataclass(frozen=True, slots=True)
class ReplayBatch:
    """A slice of the merged event stream as columns, for consumers that skip per-event objects.

    Row ``i`` is event kind ``kind[i]`` for series ``series[series_index[i]]`` available at
    ``available_ms[i]``. Candle rows: ``values`` = open, high, low, close, volume. Ticker rows:
    ``values`` = change_24h_percent, volume_24h, quote_volume_24h, last, 0.
    """

    series: Sequence[tuple[str, str]]
    available_ms: NDArray[np.int64]
    series_index: NDArray[np.int32]
    kind: NDArray[np.int8]
    open_time: NDArray[np.int64]
    values: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.available_ms)


BatchHandler = Callable[[ReplayBatch], Awaitable[None]]
RowHandler = Callable[[int, list[EventRow]], Awaitable[None]]  # (instant ms, its rows in stream order)


class ReplayFeed:
    """Replays candles as a live feed would deliver them, at CPU speed on a ``SimClock``.

    A candle is delivered at its close time (open + timeframe): the clock is first advanced to
    just before that instant (timers due earlier run first), then ``now`` is set to it, the store
    is updated and the events go out; timers due at exactly that instant see the candle.
    Candles closing before ``start_ms`` are preloaded into the store (indicator warm-up) without
    events. With a ``LiveClock`` it paces by ``speed`` (x real time; 0 = no waiting).
    """

    def __init__(
        self,
        data: Mapping[tuple[str, str], Klines],
        *,
        clock: Clock,
        store: KlineStore | None = None,
        intra_candle: bool = False,
        tickers: bool = True,
        start_ms: int | None = None,
        end_ms: int | None = None,
        speed: float = 0.0,
        sources: Mapping[tuple[str, str], tuple[str, Klines]] | None = None,
    ) -> None:
        """``sources`` maps a series to (smaller timeframe, its candles) driving its intra-candle
        updates; by default a smaller timeframe of the same symbol in ``data`` is used."""
        if not data:
            raise ValueError("replay needs at least one (symbol, timeframe) series")
        self._clock = clock
        self._store = store if store is not None else KlineStore()
        self._handlers: list[EventHandler] = []
        self._row_handlers: list[RowHandler] = []
        self._quiet: QuietRows | None = None
        self._speed = speed
        self._stopped = False
        self._delivered = 0
        self._closed = 0
        self._last_ms: int | None = None
        series = sorted(
            ((to_unified(symbol), timeframe) for symbol, timeframe in data),
            key=lambda key: timeframe_ms(key[1]),
        )  # stable: symbols keep the caller's order within a timeframe
        self.series: list[tuple[str, str]] = series
        normalized = {(to_unified(s), tf): k for (s, tf), k in data.items()}
        self._build(
            normalized,
            intra_candle=intra_candle,
            tickers=tickers,
            start_ms=start_ms,
            end_ms=end_ms,
            sources=sources if intra_candle else {},
        )

    @classmethod
    def from_directory(
        cls,
        directory: Path | str,
        symbols: Iterable[str],
        timeframes: Iterable[str],
        *,
        clock: Clock,
        store: KlineStore | None = None,
        intra_candle: bool = False,
        tickers: bool = True,
        start_ms: int | None = None,
        end_ms: int | None = None,
        speed: float = 0.0,
    ) -> ReplayFeed:
        """Load freqtrade JSON files; a timeframe without a file is resampled from the largest smaller
        file that divides it (4h from 1h, 15m from 5m). With ``intra_candle`` the smallest file of a
        symbol also drives open-candle updates of its larger timeframes."""
        directory = Path(directory)
        wanted = [(to_unified(s), tf) for s in symbols for tf in timeframes]
        data: dict[tuple[str, str], Klines] = {}
        cache: dict[tuple[str, str], Klines] = {}

        def available(symbol: str) -> list[str]:
            found = []
            for path in directory.glob(f"{symbol.replace('/', '_')}-*.json"):
                timeframe = path.stem.rsplit("-", 1)[1]
                try:
                    timeframe_ms(timeframe)
                except ValueError:
                    continue
                found.append(timeframe)
            return sorted(found, key=timeframe_ms)

        def load(symbol: str, timeframe: str) -> Klines:
            if (symbol, timeframe) not in cache:
                cache[(symbol, timeframe)] = load_candles(data_path(directory, symbol, timeframe))
            return cache[(symbol, timeframe)]

        sources: dict[tuple[str, str], tuple[str, Klines]] = {}
        for symbol, timeframe in wanted:
            files = available(symbol)
            target = timeframe_ms(timeframe)
            divisors = [tf for tf in files if target % timeframe_ms(tf) == 0 and timeframe_ms(tf) <= target]
            if not divisors:
                raise FileNotFoundError(
                    f"no candle file for {symbol} {timeframe} (nor a smaller timeframe dividing it) in {directory}"
                )
            if timeframe in files:
                data[(symbol, timeframe)] = load(symbol, timeframe)
            else:
                source_tf = divisors[-1]
                data[(symbol, timeframe)] = resample(load(symbol, source_tf), source_tf, timeframe)
            if divisors[0] != timeframe:
                sources[(symbol, timeframe)] = (divisors[0], load(symbol, divisors[0]))
        return cls(
            data,
            clock=clock,
            store=store,
            intra_candle=intra_candle,
            tickers=tickers,
            start_ms=start_ms,
            end_ms=end_ms,
            speed=speed,
            sources=sources,
        )

    def _build(
        self,
        data: Mapping[tuple[str, str], Klines],
        *,
        intra_candle: bool,
        tickers: bool,
        start_ms: int | None,
        end_ms: int | None,
        sources: Mapping[tuple[str, str], tuple[str, Klines]] | None = None,
    ) -> None:
        """Merge every series (and their updates and tickers) into one time-ordered column set."""
        if sources is None:
            sources = self._implicit_sources(data) if intra_candle else {}
        base_of_symbol: dict[str, int] = {}
        for index, (symbol, _) in enumerate(self.series):
            base_of_symbol.setdefault(symbol, index)  # series are sorted by timeframe: first is smallest
        parts: list[tuple[NDArray[np.int64], int, int, NDArray[np.int64], NDArray[np.float64]]] = []
        self._preload: list[tuple[int, Klines]] = []
        # Series whose rows are closes only: ``run`` attaches them to the store (see KlineStore.attach).
        self._histories: dict[int, tuple[Klines, int]] = {}
        for index, (symbol, timeframe) in enumerate(self.series):
            klines = data[(symbol, timeframe)]
            step = timeframe_ms(timeframe)
            close_time = klines.open_time + step
            in_range = np.ones(len(klines), dtype=bool)
            if sources.get((symbol, timeframe)) is None:
                warm_rows = int(np.searchsorted(close_time, start_ms, side="right")) if start_ms is not None else 0
                self._histories[index] = (klines, warm_rows)
            if start_ms is not None:
                warm = close_time <= start_ms
                self._preload.append(
                    (
                        index,
                        klines.tail(0)
                        if not warm.any()
                        else Klines(
                            klines.open_time[warm],
                            klines.open[warm],
                            klines.high[warm],
                            klines.low[warm],
                            klines.close[warm],
                            klines.volume[warm],
                        ),
                    )
                )
                in_range &= ~warm
            if end_ms is not None:
                in_range &= close_time <= end_ms
            values = np.vstack((klines.open, klines.high, klines.low, klines.close, klines.volume))
            parts.append((close_time[in_range], index, KIND_CLOSE, klines.open_time[in_range], values[:, in_range]))
            if tickers and base_of_symbol[symbol] == index:
                ticker_values = _tickers(klines, step)
                parts.append(
                    (close_time[in_range], index, KIND_TICKER, klines.open_time[in_range], ticker_values[:, in_range])
                )
            source = sources.get((symbol, timeframe))
            if source is not None:
                source_tf, source_klines = source
                available, opens, partial = _partials(source_klines, timeframe_ms(source_tf), step)
                keep = np.ones(len(available), dtype=bool)
                if start_ms is not None:
                    keep &= available > start_ms
                if end_ms is not None:
                    keep &= available <= end_ms
                parts.append((available[keep], index, KIND_UPDATE, opens[keep], partial[:, keep]))
        available_ms = np.concatenate([p[0] for p in parts]).astype(np.int64)
        series_index = np.concatenate([np.full(len(p[0]), p[1], dtype=np.int32) for p in parts])
        kind = np.concatenate([np.full(len(p[0]), p[2], dtype=np.int8) for p in parts])
        open_time = np.concatenate([p[3] for p in parts]).astype(np.int64)
        values = np.concatenate([p[4] for p in parts], axis=1)
        order = np.lexsort((kind, series_index, available_ms))
        self._available = available_ms[order]
        self._series_index = series_index[order]
        self._kind = kind[order]
        self._open_time = open_time[order]
        self._values = np.ascontiguousarray(values[:, order])
        self._start_ms = start_ms

    def _implicit_sources(self, data: Mapping[tuple[str, str], Klines]) -> dict[tuple[str, str], tuple[str, Klines]]:
        sources: dict[tuple[str, str], tuple[str, Klines]] = {}
        for symbol, timeframe in self.series:
            step = timeframe_ms(timeframe)
            smaller = [
                tf for s, tf in self.series if s == symbol and timeframe_ms(tf) < step and step % timeframe_ms(tf) == 0
            ]
            if smaller:
                source_tf = min(smaller, key=timeframe_ms)
                sources[(symbol, timeframe)] = (source_tf, data[(symbol, source_tf)])
        return sources

    # -- MarketFeed -------------------------------------------------------------------------

    @property
    def store(self) -> KlineStore:
        return self._store

    @property
    def event_count(self) -> int:
        """Rows in the merged stream (candle updates, closes and tickers)."""
        return len(self._available)

    def candle_count(self) -> int:
        """Candle rows (updates and closes) in the merged stream."""
        return int(np.count_nonzero(self._kind != KIND_TICKER))

    def subscribe(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def subscribe_rows(self, handler: RowHandler, quiet: QuietRows | None = None) -> None:
        """Deliver every later instant as ``handler(at_ms, rows)`` (see ``EventRow``): the same
        stream as the events, without building them. Row handlers run before event handlers.

        With ``quiet`` (the handler, or what speaks for it), the handler may have a symbol's rows
        held back while they would change nothing for it (see ``run``): only when it is the one
        subscriber and every series is attached (close rows only)."""
        self._row_handlers.append(handler)
        if quiet is not None:
            self._quiet = quiet

    def status(self) -> FeedStatus:
        return FeedStatus(connected=not self._stopped, last_message_ms=self._last_ms, candles_closed=self._closed)

    async def stop(self) -> None:
        self._stopped = True

    def _load_warmup(self) -> None:
        for index, klines in getattr(self, "_preload", []):
            if len(klines):
                symbol, timeframe = self.series[index]
                self._store.extend(
                    symbol,
                    timeframe,
                    klines.open_time,
                    klines.open,
                    klines.high,
                    klines.low,
                    klines.close,
                    klines.volume,
                )
        self._preload = []

    async def _move_clock(self, target_ms: int, previous_ms: int | None) -> None:
        """Bring the clock to ``target_ms``, waking timers due strictly before it."""
        clock = self._clock
        if isinstance(clock, SimClock):
            if target_ms > clock.now_ms():
                await clock.advance_to_ms(target_ms, inclusive=False)
        elif self._speed > 0 and previous_ms is not None and target_ms > previous_ms:
            await clock.sleep((target_ms - previous_ms) / 1000 / self._speed)

    async def run(self) -> None:
        """Deliver every instant in order: the store takes all its candles first, then each handler
        gets its rows or events. All candles of an instant are in the store before anyone looks, so
        a 5m close that coincides with a 1h close sees that 1h candle too (as live would, give or
        take network order), and row and event delivery see the very same store.

        A row handler subscribed with ``quiet`` (``QuietRows``) may have a symbol's rows held back
        (``_Holdback``): that symbol's instants go to no one, and before its next rows it is
        brought up to date (candles revealed, its latest ticker row delivered first). The last
        instant goes to everyone."""
        advancers = self._attach_histories()
        store, row_handlers, handlers = self._store, self._row_handlers, self._handlers
        sim_clock = self._clock if isinstance(self._clock, SimClock) else None  # instants that wake no timer: no await
        symbols = np.array([symbol for symbol, _ in self.series], dtype=object)
        timeframes = np.array([timeframe for _, timeframe in self.series], dtype=object)
        available = self._available
        total = len(available)
        closed_until = np.cumsum(self._kind == KIND_CLOSE)  # candles closed up to each row, inclusive
        hold: _Holdback | None = None
        quiet = self._quiet
        if quiet is not None and len(row_handlers) == 1 and not handlers and None not in advancers and total:
            hold = _Holdback(self, store)
            quiet.bind_hold(hold.hold)
        held = hold.wake_of if hold is not None else {}
        everyone = len({symbol for symbol, _ in self.series})  # held symbols are this feed's
        previous: int | None = None
        begin = 0
        while begin < total:
            # Chunks end on an instant's boundary, so no instant is delivered in two parts.
            end = min(begin + 4096, total)
            if end < total:
                end = int(np.searchsorted(available, available[end - 1], side="right"))
            indexes = self._series_index[begin:end]
            times = available[begin:end]
            names, frames, series_of = symbols[indexes].tolist(), timeframes[indexes].tolist(), indexes.tolist()
            cuts = [0, *(np.flatnonzero(times[1:] != times[:-1]) + 1).tolist(), len(times)]
            instants = times[cuts[:-1]].tolist()
            closed = closed_until[begin + np.array(cuts[1:]) - 1].tolist()
            for at, first, last, closed_by in zip(instants, cuts, cuts[1:], closed, strict=False):
                if self._stopped:
                    return
                delivered: Sequence[int] = range(first, last)  # the instant's rows that go out
                woken: list[str] = []
                if held:
                    assert hold is not None
                    if at < hold.next_expiry and len(held) == everyone:
                        self._closed = closed_by  # every symbol held, none due: nothing goes out
                        continue
                    woken = hold.wake(at) if at >= hold.next_expiry else []
                    delivered = [k for k in delivered if names[k] not in held]
                    if not delivered and not woken:
                        self._closed = closed_by
                        continue
                # The instant's rows, zipped from its column slices (C loops): only instants that go
                # out are built, which with holds is a small part of the stream.
                lo, hi = begin + first, begin + last
                span: list[EventRow] = list(
                    zip(
                        names[first:last],
                        frames[first:last],
                        self._kind[lo:hi].tolist(),
                        self._open_time[lo:hi].tolist(),
                        *self._values[:, lo:hi].tolist(),
                        strict=True,
                    )
                )
                instant = span if len(delivered) == last - first else [span[k - first] for k in delivered]
                if sim_clock is None or not sim_clock.jump_to_ms(at):
                    await self._move_clock(at, previous)
                previous = at
                if woken:
                    assert hold is not None
                    instant = hold.catch_up(woken, at) + instant  # ticker rows: nothing to store
                for k in delivered:
                    row = span[k - first]
                    if row[2] == ROW_TICKER:
                        continue
                    advance = advancers[series_of[k]]
                    if advance is not None:
                        advance(row[3])
                    else:
                        store.update(row[0], row[1], row[3], row[4], row[5], row[6], row[7], row[8])
                self._closed = closed_by
                self._last_ms = at
                for row_handler in row_handlers:
                    try:
                        await row_handler(at, instant)
                    except Exception:
                        logger.exception("replay row handler failed at {}", at)
                if handlers:
                    await self._deliver(at, instant, handlers)
            begin = end
        await self._finish(previous)

    def _row(self, index: int) -> EventRow:
        """Row ``index`` of the merged stream as ``run`` delivers it."""
        symbol, timeframe = self.series[int(self._series_index[index])]
        o, h, lo, c, v = self._values[:, index].tolist()
        return (symbol, timeframe, int(self._kind[index]), int(self._open_time[index]), o, h, lo, c, v)

    def _attach_histories(self) -> list[Callable[[int], None] | None]:
        """Hand close-only series to the store whole (warm-up rows visible at once), the rest get
        their warm-up rows the ordinary way. Returns each series' ``advance`` (None: not attached)."""
        advancers: list[Callable[[int], None] | None] = [None] * len(self.series)
        for index, (history, warm_rows) in self._histories.items():
            symbol, timeframe = self.series[index]
            advancers[index] = self._store.attach(symbol, timeframe, history, warm_rows)
        self._preload = [(i, k) for i, k in self._preload if advancers[i] is None]
        self._load_warmup()
        return advancers

    async def _deliver(self, at: int, rows: list[EventRow], handlers: list[EventHandler]) -> None:
        """The rows of one instant as ``MarketEvent``s, each to every handler in turn."""
        for symbol, timeframe, kind, open_time, o, h, lo, c, v in rows:
            events: tuple[MarketEvent, ...]
            if kind == ROW_TICKER:
                events = (
                    TickerUpdated(
                        symbol,
                        at,
                        Decimal(repr(c)),
                        Decimal(repr(h)),
                        Decimal(repr(round(lo, 8))),
                        Decimal(repr(round(o, 4))),
                    ),
                )
            elif kind == ROW_CLOSE:
                events = (
                    CandleUpdated(symbol, timeframe, open_time, o, h, lo, c, v, True),
                    CandleClosed(symbol, timeframe, open_time, o, h, lo, c, v),
                )
            else:
                events = (CandleUpdated(symbol, timeframe, open_time, o, h, lo, c, v, False),)
            for event in events:
                self._delivered += 1
                for handler in handlers:
                    try:
                        await handler(event)
                    except Exception:
                        logger.exception("market event handler failed for {}", type(event).__name__)

    async def _finish(self, last_ms: int | None) -> None:
        if isinstance(self._clock, SimClock) and last_ms is not None:
            await self._clock.advance_to_ms(last_ms)  # timers due at the very last instant
        self._stopped = True

    def batches(self, max_rows: int = 65_536) -> Iterable[ReplayBatch]:
        """Yield the whole stream as column slices (no clock, no handlers): the fastest path."""
        for start in range(0, len(self._available), max_rows):
            yield self._slice(start, min(start + max_rows, len(self._available)))

    def _slice(self, start: int, stop: int) -> ReplayBatch:
        return ReplayBatch(
            self.series,
            self._available[start:stop],
            self._series_index[start:stop],
            self._kind[start:stop],
            self._open_time[start:stop],
            self._values[:, start:stop],
        )

    def apply(self, batch: ReplayBatch) -> int:
        """Write a batch's candle rows into the store, vectorized per series. Returns candle rows."""
        candle = batch.kind != KIND_TICKER
        applied = 0
        for index in np.unique(batch.series_index[candle]):
            rows = np.flatnonzero(candle & (batch.series_index == index))
            times = batch.open_time[rows]
            # Several rows of one candle (updates, then close): the last one is its state now.
            last = np.ones(len(rows), dtype=bool)
            last[:-1] = times[1:] != times[:-1]
            rows, times = rows[last], times[last]
            values = batch.values[:, rows]
            symbol, timeframe = batch.series[index]
            self._store.extend(symbol, timeframe, times, *values)
            applied += int(np.count_nonzero(candle & (batch.series_index == index)))
        self._closed += int(np.count_nonzero(batch.kind == KIND_CLOSE))
        if len(batch):
            self._last_ms = int(batch.available_ms[-1])
        return applied

    async def run_batched(self, on_batch: BatchHandler | None = None, max_rows: int = 65_536) -> None:
        """Deliver in column batches cut at the SimClock's next timer deadline.

        Each batch holds only candles available at or before the next deadline, so a timer always
        sees the store exactly as the per-event ``run`` would show it. Per batch: store, then
        ``on_batch``, then the clock moves on. Event handlers are not called in this mode.
        """
        self._load_warmup()
        clock = self._clock if isinstance(self._clock, SimClock) else None
        available = self._available
        total = len(available)
        i = 0
        while i < total and not self._stopped:
            deadline = clock.next_deadline_ms() if clock is not None else None
            stop = total if deadline is None else int(np.searchsorted(available, deadline, side="right"))
            stop = min(stop, i + max_rows)
            if stop <= i:
                assert clock is not None
                assert deadline is not None
                await clock.advance_to_ms(deadline)  # a timer is due before the next candle
                continue
            batch = self._slice(i, stop)
            if clock is not None:
                await clock.advance_to_ms(int(available[stop - 1]), inclusive=False)
            self.apply(batch)
            if on_batch is not None:
                await on_batch(batch)
            i = stop
        await self._finish(int(available[-1]) if total else None)


def _first_outside(prices: NDArray[np.float64], begin: int, end: int, low: float, high: float) -> int:
    """The first index in ``[begin, end)`` whose price is not strictly between ``low`` and
    ``high`` (NaN included), else ``end``. A hold usually spans a few dozen rows (until the next
    re-analysis): there a Python scan costs half of numpy's temporaries. Beyond, doubling chunks,
    so a hold until the end of the data does not compare every row."""
    stop = min(begin + 64, end)
    for offset, price in enumerate(prices[begin:stop].tolist()):
        if not low < price < high:
            return begin + offset
    begin, size = stop, 128
    while begin < end:
        stop = min(begin + size, end)
        window = prices[begin:stop]
        outside = np.flatnonzero(~((window > low) & (window < high)))
        if len(outside):
            return begin + int(outside[0])
        begin, size = stop, size * 2
    return end


class _Holdback:
    """The rows a replay holds back from a ``QuietRows`` handler, and the catching up of a symbol
    whose rows were held back.

    The handler calls ``hold(symbol, until)`` when the symbol's rows before ``until`` would change
    nothing for it; the feed then drops them (``wake_of``) until the first instant at or after
    ``until`` (never past the last instant, which goes to everyone). There the hold ends
    (``wake``), the symbol's series reveal every candle that closed before that instant and its
    latest ticker row goes first (``catch_up``), so the handler sees what it would have seen had
    every row been delivered. ``hold(symbol, 0)`` takes a hold back at the next instant.
    """

    def __init__(self, feed: ReplayFeed, store: KlineStore) -> None:
        self._feed = feed
        self._store = store
        self.wake_of: dict[str, int] = {}  # held symbols: their rows before this time are dropped
        self.next_expiry = QUIET_FOREVER  # the earliest of them
        self._final = int(feed._available[-1])
        names = list(dict.fromkeys(symbol for symbol, _ in feed.series))
        # Per symbol: its series with their close times (reveal), its ticker rows with their times.
        self._closes: dict[str, list[tuple[str, NDArray[np.int64]]]] = {name: [] for name in names}
        for index, (history, _) in feed._histories.items():
            symbol, timeframe = feed.series[index]
            self._closes[symbol].append((timeframe, history.open_time + timeframe_ms(timeframe)))
        ticker = feed._kind == KIND_TICKER
        row_symbol = np.array([names.index(s) for s, _ in feed.series], dtype=np.int32)[feed._series_index]
        self._tickers: dict[str, tuple[NDArray[np.int64], NDArray[np.int64]]] = {}
        # Per symbol, every row that sets its price (a candle's close, a ticker's last): a hold with
        # a band ends at the first of them outside it.
        self._priced: dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]] = {}
        for number, name in enumerate(names):
            mine = row_symbol == number
            rows = np.flatnonzero(ticker & mine)
            self._tickers[name] = (rows, feed._available[rows])
            rows = np.flatnonzero(mine)
            self._priced[name] = (feed._available[rows], feed._values[3][rows])

    def hold(self, symbol: str, until_ms: int, low: float = -math.inf, high: float = math.inf) -> None:
        """Drop ``symbol``'s rows available before ``until_ms`` (0: take the hold back), or before
        the first instant after this one with a row priced outside ``(low, high)`` if that is sooner."""
        if symbol not in self._closes:
            return
        until = min(until_ms, self._final)
        if until and (low != -math.inf or high != math.inf):
            times, prices = self._priced[symbol]
            now = self._feed._last_ms  # the instant being delivered: the band holds after it
            begin = 0 if now is None else int(times.searchsorted(now, side="right"))
            end = int(times.searchsorted(until))
            exit_at = _first_outside(prices, begin, end, low, high)
            if exit_at < end:
                until = int(times.item(exit_at))
        self.wake_of[symbol] = until
        self.next_expiry = min(self.next_expiry, until)

    def wake(self, at: int) -> list[str]:
        """End the holds due by ``at``; return those symbols (to ``catch_up``)."""
        woken = [symbol for symbol, until in self.wake_of.items() if until <= at]
        for symbol in woken:
            del self.wake_of[symbol]
        self.next_expiry = min(self.wake_of.values(), default=QUIET_FOREVER)
        return woken

    def catch_up(self, symbols: list[str], at: int) -> list[EventRow]:
        """Reveal the candles of ``symbols`` that closed before ``at``; return their latest ticker
        rows before ``at``, to go first in this instant."""
        rows: list[EventRow] = []
        for symbol in symbols:
            for timeframe, closes in self._closes[symbol]:
                self._store.reveal(symbol, timeframe, int(closes.searchsorted(at)))
            tickers, times = self._tickers[symbol]
            k = int(times.searchsorted(at)) - 1
            if k >= 0:
                rows.append(self._feed._row(tickers.item(k)))
        return rows
