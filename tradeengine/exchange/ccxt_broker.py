"""CcxtBroker: the Broker port on a real exchange through ccxt (Binance spot by default).

Guarantees (docs/live-trading.md):

- **No duplicate orders.** Every order carries a client id derived from our own ids. With an
  ``OrderLog`` the order is committed as ``pending`` before the request is sent. On a timeout or
  network error we ask the exchange for that client id and adopt what it has; only if it has
  nothing do we send again, with the same id (Binance refuses a second open order with it).
  Retries happen only for ccxt's ``NetworkError`` branch.
- **Rejections are final and explained.** Precision and limit checks run before sending;
  ``InsufficientFunds``/``InvalidOrder`` from the exchange are stored with its message and raised
  as ``OrderRejected``.
- **Protection is never dropped silently.** ``replace_protective`` places the new stop before
  cancelling the old one where the exchange allows both, otherwise cancels, places, and re-places
  the old one if the new one fails; if even that fails it records ``position_unprotected`` and
  reports it so the position monitor takes over.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Literal

from loguru import logger

from tradeengine.clock import Clock, LiveClock
from tradeengine.domain.enums import OrderPurpose, OrderStatus, OrderType, TradeSide, TradeType
from tradeengine.exchange.broker import (
    BrokerError,
    Fill,
    OrderRejected,
    OrderRequest,
    OrderState,
    OrderUpdateHandler,
    TransientBrokerError,
)
from tradeengine.exchange.order_log import OrderLinks, OrderLog
from tradeengine.settings import BrokerKind, Settings
from tradeengine.store.models import Order

ZERO = Decimal(0)

_STATUS = {
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.FILLED,
    "canceled": OrderStatus.CANCELLED,
    "cancelled": OrderStatus.CANCELLED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}
_BINANCE_TYPES = {
    "MARKET": OrderType.MARKET,
    "LIMIT": OrderType.LIMIT,
    "LIMIT_MAKER": OrderType.LIMIT,
    "STOP_LOSS": OrderType.STOP_MARKET,
    "STOP_LOSS_LIMIT": OrderType.STOP_LIMIT,
    "TAKE_PROFIT": OrderType.TAKE_PROFIT_LIMIT,
    "TAKE_PROFIT_LIMIT": OrderType.TAKE_PROFIT_LIMIT,
}
_PROTECTIVE_CODES = {OrderPurpose.STOP_LOSS: "sl", OrderPurpose.TAKE_PROFIT: "tp"}


def protective_client_order_id(position_id: uuid.UUID, purpose: OrderPurpose, attempt: int = 0) -> str:
    """``tep-<position, base32>-<sl|tp><n>`` (at most 36 characters, Binance's limit).

    A different prefix from the runtime's ``te-`` ids on purpose: the runtime's crash recovery
    resumes ``te-`` orders as market steps; resting protective orders are the reconciler's.
    """
    encoded = base64.b32encode(position_id.bytes).decode().rstrip("=").lower()
    return f"tep-{encoded}-{_PROTECTIVE_CODES[purpose]}{attempt}"


def parse_protective_client_order_id(value: str) -> tuple[uuid.UUID, OrderPurpose, int] | None:
    parts = value.split("-")
    if len(parts) != 3 or parts[0] != "tep" or len(parts[1]) != 26:
        return None
    try:
        position_id = uuid.UUID(bytes=base64.b32decode(parts[1].upper() + "======"))
        purpose = {code: p for p, code in _PROTECTIVE_CODES.items()}[parts[2][:2]]
        return position_id, purpose, int(parts[2][2:])
    except (ValueError, KeyError, TypeError):
        return None


class LiveTradingNotAllowedError(BrokerError):
    """Live mode was asked for without the user's opt-in or without API keys."""


@dataclass(frozen=True, slots=True)
class ProtectionResult:
    """Outcome of ``replace_protective``. ``active`` is the protective order now on the exchange
    (None only when ``outcome == "unprotected"``: the position monitor must take over)."""

    outcome: Literal["replaced", "kept_old", "restored_old", "unprotected"]
    active: OrderState | None
    message: str = ""


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def build_exchange(settings: Settings, *, timeout_ms: int | None = None) -> Any:
    """A ccxt async exchange for ``settings`` (keys, sandbox for testnet, URL overrides)."""
    import ccxt.async_support as ccxt_async

    try:
        exchange_class = getattr(ccxt_async, settings.exchange_id)
    except AttributeError:
        raise ValueError(f"exchange_id: {settings.exchange_id!r} is not a ccxt exchange") from None
    options: dict[str, Any] = {"defaultType": "spot", "warnOnFetchOpenOrdersWithoutSymbol": False}
    if settings.exchange_id == "binance":
        options.update({"fetchMarkets": {"types": ["spot"]}, "fetchMargins": False, "fetchCurrencies": False})
    config: dict[str, Any] = {"enableRateLimit": True, "options": options}
    if settings.exchange_api_key is not None:
        config["apiKey"] = settings.exchange_api_key.get_secret_value()
    if settings.exchange_secret is not None:
        config["secret"] = settings.exchange_secret.get_secret_value()
    if timeout_ms is not None:
        config["timeout"] = timeout_ms
    exchange = exchange_class(config)
    if settings.broker is BrokerKind.TESTNET:
        exchange.set_sandbox_mode(True)  # before any URL override: it swaps the URL table
    if settings.exchange_rest_url is not None:
        root = settings.exchange_rest_url.rstrip("/")
        suffix = "/api/v3" if settings.exchange_id == "binance" and not root.endswith("/api/v3") else ""
        api = exchange.urls["api"]
        for key in ("public", "private", "v3"):
            if key in api:
                api[key] = root + suffix
    return exchange


class CcxtBroker:
    """The Broker port over a ccxt async exchange. ``order_log`` makes orders durable before
    sending (required for live trading; tests of pure protocol behaviour may omit it)."""

    def __init__(
        self,
        exchange: Any,
        *,
        order_log: OrderLog | None = None,
        clock: Clock | None = None,
        retries: int = 3,
        retry_delay_s: float = 0.5,
        stop_limit_slippage: Decimal = Decimal("0.005"),
    ) -> None:
        self.exchange = exchange
        self.order_log = order_log
        self.clock = clock or LiveClock()
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        # A stop-limit's limit sits this far beyond its trigger so a fast move still fills it.
        self.stop_limit_slippage = stop_limit_slippage
        self.requests_sent = 0  # create-order requests sent (tests assert no hidden re-sends)
        self._handlers: list[OrderUpdateHandler] = []
        self._last_prices: dict[str, Decimal] = {}
        self._tracked: dict[str, OrderState] = {}  # open orders we report updates for
        self._markets_loaded = False
        self._poller: asyncio.Task[None] | None = None
        self._on_close: list[Callable[[], Awaitable[None]]] = []  # helpers to stop with the broker
        self._in_doubt: set[str] = set()  # sent without an answer; look up before any resend
        self._started = self.clock.now()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        order_log: OrderLog | None = None,
        clock: Clock | None = None,
        timeout_ms: int | None = None,
    ) -> CcxtBroker:
        if settings.broker is BrokerKind.PAPER:
            raise ValueError("broker: CcxtBroker is for testnet/live; paper uses PaperBroker")
        if settings.exchange_api_key is None or settings.exchange_secret is None:
            raise LiveTradingNotAllowedError(
                f"TRADEENGINE_EXCHANGE_API_KEY / TRADEENGINE_EXCHANGE_SECRET: {settings.broker.value} "
                "trading needs exchange API keys"
            )
        return cls(build_exchange(settings, timeout_ms=timeout_ms), order_log=order_log, clock=clock)

    # ------------------------------------------------------------------ markets

    async def _markets(self) -> None:
        if self._markets_loaded:
            return
        for attempt in range(self.retries):
            try:
                await self.exchange.load_markets()
                self._markets_loaded = True
                return
            except Exception as exc:
                if not self._is_network(exc) or attempt == self.retries - 1:
                    raise TransientBrokerError(f"could not load markets: {exc}") from exc
                await self.clock.sleep(self.retry_delay_s * 2**attempt)

    def _market(self, symbol: str) -> dict[str, Any]:
        try:
            market: dict[str, Any] = self.exchange.market(symbol)
        except Exception:
            raise OrderRejected(f"symbol: {symbol!r} is not traded on {self.exchange.id}") from None
        return market

    async def _reference_price(self, request: OrderRequest) -> Decimal:
        if request.price is not None:
            return request.price
        if request.stop_price is not None:
            return request.stop_price
        price = self._last_prices.get(request.symbol)
        if price is not None:
            return price
        ticker = await self._call(self.exchange.fetch_ticker, request.symbol)
        last = _dec(ticker.get("last"))
        if last is None:
            raise TransientBrokerError(f"no price for {request.symbol} to check the order's limits")
        return last

    async def prepare(self, request: OrderRequest) -> tuple[Decimal, Decimal | None, Decimal | None]:
        """Round quantity (down), price and stop to the market's precision and check its limits.

        Returns (quantity, price, stop); raises OrderRejected naming the failed limit.
        """
        await self._markets()
        market = self._market(request.symbol)
        try:
            quantity = Decimal(self.exchange.amount_to_precision(request.symbol, str(request.quantity)))
        except Exception as exc:  # ccxt raises InvalidOrder when the amount rounds below precision
            raise OrderRejected(f"quantity: {request.quantity} is below the market's precision ({exc})") from None
        price = self._round_price(request.symbol, request.price)
        stop = self._round_price(request.symbol, request.stop_price)
        if request.type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET, OrderType.TAKE_PROFIT_LIMIT):
            if stop is None:
                raise OrderRejected(f"stop_price: a {request.type.value} order needs a trigger price")
            if price is None:
                # Limit beyond the trigger in the direction of the exit, so it still fills on a gap.
                s = self.stop_limit_slippage
                if request.type is OrderType.TAKE_PROFIT_LIMIT:
                    raw = stop
                else:
                    raw = stop * (1 - s) if request.side is TradeSide.SELL else stop * (1 + s)
                price = self._round_price(request.symbol, raw)
        if request.type is OrderType.LIMIT and price is None:
            raise OrderRejected("price: a limit order needs a price")
        limits = market.get("limits") or {}
        min_amount = _dec((limits.get("amount") or {}).get("min"))
        max_amount = _dec((limits.get("amount") or {}).get("max"))
        min_cost = _dec((limits.get("cost") or {}).get("min"))
        if quantity <= ZERO or (min_amount is not None and quantity < min_amount):
            raise OrderRejected(
                f"quantity: {request.quantity} (rounded {quantity}) is below the minimum amount {min_amount} "
                f"for {request.symbol}"
            )
        if max_amount is not None and max_amount > 0 and quantity > max_amount:
            raise OrderRejected(f"quantity: {quantity} is above the maximum amount {max_amount} for {request.symbol}")
        if min_cost is not None:
            reference = price if price is not None else await self._reference_price(request)
            notional = quantity * reference
            if notional < min_cost:
                raise OrderRejected(
                    f"quantity: order value {notional.normalize()} is below the minimum notional {min_cost} "
                    f"for {request.symbol}"
                )
        return quantity, price, stop

    def _round_price(self, symbol: str, value: Decimal | None) -> Decimal | None:
        if value is None:
            return None
        return Decimal(self.exchange.price_to_precision(symbol, str(value)))

    # ------------------------------------------------------------------ Broker port

    async def place_order(self, request: OrderRequest, links: OrderLinks | None = None) -> OrderState:
        """Send ``request`` once; on a network error adopt the order if the exchange has it."""
        if request.type is OrderType.TRAILING_STOP:
            raise OrderRejected("type: trailing stops are not exchange orders here; the position monitor runs them")
        row: Order | None = None
        if self.order_log is not None:
            row = await self._log_pending(request, links)
            if row.status == OrderStatus.PENDING.value and row.created_at < self._started:
                # Recorded by an earlier process that may have sent it before it died.
                self._in_doubt.add(request.client_order_id)
            if row.status == OrderStatus.REJECTED.value:
                # Same client id, same intent: a rejection is final (a retry is a new attempt id).
                raise OrderRejected(row.error_message or "rejected before")
            if row.exchange_order_id is not None:
                # Already acknowledged (a resumed intent): report it, never send it again.
                found = await self.fetch_order(request.client_order_id, request.symbol)
                if found is None:
                    raise OrderRejected(
                        f"client_order_id: {request.client_order_id!r} was acknowledged as exchange order "
                        f"{row.exchange_order_id} but the exchange no longer knows it; not resent"
                    )
                return await self._accept(found)
        freed: list[Order] = []
        if (
            row is not None
            and row.position_id is not None
            and request.reduce_only
            and request.purpose not in _PROTECTIVE_CODES
        ):
            freed = await self._free_protection(row.position_id, request)
        try:
            state = await self._send(request)
        except (OrderRejected, TransientBrokerError):
            await self._restore_protection(freed, None)
            raise
        await self._restore_protection(freed, state)
        return state

    async def _send(self, request: OrderRequest) -> OrderState:
        try:
            quantity, price, stop = await self.prepare(request)
        except OrderRejected as exc:
            await self._log_rejection(request.client_order_id, str(exc))
            raise
        if request.client_order_id in self._in_doubt:
            # An earlier send of this id got no answer: only a definite "not found" allows a resend.
            found, definite = await self._lookup_after_error(request)
            if found is not None:
                return await self._accept(found)
            if not definite:
                raise TransientBrokerError(
                    f"order {request.client_order_id}: outcome of an earlier send still unknown; not resent"
                )
        last_error: Exception | None = None
        for attempt in range(self.retries):
            try:
                self.requests_sent += 1
                raw = await self.exchange.create_order(*self._create_args(request, quantity, price, stop))
            except Exception as exc:
                if self._is_network(exc):
                    last_error = exc
                    self._in_doubt.add(request.client_order_id)
                    logger.warning(
                        "order {}: {} on attempt {}; looking it up",
                        request.client_order_id,
                        type(exc).__name__,
                        attempt + 1,
                    )
                    found, definite = await self._lookup_after_error(request)
                    if found is not None:
                        return await self._accept(found)
                    if not definite:
                        # Binance only refuses a reused client id while that order is open: a filled
                        # market order would be bought twice. Unknown outcome: never resend blind.
                        break
                    await self.clock.sleep(self.retry_delay_s * 2**attempt)
                    continue
                if "Duplicate order" in str(exc):
                    # The exchange already has an open order with this client id: it is ours.
                    found, _ = await self._lookup_after_error(request)
                    if found is not None:
                        return await self._accept(found)
                message = self._exchange_message(exc)
                await self._log_rejection(request.client_order_id, message)
                raise OrderRejected(message) from exc
            self._in_doubt.discard(request.client_order_id)
            state = self._state(raw, request)
            return await self._accept(state)
        raise TransientBrokerError(
            f"order {request.client_order_id}: no answer ({last_error}); it stays pending and is looked up "
            "by client id again (resume or reconciliation) before anything is resent"
        )

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderState:
        await self._markets()
        try:
            await self._call(self.exchange.cancel_order, None, symbol, {"origClientOrderId": client_order_id})
        except TransientBrokerError:
            raise
        except Exception as exc:
            if not self._is_not_found(exc):
                raise OrderRejected(self._exchange_message(exc)) from exc
        state = await self.fetch_order(client_order_id, symbol)
        if state is None:
            raise OrderRejected(f"client_order_id: {client_order_id!r} is unknown to the exchange")
        await self._accept(state)
        return state

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderState | None:
        await self._markets()
        try:
            raw = await self._call(self.exchange.fetch_order, None, symbol, {"origClientOrderId": client_order_id})
        except TransientBrokerError:
            raise
        except Exception as exc:
            if self._is_not_found(exc):
                return None
            raise BrokerError(self._exchange_message(exc)) from exc
        state = self._state(raw, None)
        if state.filled_quantity > ZERO and not state.fills and state.exchange_order_id is not None:
            state = await self._with_trades(state)
        return state

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]:
        await self._markets()
        rows = await self._call(self.exchange.fetch_open_orders, symbol)
        return [self._state(raw, None) for raw in rows]

    async def balances(self) -> dict[str, Decimal]:
        raw = await self._call(self.exchange.fetch_balance)
        free = raw.get("free") or {}
        return {asset: Decimal(str(v)) for asset, v in free.items() if v is not None}

    async def total_balances(self) -> dict[str, Decimal]:
        """Free plus locked (in open orders) per asset."""
        raw = await self._call(self.exchange.fetch_balance)
        total = raw.get("total") or {}
        return {asset: Decimal(str(v)) for asset, v in total.items() if v is not None}

    async def trades_since(self, symbol: str, from_trade_id: int | None = None) -> list[dict[str, Any]]:
        """Account trades for ``symbol`` with an id at or after ``from_trade_id`` (ccxt trade dicts)."""
        await self._markets()
        params = {"fromId": from_trade_id} if from_trade_id is not None else {}
        rows: list[dict[str, Any]] = await self._call(self.exchange.fetch_my_trades, symbol, None, 1000, params)
        return rows

    def subscribe(self, handler: OrderUpdateHandler) -> None:
        self._handlers.append(handler)

    async def on_price(self, symbol: str, price: Decimal, at: datetime) -> None:
        # The exchange fills its own orders; the price only serves the notional pre-check.
        self._last_prices[symbol] = price

    def on_close(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Run ``stop`` (e.g. a helper loop's stop) when the broker closes."""
        self._on_close.append(stop)

    async def close(self) -> None:
        for stop in self._on_close:
            await stop()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.exchange.close()

    # ------------------------------------------------------------------ fills by polling

    def track(self, state: OrderState) -> None:
        """Report later changes of this (open) order to subscribers."""
        if state.status in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING):
            self._tracked[state.client_order_id] = state

    @property
    def tracked(self) -> dict[str, OrderState]:
        return dict(self._tracked)

    async def poll_once(self) -> list[OrderState]:
        """Fetch every tracked open order; record and report those that changed."""
        changed: list[OrderState] = []
        for client_id, before in list(self._tracked.items()):
            try:
                now = await self.fetch_order(client_id, before.symbol)
            except BrokerError as exc:
                logger.warning("poll of {} failed: {}", client_id, exc)
                continue
            if now is None:
                continue
            if now.status != before.status or now.filled_quantity != before.filled_quantity:
                changed.append(now)
                if self.order_log is not None:
                    await self.order_log.record_ack(now)
                for handler in self._handlers:
                    await handler(now)
            if now.status in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED):
                self._tracked[client_id] = now
            else:
                self._tracked.pop(client_id, None)
        return changed

    def start_polling(self, interval_s: float = 2.0) -> None:
        async def loop() -> None:
            while True:
                await self.clock.sleep(interval_s)
                try:
                    await self.poll_once()
                except Exception:
                    logger.exception("order polling failed")

        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(loop(), name="order-poller")

    # ------------------------------------------------------------------ exits vs resting protection

    async def _free_protection(self, position_id: uuid.UUID, request: OrderRequest) -> list[Order]:
        """Cancel the position's resting protective orders so an exit can use the balance they lock.

        Returns the cancelled rows (to re-place if the exit fails). If one of them has already
        filled, the exchange closed (part of) the position: the exit is refused, not doubled.
        """
        assert self.order_log is not None
        rows = await self.order_log.open_protective(position_id)
        freed: list[Order] = []
        for row in rows:
            state = await self.cancel_order(row.client_order_id, row.symbol)
            if state.filled_quantity > ZERO:
                await self._restore_protection(freed, None)
                message = (
                    f"{row.purpose} order {row.client_order_id} already filled {state.filled_quantity} on the "
                    "exchange; reconciliation applies it"
                )
                await self._log_rejection(request.client_order_id, message)
                raise OrderRejected(message)
            freed.append(row)
        return freed

    async def _restore_protection(self, freed: list[Order], exit_state: OrderState | None) -> None:
        """Put cancelled protection back for what remains of the position after the exit."""
        filled = exit_state.filled_quantity if exit_state is not None else ZERO
        for row in freed:
            remaining = row.quantity - filled
            if remaining <= ZERO or row.position_id is None or row.stop_price is None:
                continue
            try:
                await self.place_protective(
                    row.position_id,
                    row.symbol,
                    TradeSide(row.side),
                    remaining,
                    OrderPurpose(row.purpose),
                    row.stop_price,
                    signal_id=row.signal_id,
                    trader_id=row.trader_id,
                )
            except BrokerError as exc:
                await self._unprotected(row.position_id, row.symbol, OrderPurpose(row.purpose), str(exc))

    # ------------------------------------------------------------------ protective orders

    async def place_protective(
        self,
        position_id: uuid.UUID,
        symbol: str,
        side: TradeSide,
        quantity: Decimal,
        purpose: OrderPurpose,
        trigger: Decimal,
        *,
        signal_id: uuid.UUID | None = None,
        trader_id: uuid.UUID | None = None,
    ) -> OrderState:
        """Place a stop-loss or take-profit for a position as an exchange order (next attempt id)."""
        attempt = 0
        if self.order_log is not None:
            attempt = await self.order_log.count_for_position(position_id, purpose.value)
        order_type = OrderType.STOP_LIMIT if purpose is OrderPurpose.STOP_LOSS else OrderType.TAKE_PROFIT_LIMIT
        request = OrderRequest(
            client_order_id=protective_client_order_id(position_id, purpose, attempt),
            symbol=symbol,
            side=side,
            type=order_type,
            quantity=quantity,
            purpose=purpose,
            price=trigger if purpose is OrderPurpose.TAKE_PROFIT else None,
            stop_price=trigger,
            reduce_only=True,
        )
        links = OrderLinks(position_id=position_id, signal_id=signal_id, trader_id=trader_id)
        return await self.place_order(request, links)

    async def replace_protective(
        self,
        old: OrderState | None,
        position_id: uuid.UUID,
        symbol: str,
        side: TradeSide,
        quantity: Decimal,
        purpose: OrderPurpose,
        trigger: Decimal,
        *,
        signal_id: uuid.UUID | None = None,
        trader_id: uuid.UUID | None = None,
    ) -> ProtectionResult:
        """Move a protective order to ``trigger`` without ever leaving the position bare.

        1. Place the new order first. If the exchange takes it, cancel the old one: done.
        2. If the exchange refuses the new order for a reason other than the old one holding the
           balance, keep the old one (still on the exchange): ``kept_old``.
        3. If both cannot coexist (spot: the old order locks the base asset), cancel the old one,
           place the new one, and if that fails re-place the old level: ``restored_old``.
        4. If nothing can be placed: record ``position_unprotected`` and return ``unprotected``
           so the position monitor closes at the level itself.
        """

        async def place(level: Decimal) -> OrderState:
            return await self.place_protective(
                position_id, symbol, side, quantity, purpose, level, signal_id=signal_id, trader_id=trader_id
            )

        old_trigger = None
        if old is not None:
            row = await self.order_log.get(old.client_order_id) if self.order_log is not None else None
            old_trigger = row.stop_price if row is not None else None
        try:
            new = await place(trigger)
        except OrderRejected as exc:
            if old is None:
                return await self._unprotected(position_id, symbol, purpose, str(exc))
            if "insufficient balance" not in str(exc).lower():
                await self._event(
                    "protective_kept",
                    f"new {purpose.value} at {trigger} refused: {exc}; the old order stays",
                    position_id,
                    old.client_order_id,
                )
                return ProtectionResult("kept_old", old, str(exc))
        else:
            if old is not None:
                await self._cancel_quietly(old)
            return ProtectionResult("replaced", new)
        # Both cannot rest at once: cancel first, then place, restoring the old level on failure.
        assert old is not None
        cancelled = await self.cancel_order(old.client_order_id, symbol)
        if cancelled.status is OrderStatus.FILLED:
            return ProtectionResult("kept_old", cancelled, "the old protective order filled meanwhile")
        try:
            new = await place(trigger)
            return ProtectionResult("replaced", new)
        except (OrderRejected, TransientBrokerError) as exc:
            message = str(exc)
        if old_trigger is not None:
            try:
                restored = await place(old_trigger)
                await self._event(
                    "protective_restored",
                    f"new {purpose.value} at {trigger} refused ({message}); old level {old_trigger} re-placed",
                    position_id,
                    restored.client_order_id,
                )
                return ProtectionResult("restored_old", restored, message)
            except (OrderRejected, TransientBrokerError) as exc:
                message = f"{message}; re-placing the old level failed too: {exc}"
        return await self._unprotected(position_id, symbol, purpose, message)

    async def _cancel_quietly(self, old: OrderState) -> None:
        try:
            await self.cancel_order(old.client_order_id, old.symbol)
        except BrokerError as exc:
            # Two protective orders for a while is safe on spot (the second lacks balance to
            # fill); reconciliation cancels the stray one later.
            logger.warning("could not cancel replaced protective order {}: {}", old.client_order_id, exc)

    async def _unprotected(
        self, position_id: uuid.UUID, symbol: str, purpose: OrderPurpose, message: str
    ) -> ProtectionResult:
        text = (
            f"CRITICAL: {purpose.value} for position {position_id} ({symbol}) could not be placed on the "
            f"exchange: {message}; the position monitor enforces it"
        )
        logger.error(text)
        if self.order_log is not None:
            await self.order_log.event(
                "position_unprotected",
                text,
                {"positionId": str(position_id), "symbol": symbol, "purpose": purpose.value},
            )
        return ProtectionResult("unprotected", None, message)

    async def _event(self, kind: str, message: str, position_id: uuid.UUID, client_order_id: str) -> None:
        logger.warning(message)
        if self.order_log is not None:
            await self.order_log.event(
                kind, message, {"positionId": str(position_id), "clientOrderId": client_order_id}
            )

    # ------------------------------------------------------------------ internals

    async def _log_pending(self, request: OrderRequest, links: OrderLinks | None) -> Order:
        assert self.order_log is not None
        try:
            return await self.order_log.ensure_pending(request, links)
        except Exception as exc:
            # Never send what we could not record: a crash after sending would lose the order.
            raise TransientBrokerError(
                f"order {request.client_order_id} not sent: could not record it ({exc})"
            ) from exc

    async def _log_rejection(self, client_order_id: str, message: str) -> None:
        if self.order_log is not None:
            try:
                await self.order_log.record_rejection(client_order_id, message)
            except Exception:
                logger.exception("could not record the rejection of {}", client_order_id)

    async def _accept(self, state: OrderState) -> OrderState:
        if self.order_log is not None:
            try:
                await self.order_log.record_ack(state)
            except Exception:
                # The row stays pending; reconciliation adopts the order by its client id.
                logger.exception("could not record order {}", state.client_order_id)
        self.track(state)
        return state

    async def _lookup_after_error(self, request: OrderRequest) -> tuple[OrderState | None, bool]:
        """(the order, whether the answer is definite): (None, True) means the exchange said it
        does not have it; (None, False) that it could not be asked."""
        for attempt in range(self.retries):
            try:
                found = await self.fetch_order(request.client_order_id, request.symbol)
            except TransientBrokerError:
                await self.clock.sleep(self.retry_delay_s * 2**attempt)
                continue
            if found is not None:
                self._in_doubt.discard(request.client_order_id)
            return found, True
        return None, False

    def _create_args(
        self, request: OrderRequest, quantity: Decimal, price: Decimal | None, stop: Decimal | None
    ) -> tuple[Any, ...]:
        params: dict[str, Any] = {"clientOrderId": request.client_order_id}
        if request.type is OrderType.MARKET:
            return request.symbol, "market", request.side.value.lower(), str(quantity), None, params
        if request.type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET):
            params["stopLossPrice"] = str(stop)
        elif request.type is OrderType.TAKE_PROFIT_LIMIT:
            params["takeProfitPrice"] = str(stop)
        return request.symbol, "limit", request.side.value.lower(), str(quantity), str(price), params

    async def _call(self, method: Any, *args: Any) -> Any:
        """Call a ccxt method, retrying only network errors (reads and cancels are idempotent)."""
        for attempt in range(self.retries):
            try:
                return await method(*args)
            except Exception as exc:
                if not self._is_network(exc):
                    raise
                if attempt == self.retries - 1:
                    raise TransientBrokerError(f"{type(exc).__name__}: {exc}") from exc
                await self.clock.sleep(self.retry_delay_s * 2**attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _is_network(exc: BaseException) -> bool:
        import ccxt

        return isinstance(exc, ccxt.NetworkError)

    @staticmethod
    def _is_not_found(exc: BaseException) -> bool:
        import ccxt

        return (
            isinstance(exc, ccxt.OrderNotFound)
            or "Unknown order sent" in str(exc)
            or "Order does not exist" in str(exc)
        )

    def _exchange_message(self, exc: BaseException) -> str:
        text = str(exc)
        prefix = f"{self.exchange.id} "
        text = text.removeprefix(prefix)
        return f"{type(exc).__name__}: {text}"[:500]

    def _state(self, raw: Mapping[str, Any], request: OrderRequest | None) -> OrderState:
        info = raw.get("info") or {}
        client_id = (
            raw.get("clientOrderId")
            or info.get("clientOrderId")
            or (request.client_order_id if request is not None else "")
        )
        amount = _dec(raw.get("amount")) or (request.quantity if request is not None else ZERO)
        filled = _dec(raw.get("filled")) or ZERO
        status = _STATUS.get(str(raw.get("status")), OrderStatus.OPEN)
        if status is OrderStatus.OPEN and filled > ZERO:
            status = OrderStatus.PARTIALLY_FILLED
        typ = _BINANCE_TYPES.get(str(info.get("type", "")).upper())
        if typ is None:
            typ = (
                request.type
                if request is not None
                else (OrderType.MARKET if raw.get("type") == "market" else OrderType.LIMIT)
            )
        side = TradeSide(str(raw.get("side", "buy")).upper())
        exchange_id = str(raw["id"]) if raw.get("id") is not None else None
        timestamp = raw.get("lastTradeTimestamp") or raw.get("timestamp")
        fills = tuple(self._fill(t, client_id, raw.get("symbol") or "", timestamp) for t in raw.get("trades") or [])
        average = _dec(raw.get("average"))
        if average is None and fills:
            quantity = sum((f.quantity for f in fills), ZERO)
            average = sum((f.price * f.quantity for f in fills), ZERO) / quantity if quantity else None
        return OrderState(
            client_order_id=client_id,
            symbol=str(raw.get("symbol") or (request.symbol if request else "")),
            side=side,
            type=typ,
            status=status,
            quantity=amount,
            filled_quantity=filled,
            average_price=average if filled > ZERO else None,
            exchange_order_id=exchange_id,
            fills=fills,
        )

    def _fill(self, trade: Mapping[str, Any], client_id: str, symbol: str, fallback_ts: Any) -> Fill:
        price = _dec(trade.get("price")) or ZERO
        quantity = _dec(trade.get("amount")) or ZERO
        fee = trade.get("fee") or {}
        fee_cost = _dec(fee.get("cost")) or ZERO
        fee_asset = str(fee.get("currency") or "")
        base, _, quote = (trade.get("symbol") or symbol).partition("/")
        if fee_asset == base and quote:
            # Fees are kept in the quote asset: a fee taken in the base asset is worth cost * price.
            fee_cost, fee_asset = fee_cost * price, quote
        ts = trade.get("timestamp") or fallback_ts
        when = datetime.fromtimestamp(ts / 1000, UTC) if ts else self.clock.now()
        trade_id = str(trade.get("id") or (trade.get("info") or {}).get("tradeId") or "")
        return Fill(
            client_order_id=client_id,
            trade_id=trade_id,
            price=price,
            quantity=quantity,
            fee=fee_cost.quantize(Decimal("0.00000001"), rounding=ROUND_DOWN) if fee_cost else ZERO,
            fee_asset=fee_asset or quote,
            timestamp=when,
        )

    async def _with_trades(self, state: OrderState) -> OrderState:
        """Attach the order's fills (GET /order has none): myTrades filtered by orderId."""
        try:
            rows = await self._call(
                self.exchange.fetch_my_trades, state.symbol, None, None, {"orderId": state.exchange_order_id}
            )
        except BrokerError as exc:
            logger.warning("fills of {} unavailable: {}", state.client_order_id, exc)
            return state
        fills = tuple(
            self._fill(t, state.client_order_id, state.symbol, None)
            for t in rows
            if str(t.get("order")) == state.exchange_order_id
        )
        from dataclasses import replace

        return replace(state, fills=fills)


def require_live_opt_in(settings: Settings, *, real_trading_enabled: bool, keys_present: bool) -> None:
    """Refuse live mode unless the user opted in and keys are configured (testnet needs keys only)."""
    if settings.broker is BrokerKind.PAPER:
        return
    if not keys_present:
        raise LiveTradingNotAllowedError(
            f"TRADEENGINE_EXCHANGE_API_KEY / TRADEENGINE_EXCHANGE_SECRET: {settings.broker.value} trading "
            "needs the user's exchange API keys; refusing to start"
        )
    if settings.broker is BrokerKind.LIVE and not real_trading_enabled:
        raise LiveTradingNotAllowedError(
            "TRADEENGINE_BROKER=live: the user has not enabled real trading "
            "(users.real_trading_enabled is false); refusing to start live mode. "
            "Enable real trading for the user or run with broker=paper/testnet"
        )


def trade_type_for(kind: BrokerKind) -> TradeType:
    return TradeType.PAPER if kind is BrokerKind.PAPER else TradeType.REAL
