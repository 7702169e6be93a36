"""A local fake Binance spot exchange on 127.0.0.1 for the real ccxt client.

Speaks the wire protocol ccxt uses: REST ``/api/v3/{ping,time,exchangeInfo,klines,ticker/24hr}``
and the raw websocket stream protocol on ``/ws`` and ``/ws/<n>`` (``SUBSCRIBE`` /
``UNSUBSCRIBE``, ``<sym>@kline_<tf>``, ``<sym>@ticker`` and ``<sym>@miniTicker`` events).
It serves real candles and has its own market time ``now_ms``: candles with
``open_time <= now_ms`` exist; the one containing ``now_ms`` is the open candle
(served with its final values, flagged ``x: false``).

Test controls: ``advance_to``/``play`` move market time and push stream events;
``drop_streams`` cuts every websocket abruptly; ``refuse``/``accept`` stop and restart the
listening socket (connections are refused meanwhile).

Extension point for private endpoints (signed REST): add routes with ``add_route`` before
``start``; ``self.requests`` records every request (method, path, query) for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tradeengine.exchange.symbols import timeframe_ms, to_exchange_id, to_unified
from tradeengine.indicators.klines import Klines

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DAY_MS = 86_400_000


def _num(value: float) -> str:
    return f"{value:.8f}"


@dataclass
class _Connection:
    ws: web.WebSocketResponse
    streams: set[str] = field(default_factory=set)


class FakeBinance:
    """The fake exchange. ``candles`` maps (symbol, timeframe) to real candles."""

    def __init__(
        self, candles: Mapping[tuple[str, str], Klines], *, now_ms: int, push_interval_s: float | None = 0.5
    ) -> None:
        self.candles = {(to_exchange_id(s), tf): k for (s, tf), k in candles.items()}
        self.now_ms = now_ms
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.ws_connections_accepted = 0
        self.max_klines_limit = 1000
        self._connections: list[_Connection] = []
        self._extra_routes: list[tuple[str, str, Handler]] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0
        self._player: asyncio.Task[None] | None = None
        # Binance pushes the open candle every ~2 s even when nothing trades; so do we.
        self._push_interval = push_interval_s
        self._pusher: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Register another endpoint (e.g. signed private REST) before ``start``."""
        self._extra_routes.append((method, path, handler))

    async def start(self) -> FakeBinance:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/v3/ping", self._ping)
        app.router.add_get("/api/v3/time", self._time)
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_get("/api/v3/klines", self._klines)
        app.router.add_get("/api/v3/ticker/24hr", self._ticker_24hr)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/ws/{n}", self._ws)
        for method, path, handler in self._extra_routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await self._listen()
        if self._push_interval is not None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_forever(self._push_interval))
        return self

    async def _push_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.advance_to(self.now_ms)

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            server = self._site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in (self._player, self._pusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.drop_streams()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeBinance:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    # -- test controls --------------------------------------------------------------------------

    async def drop_streams(self) -> None:
        """Cut every websocket without a close handshake (like a network drop)."""
        connections, self._connections = self._connections, []
        for connection in connections:
            transport = connection.ws._req.transport if connection.ws._req is not None else None
            if transport is not None:
                transport.abort()
            with contextlib.suppress(Exception):
                await connection.ws.close()

    async def refuse(self) -> None:
        """Stop listening and drop streams: new connections are refused until ``accept``."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        await self.drop_streams()

    async def accept(self) -> None:
        """Listen again on the same port."""
        if self._site is None:
            await self._listen()

    async def advance_to(self, now_ms: int) -> None:
        """Move market time forward and push what subscribers would have seen."""
        previous, self.now_ms = self.now_ms, now_ms
        for connection in list(self._connections):
            for stream in sorted(connection.streams):
                for message in self._stream_messages(stream, previous, now_ms):
                    try:
                        await connection.ws.send_str(json.dumps(message))
                    except (ConnectionError, RuntimeError):
                        break

    def play(self, step_ms: int, interval_s: float, until_ms: int) -> asyncio.Task[None]:
        """Advance market time by ``step_ms`` every ``interval_s`` real seconds up to ``until_ms``."""

        async def run() -> None:
            while self.now_ms < until_ms:
                await asyncio.sleep(interval_s)
                await self.advance_to(min(self.now_ms + step_ms, until_ms))

        self._player = asyncio.get_running_loop().create_task(run())
        return self._player

    # -- data -----------------------------------------------------------------------------------

    def _series(self, symbol_id: str, interval: str) -> Klines:
        series = self.candles.get((symbol_id, interval))
        if series is None:
            raise web.HTTPBadRequest(
                text=json.dumps({"code": -1121, "msg": "Invalid symbol."}), content_type="application/json"
            )
        return series

    def _visible(self, series: Klines) -> int:
        """Number of candles that exist at ``now_ms``."""
        return int(np.searchsorted(series.open_time, self.now_ms, side="right"))

    def _kline_row(self, series: Klines, i: int, step: int) -> list[Any]:
        t = int(series.open_time[i])
        volume = float(series.volume[i])
        return [
            t,
            _num(series.open[i]),
            _num(series.high[i]),
            _num(series.low[i]),
            _num(series.close[i]),
            _num(volume),
            t + step - 1,
            _num(volume * float(series.close[i])),
            100,
            _num(volume / 2),
            _num(volume * float(series.close[i]) / 2),
            "0",
        ]

    def _ticker(self, symbol_id: str) -> dict[str, Any]:
        keys = [tf for (s, tf) in self.candles if s == symbol_id]
        if not keys:
            raise web.HTTPBadRequest(
                text=json.dumps({"code": -1121, "msg": "Invalid symbol."}), content_type="application/json"
            )
        timeframe = min(keys, key=timeframe_ms)
        series = self.candles[(symbol_id, timeframe)]
        end = self._visible(series)
        start = int(np.searchsorted(series.open_time, self.now_ms - _DAY_MS, side="left"))
        start = min(start, max(end - 1, 0))
        last = float(series.close[end - 1])
        opened = float(series.open[start])
        volume = float(np.sum(series.volume[start:end]))
        quote = float(np.sum(series.volume[start:end] * series.close[start:end]))
        return {
            "symbol": symbol_id,
            "priceChange": _num(last - opened),
            "priceChangePercent": f"{(last - opened) / opened * 100:.3f}",
            "weightedAvgPrice": _num(last),
            "prevClosePrice": _num(opened),
            "lastPrice": _num(last),
            "lastQty": "1.00000000",
            "bidPrice": _num(last),
            "bidQty": "1.00000000",
            "askPrice": _num(last),
            "askQty": "1.00000000",
            "openPrice": _num(opened),
            "highPrice": _num(float(np.max(series.high[start:end]))),
            "lowPrice": _num(float(np.min(series.low[start:end]))),
            "volume": _num(volume),
            "quoteVolume": _num(quote),
            "openTime": self.now_ms - _DAY_MS,
            "closeTime": self.now_ms,
            "firstId": 1,
            "lastId": 2,
            "count": 2,
        }

    # -- REST -----------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.query)))
        return await handler(request)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.now_ms})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        symbols = []
        for symbol_id in sorted({s for s, _ in self.candles}):
            base, quote = to_unified(symbol_id).split("/")
            symbols.append(
                {
                    "symbol": symbol_id,
                    "status": "TRADING",
                    "baseAsset": base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "baseCommissionPrecision": 8,
                    "quoteCommissionPrecision": 8,
                    "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                    "icebergAllowed": True,
                    "ocoAllowed": True,
                    "otoAllowed": True,
                    "quoteOrderQtyMarketAllowed": True,
                    "allowTrailingStop": True,
                    "cancelReplaceAllowed": True,
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": False,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": "0.00000100",
                            "maxPrice": "1000000.00000000",
                            "tickSize": "0.00000100",
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": "0.00001000",
                            "maxQty": "9000000.00000000",
                            "stepSize": "0.00001000",
                        },
                        {
                            "filterType": "NOTIONAL",
                            "minNotional": "5.00000000",
                            "applyMinToMarket": True,
                            "maxNotional": "9000000.00000000",
                            "applyMaxToMarket": False,
                            "avgPriceMins": 5,
                        },
                    ],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                    "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
                }
            )
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": self.now_ms,
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
                ],
                "exchangeFilters": [],
                "symbols": symbols,
            }
        )

    async def _klines(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            symbol_id, interval = query["symbol"], query["interval"]
            limit = min(int(query.get("limit", "500")), self.max_klines_limit)
            start = int(query["startTime"]) if "startTime" in query else None
            end = int(query["endTime"]) if "endTime" in query else None
        except (KeyError, ValueError):
            return web.json_response({"code": -1102, "msg": "Mandatory parameter missing or malformed."}, status=400)
        series = self._series(symbol_id, interval)
        step = timeframe_ms(interval)
        visible = self._visible(series)
        hi = visible
        if end is not None:
            hi = min(visible, int(np.searchsorted(series.open_time, end, side="right")))
        if start is not None:
            lo = int(np.searchsorted(series.open_time, start, side="left"))
            hi = min(hi, lo + limit)
        else:
            lo = max(hi - limit, 0)
        return web.json_response([self._kline_row(series, i, step) for i in range(lo, hi)])

    async def _ticker_24hr(self, request: web.Request) -> web.Response:
        if "symbol" in request.query:
            return web.json_response(self._ticker(request.query["symbol"]))
        return web.json_response([self._ticker(s) for s in sorted({s for s, _ in self.candles})])

    # -- websocket ------------------------------------------------------------------------------

    def _stream_messages(self, stream: str, previous_ms: int, now_ms: int) -> list[dict[str, Any]]:
        """Events a stream emits when market time moves from ``previous_ms`` to ``now_ms``."""
        name, _, kind = stream.partition("@")
        symbol_id = name.upper()
        if kind == "miniTicker":
            ticker = self._ticker(symbol_id)
            return [
                {
                    "e": "24hrMiniTicker",
                    "E": now_ms,
                    "s": symbol_id,
                    "c": ticker["lastPrice"],
                    "o": ticker["openPrice"],
                    "h": ticker["highPrice"],
                    "l": ticker["lowPrice"],
                    "v": ticker["volume"],
                    "q": ticker["quoteVolume"],
                }
            ]
        if kind == "ticker":
            ticker = self._ticker(symbol_id)
            return [
                {
                    "e": "24hrTicker",
                    "E": now_ms,
                    "s": symbol_id,
                    "p": ticker["priceChange"],
                    "P": ticker["priceChangePercent"],
                    "w": ticker["weightedAvgPrice"],
                    "x": ticker["prevClosePrice"],
                    "c": ticker["lastPrice"],
                    "Q": "1.0",
                    "b": ticker["bidPrice"],
                    "B": "1.0",
                    "a": ticker["askPrice"],
                    "A": "1.0",
                    "o": ticker["openPrice"],
                    "h": ticker["highPrice"],
                    "l": ticker["lowPrice"],
                    "v": ticker["volume"],
                    "q": ticker["quoteVolume"],
                    "O": now_ms - _DAY_MS,
                    "C": now_ms,
                    "F": 1,
                    "L": 2,
                    "n": 2,
                }
            ]
        if not kind.startswith("kline_"):
            return []
        interval = kind.removeprefix("kline_")
        series = self.candles.get((symbol_id, interval))
        if series is None:
            return []
        step = timeframe_ms(interval)
        # Candles that were open at some point in (previous, now]: the ones that closed get their
        # final x=true message, the one open at now an x=false update.
        lo = max(int(np.searchsorted(series.open_time, previous_ms, side="right")) - 1, 0)
        hi = int(np.searchsorted(series.open_time, now_ms, side="right"))
        messages = []
        for i in range(lo, hi):
            row = self._kline_row(series, i, step)
            closed = int(series.open_time[i]) + step <= now_ms
            messages.append(
                {
                    "e": "kline",
                    "E": now_ms,
                    "s": symbol_id,
                    "k": {
                        "t": row[0],
                        "T": row[6],
                        "s": symbol_id,
                        "i": interval,
                        "f": 1,
                        "L": 2,
                        "o": row[1],
                        "c": row[4],
                        "h": row[2],
                        "l": row[3],
                        "v": row[5],
                        "n": 100,
                        "x": closed,
                        "q": row[7],
                        "V": row[9],
                        "Q": row[10],
                        "B": "0",
                    },
                }
            )
        return messages

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        await ws.prepare(request)
        self.ws_connections_accepted += 1
        connection = _Connection(ws)
        self._connections.append(connection)
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(message.data)
                method, params, ident = payload.get("method"), payload.get("params", []), payload.get("id")
                if method == "SUBSCRIBE":
                    connection.streams.update(params)
                    await ws.send_str(json.dumps({"result": None, "id": ident}))
                    for stream in params:  # Binance pushes the current state soon after subscribing
                        for event in self._stream_messages(stream, self.now_ms, self.now_ms):
                            await ws.send_str(json.dumps(event))
                elif method == "UNSUBSCRIBE":
                    connection.streams.difference_update(params)
                    await ws.send_str(json.dumps({"result": None, "id": ident}))
                else:
                    error = {"error": {"code": 2, "msg": "Invalid request"}, "id": ident}
                    await ws.send_str(json.dumps(error))
        finally:
            if connection in self._connections:
                self._connections.remove(connection)
        return ws
