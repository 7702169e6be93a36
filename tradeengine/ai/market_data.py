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

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import numpy as np

from tradeengine.domain.timeframes import timeframe_ms
from tradeengine.indicators.klines import Klines

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
) -> dict[str, Any]:
    """Return the seed's ``marketData`` dict for ``symbol``; see the module docstring for the shape.

    ``ticker`` may use the seed's keys or ccxt's (``last``, ``quoteVolume``, ``percentage``); a
    missing last price falls back to the newest primary close.
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
    for tf, klines in klines_by_tf.items():
        step = timeframe_ms(tf)
        klines_json[tf] = kline_rows(klines.tail(limit), step)
        by_tf[tf] = calculate_indicators(klines)

    primary_klines = klines_by_tf.get(primary) if primary is not None else None
    ticker_json = _ticker(ticker, primary_klines)
    timestamp = None
    if primary is not None and primary_klines is not None and len(primary_klines):
        timestamp = (int(primary_klines.open_time[-1]) + timeframe_ms(primary)) // 1000
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
    # Whole columns to Python scalars at once (per-element numpy indexing dominated analysis
    # setup); repr of a Python float is exactly what _num gives a numpy float.
    last = timeframe_step_ms - 1
    return [
        [t, repr(o), repr(h), repr(lo), repr(c), repr(v), t + last]
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


def klines_from_market_data(market_data: Mapping[str, Any], timeframe: str | None = None) -> Klines:
    """Read one timeframe (default: the primary one) of ``market_data['klines']`` back into Klines."""
    klines = market_data.get("klines") or {}
    tf = timeframe or market_data.get("primaryTimeframe") or next(iter(klines), None)
    if tf is None or tf not in klines:
        return Klines.empty()
    return Klines.from_rows(klines[tf])


def calculate_indicators(klines: Klines) -> dict[str, Any]:
    """Latest values of the seed-004 indicator set; keys still in warm-up are omitted."""
    from tradeengine.indicators import core  # lazy: loads the compiled kernels

    out: dict[str, Any] = {}
    if len(klines) == 0:
        return out
    close, high, low, volume = klines.close, klines.high, klines.low, klines.volume
    for period in (20, 50, 200):
        _put(out, f"sma_{period}", core.sma(close, period))
    for period in (12, 26):
        _put(out, f"ema_{period}", core.ema(close, period))
    _put(out, "rsi_14", core.rsi(close, 14))
    line, signal, hist = core.macd(close)
    if _finite(line, signal, hist):
        out["macd"] = {"macd": _last(line), "signal": _last(signal), "histogram": _last(hist)}
    upper, middle, lower = core.bollinger_bands(close, 20, 2.0)
    if _finite(upper, middle, lower):
        out["bb"] = {"upper": _last(upper), "middle": _last(middle), "lower": _last(lower)}
    _put(out, "atr_14", core.atr(high, low, close, 14))
    _put(out, "vwap", core.vwap(high, low, close, volume))
    return out


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


def _last(series: Any) -> float:
    return float(series[-1])


def _finite(*series: Any) -> bool:
    return all(len(s) and math.isfinite(float(s[-1])) for s in series)


def _put(out: dict[str, Any], key: str, series: Any) -> None:
    if _finite(series):
        out[key] = _last(series)
