"""What a market feed tells the runtime. Live and replay feeds emit exactly these.

Per (symbol, timeframe) and candle the order is: zero or more ``CandleUpdated(closed=False)``
while the candle is open, then one ``CandleUpdated(closed=True)`` immediately followed by one
``CandleClosed`` carrying the same final values. ``CandleClosed`` is delivered exactly once per
candle, in open-time order, also for candles that closed while a live feed was disconnected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple, Protocol

from tradeengine.exchange.symbols import timeframe_ms

# Candle events are NamedTuples, not frozen dataclasses: just as immutable, and several times
# cheaper to build, which matters at hundreds of thousands of candles per second in backtests.


class CandleUpdated(NamedTuple):
    """The candle changed. ``closed`` is True on its final update. Prices are floats, as in the
    kline store (indicator input); use ``close_price`` where exact money is needed."""

    symbol: str  # ccxt unified, e.g. "BTC/USDT"
    timeframe: str  # e.g. "5m"
    open_time: int  # Unix epoch ms, candle open
    open: float
    high: float
    low: float
    close: float
    volume: float  # base asset
    closed: bool = False

    @property
    def close_time(self) -> int:
        """Last millisecond of the candle, as Binance reports it."""
        return self.open_time + timeframe_ms(self.timeframe) - 1

    @property
    def close_price(self) -> Decimal:
        """The close as an exact Decimal of its shortest float spelling (what the exchange sent)."""
        return Decimal(repr(self.close))


class CandleClosed(NamedTuple):
    """The candle is final. Emitted once per candle, right after its ``CandleUpdated(closed=True)``."""

    symbol: str
    timeframe: str
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    @property
    def close_time(self) -> int:
        """Last millisecond of the candle, as Binance reports it."""
        return self.open_time + timeframe_ms(self.timeframe) - 1

    @property
    def close_price(self) -> Decimal:
        """The close as an exact Decimal of its shortest float spelling (what the exchange sent)."""
        return Decimal(repr(self.close))


CandleEvent = CandleUpdated | CandleClosed


@dataclass(frozen=True, slots=True)
class TickerUpdated:
    """Latest price and rolling 24-hour statistics for a symbol."""

    symbol: str
    timestamp: int  # Unix epoch ms
    last: Decimal
    volume_24h: Decimal  # base asset
    quote_volume_24h: Decimal
    change_24h_percent: Decimal  # e.g. Decimal("-2.5") for -2.5 %


MarketEvent = CandleUpdated | CandleClosed | TickerUpdated

# A replay's compact form of the same events, one plain tuple per row of its merged stream:
# ``(symbol, timeframe, kind, open_time, v0, v1, v2, v3, v4)``. Candle rows (ROW_UPDATE,
# ROW_CLOSE) carry open, high, low, close, volume and stand for ``CandleUpdated`` (plus
# ``CandleClosed`` for ROW_CLOSE); ticker rows carry change_24h_percent, volume_24h,
# quote_volume_24h, last, 0 and stand for ``TickerUpdated``. A backtest handles hundreds of
# thousands of candles per second, where building three event objects per candle (and four
# Decimals per ticker) would cost more than the runtime's own work.
ROW_UPDATE = 0
ROW_CLOSE = 1
ROW_TICKER = 2
EventRow = tuple[str, str, int, int, float, float, float, float, float]

QUIET_FOREVER = 1 << 62  # a hold that never ends by itself (see QuietRows)


class RowHold(Protocol):
    """``hold(symbol, until_ms)`` or ``hold(symbol, until_ms, low, high)``; see QuietRows."""

    def __call__(self, symbol: str, until_ms: int, low: float = -math.inf, high: float = math.inf) -> None: ...


class QuietRows(Protocol):
    """A row handler that tells a replay when a symbol's rows would change nothing for it.

    Most of a backtest's rows change nothing but a price: no position to watch, or positions whose
    stops the price stays clear of, and a strategy whose series form rules the close out.
    ``ReplayFeed.subscribe_rows(handler, quiet=...)`` calls ``bind_hold`` once; the handler then
    calls ``hold(symbol, until_ms)`` when the symbol's rows available before ``until_ms`` would
    change nothing, or ``hold(symbol, until_ms, low, high)`` when that holds only while their
    price (a candle's close, a ticker's last) stays strictly between ``low`` and ``high``: the
    hold then ends early, at the first instant with a row priced at or beyond either edge.
    ``hold(symbol, 0)`` takes a hold back. Held rows go nowhere; before the symbol's next rows
    the feed brings it up to date (its candles in the store, its latest ticker row delivered first).
    """

    def bind_hold(self, hold: RowHold) -> None: ...
