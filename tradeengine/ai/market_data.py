"""Build the seed's ``marketData`` payload (what every analyst sees) from our own candles.

Shape (seed 000 "analyze-signal" request, with seed 004's ``calculatedIndicators``)::

    {
      "symbol": "BTC/USDT",
      "timestamp": 1704067200,             # unix seconds: close of the newest primary candle
      "primaryTimeframe": "1h",
      "price": "42500.00",                 # = ticker.lastPrice
      "ticker": {"lastPrice": "42500.00", "volume24h": "25000.5", "priceChange24h": "2.5", ...},
      "klines": {"1h": [[openTime, "open", "high", "low", "close", "volume", closeTime], ...]},
      "calculatedIndicators": {
        "sma_20": ..., "sma_50": ..., "sma_200": ..., "ema_12": ..., "ema_26": ..., "rsi_14": ...,
        "macd": {"macd", "signal", "histogram"}, "bb": {"upper", "middle", "lower"},
        "atr_14": ..., "vwap": ...,
        "byTimeframe": {"1h": {...same keys...}, "4h": {...}}
      }
    }

Top-level indicator keys are those of the primary timeframe (the first key of ``klines_by_tf``
unless given). Indicators are computed on all candles passed, not only the ``limit`` sent, and an
indicator still in its warm-up is left out (never NaN in JSON). Prices in ``klines`` and ``ticker``
are strings as Binance sends them; indicator values are floats (indicator math is float).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradeengine.domain.timeframes import timeframe_ms
from tradeengine.indicators.klines import Klines

_COLUMNS = ("open_time", "open", "high", "low", "close", "volume")
_COLUMN_TYPES = tuple((name, np.int64 if name == "open_time" else np.float64) for name in _COLUMNS)
_timeframe_ms = functools.cache(timeframe_ms)  # a regex match per analysis showed up in profiles
# Ticker keys we accept, by the seed's name: the seed's own first, then ccxt's unified names.
_TICKER_ALIASES: dict[str, tuple[str, ...]] = {
    "lastPrice": ("lastPrice", "last", "close"),
    "volume24h": ("volume24h", "quoteVolume", "baseVolume"),
    "priceChange24h": ("priceChange24h", "percentage"),
}


def build_market_data(
    symbol: str,
    ticker: Mapping[str, Any] | None,
    klines_by_tf: Mapping[str, Klines],
    limit: int = 100,
    *,
    primary_timeframe: str | None = None,
    rows_cache: KlineRowCache | None = None,
    rows_kept: int | None = None,
) -> dict[str, Any]:
    """Return the seed's ``marketData`` dict for ``symbol``; see the module docstring for the shape.

    ``ticker`` may use the seed's keys or ccxt's (``last``, ``quoteVolume``, ``percentage``); a
    missing last price falls back to the newest primary close. With ``rows_cache`` the rows of
    candles formatted by an earlier call are reused (same rows, see ``KlineRowCache``).
    ``rows_kept`` formats only that many of the newest rows per timeframe, for a caller whose
    analyst reads the candles as columns (``AnalysisRequest.candles``) and not the rows; indicators still
    use every candle given.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not klines_by_tf and not ticker:
        raise ValueError("build_market_data needs a ticker or at least one timeframe of klines")
    timeframes = list(klines_by_tf)
    primary = primary_timeframe or (timeframes[0] if timeframes else None)
    if primary is not None and timeframes and primary not in klines_by_tf:
        raise ValueError(f"primary_timeframe {primary!r} is not one of the klines timeframes {timeframes}")

    klines_json: dict[str, list[list[Any]]] = {}
    by_tf: dict[str, dict[str, Any]] = {}
    steps: dict[str, int] = {}
    for tf, klines in klines_by_tf.items():
        step = steps[tf] = _timeframe_ms(tf)
        if rows_kept is not None:
            klines_json[tf] = _newest_rows(klines, min(rows_kept, limit), step)
        elif rows_cache is None:
            first = max(len(klines) - limit, 0)
            klines_json[tf] = _format_rows([getattr(klines, name)[first:] for name in _COLUMNS], step)
        else:
            klines_json[tf] = rows_cache.rows(symbol, tf, klines, step, max(len(klines) - limit, 0))
        by_tf[tf] = calculate_indicators(klines)

    primary_klines = klines_by_tf.get(primary) if primary is not None else None
    ticker_json = _ticker(ticker, primary_klines)
    timestamp = None
    if primary is not None and primary_klines is not None and len(primary_klines):
        timestamp = (int(primary_klines.open_time[-1]) + steps[primary]) // 1000
    indicators: dict[str, Any] = dict(by_tf.get(primary, {})) if primary is not None else {}
    indicators["byTimeframe"] = by_tf
    return {
        "symbol": symbol,
        "timestamp": timestamp,
        "primaryTimeframe": primary,
        "price": ticker_json.get("lastPrice"),
        "ticker": ticker_json,
        "klines": klines_json,
        "calculatedIndicators": indicators,
    }


def kline_rows(klines: Klines, timeframe_step_ms: int) -> list[list[Any]]:
    """Binance-style rows: ``[openTime, open, high, low, close, volume, closeTime]`` (prices as str)."""
    return _format_rows([getattr(klines, name) for name in _COLUMNS], timeframe_step_ms)


def _format_rows(columns: Sequence[NDArray[Any]], timeframe_step_ms: int) -> list[list[Any]]:
    """``kline_rows`` of six columns (open_time, open, high, low, close, volume)."""
    # Whole columns to Python scalars at once (per-element numpy indexing dominated analysis
    # setup); repr of a Python float is exactly what _num gives a numpy float.
    last = timeframe_step_ms - 1
    return [
        [t, repr(o), repr(h), repr(lo), repr(c), repr(v), t + last]
        for t, o, h, lo, c, v in zip(*(column.tolist() for column in columns), strict=True)
    ]


def _newest_rows(klines: Klines, count: int, timeframe_step_ms: int) -> list[list[Any]]:
    """``kline_rows`` of the newest ``count`` candles, read element by element: for the handful
    of rows an analysis snapshot keeps, slicing and converting six columns costs more than the
    rows. ``item`` gives the Python scalar ``tolist`` would, so the rows are the same."""
    (times, o, h, lo, c, v), start, end = klines.span()
    last = timeframe_step_ms - 1
    rows: list[list[Any]] = []
    for i in range(max(end - count, start), end):
        t = times.item(i)
        rows.append([t, repr(o.item(i)), repr(h.item(i)), repr(lo.item(i)), repr(c.item(i)), repr(v.item(i)), t + last])
    return rows


class KlineRowCache:
    """``kline_rows`` per (symbol, timeframe), formatting each candle once, and the candles the
    rows were made from (``AnalysisRequest.candles``).

    Successive analyses of a series send windows that mostly overlap (the same ``limit`` candles
    moved on by a few), and formatting is five ``repr`` calls per candle. The last window of each
    series is kept with the raw bytes of its columns (read as int64/float64, as ``Klines`` stores
    them); a row is reused only when its open time and all five values are bit-identical (a row is
    a pure function of those), so ``rows`` returns exactly what ``kline_rows`` would. One window
    per series is kept.
    """

    def __init__(self) -> None:
        # (symbol, timeframe) -> (column bytes, rows, timeframe step) of the last window formatted
        self._windows: dict[tuple[str, str], tuple[list[bytes], list[list[Any]], int]] = {}

    def rows(
        self, symbol: str, timeframe: str, klines: Klines, timeframe_step_ms: int, first: int = 0
    ) -> list[list[Any]]:
        """``kline_rows`` of the candles from index ``first`` on, reusing the rows of the series'
        previous window."""
        key = (symbol, timeframe)
        columns = [np.asarray(getattr(klines, name)[first:], dtype) for name, dtype in _COLUMN_TYPES]
        raw = [column.tobytes() for column in columns]
        reused: list[list[Any]] = []
        previous = self._windows.get(key)
        if previous is not None and previous[2] == timeframe_step_ms and raw[0]:
            old_raw, old_rows, _ = previous
            # Where this window's first candle sits in the previous one; the rows from there on
            # are reused up to the first candle whose time or values differ (an updated candle).
            start = _find_value(old_raw[0], raw[0][:8])
            if start >= 0:
                count = min(len(old_rows) - start, len(raw[0]) // 8)
                reused = old_rows[start : start + _same_candles(old_raw, start, raw, count)]
        keep = len(reused)
        rows = reused + _format_rows([column[keep:] for column in columns], timeframe_step_ms)
        self._windows[key] = (raw, rows, timeframe_step_ms)
        # Copies: a caller changing its market data must not change what later calls get.
        return [row.copy() for row in rows]

    def candles(self, symbol: str, timeframe: str) -> Klines:
        """The candles of the rows ``rows`` last returned for the series, as copies: read-only
        arrays over the (immutable) bytes kept for the comparison. A kline store's views change
        in place while an analysis waits in the queue; these, like the formatted rows, do not."""
        times, *values = self._windows[(symbol, timeframe)][0]
        return Klines(np.frombuffer(times, np.int64), *(np.frombuffer(data, np.float64) for data in values))


def _find_value(column: bytes, value: bytes) -> int:
    """Index of the 8-byte ``value`` in ``column`` (raw int64/float64 values), or -1."""
    at = column.find(value)
    while at >= 0 and at % 8:  # a match straddling two values
        at = column.find(value, at + 1)
    return at // 8 if at >= 0 else -1


def _same_candles(old: list[bytes], start: int, new: list[bytes], count: int) -> int:
    """How many candles of ``new`` (columns as raw bytes, 8 per value), from its first, equal
    those of ``old`` from ``start`` in every column, bit for bit (at most ``count``)."""
    lo, hi = 8 * start, 8 * (start + count)
    if all(o[lo:hi] == n[: hi - lo] for o, n in zip(old, new, strict=True)):
        return count
    differs = np.zeros(count, dtype=np.bool_)
    for o, n in zip(old, new, strict=True):
        differs |= np.frombuffer(o, np.int64, count, lo) != np.frombuffer(n, np.int64, count)
    return int(differs.argmax())


def klines_from_market_data(market_data: Mapping[str, Any], timeframe: str | None = None) -> Klines:
    """Read one timeframe (default: the primary one) of ``market_data['klines']`` back into Klines."""
    klines = market_data.get("klines") or {}
    tf = timeframe or market_data.get("primaryTimeframe") or next(iter(klines), None)
    if tf is None or tf not in klines:
        return Klines.empty()
    return Klines.from_rows(klines[tf])


def calculate_indicators(klines: Klines) -> dict[str, Any]:
    """Latest values of the seed-004 indicator set; keys still in warm-up are omitted."""
    out: dict[str, Any] = {}
    if len(klines) == 0:
        return out
    latest_market_indicators, periods, _array, _begin = _indicator_functions()
    # One compiled call runs the kernels ``core.sma``/``ema``/... run, with the arguments they
    # pass (so every value is what ``core`` gives, bit for bit), on the columns checked once.
    close, high, low = _array(klines.close, "close"), _array(klines.high, "high"), _array(klines.low, "low")
    volume = _array(klines.volume, "volume")
    values = latest_market_indicators(close, high, low, volume, _begin(close), _begin(high, low, close), periods)
    sma_20, sma_50, sma_200, ema_12, ema_26, rsi_14, line, signal, hist, upper, middle, lower, atr_14, vwap = (
        values.tolist()
    )
    for key, value in (
        ("sma_20", sma_20),
        ("sma_50", sma_50),
        ("sma_200", sma_200),
        ("ema_12", ema_12),
        ("ema_26", ema_26),
        ("rsi_14", rsi_14),
    ):
        if math.isfinite(value):
            out[key] = value
    if math.isfinite(line) and math.isfinite(signal) and math.isfinite(hist):
        out["macd"] = {"macd": line, "signal": signal, "histogram": hist}
    if math.isfinite(upper) and math.isfinite(middle) and math.isfinite(lower):
        out["bb"] = {"upper": upper, "middle": middle, "lower": lower}
    if math.isfinite(atr_14):
        out["atr_14"] = atr_14
    if math.isfinite(vwap):
        out["vwap"] = vwap
    return out


@functools.cache
def _indicator_functions() -> tuple[
    Callable[..., NDArray[np.float64]], NDArray[np.int64], Callable[..., Any], Callable[..., int]
]:
    """``_kernels.latest_market_indicators`` with its periods, ``core._array`` and ``core._begin``,
    imported on first use (importing them loads the compiled kernels) and kept: an import
    statement per call costs more than the rest of the Python around the kernel."""
    from tradeengine.indicators._kernels import MARKET_PERIODS, latest_market_indicators
    from tradeengine.indicators.core import _array, _begin

    return latest_market_indicators, MARKET_PERIODS, _array, _begin


def _ticker(ticker: Mapping[str, Any] | None, primary: Klines | None) -> dict[str, Any]:
    source = dict(ticker or {})
    out: dict[str, Any] = {}
    for key, aliases in _TICKER_ALIASES.items():
        for alias in aliases:
            if source.get(alias) is not None:
                out[key] = _num(source[alias])
                break
    if "lastPrice" not in out and primary is not None and len(primary):
        out["lastPrice"] = _num(primary.close[-1])
    for key, value in source.items():  # pass the rest through (JSON-safe)
        if key not in out and key != "info" and isinstance(value, str | int | float | Decimal | bool):
            out[key] = _num(value) if isinstance(value, float | Decimal) else value
    return out


def _num(value: Any) -> str:
    """A price/volume as the decimal string Binance would send (floats by their shortest repr)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)
