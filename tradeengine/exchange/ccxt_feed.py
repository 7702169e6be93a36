"""CcxtFeed: live candles and tickers over ccxt.pro websockets, with REST backfill that never misses a candle.

Guarantees (see docs/market-data.md):

* On start each (symbol, timeframe) is backfilled with ``fetch_ohlcv`` (the last ``backfill`` candles).
* Any websocket error, close or silence longer than the stream's limit makes the stream reconnect,
  with exponential backoff and jitter, forever.
* After every reconnect, and whenever a stream skips an open time, the missing span is fetched over
  REST before the stream's data is applied, so every candle that closed while we were down lands in
  the store, once, and gets its ``CandleClosed`` in open-time order.

Closed detection does not use the local clock: a candle is closed once a newer candle of the same
series has been seen (Binance sends the final update of a candle before the first of the next one,
and REST only returns a newer candle after the older one closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
from loguru import logger

from tradeengine.clock import Clock, LiveClock
from tradeengine.exchange.events import CandleClosed, CandleUpdated, MarketEvent, TickerUpdated
from tradeengine.exchange.feed import EventHandler, FeedStatus
from tradeengine.exchange.kline_store import KlineStore
from tradeengine.exchange.symbols import timeframe_ms, to_unified

ExchangeFactory = Callable[[], Any]


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """Health of one websocket stream."""

    name: str  # "BTC/USDT 5m" or "BTC/USDT ticker"
    connected: bool
    reconnects: int
    last_message_ms: int | None
    last_error: str | None


class _Stream:
    __slots__ = ("attempt", "connected", "last_error", "last_message_ms", "name", "reconnects")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = False
        self.reconnects = 0
        self.attempt = 0
        self.last_message_ms: int | None = None
        self.last_error: str | None = None


class _Series:
    """Per (symbol, timeframe) bookkeeping for exactly-once closes."""

    __slots__ = ("closed_through", "step")

    def __init__(self, step: int) -> None:
        self.step = step
        self.closed_through: int | None = None  # open time of the newest candle announced closed


def build_exchange(
    exchange_id: str = "binance",
    *,
    rest_url: str | None = None,
    ws_url: str | None = None,
    config: dict[str, Any] | None = None,
) -> Any:
    """Create a ccxt.pro exchange (spot, rate-limited); ``rest_url``/``ws_url`` point it at a fake.

    ``rest_url`` is the server root (``http://127.0.0.1:PORT``); ``/api/v3`` is appended for Binance.
    """
    import ccxt.pro as ccxtpro

    try:
        exchange_class = getattr(ccxtpro, exchange_id)
    except AttributeError:
        raise ValueError(f"exchange_id {exchange_id!r} is not a ccxt.pro exchange") from None
    options: dict[str, Any] = {"defaultType": "spot"}
    if exchange_id == "binance":
        options.update({"fetchMarkets": {"types": ["spot"]}, "fetchMargins": False, "fetchCurrencies": False})
    exchange = exchange_class({"enableRateLimit": True, "options": options, **(config or {})})
    if rest_url is not None:
        root = rest_url.rstrip("/")
        api = exchange.urls["api"]
        suffix = "/api/v3" if exchange_id == "binance" and not root.endswith("/api/v3") else ""
        for key in ("public", "private", "v3"):
            if key in api:
                api[key] = root + suffix
    if ws_url is not None:
        ws = exchange.urls["api"].get("ws")
        if isinstance(ws, dict):
            ws["spot"] = ws_url
        else:
            exchange.urls["api"]["ws"] = ws_url
    return exchange


class CcxtFeed:
    """Live MarketFeed over ccxt.pro. Symbols may be given as "BTC/USDT" or "BTCUSDT"."""

    def __init__(
        self,
        symbols: Iterable[str],
        timeframes: Iterable[str],
        *,
        store: KlineStore | None = None,
        clock: Clock | None = None,
        exchange_id: str = "binance",
        rest_url: str | None = None,
        ws_url: str | None = None,
        exchange_factory: ExchangeFactory | None = None,
        backfill: int = 500,
        tickers: bool = True,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        silence_multiple: float = 2.0,
        max_silence_s: float = 120.0,
        rest_page_limit: int = 1000,
    ) -> None:
        self.symbols: list[str] = [to_unified(symbol) for symbol in symbols]
        self.timeframes: list[str] = list(timeframes)
        if not self.symbols or not self.timeframes:
            raise ValueError("CcxtFeed needs at least one symbol and one timeframe")
        self._steps = {tf: timeframe_ms(tf) for tf in self.timeframes}
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("backoff_initial_s must be > 0 and <= backoff_max_s")
        self._store = store if store is not None else KlineStore()
        self._clock: Clock = clock if clock is not None else LiveClock()
        self._factory: ExchangeFactory = exchange_factory or (
            lambda: build_exchange(exchange_id, rest_url=rest_url, ws_url=ws_url)
        )
        self._backfill = backfill
        self._tickers = tickers
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._silence_multiple = silence_multiple
        self._max_silence = max_silence_s
        self._page_limit = rest_page_limit
        self._handlers: list[EventHandler] = []
        self._series = {(s, tf): _Series(self._steps[tf]) for s in self.symbols for tf in self.timeframes}
        self._streams: dict[str, _Stream] = {}
        self._exchange: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._gap_candles = 0
        self._closed_count = 0
        self._locks = {key: asyncio.Lock() for key in self._series}
        self._random = random.Random()

    # -- MarketFeed -----------------------------------------------------------------------------

    @property
    def store(self) -> KlineStore:
        return self._store

    def subscribe(self, handler: EventHandler) -> None:
        self._handlers.append(handler)

    def status(self) -> FeedStatus:
        streams = list(self._streams.values())
        last = [s.last_message_ms for s in streams if s.last_message_ms is not None]
        errors = [s.last_error for s in streams if s.last_error is not None]
        return FeedStatus(
            connected=bool(streams) and all(s.connected for s in streams),
            reconnects=sum(s.reconnects for s in streams),
            last_message_ms=max(last) if last else None,
            gap_candles_backfilled=self._gap_candles,
            candles_closed=self._closed_count,
            last_error=errors[-1] if errors else None,
        )

    def stream_status(self) -> list[StreamStatus]:
        """Per-stream health, for the metrics endpoint."""
        return [
            StreamStatus(s.name, s.connected, s.reconnects, s.last_message_ms, s.last_error)
            for s in self._streams.values()
        ]

    async def run(self) -> None:
        """Backfill every series, then stream until ``stop()``. Survives any network failure."""
        self._exchange = self._factory()
        try:
            for symbol in self.symbols:
                for timeframe in self.timeframes:
                    await self._initial_backfill(symbol, timeframe)
            for symbol in self.symbols:
                for timeframe in self.timeframes:
                    self._tasks.append(asyncio.create_task(self._kline_loop(symbol, timeframe)))
                if self._tickers:
                    self._tasks.append(asyncio.create_task(self._ticker_loop(symbol)))
            await self._stopping.wait()
        finally:
            await self._shutdown()

    async def stop(self) -> None:
        self._stopping.set()

    async def _shutdown(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._exchange is not None:
            with contextlib.suppress(Exception):
                await self._exchange.close()
        for stream in self._streams.values():
            stream.connected = False

    # -- candles --------------------------------------------------------------------------------

    async def _initial_backfill(self, symbol: str, timeframe: str) -> None:
        """Fetch the last ``backfill`` candles, retrying transient failures with backoff forever."""
        stream = self._stream(f"{symbol} {timeframe} backfill")
        series = self._series[(symbol, timeframe)]
        while not self._stopping.is_set():
            try:
                last = self._store.last_open_time(symbol, timeframe)
                if last is not None:
                    rows = await self._fetch_since(symbol, timeframe, last)
                else:
                    rows = await self._exchange.fetch_ohlcv(symbol, timeframe, limit=self._backfill)
                for row in sorted(rows, key=lambda r: int(r[0])):
                    self._store.update(symbol, timeframe, int(row[0]), *_ohlcv(row))
                # History is not announced: only candles that close from now on get CandleClosed.
                klines = self._store.klines(symbol, timeframe, 2)
                if len(klines) == 2:
                    series.closed_through = int(klines.open_time[0])
                stream.connected = True
                stream.attempt = 0
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(stream, exc)

    async def _fetch_since(self, symbol: str, timeframe: str, since: int) -> list[list[Any]]:
        """All candles with open time >= ``since`` up to now, paging through REST."""
        rows: list[list[Any]] = []
        cursor = since
        while True:
            page = await self._exchange.fetch_ohlcv(symbol, timeframe, since=cursor, limit=self._page_limit)
            page = [row for row in page if int(row[0]) >= cursor]
            rows.extend(page)
            if len(page) < self._page_limit:
                return rows
            cursor = int(page[-1][0]) + 1

    def _silence_limit(self, timeframe: str | None) -> float:
        interval = (self._steps[timeframe] / 1000) if timeframe is not None else 60.0
        return max(min(self._silence_multiple * interval, self._max_silence), 0.001)

    async def _kline_loop(self, symbol: str, timeframe: str) -> None:
        stream = self._stream(f"{symbol} {timeframe}")
        resync = True  # the first ws data also gets merged with a REST refresh
        while not self._stopping.is_set():
            try:
                rows = await asyncio.wait_for(
                    self._exchange.watch_ohlcv(symbol, timeframe), self._silence_limit(timeframe)
                )
                self._received(stream)
                if resync:
                    last = self._store.last_open_time(symbol, timeframe)
                    if last is not None:
                        rest = await self._fetch_since(symbol, timeframe, last)
                        # REST was read after these ws rows arrived, so it wins for equal open times.
                        rows = self._merge(rows, rest)
                        self._count_gap(last, rows)
                    resync = False
                await self._apply_rows(symbol, timeframe, rows, count_gap=True)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                resync = True
                await self._reset_connections(f"no message for {self._silence_limit(timeframe):.3g}s on {stream.name}")
                await self._failed(stream, TimeoutError("stream silent"))
            except Exception as exc:
                resync = True
                await self._failed(stream, exc)

    def _count_gap(self, last: int, rows: Sequence[Sequence[Any]]) -> None:
        """Count fetched candles from the stored ``last`` on that are closed (a newer one exists)."""
        if rows:
            newest = int(rows[-1][0])
            self._gap_candles += sum(1 for row in rows if last <= int(row[0]) < newest)

    @staticmethod
    def _merge(first: Sequence[Sequence[Any]], second: Sequence[Sequence[Any]]) -> list[list[Any]]:
        by_time: dict[int, list[Any]] = {int(row[0]): list(row) for row in first}
        for row in second:
            by_time[int(row[0])] = list(row)
        return [by_time[t] for t in sorted(by_time)]

    async def _apply_rows(self, symbol: str, timeframe: str, rows: Sequence[Sequence[Any]], *, count_gap: bool) -> None:
        """Store rows in open-time order, filling any skipped span over REST first, then emit events."""
        key = (symbol, timeframe)
        series = self._series[key]
        async with self._locks[key]:
            present = (list(row) for row in rows if row and row[0] is not None)
            ordered = sorted(present, key=lambda r: int(r[0]))
            last = self._store.last_open_time(symbol, timeframe)
            if ordered and last is not None and int(ordered[0][0]) > last + series.step and count_gap:
                # The stream skipped candles (we were down or messages were lost): fetch them first.
                missing = await self._fetch_since(symbol, timeframe, last)
                ordered = self._merge(missing, ordered)
                self._count_gap(last, ordered)
            for row in ordered:
                await self._apply_row(symbol, timeframe, series, row)

    async def _apply_row(self, symbol: str, timeframe: str, series: _Series, row: Sequence[Any]) -> None:
        open_time = int(row[0])
        if series.closed_through is not None and open_time <= series.closed_through:
            # Already final and announced; a late duplicate only corrects the stored values.
            self._store.update(symbol, timeframe, open_time, *_ohlcv(row))
            return
        previous = self._store.last_open_time(symbol, timeframe)
        self._store.update(symbol, timeframe, open_time, *_ohlcv(row))
        if previous is not None and open_time > previous:
            # Everything older than this candle is now final: announce those not announced yet.
            await self._close_through(symbol, timeframe, series, open_time - 1)
        values = _ohlcv(row)
        await self._deliver(CandleUpdated(symbol, timeframe, open_time, *values, False))

    async def _close_through(self, symbol: str, timeframe: str, series: _Series, until: int) -> None:
        """Announce, in order and once, every stored candle with open time in (closed_through, until]."""
        klines = self._store.klines(symbol, timeframe)
        start = series.closed_through
        first = 0 if start is None else int(np.searchsorted(klines.open_time, start, side="right"))
        stop = int(np.searchsorted(klines.open_time, until, side="right"))
        for i in range(first, stop):
            open_time = int(klines.open_time[i])
            values = (
                float(klines.open[i]),
                float(klines.high[i]),
                float(klines.low[i]),
                float(klines.close[i]),
                float(klines.volume[i]),
            )
            series.closed_through = open_time
            self._closed_count += 1
            await self._deliver(CandleUpdated(symbol, timeframe, open_time, *values, True))
            await self._deliver(CandleClosed(symbol, timeframe, open_time, *values))

    # -- tickers --------------------------------------------------------------------------------

    async def _ticker_loop(self, symbol: str) -> None:
        stream = self._stream(f"{symbol} ticker")
        while not self._stopping.is_set():
            try:
                watch = self._exchange.watch_ticker(symbol)
                ticker = await asyncio.wait_for(watch, self._silence_limit(None))
                self._received(stream)
                event = _ticker_event(symbol, ticker, self._clock.now_ms())
                if event is not None:
                    await self._deliver(event)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                limit = self._silence_limit(None)
                await self._reset_connections(f"no message for {limit:.3g}s on {stream.name}")
                await self._failed(stream, TimeoutError("ticker stream silent"))
            except Exception as exc:
                await self._failed(stream, exc)

    # -- plumbing -------------------------------------------------------------------------------

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _Stream(name)
        return stream

    def _received(self, stream: _Stream) -> None:
        stream.connected = True
        stream.attempt = 0
        stream.last_message_ms = self._clock.now_ms()

    async def _failed(self, stream: _Stream, exc: BaseException) -> None:
        """Record a failure and sleep the backoff: min(max, initial * 2^attempt), 50-100 % jittered."""
        if stream.connected or stream.attempt == 0:
            stream.reconnects += 1
        stream.connected = False
        stream.last_error = f"{type(exc).__name__}: {exc}"[:300]
        delay = min(self._backoff_max, self._backoff_initial * (2 ** min(stream.attempt, 30)))
        delay *= 0.5 + 0.5 * self._random.random()
        stream.attempt += 1
        logger.warning("market stream {} failed ({}); retrying in {:.2f}s", stream.name, stream.last_error, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _reset_connections(self, reason: str) -> None:
        """Tear down the websocket clients so the next watch dials afresh."""
        from ccxt.base.errors import NetworkError

        exchange = self._exchange
        clients = getattr(exchange, "clients", {}) or {}
        logger.warning("resetting market websockets: {}", reason)
        for url, client in list(clients.items()):
            with contextlib.suppress(Exception):
                client.reset(NetworkError(reason))
                await client.aiohttp_close()
            clients.pop(url, None)

    async def _deliver(self, event: MarketEvent) -> None:
        for handler in self._handlers:
            try:
                await handler(event)
            except Exception:
                logger.exception("market event handler failed for {}", type(event).__name__)


def _ohlcv(row: Sequence[Any]) -> tuple[float, float, float, float, float]:
    return float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5])


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except InvalidOperation:
        return None


def _ticker_event(symbol: str, ticker: dict[str, Any], now_ms: int) -> TickerUpdated | None:
    last = _decimal(ticker.get("last"))
    if last is None:
        return None
    timestamp = ticker.get("timestamp")
    return TickerUpdated(
        symbol=symbol,
        timestamp=int(timestamp) if timestamp is not None else now_ms,
        last=last,
        volume_24h=_decimal(ticker.get("baseVolume")) or Decimal(0),
        quote_volume_24h=_decimal(ticker.get("quoteVolume")) or Decimal(0),
        change_24h_percent=_decimal(ticker.get("percentage")) or Decimal(0),
    )
