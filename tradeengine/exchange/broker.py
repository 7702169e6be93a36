"""The Broker port: how the runtime places and tracks orders, paper or live.

Adapters: ``PaperBroker`` (simulated fills against the feed's prices) and ``CcxtBroker`` (a real
exchange). The runtime never asks which one it has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from tradeengine.domain.enums import OrderPurpose, OrderStatus, OrderType, TradeSide


class BrokerError(Exception):
    """Base class for errors a broker surfaces to the runtime."""


class TransientBrokerError(BrokerError):
    """The request may or may not have reached the exchange; safe to retry with the same client id."""


class OrderRejected(BrokerError):
    """The exchange (or our pre-checks) refused the order; retrying the same request will not help."""


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order as the runtime wants it. ``client_order_id`` is derived from our own ids, so a retry
    of the same intent always carries the same id and can never become a second order."""

    client_order_id: str
    symbol: str  # ccxt unified, e.g. "BTC/USDT"
    side: TradeSide
    type: OrderType
    quantity: Decimal  # base asset
    purpose: OrderPurpose
    price: Decimal | None = None  # limit price
    stop_price: Decimal | None = None  # trigger for stop/take-profit orders
    trailing_percent: Decimal | None = None  # trailing stops: distance as a fraction, e.g. 0.02
    reduce_only: bool = False


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution. ``fee`` is in ``fee_asset`` (the quote asset for our spot paper broker)."""

    client_order_id: str
    trade_id: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_asset: str
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class OrderState:
    """What the broker knows about an order right now."""

    client_order_id: str
    symbol: str
    side: TradeSide
    type: OrderType
    status: OrderStatus
    quantity: Decimal
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    exchange_order_id: str | None = None
    fills: tuple[Fill, ...] = field(default_factory=tuple)
    error_message: str | None = None

    @property
    def fee(self) -> Decimal:
        return sum((fill.fee for fill in self.fills), Decimal(0))


OrderUpdateHandler = Callable[[OrderState], Awaitable[None]]


class Broker(Protocol):
    """Places, cancels and reports orders for one user's account."""

    async def place_order(self, request: OrderRequest) -> OrderState:
        """Send an order; idempotent per ``client_order_id`` (a repeat returns the existing order)."""
        ...

    async def cancel_order(self, client_order_id: str, symbol: str) -> OrderState:
        """Cancel a resting order; cancelling a finished order returns its final state."""
        ...

    async def fetch_order(self, client_order_id: str, symbol: str) -> OrderState | None:
        """Look an order up by our client id; None when the exchange never saw it."""
        ...

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]:
        """Resting orders, optionally for one symbol."""
        ...

    async def balances(self) -> dict[str, Decimal]:
        """Free balance per asset."""
        ...

    def subscribe(self, handler: OrderUpdateHandler) -> None:
        """Call ``handler`` for every later change of any order (fills of resting orders included)."""
        ...

    async def on_price(self, symbol: str, price: Decimal, at: datetime) -> None:
        """Tell the broker the latest trade price. The paper broker fills resting orders here;
        a live broker may ignore it (the exchange fills its own orders)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
