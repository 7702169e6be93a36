"""The private (signed) half of the fake Binance: an account, orders, a matching engine, faults.

Installs on a ``FakeBinance`` through its ``add_route`` extension point (call ``install``
before ``start``) and speaks the real spot REST protocol the ccxt client uses:
``POST/GET/DELETE /api/v3/order`` (``newClientOrderId`` / ``origClientOrderId``),
``GET /api/v3/openOrders``, ``GET /api/v3/myTrades``, ``GET /api/v3/account``. Every private
request must carry ``X-MBX-APIKEY`` and a ``timestamp`` + ``signature`` (HMAC-SHA256 of the
query string, or of the form body for POST, with the secret); otherwise Binance's -2014/-1022.

Matching: MARKET orders fill at once at the current price; LIMIT orders rest until the price
crosses; STOP_LOSS_LIMIT / TAKE_PROFIT_LIMIT wait for their trigger, then behave as a LIMIT at
their price. The price is ``set_price`` (scripted; each call runs the matching engine) or else
the fake's last candle close. Fees are charged in the quote asset at ``fee_rate``.

Fault injection: ``fail_next(n, status)`` answers the next n order POSTs with a 5xx without
recording them; ``stall_next(n, seconds)`` records (and matches) the order, then stalls before
answering (the client times out); ``reject_next_stop(n)`` refuses the next stop orders that pass the
balance check with -2010 "Stop price would trigger immediately.". A stop whose trigger is already crossed is
refused the same way, as Binance does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from fakes.binance import FakeBinance

from tradeengine.exchange.symbols import to_unified

_ZERO = Decimal(0)
_Q = Decimal("0.00000001")


def _s(value: Decimal) -> str:
    return f"{value.quantize(_Q):f}"


def _error(code: int, msg: str, status: int = 400) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


@dataclass
class FakeOrder:
    order_id: int
    client_order_id: str
    symbol: str
    side: str  # BUY | SELL
    type: str  # MARKET | LIMIT | STOP_LOSS_LIMIT | TAKE_PROFIT_LIMIT
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    time_ms: int
    status: str = "NEW"
    executed: Decimal = _ZERO
    quote: Decimal = _ZERO
    triggered: bool = False
    trades: list[dict[str, Any]] = field(default_factory=list)
    update_ms: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")


class FakeBinanceAccount:
    """One spot account on a ``FakeBinance``. ``balances`` are free amounts per asset."""

    def __init__(
        self,
        exchange: FakeBinance,
        *,
        api_key: str = "test-key",
        secret: str = "test-secret",
        balances: dict[str, Decimal] | None = None,
        fee_rate: Decimal = Decimal("0.001"),
    ) -> None:
        self.exchange = exchange
        self.api_key = api_key
        self.secret = secret
        self.free: dict[str, Decimal] = dict(balances or {})
        self.locked: dict[str, Decimal] = {}
        self.fee_rate = fee_rate
        self.prices: dict[str, Decimal] = {}  # exchange symbol id -> scripted price
        self.orders: dict[int, FakeOrder] = {}
        self.trades: list[dict[str, Any]] = []
        self.order_posts = 0  # POST /order requests that reached the matching engine
        self.auth_failures = 0
        self.max_fill_quantity: Decimal | None = None  # cap per match: partial fills
        self._ids = itertools.count(1001)
        self._trade_ids = itertools.count(50001)
        self._fail: list[int] = []
        self._stall: list[tuple[float, str | None]] = []
        self._reject_stops = 0
        self._reserve: dict[int, tuple[str, Decimal]] = {}  # order id -> (asset, amount still locked)

    # -- wiring and controls ---------------------------------------------------------------------

    def install(self) -> FakeBinanceAccount:
        for method, handler in (
            ("POST", self._post_order),
            ("GET", self._get_order),
            ("DELETE", self._delete_order),
        ):
            self.exchange.add_route(method, "/api/v3/order", handler)
        self.exchange.add_route("GET", "/api/v3/openOrders", self._open_orders)
        self.exchange.add_route("GET", "/api/v3/myTrades", self._my_trades)
        self.exchange.add_route("GET", "/api/v3/account", self._account)
        return self

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        self._fail.extend([status] * n)

    def stall_next(self, n: int = 1, seconds: float = 5.0, order_type: str | None = None) -> None:
        """Record and match the next n order POSTs (of ``order_type``, e.g. "MARKET"), then stall."""
        self._stall.extend([(seconds, order_type)] * n)

    def reject_next_stop(self, n: int = 1) -> None:
        self._reject_stops += n

    def price(self, symbol_id: str) -> Decimal:
        if symbol_id in self.prices:
            return self.prices[symbol_id]
        return Decimal(self.exchange._ticker(symbol_id)["lastPrice"])

    def set_price(self, symbol: str, price: Decimal) -> None:
        """Script the market price of ``symbol`` (unified or id) and run the matching engine."""
        symbol_id = symbol.replace("/", "")
        self.prices[symbol_id] = price
        for order in list(self.orders.values()):
            if order.symbol == symbol_id and order.is_open:
                self._match(order)

    def orders_by_client_id(self, client_order_id: str) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.client_order_id == client_order_id]

    def open_orders(self) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.is_open]

    # -- auth -------------------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, str] | web.Response:
        """Verify key and signature; return the request's parameters."""
        if request.headers.get("X-MBX-APIKEY") != self.api_key:
            self.auth_failures += 1
            return _error(-2014, "API-key format invalid.", 401)
        if request.method == "POST":
            payload = await request.text()
        else:
            payload = request.query_string
        unsigned, sep, signature = payload.rpartition("&signature=")
        expected = hmac.new(self.secret.encode(), unsigned.encode(), hashlib.sha256).hexdigest()
        if not sep or not hmac.compare_digest(signature, expected):
            self.auth_failures += 1
            return _error(-1022, "Signature for this request is not valid.", 400)
        params = dict(parse_qsl(unsigned, keep_blank_values=True))
        if "timestamp" not in params:
            return _error(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        return params

    # -- order endpoints --------------------------------------------------------------------------

    async def _post_order(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        if isinstance(params, web.Response):
            return params
        if self._fail:
            status = self._fail.pop(0)
            return web.Response(status=status, text="<html>Service Unavailable</html>")
        try:
            symbol = params["symbol"]
            side = params["side"]
            typ = params["type"]
            quantity = Decimal(params["quantity"])
            price = Decimal(params["price"]) if "price" in params else None
            stop = Decimal(params["stopPrice"]) if "stopPrice" in params else None
        except (KeyError, ArithmeticError):
            return _error(-1102, "Mandatory parameter was not sent, was empty/null, or malformed.")
        client_id = params.get("newClientOrderId") or f"fake-{next(self._ids)}"
        if any(o.is_open for o in self.orders_by_client_id(client_id)):
            return _error(-2010, "Duplicate order sent.")
        if typ in ("LIMIT", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT") and price is None:
            return _error(-1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed.")
        if typ in ("STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"):
            if stop is None:
                return _error(-1102, "Mandatory parameter 'stopPrice' was not sent, was empty/null, or malformed.")
            if self._triggered(typ, side, stop, self.price(symbol)):
                return _error(-2010, "Stop price would trigger immediately.")
        now = self.exchange.now_ms
        order = FakeOrder(next(self._ids), client_id, symbol, side, typ, quantity, price, stop, now, update_ms=now)
        base, quote = to_unified(symbol).split("/")
        # Reserve what the order may spend (market buys: at the current price plus the fee).
        reserve_asset, reserve = (
            (base, quantity)
            if side == "SELL"
            else (
                quote,
                quantity
                * (price if price is not None and typ != "MARKET" else self.price(symbol))
                * (1 + self.fee_rate),
            )
        )
        if self.free.get(reserve_asset, _ZERO) < reserve:
            return _error(-2010, "Account has insufficient balance for requested action.")
        if typ in ("STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT") and self._reject_stops > 0:
            # Injected after the balance check, so a refused replacement can follow a cancel.
            self._reject_stops -= 1
            return _error(-2010, "Stop price would trigger immediately.")
        self.free[reserve_asset] = self.free.get(reserve_asset, _ZERO) - reserve
        self.locked[reserve_asset] = self.locked.get(reserve_asset, _ZERO) + reserve
        self._reserve[order.order_id] = (reserve_asset, reserve)
        self.orders[order.order_id] = order
        self.order_posts += 1
        self._match(order)
        if typ == "MARKET" and order.is_open:
            order.status = "EXPIRED"  # IOC remainder (only with max_fill_quantity)
            self._release(order)
        if self._stall and self._stall[0][1] in (None, typ):
            await asyncio.sleep(self._stall.pop(0)[0])
        body = self._order_json(order)
        body["transactTime"] = now
        body["fills"] = [
            {
                "price": t["price"],
                "qty": t["qty"],
                "commission": t["commission"],
                "commissionAsset": t["commissionAsset"],
                "tradeId": t["id"],
            }
            for t in order.trades
        ]
        return web.json_response(body)

    def _find(self, params: dict[str, str]) -> FakeOrder | None:
        if "orderId" in params:
            return self.orders.get(int(params["orderId"]))
        client_id = params.get("origClientOrderId")
        if client_id:
            found = self.orders_by_client_id(client_id)
            return found[-1] if found else None
        return None

    async def _get_order(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        if isinstance(params, web.Response):
            return params
        order = self._find(params)
        if order is None or order.symbol != params.get("symbol"):
            return _error(-2013, "Order does not exist.")
        return web.json_response(self._order_json(order))

    async def _delete_order(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        if isinstance(params, web.Response):
            return params
        order = self._find(params)
        if order is None or not order.is_open:
            return _error(-2011, "Unknown order sent.")
        order.status = "CANCELED"
        order.update_ms = self.exchange.now_ms
        self._release(order)
        return web.json_response(self._order_json(order))

    async def _open_orders(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        if isinstance(params, web.Response):
            return params
        symbol = params.get("symbol")
        return web.json_response(
            [self._order_json(o) for o in self.orders.values() if o.is_open and (symbol is None or o.symbol == symbol)]
        )

    async def _my_trades(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        if isinstance(params, web.Response):
            return params
        rows = [t for t in self.trades if t["symbol"] == params.get("symbol")]
        if "orderId" in params:
            rows = [t for t in rows if t["orderId"] == int(params["orderId"])]
        if "fromId" in params:
            rows = [t for t in rows if t["id"] >= int(params["fromId"])]
        if "startTime" in params:
            rows = [t for t in rows if t["time"] >= int(params["startTime"])]
        return web.json_response(rows[: int(params.get("limit", "500"))])

    async def _account(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        if isinstance(params, web.Response):
            return params
        assets = sorted(set(self.free) | set(self.locked))
        return web.json_response(
            {
                "makerCommission": 10,
                "takerCommission": 10,
                "buyerCommission": 0,
                "sellerCommission": 0,
                "canTrade": True,
                "canWithdraw": True,
                "canDeposit": True,
                "brokered": False,
                "requireSelfTradePrevention": False,
                "preventSor": False,
                "updateTime": self.exchange.now_ms,
                "accountType": "SPOT",
                "permissions": ["SPOT"],
                "uid": 1,
                "balances": [
                    {"asset": a, "free": _s(self.free.get(a, _ZERO)), "locked": _s(self.locked.get(a, _ZERO))}
                    for a in assets
                ],
            }
        )

    # -- matching ---------------------------------------------------------------------------------

    @staticmethod
    def _triggered(typ: str, side: str, stop: Decimal, price: Decimal) -> bool:
        # A sell stop-loss fires when the price falls to the stop; a sell take-profit when it
        # rises to it (mirrored for buys).
        if typ == "STOP_LOSS_LIMIT":
            return price <= stop if side == "SELL" else price >= stop
        return price >= stop if side == "SELL" else price <= stop

    def _match(self, order: FakeOrder) -> None:
        price = self.price(order.symbol)
        if order.type in ("STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT") and not order.triggered:
            assert order.stop_price is not None
            if not self._triggered(order.type, order.side, order.stop_price, price):
                return
            order.triggered = True
        if order.type == "MARKET":
            fill_price = price
        else:
            assert order.price is not None
            marketable = price <= order.price if order.side == "BUY" else price >= order.price
            if not marketable:
                return
            # A resting limit fills at its own price; a freshly triggered stop-limit whose limit
            # is through the market fills at the market (better for the taker).
            fill_price = (
                order.price
                if not order.triggered
                else (max(price, order.price) if order.side == "SELL" else min(price, order.price))
            )
        remaining = order.quantity - order.executed
        quantity = remaining if self.max_fill_quantity is None else min(remaining, self.max_fill_quantity)
        self._fill(order, fill_price, quantity)

    def _fill(self, order: FakeOrder, price: Decimal, quantity: Decimal) -> None:
        base, quote = to_unified(order.symbol).split("/")
        notional = (price * quantity).quantize(_Q, rounding=ROUND_DOWN)
        fee = (notional * self.fee_rate).quantize(_Q)
        asset, reserved = self._reserve[order.order_id]
        if order.side == "BUY":
            spent = notional + fee
            self.locked[quote] -= min(spent, reserved)
            self._reserve[order.order_id] = (asset, reserved - min(spent, reserved))
            self.free[base] = self.free.get(base, _ZERO) + quantity
        else:
            self.locked[base] -= quantity
            self._reserve[order.order_id] = (asset, reserved - quantity)
            self.free[quote] = self.free.get(quote, _ZERO) + notional - fee
        order.executed += quantity
        order.quote += notional
        order.status = "FILLED" if order.executed >= order.quantity else "PARTIALLY_FILLED"
        order.update_ms = self.exchange.now_ms
        trade = {
            "symbol": order.symbol,
            "id": next(self._trade_ids),
            "orderId": order.order_id,
            "orderListId": -1,
            "price": _s(price),
            "qty": _s(quantity),
            "quoteQty": _s(notional),
            "commission": _s(fee),
            "commissionAsset": quote,
            "time": self.exchange.now_ms,
            "isBuyer": order.side == "BUY",
            "isMaker": order.type != "MARKET",
            "isBestMatch": True,
        }
        order.trades.append(trade)
        self.trades.append(trade)
        if order.status == "FILLED":
            self._release(order)

    def _release(self, order: FakeOrder) -> None:
        asset, reserved = self._reserve.pop(order.order_id, ("", _ZERO))
        if asset and reserved > 0:
            self.locked[asset] -= reserved
            self.free[asset] = self.free.get(asset, _ZERO) + reserved

    def _order_json(self, order: FakeOrder) -> dict[str, Any]:
        return {
            "symbol": order.symbol,
            "orderId": order.order_id,
            "orderListId": -1,
            "clientOrderId": order.client_order_id,
            "price": _s(order.price or _ZERO),
            "origQty": _s(order.quantity),
            "executedQty": _s(order.executed),
            "cummulativeQuoteQty": _s(order.quote),
            "status": order.status,
            "timeInForce": "GTC" if order.type != "MARKET" else "IOC",
            "type": order.type,
            "side": order.side,
            "stopPrice": _s(order.stop_price or _ZERO),
            "icebergQty": "0.00000000",
            "time": order.time_ms,
            "updateTime": order.update_ms,
            "isWorking": order.type == "LIMIT" or order.triggered,
            "workingTime": order.time_ms,
            "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }
