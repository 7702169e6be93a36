"""PaperBroker: a deterministic, in-memory simulated exchange behind the Broker port.

Fill rules (prices are the ones given to ``on_price``; ``s`` is ``slippage_bps / 10_000``):

* market: fills at once at the last price, moved against the taker: buy ``last*(1+s)``, sell
  ``last*(1-s)``. Taker fee.
* limit: marketable at placement (buy: ``last <= limit``; sell: ``last >= limit``) fills at once as
  a taker at the last price with slippage, never worse than the limit. Otherwise it rests and fills
  at exactly the limit price (maker fee) on the first price at or through it (buy ``p <= limit``,
  sell ``p >= limit``).
* stop_market: triggers on the first price at or through the stop (buy ``p >= stop``, sell
  ``p <= stop``) and fills at that price with slippage. That price is the worse of the stop and the
  crossing price, so a gap through the stop fills at the gap price. Taker fee.
* stop_limit / take_profit_limit: trigger like Binance's STOP_LOSS_LIMIT / TAKE_PROFIT_LIMIT (stop:
  buy ``p >= stop``, sell ``p <= stop``; take profit: buy ``p <= stop``, sell ``p >= stop``), then
  act as a limit order at ``price``: marketable fills at once (taker, never worse than the limit),
  else it rests until the price comes back to the limit (maker).
* trailing_stop: the stop trails the best price seen since activation by ``trailing_percent``
  (sell: ``high*(1-pct)``, buy: ``low*(1+pct)``) and then fills like a stop-market. With a
  ``stop_price`` it activates only once the price reaches it (sell ``p >= stop_price``, buy
  ``p <= stop_price``); without one it is active from placement, trailing from the last price.
* Stop and take-profit orders that would trigger immediately are rejected, as Binance does.
* Orders fill completely in one fill (no book depth). Fill prices are rounded to ``price_step``
  against the trader; fees are ``notional * rate`` rounded up to ``fee_step`` and paid in the quote
  asset.

Account and margin model ("spot longs, collateralised shorts", hedge-style per symbol):

* Free balances per asset. An opening BUY spends quote and credits the base asset (a spot buy).
* A reducing SELL (``reduce_only`` or a closing purpose: exit, stop_loss, take_profit,
  trailing_stop, scale_out, partial_close) sells base holdings for quote.
* An opening SELL opens/increases a short: the sale proceeds are held as collateral and an initial
  margin of 100% of the notional plus the fee is taken from free quote, so the short locks
  ``2 * notional``. No borrow fees, no liquidation.
* A reducing BUY covers a short: it releases the covered share of the collateral and pays the buy
  back plus the fee from it; a loss larger than the collateral is paid from free quote, and the
  order is rejected if even that is not enough (balances never go negative).
* Resting opening orders reserve quote (limit: ``qty*limit*(1+fee)``, stops: at the stop plus
  slippage and fee). Reducing orders reserve nothing, so a stop-loss and a take-profit can both
  protect one position; at fill time they are clipped to the position, and when a position reaches
  zero the other resting reducing orders for it expire (OCO-like).
* A triggered order that can no longer be paid for becomes ``rejected`` with a message.

Changes the caller did not get back from a call (fills, expiries and rejections inside
``on_price``) are pushed to ``subscribe`` handlers. Time comes only from ``on_price``'s ``at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal, localcontext
from typing import TYPE_CHECKING, Any

from loguru import logger

from tradeengine.domain.enums import OrderPurpose, OrderStatus, OrderType, TradeSide
from tradeengine.exchange.broker import (
    Fill,
    OrderRejected,
    OrderRequest,
    OrderState,
    OrderUpdateHandler,
)

if TYPE_CHECKING:
    from tradeengine.settings import Settings

SNAPSHOT_VERSION = 1

#: Purposes that always reduce a position, whatever ``reduce_only`` says.
REDUCING_PURPOSES: frozenset[OrderPurpose] = frozenset(
    {
        OrderPurpose.EXIT,
        OrderPurpose.STOP_LOSS,
        OrderPurpose.TAKE_PROFIT,
        OrderPurpose.TRAILING_STOP,
        OrderPurpose.SCALE_OUT,
        OrderPurpose.PARTIAL_CLOSE,
    }
)

_BPS = Decimal(10_000)
_ZERO = Decimal(0)
_ONE = Decimal(1)


def is_reducing(request: OrderRequest) -> bool:
    """Whether the order closes (part of) a position rather than opening one."""
    return request.reduce_only or request.purpose in REDUCING_PURPOSES


def split_symbol(symbol: str) -> tuple[str, str]:
    """Split a ccxt unified symbol ``BASE/QUOTE`` into its assets."""
    base, sep, quote = symbol.partition("/")
    if not sep or not base or not quote or "/" in quote:
        raise OrderRejected(f"symbol {symbol!r} must look like 'BASE/QUOTE', e.g. 'BTC/USDT'")
    return base, quote.split(":")[0]


@dataclass(frozen=True, slots=True)
class ShortPosition:
    """An open paper short: base quantity owed and the quote collateral locked for it."""

    quantity: Decimal
    collateral: Decimal


@dataclass(slots=True)
class _Order:
    request: OrderRequest
    seq: int
    quantity: Decimal  # rounded to the step
    reducing: bool
    status: OrderStatus = OrderStatus.OPEN
    reserved_asset: str | None = None
    reserved_amount: Decimal = _ZERO
    triggered: bool = False  # stop/take-profit limits: limit is live; trailing: activated
    trail_extreme: Decimal | None = None
    fills: list[Fill] = field(default_factory=list)
    error_message: str | None = None

    @property
    def exchange_order_id(self) -> str:
        # Derived from our own unique id, so ids stay unique across restarts and rebuilt brokers.
        return f"paper-{self.request.client_order_id}"

    def state(self) -> OrderState:
        filled = sum((f.quantity for f in self.fills), _ZERO)
        average: Decimal | None = None
        if filled > 0:
            average = sum((f.price * f.quantity for f in self.fills), _ZERO) / filled
        r = self.request
        return OrderState(
            client_order_id=r.client_order_id,
            symbol=r.symbol,
            side=r.side,
            type=r.type,
            status=self.status,
            quantity=self.quantity,
            filled_quantity=filled,
            average_price=average,
            exchange_order_id=self.exchange_order_id,
            fills=tuple(self.fills),
            error_message=self.error_message,
        )


class _InsufficientError(Exception):
    """A fill cannot be paid for; nothing was changed."""


class PaperBroker:
    """Simulated exchange account; see the module docstring for the exact rules."""

    def __init__(
        self,
        balances: Mapping[str, Decimal] | None = None,
        *,
        fee_rate: Decimal = Decimal("0.001"),
        maker_fee_rate: Decimal | None = None,
        slippage_bps: Decimal = _ZERO,
        quantity_step: Decimal = Decimal("0.00000001"),
        quantity_steps: Mapping[str, Decimal] | None = None,
        price_step: Decimal = Decimal("0.00000001"),
        fee_step: Decimal = Decimal("0.00000001"),
        min_notional: Decimal = _ZERO,
    ) -> None:
        self.fee_rate = _check_rate("fee_rate", fee_rate)
        self.maker_fee_rate = _check_rate("maker_fee_rate", fee_rate if maker_fee_rate is None else maker_fee_rate)
        if not (Decimal(0) <= slippage_bps < _BPS):
            raise ValueError(f"slippage_bps must be in [0, 10000), got {slippage_bps}")
        self.slippage_bps = Decimal(slippage_bps)
        for name, step in (
            ("quantity_step", quantity_step),
            ("price_step", price_step),
            ("fee_step", fee_step),
        ):
            if step <= 0:
                raise ValueError(f"{name} must be > 0, got {step}")
        self.quantity_step = Decimal(quantity_step)
        self.quantity_steps: dict[str, Decimal] = dict(quantity_steps or {})
        for symbol, step in self.quantity_steps.items():
            if step <= 0:
                raise ValueError(f"quantity_steps[{symbol!r}] must be > 0, got {step}")
        self.price_step = Decimal(price_step)
        self.fee_step = Decimal(fee_step)
        if min_notional < 0:
            raise ValueError(f"min_notional must be >= 0, got {min_notional}")
        self.min_notional = Decimal(min_notional)

        self._free: dict[str, Decimal] = {}
        for asset, amount in (balances or {}).items():
            if amount < 0:
                raise ValueError(f"balances[{asset!r}] must be >= 0, got {amount}")
            self._free[asset] = Decimal(amount)
        self._reserved: dict[str, Decimal] = {}
        self._shorts: dict[str, ShortPosition] = {}
        self._orders: dict[str, _Order] = {}
        # Resting orders per symbol, in placement order; finished ones are pruned lazily.
        self._open: dict[str, dict[str, _Order]] = {}
        self._last: dict[str, tuple[Decimal, datetime]] = {}
        self._next_seq = 1
        self._handlers: list[OrderUpdateHandler] = []

    @classmethod
    def from_settings(cls, settings: Settings, *, quote_asset: str = "USDT") -> PaperBroker:
        """A fresh account with ``paper_balance`` of ``quote_asset`` and the configured costs."""
        return cls(
            {quote_asset: settings.paper_balance},
            fee_rate=settings.fee_rate,
            slippage_bps=settings.slippage_bps,
        )

    # ------------------------------------------------------------------ Broker port

    async def place_order(self, request: OrderRequest) -> OrderState:
        """Place an order; a repeat of the same ``client_order_id`` returns the existing order."""
        existing = self._orders.get(request.client_order_id)
        if existing is not None:
            if existing.request != request:
                raise OrderRejected(f"client_order_id {request.client_order_id!r} is already used by a different order")
            return existing.state()
        order = self._validate(request)
        base, quote = split_symbol(request.symbol)
        last = self._last_price(request.symbol)
        last_price, at = last
        s = self.slippage_bps / _BPS
        side = request.side
        buy = side is TradeSide.BUY

        immediate_price: Decimal | None = None
        typ = request.type
        if typ is OrderType.MARKET:
            immediate_price = last_price * (_ONE + s) if buy else last_price * (_ONE - s)
        elif typ is OrderType.LIMIT:
            limit = _req(request.price)
            if (buy and last_price <= limit) or (not buy and last_price >= limit):
                immediate_price = _cap(last_price, s, limit, buy)
        elif typ in (OrderType.STOP_MARKET, OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT):
            stop = _req(request.stop_price)
            if _stop_hit(typ, buy, last_price, stop):
                kind = "take-profit" if typ is OrderType.TAKE_PROFIT_LIMIT else "stop"
                raise OrderRejected(
                    f"{kind} price {stop} would trigger immediately at last price {last_price}"
                    f" for {side} {request.symbol}"
                )
        elif typ is OrderType.TRAILING_STOP:
            activation = request.stop_price
            if activation is None or (buy and last_price <= activation) or (not buy and last_price >= activation):
                order.triggered = True
                order.trail_extreme = last_price

        notional_ref = self._reference_price(order, last_price) * order.quantity
        if notional_ref < self.min_notional:
            raise OrderRejected(
                f"order notional {notional_ref} is below min_notional {self.min_notional} for {request.symbol}"
            )

        expired: list[OrderState] = []
        if immediate_price is not None:
            try:
                expired = self._fill(order, immediate_price, at, taker=True, clip=False)
            except _InsufficientError as exc:
                raise OrderRejected(str(exc)) from None
        else:
            if order.reducing:
                available = self._position_size(request.symbol, side)
                if available < order.quantity:
                    raise OrderRejected(self._no_position_message(order, available))
            else:
                amount = self._reservation(order, last_price)
                free = self._free.get(quote, _ZERO)
                if free < amount:
                    raise OrderRejected(
                        f"insufficient {quote} balance: {side} {order.quantity} {base} needs {_fmt(amount)}"
                        f" {quote} reserved, free is {_fmt(free)}"
                    )
                self._free[quote] = free - amount
                self._reserved[quote] = self._reserved.get(quote, _ZERO) + amount
                order.reserved_asset, order.reserved_amount = quote, amount
        self._orders[request.client_order_id] = order
        if order.status is OrderStatus.OPEN:
            self._open.setdefault(request.symbol, {})[request.client_order_id] = order
        self._next_seq += 1
        for state in expired:  # protective orders this fill made moot
            await self._notify(state)
        return order.state()

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderState:
        """Cancel a resting order and release its reservation; finished orders are returned as is."""
        order = self._orders.get(client_order_id)
        if order is None or order.request.symbol != symbol:
            raise OrderRejected(f"unknown order: client_order_id {client_order_id!r} for {symbol}")
        if order.status is OrderStatus.OPEN:
            self._release(order)
            order.status = OrderStatus.CANCELLED
        return order.state()

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderState | None:
        order = self._orders.get(client_order_id)
        if order is None or order.request.symbol != symbol:
            return None
        return order.state()

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]:
        return [o.state() for o in self._resting(symbol)]

    async def balances(self) -> dict[str, Decimal]:
        """Free balance per asset (reservations and short collateral excluded)."""
        return dict(self._free)

    def subscribe(self, handler: OrderUpdateHandler) -> None:
        self._handlers.append(handler)

    async def on_price(self, symbol: str, price: Decimal, at: datetime) -> None:
        """Record the last trade price and fill whatever resting orders it crosses."""
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise ValueError(f"price for {symbol} must be a positive finite Decimal, got {price!r}")
        self._last[symbol] = (price, at)
        changed: list[OrderState] = []
        for order in self._resting(symbol):
            if order.status is not OrderStatus.OPEN:
                continue  # expired by an earlier fill in this same tick
            before = order.status
            others = self._evaluate(order, price, at)
            if order.status is not before:
                changed.append(order.state())
            changed.extend(others)  # after the fill that caused them
        for state in changed:
            await self._notify(state)

    async def close(self) -> None:
        """Nothing to release; kept for the port."""

    # ------------------------------------------------------------------ extra read API

    def reserved(self) -> dict[str, Decimal]:
        """Quote held back for resting orders, per asset."""
        return {k: v for k, v in self._reserved.items() if v != 0}

    def shorts(self) -> dict[str, ShortPosition]:
        """Open shorts per symbol."""
        return dict(self._shorts)

    def last_price(self, symbol: str) -> Decimal | None:
        last = self._last.get(symbol)
        return None if last is None else last[0]

    def equity(self, quote: str = "USDT", prices: Mapping[str, Decimal] | None = None) -> Decimal:
        """Account value in ``quote``: free + reserved quote, base holdings and shorts marked at
        ``prices`` (default: the last prices; a holding without a price raises ``ValueError``)."""
        marks = {sym: p for sym, (p, _) in self._last.items()}
        marks.update(prices or {})
        total = self._free.get(quote, _ZERO) + self._reserved.get(quote, _ZERO)
        for asset, amount in self._free.items():
            if asset == quote or amount == 0:
                continue
            total += amount * _mark(marks, f"{asset}/{quote}")
        for symbol, short in self._shorts.items():
            total += short.collateral - short.quantity * _mark(marks, symbol)
        return total

    def prune(self, keep_finished: int = 1000) -> int:
        """Forget all but the newest ``keep_finished`` finished orders; return how many went.

        Bounds the snapshot of a long-running account. A retry of a forgotten client id would be
        treated as a new order, so keep more than any retry window can reach back.
        """
        if keep_finished < 0:
            raise ValueError(f"keep_finished must be >= 0, got {keep_finished}")
        finished = [o for o in self._orders.values() if o.status is not OrderStatus.OPEN]
        drop = finished[: max(len(finished) - keep_finished, 0)]
        for order in drop:
            del self._orders[order.request.client_order_id]
        return len(drop)

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to rebuild this broker, as JSON-friendly strings and lists."""
        return {
            "version": SNAPSHOT_VERSION,
            "config": {
                "fee_rate": str(self.fee_rate),
                "maker_fee_rate": str(self.maker_fee_rate),
                "slippage_bps": str(self.slippage_bps),
                "quantity_step": str(self.quantity_step),
                "quantity_steps": {k: str(v) for k, v in self.quantity_steps.items()},
                "price_step": str(self.price_step),
                "fee_step": str(self.fee_step),
                "min_notional": str(self.min_notional),
            },
            "free": {k: str(v) for k, v in self._free.items()},
            "reserved": {k: str(v) for k, v in self._reserved.items()},
            "shorts": {
                k: {"quantity": str(v.quantity), "collateral": str(v.collateral)} for k, v in self._shorts.items()
            },
            "last_prices": {k: {"price": str(p), "at": at.isoformat()} for k, (p, at) in self._last.items()},
            "next_seq": self._next_seq,
            "orders": [_order_to_json(o) for o in self._orders.values()],
        }

    @classmethod
    def restore(cls, snapshot: Mapping[str, Any]) -> PaperBroker:
        """Rebuild a broker from ``snapshot()`` output (handlers are not part of it)."""
        version = snapshot.get("version")
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version must be {SNAPSHOT_VERSION}, got {version!r}")
        try:
            c = snapshot["config"]
            broker = cls(
                {k: Decimal(v) for k, v in snapshot["free"].items()},
                fee_rate=Decimal(c["fee_rate"]),
                maker_fee_rate=Decimal(c["maker_fee_rate"]),
                slippage_bps=Decimal(c["slippage_bps"]),
                quantity_step=Decimal(c["quantity_step"]),
                quantity_steps={k: Decimal(v) for k, v in c["quantity_steps"].items()},
                price_step=Decimal(c["price_step"]),
                fee_step=Decimal(c["fee_step"]),
                min_notional=Decimal(c["min_notional"]),
            )
            broker._reserved = {k: Decimal(v) for k, v in snapshot["reserved"].items()}
            broker._shorts = {
                k: ShortPosition(Decimal(v["quantity"]), Decimal(v["collateral"]))
                for k, v in snapshot["shorts"].items()
            }
            broker._last = {
                k: (Decimal(v["price"]), datetime.fromisoformat(v["at"])) for k, v in snapshot["last_prices"].items()
            }
            broker._next_seq = int(snapshot["next_seq"])
            for data in snapshot["orders"]:
                order = _order_from_json(data)
                broker._orders[order.request.client_order_id] = order
                if order.status is OrderStatus.OPEN:
                    broker._open.setdefault(order.request.symbol, {})[order.request.client_order_id] = order
        except (KeyError, TypeError, ArithmeticError) as exc:
            raise ValueError(f"malformed paper broker snapshot: {exc!r}") from exc
        return broker

    # ------------------------------------------------------------------ internals

    def _validate(self, request: OrderRequest) -> _Order:
        if not request.client_order_id:
            raise OrderRejected("client_order_id must not be empty")
        split_symbol(request.symbol)
        if not isinstance(request.quantity, Decimal) or not request.quantity.is_finite() or request.quantity <= 0:
            raise OrderRejected(f"quantity must be a positive Decimal, got {request.quantity!r}")
        typ = request.type
        if typ in (OrderType.LIMIT, OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT):
            _positive("price", request.price, typ)
        if typ in (OrderType.STOP_MARKET, OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT):
            _positive("stop_price", request.stop_price, typ)
        if typ is OrderType.TRAILING_STOP:
            pct = request.trailing_percent
            if pct is None or not (0 < pct < 1):
                raise OrderRejected(
                    f"trailing_percent must be a fraction in (0, 1) for a trailing_stop order, got {pct!r}"
                )
            if request.stop_price is not None:
                _positive("stop_price", request.stop_price, typ)
        step = self.quantity_steps.get(request.symbol, self.quantity_step)
        quantity = (request.quantity / step).to_integral_value(rounding=ROUND_DOWN) * step
        if quantity <= 0:
            raise OrderRejected(f"quantity {request.quantity} rounds to 0 at step {step} for {request.symbol}")
        return _Order(request=request, seq=self._next_seq, quantity=quantity, reducing=is_reducing(request))

    def _last_price(self, symbol: str) -> tuple[Decimal, datetime]:
        last = self._last.get(symbol)
        if last is None:
            raise OrderRejected(f"no price seen for {symbol} yet; the paper broker fills against on_price")
        return last

    def _resting(self, symbol: str | None) -> list[_Order]:
        resting: list[_Order] = []
        for sym in list(self._open) if symbol is None else [symbol]:
            book = self._open.get(sym)
            if not book:
                continue
            for cid, order in list(book.items()):
                if order.status is OrderStatus.OPEN:
                    resting.append(order)
                else:
                    del book[cid]
        if symbol is None:
            resting.sort(key=lambda o: o.seq)
        return resting

    def _reference_price(self, order: _Order, last: Decimal) -> Decimal:
        r = order.request
        if r.type in (OrderType.LIMIT, OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT):
            return _req(r.price)
        if r.type is OrderType.STOP_MARKET:
            return _req(r.stop_price)
        if r.type is OrderType.TRAILING_STOP:
            if order.triggered:
                return self._trail_level(order)
            # Not active yet: the first possible level once the activation price is reached.
            activation = r.stop_price or last
            pct = _req(r.trailing_percent)
            return activation * (_ONE + pct) if r.side is TradeSide.BUY else activation * (_ONE - pct)
        return last

    def _trail_level(self, order: _Order) -> Decimal:
        pct = _req(order.request.trailing_percent)
        extreme = _req(order.trail_extreme)
        return extreme * (_ONE - pct) if order.request.side is TradeSide.SELL else extreme * (_ONE + pct)

    def _reservation(self, order: _Order, last: Decimal) -> Decimal:
        """Quote held for a resting opening order: the notional at its reference price plus
        slippage (for orders that fill as takers) and the larger fee rate."""
        price = self._reference_price(order, last)
        if order.request.type in (OrderType.STOP_MARKET, OrderType.TRAILING_STOP):
            price *= _ONE + self.slippage_bps / _BPS
        rate = max(self.fee_rate, self.maker_fee_rate)
        amount = order.quantity * price * (_ONE + rate)
        return amount.quantize(self.fee_step, rounding=ROUND_CEILING)

    def _release(self, order: _Order) -> None:
        if order.reserved_asset is not None and order.reserved_amount:
            asset = order.reserved_asset
            self._reserved[asset] = self._reserved.get(asset, _ZERO) - order.reserved_amount
            self._free[asset] = self._free.get(asset, _ZERO) + order.reserved_amount
        order.reserved_asset, order.reserved_amount = None, _ZERO

    def _evaluate(self, order: _Order, p: Decimal, at: datetime) -> list[OrderState]:
        """Apply one price to one resting order; returns states of *other* orders it changed."""
        r = order.request
        buy = r.side is TradeSide.BUY
        s = self.slippage_bps / _BPS
        typ = r.type
        if typ is OrderType.LIMIT or (typ in (OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT) and order.triggered):
            limit = _req(r.price)
            if (buy and p <= limit) or (not buy and p >= limit):
                return self._try_fill(order, limit, at, taker=False)
            return []
        if typ is OrderType.STOP_MARKET:
            if _stop_hit(typ, buy, p, _req(r.stop_price)):
                return self._try_fill(order, _slip(p, s, buy), at, taker=True)
            return []
        if typ in (OrderType.STOP_LIMIT, OrderType.TAKE_PROFIT_LIMIT):
            if not _stop_hit(typ, buy, p, _req(r.stop_price)):
                return []
            order.triggered = True
            limit = _req(r.price)
            if (buy and p <= limit) or (not buy and p >= limit):
                return self._try_fill(order, _cap(p, s, limit, buy), at, taker=True)
            return []  # rests as a limit until the price comes back
        if typ is OrderType.TRAILING_STOP:
            if not order.triggered:
                activation = _req(r.stop_price)
                if (buy and p <= activation) or (not buy and p >= activation):
                    order.triggered, order.trail_extreme = True, p
                return []
            extreme = _req(order.trail_extreme)
            order.trail_extreme = min(extreme, p) if buy else max(extreme, p)
            level = self._trail_level(order)
            if (buy and p >= level) or (not buy and p <= level):
                return self._try_fill(order, _slip(p, s, buy), at, taker=True)
            return []
        return []

    def _try_fill(self, order: _Order, price: Decimal, at: datetime, *, taker: bool) -> list[OrderState]:
        self._release(order)
        try:
            return self._fill(order, price, at, taker=taker, clip=True)
        except _InsufficientError as exc:
            order.status = OrderStatus.REJECTED
            order.error_message = f"rejected when triggered: {exc}"
            logger.info("paper order {} rejected at trigger: {}", order.request.client_order_id, exc)
            return []

    def _fill(self, order: _Order, raw_price: Decimal, at: datetime, *, taker: bool, clip: bool) -> list[OrderState]:
        """Fill ``order`` completely (reducing orders clipped to the position when ``clip``).
        Raises ``_InsufficientError`` without changing anything when it cannot be paid for."""
        r = order.request
        buy = r.side is TradeSide.BUY
        base, quote = split_symbol(r.symbol)
        price = raw_price.quantize(self.price_step, rounding=ROUND_CEILING if buy else ROUND_FLOOR)
        quantity = order.quantity
        if order.reducing:
            available = self._position_size(r.symbol, r.side)
            if available < quantity:
                if not clip:
                    raise _InsufficientError(self._no_position_message(order, available))
                step = self.quantity_steps.get(r.symbol, self.quantity_step)
                quantity = (available / step).to_integral_value(rounding=ROUND_DOWN) * step
                if quantity <= 0:
                    order.status = OrderStatus.EXPIRED
                    order.error_message = f"nothing left to reduce: position in {r.symbol} is already closed"
                    return []
        rate = self.fee_rate if taker else self.maker_fee_rate
        with localcontext() as ctx:
            ctx.prec = 50  # sums of 8-decimal products must stay exact
            notional = quantity * price
            fee = (notional * rate).quantize(self.fee_step, rounding=ROUND_CEILING)
            self._apply(r.symbol, base, quote, buy, order.reducing, quantity, notional, fee)
        fill = Fill(
            client_order_id=r.client_order_id,
            trade_id=f"paper-{r.client_order_id}-{len(order.fills) + 1}",
            price=price,
            quantity=quantity,
            fee=fee,
            fee_asset=quote,
            timestamp=at,
        )
        order.fills.append(fill)
        if quantity == order.quantity:
            order.status = OrderStatus.FILLED
        else:
            order.status = OrderStatus.EXPIRED
            order.error_message = f"reduce-only order clipped to the remaining position of {quantity}"
        if order.reducing and self._position_size(r.symbol, r.side) == 0:
            return self._expire_reducing(r.symbol, r.side, except_id=r.client_order_id)
        return []

    def _apply(
        self,
        symbol: str,
        base: str,
        quote: str,
        buy: bool,
        reducing: bool,
        quantity: Decimal,
        notional: Decimal,
        fee: Decimal,
    ) -> None:
        free_quote = self._free.get(quote, _ZERO)
        if buy and not reducing:  # spot buy
            cost = notional + fee
            if free_quote < cost:
                raise _InsufficientError(
                    f"insufficient {quote} balance: buying {quantity} {base} costs {_fmt(cost)} {quote}"
                    f" (incl. fee {_fmt(fee)}), free is {_fmt(free_quote)}"
                )
            self._free[quote] = free_quote - cost
            self._free[base] = self._free.get(base, _ZERO) + quantity
        elif not buy and reducing:  # sell holdings
            held = self._free.get(base, _ZERO)
            if held < quantity:
                raise _InsufficientError(f"insufficient {base} balance: selling {quantity}, holding {held}")
            self._free[base] = held - quantity
            self._free[quote] = free_quote + notional - fee
        elif not buy:  # open or add to a short
            margin = notional + fee
            if free_quote < margin:
                raise _InsufficientError(
                    f"insufficient {quote} balance for short margin: shorting {quantity} {base} needs"
                    f" {_fmt(margin)} {quote} (100% of notional + fee {_fmt(fee)}),"
                    f" free is {_fmt(free_quote)}"
                )
            self._free[quote] = free_quote - margin
            held_short = self._shorts.get(symbol, ShortPosition(_ZERO, _ZERO))
            self._shorts[symbol] = ShortPosition(held_short.quantity + quantity, held_short.collateral + 2 * notional)
        else:  # cover a short
            short = self._shorts.get(symbol)
            if short is None or short.quantity < quantity:
                owed = _ZERO if short is None else short.quantity
                raise _InsufficientError(f"no short of {quantity} {base} to cover in {symbol}, short is {owed}")
            if quantity == short.quantity:
                released = short.collateral
            else:
                released = (short.collateral * quantity / short.quantity).quantize(
                    Decimal("1e-18"), rounding=ROUND_DOWN
                )
            net = released - notional - fee
            if free_quote + net < 0:
                raise _InsufficientError(
                    f"insufficient {quote} balance: covering {quantity} {base} costs {_fmt(notional + fee)}"
                    f" {quote}, collateral released {_fmt(released)}, free is {_fmt(free_quote)}"
                )
            self._free[quote] = free_quote + net
            if quantity == short.quantity:
                del self._shorts[symbol]
            else:
                self._shorts[symbol] = ShortPosition(short.quantity - quantity, short.collateral - released)

    def _position_size(self, symbol: str, side: TradeSide) -> Decimal:
        """What a reducing order of ``side`` can close: base holdings for a sell, the short for a buy."""
        if side is TradeSide.SELL:
            return self._free.get(split_symbol(symbol)[0], _ZERO)
        short = self._shorts.get(symbol)
        return _ZERO if short is None else short.quantity

    def _no_position_message(self, order: _Order, available: Decimal) -> str:
        r = order.request
        what = "long holdings" if r.side is TradeSide.SELL else "short"
        return (
            f"reduce-only {r.side} {order.quantity} {r.symbol} exceeds the {what} of {_fmt(available)}"
            f" (purpose {r.purpose})"
        )

    def _expire_reducing(self, symbol: str, side: TradeSide, *, except_id: str) -> list[OrderState]:
        expired: list[OrderState] = []
        for other in self._resting(symbol):
            if other.reducing and other.request.side is side and other.request.client_order_id != except_id:
                other.status = OrderStatus.EXPIRED
                other.error_message = f"position in {symbol} closed by order {except_id}"
                expired.append(other.state())
        return expired

    async def _notify(self, state: OrderState) -> None:
        for handler in list(self._handlers):
            try:
                await handler(state)
            except Exception:  # a broken subscriber must not stop fills for the others
                logger.exception("paper broker order handler failed for {}", state.client_order_id)


# ---------------------------------------------------------------------- helpers


def _fmt(value: Decimal) -> str:
    """A Decimal for messages: no exponent, no trailing zeros."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _check_rate(name: str, rate: Decimal) -> Decimal:
    if not (Decimal(0) <= rate < 1):
        raise ValueError(f"{name} must be in [0, 1), got {rate}")
    return Decimal(rate)


def _req(value: Decimal | None) -> Decimal:
    assert value is not None  # validated at placement
    return value


def _positive(name: str, value: Decimal | None, typ: OrderType) -> None:
    if value is None or not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        raise OrderRejected(f"{name} must be a positive Decimal for a {typ} order, got {value!r}")


def _slip(price: Decimal, s: Decimal, buy: bool) -> Decimal:
    return price * (_ONE + s) if buy else price * (_ONE - s)


def _cap(price: Decimal, s: Decimal, limit: Decimal, buy: bool) -> Decimal:
    """Taker price with slippage, never worse than the limit."""
    return min(_slip(price, s, buy), limit) if buy else max(_slip(price, s, buy), limit)


def _stop_hit(typ: OrderType, buy: bool, price: Decimal, stop: Decimal) -> bool:
    if typ is OrderType.TAKE_PROFIT_LIMIT:
        return price <= stop if buy else price >= stop
    return price >= stop if buy else price <= stop


def _mark(marks: Mapping[str, Decimal], symbol: str) -> Decimal:
    price = marks.get(symbol)
    if price is None:
        raise ValueError(f"no mark price for {symbol}")
    return price


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _undec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _order_to_json(o: _Order) -> dict[str, Any]:
    r = o.request
    return {
        "request": {
            "client_order_id": r.client_order_id,
            "symbol": r.symbol,
            "side": r.side.value,
            "type": r.type.value,
            "quantity": str(r.quantity),
            "purpose": r.purpose.value,
            "price": _dec(r.price),
            "stop_price": _dec(r.stop_price),
            "trailing_percent": _dec(r.trailing_percent),
            "reduce_only": r.reduce_only,
        },
        "seq": o.seq,
        "quantity": str(o.quantity),
        "reducing": o.reducing,
        "status": o.status.value,
        "reserved_asset": o.reserved_asset,
        "reserved_amount": str(o.reserved_amount),
        "triggered": o.triggered,
        "trail_extreme": _dec(o.trail_extreme),
        "error_message": o.error_message,
        "fills": [
            {
                "trade_id": f.trade_id,
                "price": str(f.price),
                "quantity": str(f.quantity),
                "fee": str(f.fee),
                "fee_asset": f.fee_asset,
                "timestamp": f.timestamp.isoformat(),
            }
            for f in o.fills
        ],
    }


def _order_from_json(data: Mapping[str, Any]) -> _Order:
    q = data["request"]
    request = OrderRequest(
        client_order_id=q["client_order_id"],
        symbol=q["symbol"],
        side=TradeSide(q["side"]),
        type=OrderType(q["type"]),
        quantity=Decimal(q["quantity"]),
        purpose=OrderPurpose(q["purpose"]),
        price=_undec(q["price"]),
        stop_price=_undec(q["stop_price"]),
        trailing_percent=_undec(q["trailing_percent"]),
        reduce_only=bool(q["reduce_only"]),
    )
    return _Order(
        request=request,
        seq=int(data["seq"]),
        quantity=Decimal(data["quantity"]),
        reducing=bool(data["reducing"]),
        status=OrderStatus(data["status"]),
        reserved_asset=data["reserved_asset"],
        reserved_amount=Decimal(data["reserved_amount"]),
        triggered=bool(data["triggered"]),
        trail_extreme=_undec(data["trail_extreme"]),
        error_message=data["error_message"],
        fills=[
            Fill(
                client_order_id=request.client_order_id,
                trade_id=f["trade_id"],
                price=Decimal(f["price"]),
                quantity=Decimal(f["quantity"]),
                fee=Decimal(f["fee"]),
                fee_asset=f["fee_asset"],
                timestamp=datetime.fromisoformat(f["timestamp"]),
            )
            for f in data["fills"]
        ],
    )
