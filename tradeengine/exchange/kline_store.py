"""In-memory candles per (symbol, timeframe): columnar numpy ring buffers with zero-copy views."""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from tradeengine.exchange.symbols import to_unified
from tradeengine.indicators.klines import Klines

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


class UpdateResult(IntEnum):
    """What ``KlineStore.update`` did with a candle."""

    APPENDED = 1  # a newer open time: a new row
    REPLACED = 2  # same open time as the newest row (the open candle): replaced in place
    CORRECTED = 3  # an older row with that open time exists: replaced in place
    INSERTED = 4  # an older open time missing from the window: inserted in order (rare, O(n))
    IGNORED = 5  # older than everything a full window keeps


def _buffer_length(capacity: int) -> int:
    """Rows of an own buffer: the capacity plus slack, so compaction is amortized (see _Series)."""
    return capacity + max(capacity // 4, 16)


class _Series:
    """One (symbol, timeframe): columns in a buffer of ``capacity + slack`` rows.

    Rows live contiguously in ``[start, end)``, so any "last N" is a plain slice (zero-copy).
    When ``end`` reaches the buffer's end, the newest ``capacity - 1`` rows move to a *fresh*
    buffer (once every ``slack`` appends: amortized O(1)). A fresh buffer, not an in-place
    memmove, so views handed out earlier never see rows shift under them.

    A replay can instead *attach* a series' whole history (``attach``): the buffer is then the
    replay's own read-only columns, ``advance`` reveals the next row (nothing is copied), and
    the first write of any other kind copies the window into an own buffer (``_own``).
    """

    __slots__ = (
        "attached",
        "buflen",
        "capacity",
        "close",
        "end",
        "high",
        "last",
        "low",
        "open",
        "ro_close",
        "ro_columns",
        "ro_high",
        "ro_low",
        "ro_open",
        "ro_times",
        "ro_volume",
        "start",
        "times",
        "values",
        "view_cache",
        "volume",
    )

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buflen = _buffer_length(capacity)
        self.start = 0
        self.end = 0
        self.last: int | None = None
        self.attached = False
        self._allocate()

    def _allocate(self) -> None:
        self.times: IntArray = np.zeros(self.buflen, dtype=np.int64)
        self.values: FloatArray = np.zeros((5, self.buflen), dtype=np.float64)
        self.open, self.high, self.low, self.close, self.volume = self.values
        # Read-only aliases of the same memory: slices of them are read-only already, so views
        # need no per-call flag juggling or validation (see ``view``).
        ro_values = self.values.view()
        ro_values.flags.writeable = False
        ro_times = self.times.view()
        ro_times.flags.writeable = False
        self.ro_times = ro_times
        self.ro_open, self.ro_high, self.ro_low, self.ro_close, self.ro_volume = ro_values
        self.ro_columns = (ro_times, *ro_values)
        self.view_cache: Klines | None = None

    def __len__(self) -> int:
        return self.end - self.start

    def attach(self, times: IntArray, values: FloatArray, visible: int) -> None:
        """Serve ``times``/``values`` (read-only, rows oldest first) in place; the first ``visible``
        rows are in the series now, ``advance`` reveals the rest one by one."""
        self.attached = True
        self.times = self.ro_times = times
        self.values = values
        self.open, self.high, self.low, self.close, self.volume = values
        self.ro_open, self.ro_high, self.ro_low, self.ro_close, self.ro_volume = values
        self.ro_columns = (times, *values)
        self.buflen = len(times)
        self.end = visible
        self.start = max(visible - self.capacity, 0)
        self.last = int(times[visible - 1]) if visible else None
        self.view_cache = None

    def advance(self, open_time: int) -> None:
        """Reveal the next attached row, which must be the candle opening at ``open_time``."""
        end = self.end
        if end >= self.buflen or self.times.item(end) != open_time:
            raise ValueError(f"attached series: the next row is not the candle opening at {open_time}")
        self.end = end + 1
        if end + 1 - self.start > self.capacity:
            self.start += 1
        self.last = open_time
        self.view_cache = None

    def reveal(self, visible: int) -> None:
        """Reveal the attached rows before index ``visible`` at once (rows a replay held back)."""
        if visible > self.end:
            if visible > self.buflen:
                raise ValueError(f"attached series: only {self.buflen} rows, cannot reveal {visible}")
            self.end = visible
            self.start = max(self.start, visible - self.capacity)
            self.last = self.times.item(visible - 1)
            self.view_cache = None

    def _own(self) -> None:
        """Leave attached mode: copy the visible window into a buffer of our own."""
        self.attached = False
        self.buflen = _buffer_length(self.capacity)
        self.compact(self.end - self.start)

    def compact(self, keep: int) -> None:
        """Move the newest ``keep`` rows to the start of a fresh buffer."""
        keep = min(keep, self.end - self.start)
        old_times, old_values, end = self.times, self.values, self.end
        self._allocate()
        self.times[:keep] = old_times[end - keep : end]
        self.values[:, :keep] = old_values[:, end - keep : end]
        self.start, self.end = 0, keep

    def append(self, open_time: int, o: float, h: float, lo: float, c: float, v: float) -> None:
        if self.attached:
            self._own()
        if self.end == self.buflen:
            self.compact(self.capacity - 1)
        self.view_cache = None
        i = self.end
        self.times[i] = open_time
        self.open[i] = o
        self.high[i] = h
        self.low[i] = lo
        self.close[i] = c
        self.volume[i] = v
        self.end = i + 1
        if self.end - self.start > self.capacity:
            self.start += 1
        self.last = open_time

    def write(self, i: int, o: float, h: float, lo: float, c: float, v: float) -> None:
        if self.attached:
            i -= self.start  # the window moves to the start of the new buffer
            self._own()
        self.view_cache = None
        self.open[i] = o
        self.high[i] = h
        self.low[i] = lo
        self.close[i] = c
        self.volume[i] = v

    def insert(self, open_time: int, row: tuple[float, float, float, float, float]) -> UpdateResult:
        if self.attached:
            self._own()
        window = slice(self.start, self.end)
        position = int(np.searchsorted(self.times[window], open_time))
        if position == 0 and len(self) >= self.capacity:
            return UpdateResult.IGNORED
        times = np.insert(self.times[window], position, open_time)
        values = np.insert(self.values[:, window], position, np.array(row, dtype=np.float64), axis=1)
        keep = min(len(times), self.capacity)
        self._allocate()
        self.times[:keep] = times[-keep:]
        self.values[:, :keep] = values[:, -keep:]
        self.start, self.end = 0, keep
        return UpdateResult.INSERTED

    def extend(self, times: IntArray, values: FloatArray) -> None:
        """Append rows that are all newer than ``last`` and strictly increasing."""
        count = len(times)
        self.view_cache = None
        if self.attached:
            self._own()
        if count >= self.capacity:
            self._allocate()
            self.times[: self.capacity] = times[-self.capacity :]
            self.values[:, : self.capacity] = values[:, -self.capacity :]
            self.start, self.end = 0, self.capacity
        else:
            if self.end + count > self.buflen:
                self.compact(self.capacity - count)
            self.times[self.end : self.end + count] = times
            self.values[:, self.end : self.end + count] = values
            self.end += count
            self.start = max(self.start, self.end - self.capacity)
        self.last = int(times[-1])

    def view(self, count: int | None) -> Klines:
        n = len(self) if count is None else max(min(count, len(self)), 0)
        cached = self.view_cache
        if cached is not None and len(cached) == n:
            return cached  # nothing changed since: the very same view (helpers/sandbox caches hit)
        view = Klines.window(self.ro_columns, self.end - n, self.end)
        self.view_cache = view
        return view

    @property
    def nbytes(self) -> int:
        return int(self.times.nbytes + self.values.nbytes)


class KlineStore:
    """Candles per (symbol, timeframe), newest ``capacity`` kept, oldest first in views.

    ``update`` is O(1) for the common cases (the open candle changes; a new candle starts).
    ``klines`` returns a zero-copy read-only view; it stays valid and unchanged except that an
    in-place update of a row it covers (normally the still-open last candle) shows through.
    Copy (``np.array(view.close)``) if you need a snapshot across awaits.
    Keys are ccxt unified symbols; Binance spellings are accepted on reads.
    """

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 2:
            raise ValueError("capacity must be >= 2")
        self.capacity = capacity
        self._series: dict[tuple[str, str], _Series] = {}

    def _get(self, symbol: str, timeframe: str) -> _Series | None:
        series = self._series.get((symbol, timeframe))
        if series is None and "/" not in symbol:
            series = self._series.get((to_unified(symbol), timeframe))
        return series

    def _ensure(self, symbol: str, timeframe: str) -> _Series:
        series = self._series.get((symbol, timeframe))
        if series is None:
            series = _Series(self.capacity)
            self._series[(symbol, timeframe)] = series
        return series

    def update(
        self,
        symbol: str,
        timeframe: str,
        open_time: int,
        open: float,
        high: float,
        low: float,
        close: float,
        volume: float,
    ) -> UpdateResult:
        """Apply one candle (the open one or a closed one); never creates a duplicate row."""
        series = self._series.get((symbol, timeframe))
        if series is None:
            series = self._ensure(symbol, timeframe)
        last = series.last
        if last is None or open_time > last:
            series.append(open_time, open, high, low, close, volume)
            return UpdateResult.APPENDED
        if open_time == last:
            series.write(series.end - 1, open, high, low, close, volume)
            return UpdateResult.REPLACED
        window = series.times[series.start : series.end]
        position = int(np.searchsorted(window, open_time))
        if position < len(window) and int(window[position]) == open_time:
            series.write(series.start + position, open, high, low, close, volume)
            return UpdateResult.CORRECTED
        return series.insert(open_time, (open, high, low, close, volume))

    def extend(
        self,
        symbol: str,
        timeframe: str,
        open_time: IntArray,
        open: FloatArray,
        high: FloatArray,
        low: FloatArray,
        close: FloatArray,
        volume: FloatArray,
    ) -> int:
        """Apply many candles sorted by open time; vectorized when they are all new. Returns rows given."""
        count = len(open_time)
        if count == 0:
            return 0
        series = self._ensure(symbol, timeframe)
        times = np.asarray(open_time, dtype=np.int64)
        newer = 0
        if series.last is not None and int(times[0]) <= series.last:
            newer = int(np.searchsorted(times, series.last, side="right"))
            for i in range(newer):
                self.update(
                    symbol,
                    timeframe,
                    int(times[i]),
                    float(open[i]),
                    float(high[i]),
                    float(low[i]),
                    float(close[i]),
                    float(volume[i]),
                )
        if newer < count:
            rest = times[newer:]
            if len(rest) > 1 and not bool(np.all(rest[1:] > rest[:-1])):
                raise ValueError("extend: open_time must be strictly increasing")
            series.extend(rest, np.vstack((open[newer:], high[newer:], low[newer:], close[newer:], volume[newer:])))
        return count

    def attach(self, symbol: str, timeframe: str, history: Klines, visible: int) -> Callable[[int], None] | None:
        """Serve a replay's whole ``history`` of one series without copying it row by row: its first
        ``visible`` candles are in the store at once, and the returned ``advance(open_time)``
        reveals the next one (what ``update`` with that candle would do, minus the writes).
        Views and reads are the same as with updates. Any other write to the series copies its
        window into an own buffer first. Returns None (nothing attached) when the series already
        holds candles."""
        series = self._ensure(symbol, timeframe)
        if len(series) or series.attached:
            return None
        values = np.vstack((history.open, history.high, history.low, history.close, history.volume))
        values.flags.writeable = False
        series.attach(history.open_time, values, visible)
        return series.advance

    def reveal(self, symbol: str, timeframe: str, visible: int) -> None:
        """An attached series shows its first ``visible`` candles (never fewer than now): what
        ``advance`` for each candle in between would do, at once."""
        series = self._get(symbol, timeframe)
        if series is None or not series.attached:
            raise ValueError(f"{symbol} {timeframe}: not an attached series")
        series.reveal(visible)

    def attached_history(self, symbol: str, timeframe: str) -> Klines | None:
        """The whole history an attached series serves (revealed or not yet), or None when the
        series is not attached. A replay's series form reads it once (see ``attached_index``)."""
        series = self._get(symbol, timeframe)
        if series is None or not series.attached:
            return None
        return Klines(series.times, *series.values)

    def attached_index(self, symbol: str, timeframe: str, times: IntArray) -> int:
        """Index in ``times`` (an ``attached_history``'s open times) of the series' newest
        candle, or -1 when the series no longer serves that history."""
        series = self._series.get((symbol, timeframe))
        if series is None or not series.attached or series.times is not times:
            return -1
        return series.end - 1

    def next_hidden_open_time(self, symbol: str, timeframe: str) -> int | None:
        """Open time of an attached series' first candle not revealed yet (a replay knows its
        future), or None when the series is not attached or has revealed everything."""
        series = self._series.get((symbol, timeframe))
        if series is None or not series.attached or series.end >= len(series.times):
            return None
        return int(series.times.item(series.end))

    def klines(self, symbol: str, timeframe: str, count: int | None = None) -> Klines:
        """Return a zero-copy, read-only view of the last ``count`` candles (all when None)."""
        series = self._get(symbol, timeframe)
        if series is None:
            return Klines.empty()
        return series.view(count)

    def lasting_klines(self, symbol: str, timeframe: str, count: int) -> Klines:
        """The newest ``count`` candles as they are now, for work that outlives this instant (an
        analysis): a view of an attached series (its history never changes), else a copy (the
        open candle is updated in place)."""
        series = self._get(symbol, timeframe)
        if series is None:
            return Klines.empty()
        view = series.view(count)
        if series.attached:
            return view
        return Klines.from_arrays(view.open_time, view.open, view.high, view.low, view.close, view.volume)

    def last_open_time(self, symbol: str, timeframe: str) -> int | None:
        """Open time of the newest candle, or None when the series is empty."""
        series = self._get(symbol, timeframe)
        return None if series is None else series.last

    def count(self, symbol: str, timeframe: str) -> int:
        """Number of candles held for the series."""
        series = self._get(symbol, timeframe)
        return 0 if series is None else len(series)

    def series(self) -> list[tuple[str, str]]:
        """All (symbol, timeframe) keys that hold candles."""
        return list(self._series)

    @property
    def nbytes(self) -> int:
        """Bytes held by all buffers (the arrays, not Python object overhead)."""
        return sum(series.nbytes for series in self._series.values())
