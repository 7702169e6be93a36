"""The MarketFeed port: how the runtime sees the market, live (``CcxtFeed``) or replayed (``ReplayFeed``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tradeengine.exchange.events import MarketEvent
from tradeengine.exchange.kline_store import KlineStore

EventHandler = Callable[[MarketEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """Health and metrics of a feed."""

    connected: bool
    reconnects: int = 0
    last_message_ms: int | None = None  # clock time of the last message received
    gap_candles_backfilled: int = 0  # candles that closed while down and were fetched over REST
    candles_closed: int = 0  # CandleClosed events delivered
    last_error: str | None = None


class MarketFeed(Protocol):
    """A source of candle and ticker events that also keeps a ``KlineStore`` current.

    Contract: the store is updated *before* the event for that update is delivered, so a handler
    (or a timer) reading the store sees at least what the event says. Handlers are awaited one at
    a time in subscription order; a slow handler delays the feed, so hand long work to a queue.
    An exception in a handler is logged and does not stop the feed.
    """

    @property
    def store(self) -> KlineStore:
        """The store this feed writes to."""
        ...

    def subscribe(self, handler: EventHandler) -> None:
        """Deliver every later event to ``handler``."""
        ...

    async def run(self) -> None:
        """Backfill, then deliver events until ``stop()`` (live) or the data ends (replay)."""
        ...

    async def stop(self) -> None:
        """Stop delivering events and release connections; ``run`` returns."""
        ...

    def status(self) -> FeedStatus:
        """Current health and counters."""
        ...
