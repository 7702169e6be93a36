"""Prompt hygiene: user text is capped and fenced as data; symbols are checked before use."""

from __future__ import annotations

import re

from tradeengine.exchange.symbols import to_unified

MAX_USER_TEXT = 10_000

_SYMBOL = re.compile(r"^[A-Z0-9]{2,15}/[A-Z0-9]{2,10}$")
_FENCE = re.compile(r"</?\s*user_(?:text|description|instructions)\s*>", re.IGNORECASE)


class AIInputError(ValueError):
    """User input the AI layer refuses; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def normalize_symbol(value: str, *, field: str = "symbol") -> str:
    """Return a ccxt unified symbol ("BTC/USDT"); accept Binance's "BTCUSDT"; reject anything else."""
    try:
        unified = to_unified(value)
    except ValueError as exc:
        raise AIInputError(field, str(exc)) from None
    if not _SYMBOL.match(unified):
        raise AIInputError(field, f"{value[:40]!r} is not a symbol like BTC/USDT")
    return unified


def cap_user_text(value: str, *, field: str, limit: int = MAX_USER_TEXT, required: bool = True) -> str:
    """Strip, reject empty (when required) or over-long text. Never truncates silently."""
    cleaned = value.replace("\x00", "").strip()
    if required and not cleaned:
        raise AIInputError(field, "must not be empty")
    if len(cleaned) > limit:
        raise AIInputError(field, f"must be at most {limit} characters (got {len(cleaned)})")
    return cleaned


def fence(value: str, tag: str, *, limit: int = MAX_USER_TEXT) -> str:
    """Wrap user text in ``<tag>`` delimiters the prompt tells the model to treat as data.

    Any delimiter-looking tags inside the text are removed so it cannot close the fence early, and
    the text is truncated at ``limit`` (the API rejects longer input before we get here; this is
    the last line of defence for text read back from the database).
    """
    body = _FENCE.sub("", value.replace("\x00", ""))[:limit]
    return f"<{tag}>\n{body}\n</{tag}>"
