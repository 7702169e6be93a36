"""Key price levels computed locally (seed 004 KeyLevelCalculator), never by the model.

* ATR: the seed's form, the simple mean of the last ``period`` true ranges.
* Stop 1.5 x ATR from the entry; take-profits 2, 3 and 5 x ATR, on the side of the trade.
* Support / resistance: swing lows / highs (a bar whose low / high is the extreme of the ``swing``
  bars on each side) below / above the entry, nearest first, at most three each. When there are
  too few swings, the recent extremes fill in, as in the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradeengine.domain.enums import PositionSide
from tradeengine.indicators.klines import Klines

STOP_ATR = 1.5
TAKE_PROFIT_ATRS = (2.0, 3.0, 5.0)


@dataclass(frozen=True, slots=True)
class KeyLevels:
    side: PositionSide
    entry: Decimal
    atr: Decimal
    stop_loss: Decimal
    take_profits: tuple[Decimal, ...]
    support: tuple[Decimal, ...]
    resistance: tuple[Decimal, ...]

    def to_json(self) -> dict[str, Any]:
        """The seed's KeyLevels shape (camelCase, numbers as strings to stay exact)."""
        return {
            "side": self.side.value,
            "entry": str(self.entry),
            "atr": str(self.atr),
            "stopLoss": str(self.stop_loss),
            "takeProfit": [str(v) for v in self.take_profits],
            "support": [str(v) for v in self.support],
            "resistance": [str(v) for v in self.resistance],
        }


def _price(value: float, like: Decimal) -> Decimal:
    """A float level as a Decimal with the entry's precision (at least 2, at most 8 places)."""
    exponent = like.as_tuple().exponent
    places = min(max(-exponent if isinstance(exponent, int) else 2, 2), 8)
    return Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-places))


def average_true_range(
    high: NDArray[np.float64], low: NDArray[np.float64], close: NDArray[np.float64], period: int = 14
) -> float:
    """Mean of the last ``period`` true ranges; NaN with fewer than two candles."""
    if len(close) < 2:
        return float("nan")
    prev_close = close[:-1]
    true_range = np.maximum(high[1:] - low[1:], np.maximum(np.abs(high[1:] - prev_close), np.abs(low[1:] - prev_close)))
    return float(true_range[-period:].mean())


def swing_points(values: NDArray[np.float64], swing: int, *, lows: bool) -> NDArray[np.float64]:
    """Values that are the extreme of the ``swing`` bars on each side (oldest first)."""
    n = len(values)
    if n < 2 * swing + 1:
        return np.empty(0)
    windows = np.lib.stride_tricks.sliding_window_view(values, 2 * swing + 1)
    centre = windows[:, swing]
    mask = centre == (windows.min(axis=1) if lows else windows.max(axis=1))
    selected: NDArray[np.float64] = centre[mask]
    return selected


def compute_key_levels(
    klines: Klines,
    entry: Decimal,
    side: PositionSide,
    *,
    atr_period: int = 14,
    lookback: int = 100,
    swing: int = 2,
    count: int = 3,
) -> KeyLevels | None:
    """Levels for a trade on ``side`` at ``entry``; None when there are too few candles for an ATR."""
    if entry <= 0:
        raise ValueError("entry: must be positive")
    window = klines.tail(lookback)
    if len(window) < 2:
        return None
    atr = average_true_range(window.high, window.low, window.close, atr_period)
    if not np.isfinite(atr):
        return None
    price = float(entry)
    sign = 1.0 if side is PositionSide.LONG else -1.0
    stop = price - sign * STOP_ATR * atr
    take_profits = tuple(_price(price + sign * m * atr, entry) for m in TAKE_PROFIT_ATRS)

    swing_lows = swing_points(window.low, swing, lows=True)
    swing_highs = swing_points(window.high, swing, lows=False)
    below = sorted({v for v in swing_lows.tolist() if v < price}, reverse=True)
    above = sorted({v for v in swing_highs.tolist() if v > price})
    if len(below) < count:  # the seed's fallback: the lowest recent lows
        extra = sorted({v for v in window.low[-20:].tolist() if v < price and v not in below}, reverse=True)
        below += extra[: count - len(below)]
    if len(above) < count:
        extra = sorted({v for v in window.high[-20:].tolist() if v > price and v not in above})
        above += extra[: count - len(above)]
    return KeyLevels(
        side=side,
        entry=entry,
        atr=_price(atr, entry),
        stop_loss=_price(stop, entry),
        take_profits=take_profits,
        support=tuple(_price(v, entry) for v in below[:count]),
        resistance=tuple(_price(v, entry) for v in above[:count]),
    )
