"""The columnar, read-only candle view that indicators, strategies and the kline store share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
# A window over read-only columns (open_time, open, high, low, close, volume) and its [lo, hi).
Window = tuple[tuple[NDArray[Any], ...], int, int]
_COLUMN_INDEX = {"open_time": 0, "open": 1, "high": 2, "low": 3, "close": 4, "volume": 5}


def _readonly(array: NDArray[Any]) -> NDArray[Any]:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, slots=True, eq=False)
class Klines:
    """Candles as parallel numpy columns, oldest first.

    The arrays are read-only views: the kline store hands out zero-copy windows of its ring
    buffer, and strategy code must never be able to change what another strategy sees.

    ``window`` builds one whose columns are sliced on first access: the store makes a view per
    candle close and a strategy reads two or three of the six columns, and a numpy slice costs
    about as much as the rest of building the view. Reading a column is a plain slot read
    either way once it exists.
    """

    open_time: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    _window: Window | None = field(default=None, init=False, repr=False)

    @classmethod
    def window(cls, columns: tuple[NDArray[Any], ...], lo: int, hi: int) -> Klines:
        """Rows ``[lo, hi)`` of six read-only, equally long 1-D columns (open_time ... volume),
        trusted as such (the kline store's own buffers): nothing is checked or copied."""
        view = object.__new__(cls)
        object.__setattr__(view, "_window", (columns, lo, hi))
        return view

    if not TYPE_CHECKING:  # hidden from mypy, which would otherwise accept any attribute name

        def __getattr__(self, name: str) -> Any:
            # Only reached for a column slot not set yet, i.e. a window's column on first use.
            index = _COLUMN_INDEX.get(name)
            window = self._window
            if index is None or window is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            columns, lo, hi = window
            column = columns[index][lo:hi]
            object.__setattr__(self, name, column)
            return column

    def span(self) -> Window:
        """The six columns (open_time ... volume) and the rows ``[lo, hi)`` of them this view
        shows, unsliced: for a reader of a few elements (``column.item(i)``), cheaper than
        slicing the columns first."""
        if self._window is not None:
            return self._window
        columns = (self.open_time, self.open, self.high, self.low, self.close, self.volume)
        return columns, 0, len(self.open_time)

    def __post_init__(self) -> None:
        n = len(self.open_time)
        for name in ("open", "high", "low", "close", "volume"):
            column = getattr(self, name)
            if column.ndim != 1 or len(column) != n:
                raise ValueError(f"klines column {name!r} must be 1-D with {n} elements")
        for name in ("open_time", "open", "high", "low", "close", "volume"):
            column = getattr(self, name)
            if column.flags.writeable:
                object.__setattr__(self, name, _readonly(column))

    @classmethod
    def from_arrays(
        cls,
        open_time: Sequence[int] | IntArray,
        open: Sequence[float] | FloatArray,
        high: Sequence[float] | FloatArray,
        low: Sequence[float] | FloatArray,
        close: Sequence[float] | FloatArray,
        volume: Sequence[float] | FloatArray,
    ) -> Klines:
        """Build from columns, copying them into owned float64/int64 arrays."""
        return cls(
            open_time=np.array(open_time, dtype=np.int64),
            open=np.array(open, dtype=np.float64),
            high=np.array(high, dtype=np.float64),
            low=np.array(low, dtype=np.float64),
            close=np.array(close, dtype=np.float64),
            volume=np.array(volume, dtype=np.float64),
        )

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> Klines:
        """Build from Binance-format rows ``[open_time, open, high, low, close, volume, ...]``.

        Values may be numbers or numeric strings, as Binance's REST API returns them.
        """
        materialized = [row for row in rows]
        if not materialized:
            return cls.empty()
        try:
            table = np.array([row[:6] for row in materialized], dtype=np.float64)
        except (ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"klines rows must be [open_time, open, high, low, close, volume, ...]: {exc}") from exc
        if table.ndim != 2 or table.shape[1] != 6:
            raise ValueError("klines rows must have at least 6 fields: open_time, open, high, low, close, volume")
        return cls.from_arrays(
            table[:, 0].astype(np.int64), table[:, 1], table[:, 2], table[:, 3], table[:, 4], table[:, 5]
        )

    @classmethod
    def empty(cls) -> Klines:
        """Return a view with no candles."""
        return cls.from_arrays([], [], [], [], [], [])

    def __len__(self) -> int:
        window = self._window
        if window is not None:
            return window[2] - window[1]
        return len(self.open_time)

    def tail(self, count: int) -> Klines:
        """Return a zero-copy view of the last ``count`` candles."""
        if count < 0:
            raise ValueError("count must be >= 0")
        start = max(len(self) - count, 0)
        return Klines(
            self.open_time[start:],
            self.open[start:],
            self.high[start:],
            self.low[start:],
            self.close[start:],
            self.volume[start:],
        )

    @property
    def last_open_time(self) -> int | None:
        """Open time (ms) of the newest candle, or None when empty."""
        return int(self.open_time[-1]) if len(self) else None
