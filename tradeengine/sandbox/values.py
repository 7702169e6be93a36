"""The values strategy code sees: read-only columns, frozen inputs, a safe math module.

Raw numpy arrays never reach strategy code. Their attributes (``.base``, ``.ctypes``,
``.setflags``, ``.tofile``, ``__array_interface__``...) and their habit of turning any nested
list into an array (a ``[[0.0] * 50_000] * 10_000`` operand allocates gigabytes in one C call)
make them a poor thing to hand to hostile code. Columns and series returned by helpers are
handed out as read-only ``memoryview``s of the same memory instead: zero-copy, ``len``, indexing
(Python floats), slicing (more read-only views) and iteration all run in C, writes fail in C, and
they support no arithmetic. A few numpy reductions are offered as methods through the attribute
guard (``COLUMN_METHODS``).
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from tradeengine.indicators.klines import Klines

# array id -> (array, its view). The same kline columns are handed out many times per tick.
# Holding the array keeps its id from being reused while the entry exists, so an entry for
# ``id(a)`` is always ``a``'s own (the attribute guard reads it directly on its hot path).
COLUMN_VIEWS: dict[int, tuple[NDArray[Any], memoryview]] = {}
_COLUMNS_LIMIT = 4096


def column(array: NDArray[Any]) -> memoryview:
    """A read-only memoryview of a 1-D numeric array (no copy)."""
    hit = COLUMN_VIEWS.get(id(array))
    if hit is not None:
        return hit[1]
    view = array.data  # the array's own memoryview, read-only exactly when the array is
    if not view.readonly:
        readonly = array.view()
        readonly.flags.writeable = False
        view = readonly.data
    if len(COLUMN_VIEWS) >= _COLUMNS_LIMIT:
        COLUMN_VIEWS.clear()
    COLUMN_VIEWS[id(array)] = (array, view)
    return view


def _reduce(fn: Callable[[NDArray[Any]], Any], cast: Callable[[Any], Any]) -> Callable[[memoryview], Any]:
    def method(view: memoryview) -> Callable[[], Any]:
        def call() -> Any:
            if len(view) == 0:
                return math.nan
            with np.errstate(all="ignore"):
                return cast(fn(np.asarray(view)))

        return call

    return method


def _tolist(view: memoryview) -> Callable[[], list[Any]]:
    return view.tolist


# name -> (column -> bound method); everything else on a memoryview is refused by the guard.
COLUMN_METHODS: dict[str, Callable[[memoryview], Callable[[], Any]]] = {
    "mean": _reduce(np.mean, float),
    "sum": _reduce(np.sum, float),
    "min": _reduce(np.min, float),
    "max": _reduce(np.max, float),
    "std": _reduce(np.std, float),
    "var": _reduce(np.var, float),
    "argmax": _reduce(np.argmax, int),
    "argmin": _reduce(np.argmin, int),
    "tolist": _tolist,
}
KLINES_COLUMNS = frozenset({"open_time", "open", "high", "low", "close", "volume"})
KLINES_ATTRIBUTES = frozenset({"tail", "last_open_time"})


class SafeModule:
    """A read-only namespace standing in for a module (``import math`` gets one)."""

    __slots__ = ("_members", "_name")
    _members: Mapping[str, Any]
    _name: str

    def __init__(self, name: str, members: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_members", MappingProxyType(dict(members)))

    def __getattr__(self, name: str) -> Any:  # used by "from math import sqrt"
        try:
            return self._members[name]
        except KeyError:
            raise AttributeError(f"module {self._name!r} has no attribute {name!r} available to strategies") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"module {self._name!r} is read-only")

    def __repr__(self) -> str:
        return f"<module {self._name!r}>"

    def members(self) -> Mapping[str, Any]:
        return self._members


# Float functions only: factorial/comb/perm/prod/lcm on huge integers run in C for as long as
# they like, so they are left out.
_MATH_NAMES = (
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "ceil",
    "copysign",
    "cos",
    "cosh",
    "degrees",
    "dist",
    "e",
    "erf",
    "erfc",
    "exp",
    "expm1",
    "fabs",
    "floor",
    "fmod",
    "fsum",
    "gamma",
    "hypot",
    "inf",
    "isclose",
    "isfinite",
    "isinf",
    "isnan",
    "lgamma",
    "log",
    "log10",
    "log1p",
    "log2",
    "nan",
    "pi",
    "pow",
    "radians",
    "remainder",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "tau",
    "trunc",
)
MATH = SafeModule("math", {name: getattr(math, name) for name in _MATH_NAMES})


# --------------------------------------------------------------------------- inputs

# (snake key, camel key, other names hosts use for it: ccxt / TickerUpdated spellings)
_TICKER_FIELDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("last_price", "lastPrice", ("last",)),
    ("volume_24h", "volume24h", ("base_volume",)),
    ("price_change_24h", "priceChange24h", ("change",)),
    ("price_change_percent_24h", "priceChangePercent24h", ("change_24h_percent", "percentage")),
    ("high_24h", "high24h", ("high",)),
    ("low_24h", "low24h", ("low",)),
    ("quote_volume_24h", "quoteVolume24h", ("quote_volume",)),
    ("bid", "bid", ()),
    ("ask", "ask", ()),
)
_MISSING = object()


def _ticker_value(source: Any, names: tuple[str, ...], is_mapping: bool) -> Any:
    for name in names:
        if is_mapping:
            if name in source:
                return source[name]
        else:
            value = getattr(source, name, _MISSING)
            if value is not _MISSING:
                return value
    return _MISSING


# Frozen inputs, by id, so check_signal can accept them as they are: the runtime freezes a
# symbol's ticker and klines once per tick and every strategy reuses them. Holding the object
# keeps its id from being reused while it is registered, so ``id(x) in FROZEN`` means ``x`` is
# the registered object itself.
FROZEN: dict[int, Mapping[str, Any]] = {}
FROZEN_LIMIT = 8192


def _register(frozen: Mapping[str, Any]) -> Mapping[str, Any]:
    if len(FROZEN) >= FROZEN_LIMIT:
        FROZEN.clear()
    FROZEN[id(frozen)] = frozen
    return frozen


def freeze_ticker(ticker: Any) -> Mapping[str, float | None]:
    """Copy a ticker (mapping or object) into a read-only mapping of floats with both key styles.

    Accepts our snake_case keys, the seed's camelCase keys, ccxt's ticker dict and
    ``TickerUpdated``; the absolute 24 h change is derived from the percentage when only that is given.
    Freezing an already frozen ticker returns it unchanged.
    """
    if id(ticker) in FROZEN:
        return cast("Mapping[str, float | None]", ticker)
    values: dict[str, float | None] = {}
    is_mapping = isinstance(ticker, Mapping)
    for snake, camel, others in _TICKER_FIELDS:
        raw = _ticker_value(ticker, (snake, camel, *others), is_mapping)
        if raw is _MISSING:
            continue
        try:
            value = None if raw is None else float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"ticker field {snake!r} must be a number, got {raw!r}") from None
        values[snake] = values[camel] = value
    last, percent = values.get("last_price"), values.get("price_change_percent_24h")
    if "price_change_24h" not in values and last is not None and percent is not None and percent > -100.0:
        change = last - last / (1.0 + percent / 100.0)
        values["price_change_24h"] = values["priceChange24h"] = change
    for required in ("last_price", "volume_24h", "price_change_24h"):
        if required not in values:
            raise ValueError(f"ticker field {required!r} is missing")
    return cast("Mapping[str, float | None]", _register(MappingProxyType(values)))


def freeze_basic_ticker(
    last_price: float | None, volume_24h: float | None, price_change_24h: float | None
) -> Mapping[str, float | None]:
    """``freeze_ticker`` of ``{"lastPrice", "volume24h", "priceChange24h"}`` (the runtime's ticker),
    without the generic field lookup: the same keys, order and values, for the per-tick hot path."""
    # Exact floats (the usual case) are kept as they are; float() of one returns it unchanged.
    last = last_price if type(last_price) is float or last_price is None else float(last_price)
    volume = volume_24h if type(volume_24h) is float or volume_24h is None else float(volume_24h)
    change = (
        price_change_24h if type(price_change_24h) is float or price_change_24h is None else float(price_change_24h)
    )
    frozen: Mapping[str, float | None] = MappingProxyType(
        {
            "last_price": last,
            "lastPrice": last,
            "volume_24h": volume,
            "volume24h": volume,
            "price_change_24h": change,
            "priceChange24h": change,
        }
    )
    if len(FROZEN) >= FROZEN_LIMIT:  # _register, inline on this per-tick path
        FROZEN.clear()
    FROZEN[id(frozen)] = frozen
    return frozen


def freeze_store_klines(klines: dict[str, Klines]) -> Mapping[str, Klines]:
    """``freeze_klines`` for a fresh dict of ``KlineStore`` views built by the host (hot path):
    keys are timeframe strings and values ``Klines`` by construction, so only wrap and register."""
    frozen: Mapping[str, Klines] = MappingProxyType(klines)
    if len(FROZEN) >= FROZEN_LIMIT:  # _register, inline on this per-tick path
        FROZEN.clear()
    FROZEN[id(frozen)] = frozen
    return frozen


def freeze_klines(klines: Mapping[str, Klines]) -> Mapping[str, Klines]:
    """Copy the timeframe -> Klines mapping into a read-only one, checking every value."""
    if id(klines) in FROZEN:
        return klines
    if not isinstance(klines, Mapping):
        raise ValueError("klines must be a mapping of timeframe -> Klines")
    frozen: dict[str, Klines] = {}
    for timeframe, view in klines.items():
        if type(timeframe) is not str or type(view) is not Klines:
            raise ValueError(f"klines[{timeframe!r}] must be a Klines view keyed by a timeframe string")
        frozen[timeframe] = view
    return cast("Mapping[str, Klines]", _register(MappingProxyType(frozen)))


# --------------------------------------------------------------------------- text


class _SafeRepr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 20
        self.maxstring = 200
        self.maxlong = 100
        self.maxother = 200


_safe_repr = _SafeRepr()
_PLAIN = (int, float, bool, type(None))


def safe_repr(value: Any) -> str:
    """repr() with bounded output for anything strategy code can hold."""
    if type(value) in _PLAIN:
        return repr(value)
    return _safe_repr.repr(value)


def safe_str(value: Any, max_chars: int) -> str:
    """str() with bounded output: strings pass up to ``max_chars``, containers are abbreviated."""
    t = type(value)
    if t is str:
        if len(value) > max_chars:
            raise ValueError(f"string of {len(value)} characters is too long to format (limit {max_chars})")
        return value  # type: ignore[no-any-return]
    if t in _PLAIN:
        return str(value)
    return safe_repr(value)
