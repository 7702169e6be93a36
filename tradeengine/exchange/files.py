"""Candle files: freqtrade JSON (read/write) and ninjabot CSV (read). Gaps are reported, never filled."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tradeengine.exchange.symbols import file_stem, timeframe_ms
from tradeengine.indicators.klines import Klines


class CandleFileError(ValueError):
    """A candle file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Missing candles between two present ones (open times in ms)."""

    after: int  # open time of the last candle before the gap
    before: int  # open time of the first candle after the gap
    missing: int  # number of candles absent


def data_path(directory: Path, symbol: str, timeframe: str) -> Path:
    """Where freqtrade keeps a series: ``DIR/BTC_USDT-5m.json``."""
    return Path(directory) / f"{file_stem(symbol, timeframe)}.json"


def _sorted_unique(table: NDArray[np.float64], times: NDArray[np.int64]) -> Klines:
    """Sort by open time and drop repeated open times (the first row wins)."""
    order = np.argsort(times, kind="stable")
    times, table = times[order], table[order]
    keep = np.ones(len(times), dtype=bool)
    keep[1:] = times[1:] != times[:-1]
    times, table = times[keep], table[keep]
    return Klines(
        times, table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy(), table[:, 3].copy(), table[:, 4].copy()
    )


def load_freqtrade_json(path: Path | str) -> Klines:
    """Read ``[[open_time_ms, open, high, low, close, volume], ...]``; sorted, duplicates dropped."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise CandleFileError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise CandleFileError(f"{path}: not JSON: {exc}") from None
    if not isinstance(rows, list):
        raise CandleFileError(f"{path}: expected a JSON array of [ms, o, h, l, c, v] rows")
    if not rows:
        return Klines.empty()
    try:
        table = np.array(rows, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise CandleFileError(f"{path}: rows must be [ms, o, h, l, c, v] numbers: {exc}") from None
    if table.ndim != 2 or table.shape[1] < 6:
        raise CandleFileError(f"{path}: rows must have 6 fields [ms, o, h, l, c, v]")
    if not np.isfinite(table[:, :6]).all():
        raise CandleFileError(f"{path}: rows contain non-finite numbers")
    times = np.array([row[0] for row in rows], dtype=np.int64)  # exact ints, not via float
    return _sorted_unique(table[:, 1:6], times)


_FIRST_OPEN_TIME = re.compile(rb"^\s*\[\s*\[\s*(\d+)")


def earliest_open_time_ms(directory: Path | str) -> int | None:
    """Return the earliest candle open time over the freqtrade JSON files in ``directory``.

    Reads only the head of each file (the rows are sorted), so a replay can start its clock at
    the data without parsing every file twice; None when there are no candles.
    """
    earliest: int | None = None
    for path in Path(directory).glob("*.json"):
        with path.open("rb") as handle:
            match = _FIRST_OPEN_TIME.match(handle.read(64))
        if match is None:
            continue
        value = int(match.group(1))
        earliest = value if earliest is None else min(earliest, value)
    return earliest


def write_freqtrade_json(path: Path | str, klines: Klines) -> None:
    """Write candles in freqtrade's JSON layout, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        [int(t), float(o), float(h), float(lo), float(c), float(v)]
        for t, o, h, lo, c, v in zip(
            klines.open_time.tolist(),
            klines.open.tolist(),
            klines.high.tolist(),
            klines.low.tolist(),
            klines.close.tolist(),
            klines.volume.tolist(),
            strict=True,
        )
    ]
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(rows, out, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_ninjabot_csv(path: Path | str) -> Klines:
    """Read ninjabot's CSV: ``open_time_s, open, close, low, high, volume, trades`` (no header).

    Times become milliseconds, columns are put in OHLCV order, repeated timestamps are dropped.
    """
    path = Path(path)
    if not path.exists():
        raise CandleFileError(f"{path}: no such file")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise CandleFileError(f"{path}: not a ninjabot CSV (time,o,c,l,h,v): {exc}") from None
    if table.size == 0:
        return Klines.empty()
    if table.shape[1] < 6:
        raise CandleFileError(f"{path}: need 6+ columns time,open,close,low,high,volume")
    times = table[:, 0].astype(np.int64) * 1000
    ohlcv = table[:, [1, 4, 3, 2, 5]]  # open, high(col 4), low(col 3), close(col 2), volume
    return _sorted_unique(ohlcv, times)


def load_candles(path: Path | str) -> Klines:
    """Load a candle file by its suffix (.json freqtrade, .csv ninjabot)."""
    path = Path(path)
    if path.suffix == ".json":
        return load_freqtrade_json(path)
    if path.suffix == ".csv":
        return load_ninjabot_csv(path)
    raise CandleFileError(f"{path}: unknown candle file type (expected .json or .csv)")


def find_gaps(open_time: NDArray[np.int64], timeframe: str) -> list[Gap]:
    """List every place where consecutive open times are more than one timeframe apart."""
    step = timeframe_ms(timeframe)
    if len(open_time) < 2:
        return []
    deltas = np.diff(open_time)
    where = np.nonzero(deltas > step)[0]
    return [
        Gap(after=int(open_time[i]), before=int(open_time[i + 1]), missing=int(deltas[i] // step) - 1) for i in where
    ]


def merge_klines(old: Klines, new: Klines) -> Klines:
    """Union two candle sets by open time; where both have a candle, ``new`` wins."""
    times = np.concatenate((new.open_time, old.open_time))
    table = np.column_stack(
        (
            np.concatenate((new.open, old.open)),
            np.concatenate((new.high, old.high)),
            np.concatenate((new.low, old.low)),
            np.concatenate((new.close, old.close)),
            np.concatenate((new.volume, old.volume)),
        )
    )
    return _sorted_unique(table, times)
