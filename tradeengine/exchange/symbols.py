"""Symbol and timeframe spelling: ccxt unified ("BTC/USDT") inside, Binance ("BTCUSDT") at the edges."""

from __future__ import annotations

import re

# Longest first so "FDUSD" wins over "USD" and "USDT" over "USD".
_QUOTES = (
    "FDUSD",
    "USDT",
    "USDC",
    "BUSD",
    "TUSD",
    "DAI",
    "BTC",
    "ETH",
    "BNB",
    "EUR",
    "TRY",
    "BRL",
    "GBP",
    "USD",
)
_TIMEFRAME = re.compile(r"^(\d+)([smhdw])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def to_unified(symbol: str) -> str:
    """Return the ccxt unified spelling: "BTCUSDT", "btcusdt", "BTC-USDT" and "BTC/USDT" -> "BTC/USDT"."""
    text = symbol.strip().upper()
    if not text:
        raise ValueError("symbol must not be empty")
    for separator in ("/", "-", "_"):
        if separator in text:
            base, _, quote = text.partition(separator)
            if not base or not quote or not base.isalnum() or not quote.isalnum():
                raise ValueError(f"symbol {symbol!r} is not BASE/QUOTE")
            return f"{base}/{quote}"
    if not text.isalnum():
        raise ValueError(f"symbol {symbol!r} has characters other than letters and digits")
    for quote in _QUOTES:
        if text.endswith(quote) and len(text) > len(quote):
            return f"{text[: -len(quote)]}/{quote}"
    raise ValueError(f"symbol {symbol!r}: cannot tell base from quote; write it as BASE/QUOTE")


def to_exchange_id(symbol: str) -> str:
    """Return Binance's market id: "BTC/USDT" -> "BTCUSDT"."""
    return to_unified(symbol).replace("/", "")


def file_stem(symbol: str, timeframe: str) -> str:
    """Return freqtrade's file stem: ("BTC/USDT", "5m") -> "BTC_USDT-5m"."""
    return f"{to_unified(symbol).replace('/', '_')}-{timeframe}"


def timeframe_ms(timeframe: str) -> int:
    """Return a timeframe's length in milliseconds: "5m" -> 300000. Months are not fixed-length."""
    match = _TIMEFRAME.match(timeframe.strip())
    if match is None:
        raise ValueError(f"timeframe {timeframe!r} must look like 1m, 5m, 1h, 4h, 1d or 1w")
    amount = int(match.group(1))
    if amount <= 0:
        raise ValueError(f"timeframe {timeframe!r} must be positive")
    return amount * _UNIT_MS[match.group(2)]
