"""The runtime's in-memory picture of one tenant: traders, active signals, open positions.

The database is the source of truth; this is a write-through cache rebuilt from it on start
(``RecoverState``). Every change is committed (or journaled) before it is applied here.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from tradeengine.domain.decisions import PositionBook, SizingPolicy
from tradeengine.domain.enums import PositionSide, SignalStatus
from tradeengine.domain.timeframes import TimerInterval
from tradeengine.indicators.klines import Klines


class Strategy(Protocol):
    """What the sandbox hands back for a trader's code."""

    def check_signal(self, symbol: str, ticker: Mapping[str, Any], klines: Mapping[str, Klines]) -> bool: ...


@runtime_checkable
class SeriesStrategy(Strategy, Protocol):
    """A strategy that may also answer for a whole replay at once (``sandbox.CompiledStrategy``)."""

    @property
    def has_series(self) -> bool: ...

    def signal_series(self, symbol: str, timeframe: str, history: Klines, window: int) -> NDArray[np.bool_]: ...


@dataclass(slots=True)
class SeriesGate:
    """A trader's series-form answers for one symbol's replay (``RuntimeConfig.series_audit_every``):
    ``mask[i]`` is False where the close of ``times[i]`` needs no ``check_signal`` call."""

    times: NDArray[np.int64]
    mask: list[bool]  # a list: indexing it per close is a third of an ndarray's cost
    unaudited: int = 0  # closes skipped since the last audit
    last_index: int = -1  # the close of the last verdict
    # For ``next_needed``: the first True after each index, the count of Falses up to each index,
    # and where the Falses are.
    next_true: NDArray[np.int64] = field(init=False)
    false_rank: NDArray[np.int64] = field(init=False)
    falses: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        flags = np.asarray(self.mask, dtype=np.bool_)
        n = len(flags)
        trues = np.flatnonzero(flags)
        self.next_true = np.append(trues, n)[np.searchsorted(trues, np.arange(n), side="right")]
        self.false_rank = np.cumsum(~flags, dtype=np.int64)
        self.falses = np.flatnonzero(~flags)

    def next_needed(self, audit_every: int) -> int:
        """Index of the first close after ``last_index`` whose verdict is not a skip: the next the
        mask flags, or the one whose skip would reach ``audit_every`` (an audit); ``len(mask)``
        when there is none. A replay may hold back the closes before it (TenantRuntime.quiet_until)."""
        last = self.last_index
        if last < 0:
            return 0
        audit_rank = self.false_rank.item(last) + audit_every - self.unaudited  # 1-based among the Falses
        audit = self.falses.item(audit_rank - 1) if audit_rank <= len(self.falses) else len(self.mask)
        return min(self.next_true.item(last), audit)


@dataclass(slots=True)
class TraderRuntime:
    """One active trader as the runtime runs it."""

    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    ai_instructions: str
    timeframes: tuple[str, ...]
    symbols: tuple[str, ...]
    check: TimerInterval
    reanalysis: TimerInterval
    sizing: SizingPolicy
    trailing_stop_pct: Decimal | None  # fraction, e.g. 0.02
    settings: dict[str, Any]
    strategy: Strategy | None = None
    consecutive_errors: int = 0
    running: bool = False  # a check is in progress (skip-if-running)
    failed: bool = False  # moved to status error; no more checks
    # symbol -> the series form's answers for a replay (None: check every close); filled lazily.
    series_gates: dict[str, SeriesGate | None] = field(default_factory=dict)

    @property
    def primary_timeframe(self) -> str:
        if self.check.timeframe is not None and self.check.timeframe in self.timeframes:
            return self.check.timeframe
        return self.timeframes[0]


@dataclass(slots=True)
class LiveSignal:
    id: uuid.UUID
    trader_id: uuid.UUID
    symbol: str
    status: SignalStatus
    trigger_price: Decimal
    timestamp: datetime
    timeframe: str | None = None


@dataclass(slots=True)
class LivePosition:
    """An open position with its protective levels; floats mirror the Decimals for the hot path."""

    id: uuid.UUID
    signal_id: uuid.UUID
    trader_id: uuid.UUID
    symbol: str
    side: PositionSide
    book: PositionBook
    opened_at: datetime
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    trailing_pct: Decimal | None = None
    extreme: Decimal | None = None  # best price since open (high for longs, low for shorts)
    closing: bool = False  # a close is in flight; the monitor must not fire twice
    close_attempts: int = 0
    _sl: float = field(default=0.0)
    _tp: float = field(default=0.0)
    _extreme: float = field(default=0.0)
    _trail: float = field(default=0.0)
    _saved_extreme: float = field(default=0.0)  # the extreme last written to the database
    _quiet_low: float = field(default=0.0)  # prices strictly between these trigger nothing (see quiet)
    _quiet_high: float = field(default=0.0)

    def __post_init__(self) -> None:
        self._extreme = self._saved_extreme = float(self.extreme) if self.extreme is not None else 0.0
        self.refresh_levels()

    def refresh_levels(self) -> None:
        """Re-derive the float stop levels; the trailing extreme is live state and is kept."""
        self._sl = float(self.stop_loss) if self.stop_loss is not None else 0.0
        self._tp = float(self.take_profit) if self.take_profit is not None else 0.0
        self._trail = float(self.trailing_pct) if self.trailing_pct is not None else 0.0
        self._bound_quiet()

    def quiet(self, price: float) -> bool:
        """True when ``trigger(price)`` would neither close the position nor move the trailing
        extreme: the monitor can skip it. One comparison per price, where ``trigger`` is a call
        and several branches; a backtest asks this for every candle of a held symbol."""
        return self._quiet_low < price < self._quiet_high

    @property
    def quiet_band(self) -> tuple[float, float]:
        """The prices ``quiet`` is True for lie strictly between these two."""
        return self._quiet_low, self._quiet_high

    def _bound_quiet(self) -> None:
        """Derive the quiet band from the levels and the extreme with ``trigger``'s own float
        expressions (so the band's edges are exactly its thresholds). Edges are exclusive; where
        ``trigger`` acts at equality (a new high equal to the extreme does not move it) the band is
        merely a little narrower than it could be, which only costs a ``trigger`` call."""
        low, high = -math.inf, math.inf
        if self.side is PositionSide.LONG:
            if self._sl:
                low = self._sl
            if self._tp:
                high = self._tp
            if self._trail:
                low = max(low, self._extreme * (1.0 - self._trail))
                high = min(high, self._extreme)
        else:
            if self._sl:
                high = self._sl
            if self._tp:
                low = self._tp
            if self._trail:
                if self._extreme == 0.0:
                    low = high = 0.0  # no extreme yet: the first price sets it
                else:
                    low = max(low, self._extreme)
                    high = min(high, self._extreme * (1.0 + self._trail))
        self._quiet_low, self._quiet_high = low, high

    def extreme_unsaved(self, fraction: float) -> bool:
        """True when the trailing extreme moved more than ``fraction`` (0: at all) since it was saved."""
        if not self._trail or self._extreme == self._saved_extreme:
            return False
        if fraction <= 0.0 or self._saved_extreme == 0.0:
            return True
        return abs(self._extreme - self._saved_extreme) > self._saved_extreme * fraction

    def mark_extreme_saved(self, value: float) -> None:
        self._saved_extreme = value

    @property
    def size(self) -> Decimal:
        return self.book.size

    @property
    def entry_price(self) -> Decimal:
        return self.book.average_entry

    def trigger(self, price: float) -> str | None:
        """Return the close reason this price triggers (stop_loss, take_profit, trailing_stop) or None.

        Also moves the trailing extreme. Float comparison is exact enough here: levels and prices
        come from the same decimal strings, and the close itself is priced in Decimal.
        """
        if self.side is PositionSide.LONG:
            if self._sl and price <= self._sl:
                return "stop_loss"
            if self._tp and price >= self._tp:
                return "take_profit"
            if self._trail:
                if price > self._extreme:
                    self._extreme = price
                    self._bound_quiet()
                elif price <= self._extreme * (1.0 - self._trail):
                    return "trailing_stop"
        else:
            if self._sl and price >= self._sl:
                return "stop_loss"
            if self._tp and price <= self._tp:
                return "take_profit"
            if self._trail:
                if self._extreme == 0.0 or price < self._extreme:
                    self._extreme = price
                    self._bound_quiet()
                elif price >= self._extreme * (1.0 + self._trail):
                    return "trailing_stop"
        return None

    @property
    def extreme_price(self) -> float:
        return self._extreme


@dataclass(slots=True)
class TenantState:
    traders: dict[uuid.UUID, TraderRuntime] = field(default_factory=dict)
    signals: dict[uuid.UUID, LiveSignal] = field(default_factory=dict)
    active_by_key: dict[tuple[uuid.UUID, str], uuid.UUID] = field(default_factory=dict)
    positions: dict[uuid.UUID, LivePosition] = field(default_factory=dict)
    positions_by_symbol: dict[str, list[LivePosition]] = field(default_factory=dict)

    def add_signal(self, signal: LiveSignal) -> None:
        self.signals[signal.id] = signal
        self.active_by_key[(signal.trader_id, signal.symbol)] = signal.id

    def drop_signal(self, signal_id: uuid.UUID) -> None:
        signal = self.signals.pop(signal_id, None)
        if signal is not None and self.active_by_key.get((signal.trader_id, signal.symbol)) == signal_id:
            del self.active_by_key[(signal.trader_id, signal.symbol)]

    def has_active_signal(self, trader_id: uuid.UUID, symbol: str) -> bool:
        return (trader_id, symbol) in self.active_by_key

    def add_position(self, position: LivePosition) -> None:
        self.positions[position.id] = position
        self.positions_by_symbol.setdefault(position.symbol, []).append(position)

    def drop_position(self, position_id: uuid.UUID) -> None:
        position = self.positions.pop(position_id, None)
        if position is not None:
            bucket = self.positions_by_symbol.get(position.symbol, [])
            bucket[:] = [p for p in bucket if p.id != position_id]
            if not bucket:
                self.positions_by_symbol.pop(position.symbol, None)

    def position_for_signal(self, signal_id: uuid.UUID) -> LivePosition | None:
        for position in self.positions.values():
            if position.signal_id == signal_id:
                return position
        return None

    def open_positions_of(self, trader_id: uuid.UUID) -> int:
        return sum(1 for p in self.positions.values() if p.trader_id == trader_id)

    def watching_count(self) -> int:
        return sum(1 for s in self.signals.values() if s.status is SignalStatus.WATCHING)


# -- client order ids -------------------------------------------------------------------------

# Steps a decision (or the monitor) runs as orders; the code ends our client order id.
STEP_CODES = {
    "open": "open",
    "close": "close",
    "partial_close": "pcls",
    "scale_in": "sin",
    "scale_out": "sout",
    "flip_close": "fcls",
    "flip_open": "fopn",
    "stop_loss": "sl",
    "take_profit": "tp",
    "trailing_stop": "trl",
    "manual": "man",
}
STEP_BY_CODE = {code: step for step, code in STEP_CODES.items()}


def client_order_id(owner: uuid.UUID, step: str, attempt: int = 0) -> str:
    """``te-<owner uuid, base32>-<step>[<n>]``: at most 36 characters (Binance's limit).

    ``owner`` is the analysis id for decisions and the position id for monitor closes, so the
    same intent always yields the same id and a retry can never become a second order.
    """
    encoded = base64.b32encode(owner.bytes).decode().rstrip("=").lower()
    suffix = STEP_CODES[step] + (str(attempt) if attempt else "")
    return f"te-{encoded}-{suffix}"


def parse_client_order_id(value: str) -> tuple[uuid.UUID, str, int] | None:
    """Inverse of ``client_order_id``; None for ids we did not make."""
    parts = value.split("-")
    if len(parts) != 3 or parts[0] != "te" or len(parts[1]) != 26:
        return None
    try:
        owner = uuid.UUID(bytes=base64.b32decode(parts[1].upper() + "======"))
    except (ValueError, TypeError):
        return None
    code = parts[2].rstrip("0123456789")
    attempt_text = parts[2][len(code) :]
    step = STEP_BY_CODE.get(code)
    if step is None:
        return None
    return owner, step, int(attempt_text) if attempt_text else 0
