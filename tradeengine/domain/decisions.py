"""Decision metadata, position sizing and P&L: the pure arithmetic behind the decision executor.

Everything money-like is ``Decimal``. The analyst's metadata arrives as JSON-ish values (numbers,
numeric strings, Decimals); ``DecisionMetadata.parse`` turns them into Decimals and names the key
when one is unusable, so a bad decision is recorded with a reason instead of crashing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from tradeengine.domain.enums import Decision, PositionSide, TradeSide

ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)
QUANTUM = Decimal("0.00000001")  # NUMERIC(20, 8)

# Decisions that need an open position to act on.
POSITION_DECISIONS: frozenset[Decision] = frozenset(
    {
        Decision.CLOSE,
        Decision.PARTIAL_CLOSE,
        Decision.SCALE_IN,
        Decision.SCALE_OUT,
        Decision.UPDATE_STOP_LOSS,
        Decision.UPDATE_TAKE_PROFIT,
        Decision.FLIP_POSITION,
    }
)
OPEN_DECISIONS: frozenset[Decision] = frozenset({Decision.OPEN_LONG, Decision.OPEN_SHORT})


class DecisionError(ValueError):
    """A decision cannot be applied; the message is stored as the reason."""


def to_decimal(value: Any, *, field: str) -> Decimal:
    """Convert a JSON-ish number to Decimal, naming ``field`` when it is not a finite number."""
    if isinstance(value, bool):
        raise DecisionError(f"{field} must be a number, not a boolean")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int | str):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            raise DecisionError(f"{field} must be a number, got {value!r:.40}") from None
    elif isinstance(value, float):
        result = Decimal(repr(value))  # repr keeps the shortest exact-looking form: 0.1 -> "0.1"
    else:
        raise DecisionError(f"{field} must be a number, got {type(value).__name__}")
    if not result.is_finite():
        raise DecisionError(f"{field} must be finite")
    return result


def fraction(value: Any, *, field: str) -> Decimal:
    """Read a share of something: 0.25 and 25 (percent) both mean a quarter. Must be in (0, 1]."""
    number = to_decimal(value, field=field)
    if number > ONE:
        number = number / HUNDRED
    if number <= ZERO or number > ONE:
        raise DecisionError(f"{field} must be in (0, 1] or a percentage in (0, 100], got {value!r:.40}")
    return number


def _price(value: Any, *, field: str) -> Decimal:
    number = to_decimal(value, field=field)
    if number <= ZERO:
        raise DecisionError(f"{field} must be a positive price, got {value!r:.40}")
    return number


@dataclass(frozen=True, slots=True)
class DecisionMetadata:
    """The seed's metadata keys, parsed. Absent keys are None (the executor applies defaults)."""

    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    position_size: Decimal | None = None  # fraction of free quote balance
    close_percentage: Decimal | None = None
    scale_in_amount: Decimal | None = None  # fraction of the current position size to add
    scale_out_percentage: Decimal | None = None
    new_stop_loss: Decimal | None = None
    new_take_profit: Decimal | None = None
    trailing_stop_percent: Decimal | None = None

    @classmethod
    def parse(cls, metadata: Mapping[str, Any] | None) -> DecisionMetadata:
        """Parse the analyst's metadata dict; raise DecisionError naming the first bad key."""
        data = metadata or {}

        def get(key: str) -> Any:
            value = data.get(key)
            return None if value is None or value == "" else value

        def price(key: str) -> Decimal | None:
            value = get(key)
            return None if value is None else _price(value, field=key)

        def share(key: str) -> Decimal | None:
            value = get(key)
            return None if value is None else fraction(value, field=key)

        return cls(
            stop_loss=price("stopLoss"),
            take_profit=price("takeProfit"),
            position_size=share("positionSize"),
            close_percentage=share("closePercentage"),
            scale_in_amount=share("scaleInAmount"),
            scale_out_percentage=share("scaleOutPercentage"),
            new_stop_loss=price("newStopLoss"),
            new_take_profit=price("newTakeProfit"),
            trailing_stop_percent=share("trailingStopPercent"),
        )


@dataclass(frozen=True, slots=True)
class SizingPolicy:
    """Position sizing defaults; a trader's ``settings`` may override each field.

    ``position_size_pct`` is the share of the free quote balance one entry uses when the analyst
    gives no ``positionSize``; ``max_position_pct`` caps what an analyst may ask for.
    """

    position_size_pct: Decimal = Decimal("0.10")
    max_position_pct: Decimal = Decimal("0.50")
    max_open_positions: int = 3
    min_notional: Decimal = Decimal("10")
    default_close_percentage: Decimal = Decimal("0.5")  # the seed's partial_close default
    default_scale_in_amount: Decimal = Decimal("0.5")
    default_scale_out_percentage: Decimal = Decimal("0.25")
    default_stop_loss_pct: Decimal | None = None  # e.g. 0.02 puts a 2% stop on entries without one
    default_take_profit_pct: Decimal | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> SizingPolicy:
        """Build from a trader's settings dict (snake_case keys); unknown keys are ignored."""
        data = settings or {}
        base = cls()

        def share(key: str, default: Decimal | None) -> Decimal | None:
            value = data.get(key)
            if value is None:
                return default
            try:
                return fraction(value, field=key)
            except DecisionError as exc:
                raise ValueError(f"trader setting {exc}") from None

        max_open = data.get("max_open_positions", base.max_open_positions)
        if isinstance(max_open, bool) or not isinstance(max_open, int) or max_open < 1:
            raise ValueError(f"trader setting max_open_positions must be a positive integer, got {max_open!r}")
        min_notional = data.get("min_notional")
        return cls(
            position_size_pct=share("position_size_pct", base.position_size_pct) or base.position_size_pct,
            max_position_pct=share("max_position_pct", base.max_position_pct) or base.max_position_pct,
            max_open_positions=max_open,
            min_notional=base.min_notional if min_notional is None else to_decimal(min_notional, field="min_notional"),
            default_close_percentage=share("close_percentage", base.default_close_percentage)
            or base.default_close_percentage,
            default_scale_in_amount=share("scale_in_amount", base.default_scale_in_amount)
            or base.default_scale_in_amount,
            default_scale_out_percentage=share("scale_out_percentage", base.default_scale_out_percentage)
            or base.default_scale_out_percentage,
            default_stop_loss_pct=share("stop_loss_pct", None),
            default_take_profit_pct=share("take_profit_pct", None),
        )

    def entry_quantity(self, *, free_quote: Decimal, price: Decimal, requested: Decimal | None) -> Decimal:
        """Base quantity for a new entry; raise DecisionError when it would be below min notional."""
        share = min(requested if requested is not None else self.position_size_pct, self.max_position_pct)
        notional = free_quote * share
        if notional < self.min_notional:
            raise DecisionError(
                f"insufficient balance: {share:%} of free {free_quote} quote is {notional:.2f}, "
                f"below the minimum order of {self.min_notional}"
            )
        return quantize_quantity(notional / price)

    def default_stops(self, side: PositionSide, entry: Decimal) -> tuple[Decimal | None, Decimal | None]:
        """Stop-loss and take-profit an entry gets when the analyst named none."""
        stop = take = None
        if self.default_stop_loss_pct is not None:
            move = entry * self.default_stop_loss_pct
            stop = quantize_price(entry - move if side is PositionSide.LONG else entry + move)
        if self.default_take_profit_pct is not None:
            move = entry * self.default_take_profit_pct
            take = quantize_price(entry + move if side is PositionSide.LONG else entry - move)
        return stop, take


def quantize_quantity(quantity: Decimal) -> Decimal:
    """Round a quantity down to 8 decimals (never buy more than paid for)."""
    return quantity.quantize(QUANTUM, rounding=ROUND_DOWN)


def quantize_price(price: Decimal) -> Decimal:
    return price.quantize(QUANTUM)


def entry_side(side: PositionSide) -> TradeSide:
    return TradeSide.BUY if side is PositionSide.LONG else TradeSide.SELL


def exit_side(side: PositionSide) -> TradeSide:
    return TradeSide.SELL if side is PositionSide.LONG else TradeSide.BUY


def opposite(side: PositionSide) -> PositionSide:
    return PositionSide.SHORT if side is PositionSide.LONG else PositionSide.LONG


def validate_protective_levels(
    side: PositionSide, price: Decimal, stop_loss: Decimal | None, take_profit: Decimal | None
) -> None:
    """Refuse levels on the wrong side of the price (a long's stop above the market fires at once)."""
    if side is PositionSide.LONG:
        if stop_loss is not None and stop_loss >= price:
            raise DecisionError(f"stopLoss {stop_loss} must be below the price {price} for a long")
        if take_profit is not None and take_profit <= price:
            raise DecisionError(f"takeProfit {take_profit} must be above the price {price} for a long")
    else:
        if stop_loss is not None and stop_loss <= price:
            raise DecisionError(f"stopLoss {stop_loss} must be above the price {price} for a short")
        if take_profit is not None and take_profit >= price:
            raise DecisionError(f"takeProfit {take_profit} must be below the price {price} for a short")


@dataclass(slots=True)
class PositionBook:
    """Running totals of one position's fills; P&L is derived from them, never accumulated as floats.

    P&L = sum(sell notional) - sum(buy notional) - fees, for longs and shorts alike; the cost basis
    (denominator of ``pnl_percent``) is the entry-side notional.
    """

    side: PositionSide
    size: Decimal = ZERO
    entry_notional: Decimal = ZERO  # sum of entry-side price * qty (all scale-ins)
    exit_notional: Decimal = ZERO
    entry_quantity: Decimal = ZERO
    exit_quantity: Decimal = ZERO
    fees: Decimal = ZERO

    def add_fill(self, side: TradeSide, price: Decimal, quantity: Decimal, fee: Decimal) -> None:
        """Record a fill on this position (entry side grows it, exit side shrinks it)."""
        self.fees += fee
        if side is entry_side(self.side):
            self.entry_notional += price * quantity
            self.entry_quantity += quantity
            self.size += quantity
        else:
            self.exit_notional += price * quantity
            self.exit_quantity += quantity
            self.size -= quantity

    @property
    def average_entry(self) -> Decimal:
        if self.entry_quantity == ZERO:
            return ZERO
        return quantize_price(self.entry_notional / self.entry_quantity)

    @property
    def average_exit(self) -> Decimal | None:
        if self.exit_quantity == ZERO:
            return None
        return quantize_price(self.exit_notional / self.exit_quantity)

    def realized_pnl(self) -> Decimal:
        """Net P&L of the closed part (fees of the whole position included once it is closed)."""
        if self.side is PositionSide.LONG:
            gross = self.exit_notional - self.average_entry_exact() * self.exit_quantity
        else:
            gross = self.average_entry_exact() * self.exit_quantity - self.exit_notional
        return gross - self.fees

    def average_entry_exact(self) -> Decimal:
        return ZERO if self.entry_quantity == ZERO else self.entry_notional / self.entry_quantity

    def unrealized_pnl(self, price: Decimal) -> Decimal:
        """Gross P&L of the open part at ``price`` (fees excluded)."""
        entry = self.average_entry_exact()
        move = price - entry if self.side is PositionSide.LONG else entry - price
        return move * self.size

    def close_result(self) -> tuple[Decimal, Decimal]:
        """(pnl, pnl_percent) for a fully closed position, net of all fees, quantized for storage."""
        if self.side is PositionSide.LONG:
            pnl = self.exit_notional - self.entry_notional - self.fees
        else:
            pnl = self.entry_notional - self.exit_notional - self.fees
        percent = ZERO if self.entry_notional == ZERO else pnl / self.entry_notional * HUNDRED
        return quantize_price(pnl), percent.quantize(Decimal("0.0001"))
