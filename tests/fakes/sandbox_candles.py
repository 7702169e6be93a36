"""Real Binance candles from ../shared/data/market as Klines, for sandbox tests and the benchmark."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

from tradeengine.indicators.klines import Klines

MARKET_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT", "XRP/USDT")


@cache
def _table(symbol: str, timeframe: str) -> np.ndarray:
    path = MARKET_DIR / f"{symbol.replace('/', '_')}-{timeframe}.json"
    return np.array(json.loads(path.read_text()), dtype=np.float64)


def _klines(table: np.ndarray) -> Klines:
    return Klines.from_arrays(
        table[:, 0].astype(np.int64), table[:, 1], table[:, 2], table[:, 3], table[:, 4], table[:, 5]
    )


def klines_1h(symbol: str, count: int = 500, offset: int = 0) -> Klines:
    """``count`` hourly candles ending ``offset`` candles before the newest one in the file."""
    table = _table(symbol, "1h")
    end = len(table) - offset
    return _klines(table[end - count : end])


def klines_4h(symbol: str, count: int = 500, offset: int = 0) -> Klines:
    """``count`` 4-hour candles aggregated from the hourly file (Binance has no 4h file here)."""
    table = _table(symbol, "1h")
    first = int(np.argmax(((table[:, 0] // 3_600_000) % 4) == 0))  # start on a 4h boundary; gaps may shift later groups
    aligned = table[first:]
    aligned = aligned[: len(aligned) // 4 * 4].reshape(-1, 4, 6)
    end = len(aligned) - offset
    block = aligned[end - count : end]
    return Klines.from_arrays(
        block[:, 0, 0].astype(np.int64),
        block[:, 0, 1],
        block[:, :, 2].max(axis=1),
        block[:, :, 3].min(axis=1),
        block[:, 3, 4],
        block[:, :, 5].sum(axis=1),
    )


def ticker_for(klines: Klines) -> dict[str, float]:
    """A ticker consistent with the newest candle, in the seed's camelCase spelling."""
    close = klines.close
    last = float(close[-1])
    day_ago = float(close[-25]) if len(close) > 24 else float(close[0])
    return {
        "lastPrice": last,
        "volume24h": float(klines.volume[-24:].sum()),
        "priceChange24h": last - day_ago,
    }
