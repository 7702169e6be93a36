"""Timeframes and timer intervals: "5m" candles, "15s" fixed timers, "1h_close" aligned timers."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PATTERN = re.compile(r"^(\d+)([smhdw])$")
CLOSE_SUFFIX = "_close"


def timeframe_ms(timeframe: str) -> int:
    """Return the length of ``timeframe`` ("1m", "4h", "1d", ...) in milliseconds."""
    match = _PATTERN.match(timeframe.strip())
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"timeframe {timeframe!r} must look like 15s, 1m, 5m, 1h, 4h or 1d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def candle_close_ms(open_time_ms: int, timeframe: str) -> int:
    """Return when the candle opened at ``open_time_ms`` closes (the next candle's open time)."""
    return open_time_ms + timeframe_ms(timeframe)


def next_boundary_ms(now_ms: int, period_ms: int) -> int:
    """Return the first multiple of ``period_ms`` strictly after ``now_ms`` (UTC epoch alignment)."""
    return (now_ms // period_ms + 1) * period_ms


@dataclass(frozen=True, slots=True)
class TimerInterval:
    """A parsed ``check_interval`` / ``reanalysis_interval``.

    ``timeframe`` is set for candle-close aligned timers ("5m_close"): they fire once a candle of
    that timeframe has closed and is in the store. Otherwise the timer fires every ``period_ms``.
    """

    text: str
    period_ms: int
    timeframe: str | None = None

    @property
    def is_candle_close(self) -> bool:
        return self.timeframe is not None

    @classmethod
    def parse(cls, text: str, *, field: str = "interval") -> TimerInterval:
        """Parse "1s", "5s", "1m", "5m_close", "1h_close"; raise ValueError naming ``field``."""
        value = (text or "").strip()
        timeframe: str | None = None
        base = value
        if value.endswith(CLOSE_SUFFIX):
            base = value[: -len(CLOSE_SUFFIX)]
            timeframe = base
        try:
            period = timeframe_ms(base)
        except ValueError:
            raise ValueError(
                f"{field} {text!r} must be a duration like 1s, 15s, 1m, 1h or a candle close like 5m_close"
            ) from None
        if timeframe is not None and period < 60_000:
            raise ValueError(f"{field} {text!r}: candle-close timers need a timeframe of at least 1m")
        return cls(text=value, period_ms=period, timeframe=timeframe)
