"""The guard functions and builtins a strategy's namespace holds, bound to its budget.

Every name here that starts with ``_`` is unreachable from strategy source (RestrictedPython
rejects such names), so only the code RestrictedPython and ``policy.GuardInjector`` generate can
call them.
"""

from __future__ import annotations

import keyword
import operator
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from types import FunctionType, MappingProxyType
from typing import Any, cast

import numpy as np
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from tradeengine.indicators.klines import Klines
from tradeengine.sandbox.limits import BIG_ITEMS, Budget, SandboxLimits
from tradeengine.sandbox.series import SERIES_METHODS, TA, Series, SeriesCandles
from tradeengine.sandbox.values import (
    COLUMN_METHODS,
    COLUMN_VIEWS,
    KLINES_ATTRIBUTES,
    KLINES_COLUMNS,
    MATH,
    SafeModule,
    column,
    safe_repr,
    safe_str,
)

_LIST_ATTRS = frozenset(
    {"append", "pop", "insert", "index", "count", "remove", "reverse", "sort", "extend", "copy", "clear"}
)
_DICT_ATTRS = frozenset({"get", "keys", "values", "items", "pop", "setdefault", "update", "copy", "clear"})
# No format/format_map (attribute leaks), no replace/center/ljust/rjust/zfill/expandtabs
# (output many times the input), no encode (bytes are not offered).
_STR_ATTRS = frozenset(
    {
        "startswith",
        "endswith",
        "find",
        "rfind",
        "count",
        "index",
        "isdigit",
        "isalpha",
        "isalnum",
        "isspace",
        "isupper",
        "islower",
        "upper",
        "lower",
        "strip",
        "lstrip",
        "rstrip",
        "split",
        "rsplit",
        "join",
        "title",
        "capitalize",
    }
)
ALLOWED_ATTRIBUTES: dict[type, frozenset[str]] = {
    list: _LIST_ATTRS,
    dict: _DICT_ATTRS,
    str: _STR_ATTRS,
    tuple: frozenset({"index", "count"}),
    MappingProxyType: frozenset({"get", "keys", "values", "items"}),
}
# Methods whose result is about as large as the object: vetted like any large allocation.
_ALLOCATING = frozenset(
    {"copy", "upper", "lower", "strip", "lstrip", "rstrip", "split", "rsplit", "title", "capitalize"}
)
_SEQUENCES = (str, list, tuple)
_PLAIN_VALUES = (int, float, bool, str, type(None))
_HELPER_ARGS = frozenset({Klines, int, float, bool, str, type(None)})
_MAX_ROUND_DIGITS = 100

SAFE_EXCEPTIONS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        Exception,
        ArithmeticError,
        AssertionError,
        AttributeError,
        IndexError,
        KeyError,
        LookupError,
        NameError,
        OverflowError,
        RuntimeError,
        TypeError,
        ValueError,
        ZeroDivisionError,
    )
}


def describe(value: Any) -> str:
    """Name a value's type for an error message without calling its repr."""
    if isinstance(value, Klines):
        return "klines"
    if isinstance(value, MappingProxyType):
        return "read-only mapping"
    if isinstance(value, SafeModule):
        return repr(value)
    if isinstance(value, memoryview):
        return "column"
    return f"'{type(value).__name__}' object"


class Output:
    """print() output of one call, capped."""

    __slots__ = ("cap", "parts", "size", "truncated")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def reset(self) -> None:
        self.parts = []
        self.size = 0
        self.truncated = False

    def write(self, text: str) -> None:
        room = self.cap - self.size
        if room <= 0:
            self.truncated = True
            return
        if len(text) > room:
            text = text[:room]
            self.truncated = True
        self.parts.append(text)
        self.size += len(text)

    def text(self) -> str:
        joined = "".join(self.parts)
        return joined + "\n[output truncated]\n" if self.truncated else joined

    def take(self) -> str:
        """``text()``, leaving the buffer empty whatever happens."""
        try:
            return self.text()
        finally:
            self.reset()


class _Printer:
    """What RestrictedPython's ``print``/``printed`` rewrite talks to."""

    __slots__ = ("_out",)

    def __init__(self, out: Output) -> None:
        self._out = out

    def _call_print(self, *objects: Any, sep: Any = " ", end: Any = "\n", file: Any = None, flush: Any = False) -> None:
        if file is not None:
            raise TypeError("print(file=...) is not available in strategies")
        for name, value in (("sep", sep), ("end", end)):
            if type(value) is not str or len(value) > 100:
                raise TypeError(f"print() {name} must be a short string")
        cap = self._out.cap
        pieces = [o[:cap] if type(o) is str else safe_str(o, cap) for o in objects]
        self._out.write(sep.join(pieces) + end)

    def __call__(self) -> str:
        return self._out.text()


class _SliceStore:
    """``lst[a:b] = value`` with the value's size checked before C consumes it."""

    __slots__ = ("_check", "_target")

    def __init__(self, target: list[Any], check: Callable[[Any, str], None]) -> None:
        self._target = target
        self._check = check

    def __setitem__(self, key: slice, value: Any) -> None:
        self._check(value, "slice assignment")
        self._target[key] = value
        self._check(self._target, "list")


def build_namespace(
    budget: Budget, limits: SandboxLimits, helpers: Mapping[str, Any], output: Output
) -> dict[str, Any]:
    """Return the globals a strategy module runs in: guards, builtins, math and wrapped helpers."""
    b = budget
    max_items = limits.max_items
    max_bits = limits.max_int_bits

    # -- budget checks -------------------------------------------------------------------------
    def _tick_() -> bool:
        b.ticks -= 1
        if b.ticks < 0:
            b.slow_check()
        return True

    # -- sizes -----------------------------------------------------------------------------------
    def too_big(what: str, n: int) -> BaseException:
        return b.trip("memory", f"{what} of {n} items is over the limit of {max_items}")

    def check_items(n: int, what: str, item_bytes: int = 8) -> None:
        if n > max_items:
            raise too_big(what, n)
        if n >= BIG_ITEMS:
            b.big(n * item_bytes)

    def check_sized(value: Any, what: str) -> None:
        # Unsized iterables here are generator expressions (ticked per element) or iterators our
        # own builtins made from sized, checked sources, so only sized ones need a look.
        t = type(value)
        if t is int or t is float or t is bool:
            return
        try:
            n = len(value)
        except TypeError:
            return
        except OverflowError:
            raise too_big(what, max_items + 1) from None
        check_items(n, what)

    def _seq_bytes(value: Any) -> int:
        return 4 if type(value) is str and not value.isascii() else (1 if type(value) is str else 8)

    # -- operators -------------------------------------------------------------------------------
    def _add_(left: Any, right: Any) -> Any:
        t = type(left)
        if t is float or t is int:
            return left + right
        if (t is str or t is list or t is tuple) and type(right) is t:
            check_items(len(left) + len(right), f"{t.__name__} concatenation", _seq_bytes(left))
        return left + right

    def _mul_(left: Any, right: Any) -> Any:
        tl, tr = type(left), type(right)
        if tl is float or tr is float:
            return left * right
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > max_bits:
                raise b.trip("limit", f"integer result over {max_bits} bits")
            return left * right
        if tl in _SEQUENCES and isinstance(right, int | np.integer):
            check_items(len(left) * max(int(right), 0), f"{tl.__name__} repetition", _seq_bytes(left))
        elif tr in _SEQUENCES and isinstance(left, int | np.integer):
            check_items(len(right) * max(int(left), 0), f"{tr.__name__} repetition", _seq_bytes(right))
        return left * right

    def _pow_(base: Any, exponent: Any) -> Any:
        if (
            isinstance(base, int)
            and isinstance(exponent, int)
            and exponent > 0
            and abs(base) > 1
            and base.bit_length() * exponent > max_bits
        ):
            raise b.trip("limit", f"integer result over {max_bits} bits")
        return base**exponent

    def _lshift_(value: Any, shift: Any) -> Any:
        if isinstance(value, int) and isinstance(shift, int) and value.bit_length() + shift > max_bits:
            raise b.trip("limit", f"integer result over {max_bits} bits")
        return value << shift

    def _mod_(left: Any, right: Any) -> Any:
        if isinstance(left, str):
            raise TypeError("'%' string formatting is not available in strategies; use f-strings")
        return left % right

    def _star_(value: Any) -> Any:
        check_sized(value, "unpacking")
        return value

    def _fmt_(value: Any, conversion: int) -> Any:
        if conversion in (114, 97):  # !r, !a
            return safe_repr(value)
        t = type(value)
        if t is str:
            if len(value) > max_items:
                raise too_big("f-string value", len(value))
            return value
        if t in _PLAIN_VALUES:
            return value if conversion != 115 else str(value)
        return safe_str(value, max_items)

    inplace_plain: dict[str, Callable[[Any, Any], Any]] = {
        "-=": operator.isub,
        "/=": operator.itruediv,
        "//=": operator.ifloordiv,
        ">>=": operator.irshift,
        "&=": operator.iand,
        "|=": operator.ior,
        "^=": operator.ixor,
    }

    def _inplacevar_(op: str, target: Any, value: Any) -> Any:
        if op == "+=":
            if type(target) is list:
                check_sized(value, "list extension")
                target += value
                check_items(len(target), "list")
                return target
            return _add_(target, value)
        if op == "*=":
            if type(target) is list:
                _mul_(target, value)  # size check only; the product is discarded
                target *= value
                return target
            return _mul_(target, value)
        if op == "**=":
            return _pow_(target, value)
        if op == "<<=":
            return _lshift_(target, value)
        if op == "%=":
            return _mod_(target, value)
        fn = inplace_plain.get(op)
        if fn is None:
            raise TypeError(f"operator {op} is not available in strategies")
        return fn(target, value)

    # -- access ----------------------------------------------------------------------------------
    def _getitem_(obj: Any, key: Any) -> Any:
        # Only slices come here (policy.StrategyPolicy.visit_Subscript): a copy as large as
        # the sequence is vetted like any large allocation. Column slices are views.
        t = type(obj)
        if (t is list or t is str or t is tuple) and len(obj) >= BIG_ITEMS:
            b.big(len(obj) * 8)
        return obj[key]

    def _getattr_(obj: Any, name: str, default: Any = None) -> Any:
        t = type(obj)
        if t is Klines:
            if name in KLINES_COLUMNS:
                array = getattr(obj, name)
                hit = COLUMN_VIEWS.get(id(array))  # column()'s cache hit, without the call
                return hit[1] if hit is not None else column(array)
            if name in KLINES_ATTRIBUTES:
                return getattr(obj, name)
        elif t is memoryview:
            method = COLUMN_METHODS.get(name)
            if method is not None:
                return method(obj)
        elif t is SafeModule:
            members = obj.members()
            if name in members:
                return members[name]
        elif t is Series:
            if name in SERIES_METHODS:
                return getattr(obj, name)
        elif t is SeriesCandles:
            if name in KLINES_COLUMNS:
                return obj.column(name)
        else:
            allowed = ALLOWED_ATTRIBUTES.get(t)
            if allowed is not None and name in allowed:
                if name in _ALLOCATING and len(obj) >= BIG_ITEMS:
                    b.big(len(obj) * 8)
                if t is list and name == "extend":
                    return _guarded_extend(obj)
                if t is dict and name == "update":
                    return _guarded_update(obj)
                if t is str and name == "join":
                    return _guarded_join(obj)
                return getattr(obj, name)
            if name == "args" and isinstance(obj, BaseException):
                return obj.args
        raise AttributeError(f"attribute {name!r} of {describe(obj)} is not available in strategies")

    def _guarded_extend(target: list[Any]) -> Callable[[Iterable[Any]], None]:
        def extend(values: Iterable[Any]) -> None:
            check_sized(values, "list extension")
            target.extend(values)
            check_items(len(target), "list")

        return extend

    def _guarded_update(target: dict[Any, Any]) -> Callable[..., None]:
        def update(*args: Any, **kwargs: Any) -> None:
            for arg in args:
                check_sized(arg, "dict update")
            target.update(*args, **kwargs)
            check_items(len(target), "dict")

        return update

    def _guarded_join(separator: str) -> Callable[[Iterable[Any]], str]:
        def join(values: Iterable[Any]) -> str:
            check_sized(values, "join")
            items = list(values)
            total = sum(len(v) for v in items if type(v) is str) + len(separator) * max(len(items) - 1, 0)
            check_items(total, "joined string", 1)
            return separator.join(items)

        return join

    def _write_(obj: Any) -> Any:
        t = type(obj)
        if t is list or t is dict:
            return obj
        raise TypeError(f"{describe(obj)} is read-only in strategies")

    def _write_slice_(obj: Any) -> Any:
        if type(obj) is list:
            return _SliceStore(obj, check_sized)
        return _write_(obj)

    def _getiter_(obj: Any) -> Any:
        t = type(obj)
        if t is list or t is tuple or t is memoryview:
            return obj
        check_sized(obj, "iteration")
        return obj

    def _unpack_sequence_(value: Any, spec: Any, getiter: Any) -> Any:
        return guarded_unpack_sequence(value, spec, _getiter_)  # type: ignore[no-untyped-call]

    # ``a, b = value`` (no nested targets; policy.GuardInjector routes it here): RestrictedPython's
    # spec is then {"childs": (), "min_len": n}, and with no children min_len changes nothing.
    flat_spec = {"childs": (), "min_len": 0}

    def _unpack_flat_(value: Any) -> Any:
        t = type(value)
        if t is tuple or t is list:
            # What the guarded path returns, less its copy: _getiter_ passes these through.
            return value
        return guarded_unpack_sequence(value, flat_spec, _getiter_)  # type: ignore[no-untyped-call]

    def _iter_unpack_sequence_(value: Any, spec: Any, getiter: Any) -> Any:
        return guarded_iter_unpack_sequence(value, spec, _getiter_)  # type: ignore[no-untyped-call]

    def _apply_(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    printer = _Printer(output)

    def _print_(getattr_: Any = None) -> _Printer:
        return printer

    def _import_(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if name == "math" and level == 0:
            return MATH
        raise ImportError(f"import of {name!r} is not allowed in strategies (only 'math')")

    # -- builtins ----------------------------------------------------------------------------------
    def _sorted(values: Iterable[Any], /, *, key: Any = None, reverse: bool = False) -> list[Any]:
        check_sized(values, "sorted()")
        return sorted(values, key=key, reverse=reverse)

    def _min(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1:
            check_sized(args[0], "min()")
        return min(*args, **kwargs)

    def _max(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1:
            check_sized(args[0], "max()")
        return max(*args, **kwargs)

    def _sum(values: Iterable[Any], /, start: Any = 0) -> Any:
        if type(start) not in (int, float):
            raise TypeError("sum() start must be a number in strategies")
        check_sized(values, "sum()")
        return sum(values, start)

    def _any(values: Iterable[Any], /) -> bool:
        check_sized(values, "any()")
        return any(values)

    def _all(values: Iterable[Any], /) -> bool:
        check_sized(values, "all()")
        return all(values)

    def _list(values: Iterable[Any] = (), /) -> list[Any]:
        check_sized(values, "list()")
        result = list(values)
        check_items(len(result), "list()")
        return result

    def _tuple(values: Iterable[Any] = (), /) -> tuple[Any, ...]:
        check_sized(values, "tuple()")
        result = tuple(values)
        check_items(len(result), "tuple()")
        return result

    def _dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
        for arg in args:
            check_sized(arg, "dict()")
        return dict(*args, **kwargs)

    def _enumerate(values: Iterable[Any], start: int = 0) -> Any:
        check_sized(values, "enumerate()")
        return enumerate(values, start)

    def _zip(*iterables: Iterable[Any]) -> Any:
        for values in iterables:
            check_sized(values, "zip()")
        return zip(*iterables, strict=False)

    def _reversed(values: Any, /) -> Any:
        check_sized(values, "reversed()")
        return reversed(values)

    def _str(value: Any = "", /) -> str:
        return safe_str(value, max_items)

    def _round(value: Any, ndigits: Any = None) -> Any:
        if ndigits is None:
            return round(value)
        if type(ndigits) is not int or abs(ndigits) > _MAX_ROUND_DIGITS:
            raise ValueError(f"round() ndigits must be an integer between -{_MAX_ROUND_DIGITS} and {_MAX_ROUND_DIGITS}")
        return round(value, ndigits)

    def _pow(base: Any, exponent: Any, modulus: Any = None) -> Any:
        if modulus is not None:
            raise TypeError("pow() with a modulus is not available in strategies")
        return _pow_(base, exponent)

    builtins: dict[str, Any] = {
        "None": None,
        "True": True,
        "False": False,
        "abs": abs,
        "bool": bool,
        "divmod": divmod,
        "float": float,
        "int": int,
        "isinstance": isinstance,
        "len": len,
        "range": range,
        "math": MATH,
        "ta": TA,
        "all": _all,
        "any": _any,
        "dict": _dict,
        "enumerate": _enumerate,
        "list": _list,
        "max": _max,
        "min": _min,
        "pow": _pow,
        "repr": safe_repr,
        "reversed": _reversed,
        "round": _round,
        "sorted": _sorted,
        "str": _str,
        "sum": _sum,
        "tuple": _tuple,
        "zip": _zip,
        "__import__": _import_,
        **SAFE_EXCEPTIONS,
    }
    namespace: dict[str, Any] = {
        "__builtins__": builtins,
        "__name__": "strategy",
        "_b_": b,
        "_type_": type,
        "_float_": float,
        "_tick_": _tick_,
        "_add_": _add_,
        "_mul_": _mul_,
        "_pow_": _pow_,
        "_lshift_": _lshift_,
        "_mod_": _mod_,
        "_star_": _star_,
        "_fmt_": _fmt_,
        "_inplacevar_": _inplacevar_,
        "_getitem_": _getitem_,
        "_getattr_": _getattr_,
        "_write_": _write_,
        "_write_slice_": _write_slice_,
        "_getiter_": _getiter_,
        "_unpack_sequence_": _unpack_sequence_,
        "_unpack_flat_": _unpack_flat_,
        "_iter_unpack_sequence_": _iter_unpack_sequence_,
        "_apply_": _apply_,
        "_print_": _print_,
    }
    for name, helper in helpers.items():
        namespace[name] = wrap_helper(name, helper, b)
    return namespace


def builtin_names() -> frozenset[str]:
    """Names strategy source may read without defining them (besides the helpers)."""
    probe = build_namespace(Budget(SandboxLimits()), SandboxLimits(), {}, Output(1))
    return frozenset(name for name in probe["__builtins__"] if not name.startswith("_")) | {
        "print",
        "printed",
    }


def to_strategy_value(value: Any) -> Any:
    """Convert a helper's return value into something strategy code may hold."""
    t = type(value)
    if t is float or t is int or t is bool or t is str or value is None or t is Klines:
        return value
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "fiub":
            raise TypeError("helpers may only return one-dimensional numeric series")
        return column(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return tuple(to_strategy_value(v) for v in value)
    raise TypeError(f"helper returned an unsupported value: {describe(value)}")


def wrap_helper(name: str, helper: Callable[..., Any], budget: Budget) -> Callable[..., Any]:
    """Let strategy code call ``helper`` with series or klines; results come back as safe values."""
    factory = _wrapper_factory(name, helper) if type(helper) is FunctionType else None
    if factory is not None:
        call = factory(budget)
        call.__qualname__ = name  # argument errors read "name() missing ...", as the strategy wrote it
        return call

    def generic(*args: Any, **kwargs: Any) -> Any:
        budget.ticks -= 1
        if budget.ticks < 0:
            budget.slow_check()
        _check_helper_arguments(name, *args, *kwargs.values())
        result = helper(*args, **kwargs)
        t = type(result)
        if t is float:
            return result
        if t is tuple:
            for value in result:
                if type(value) is not float:
                    break
            else:
                return result  # a tuple of floats is already safe to hand over
        return to_strategy_value(result)

    generic.__name__ = name
    generic.__qualname__ = name
    return generic


def _check_helper_arguments(name: str, *args: Any) -> None:
    for value in args:
        if type(value) not in _HELPER_ARGS:
            raise TypeError(f"{name}() does not accept {describe(value)} arguments; pass klines such as klines['1h']")


_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08


def _plain_signature(helper: FunctionType) -> tuple[tuple[str, ...], tuple[Any, ...]] | None:
    """Parameter names and defaults of a function taking only positional-or-keyword parameters
    with public names (``_``-prefixed ones could shadow the generated wrapper's own), or None.

    Read from the code object, not ``inspect.signature``, which follows ``__wrapped__`` and
    ``__signature__`` and could describe a binding the function does not have.
    """
    code = helper.__code__
    if code.co_posonlyargcount or code.co_kwonlyargcount or code.co_flags & (_CO_VARARGS | _CO_VARKEYWORDS):
        return None
    names = code.co_varnames[: code.co_argcount]
    if not all(_is_public_identifier(n) for n in names):
        return None
    return names, helper.__defaults__ or ()


def _is_public_identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


@lru_cache(maxsize=1024)
def _wrapper_factory(name: str, helper: FunctionType) -> Callable[[Budget], FunctionType] | None:
    """A factory (budget -> wrapper) of wrappers with ``helper``'s own parameters and defaults,
    built once per name and helper; None if the helper's signature is not a plain one.

    The interpreter binds the arguments, so a call packs no ``*args``/``**kwargs`` and each
    argument costs one inline type test. The checks and their order are those of ``generic`` in
    ``wrap_helper``. The source is generated from the helper's code object (host code); every
    name it uses besides the helper's parameters starts with ``_``, which those never do.
    """
    signature = _plain_signature(helper)
    if signature is None or not _is_public_identifier(name):
        return None
    parameters, defaults = signature
    first_default = len(parameters) - len(defaults)
    declared = ", ".join(
        p if i < first_default else f"{p}=_defaults[{i - first_default}]" for i, p in enumerate(parameters)
    )
    params = ", ".join(parameters)
    checks = " or ".join(f"_type({p}) not in _allowed" for p in parameters) or "False"
    source = f"""
def _factory(_budget):
    def {name}({declared}):
        _budget.ticks -= 1
        if _budget.ticks < 0:
            _budget.slow_check()
        if {checks}:
            _check_arguments({name!r}, {params})
        _result = _helper({params})
        _kind = _type(_result)
        if _kind is _float:
            return _result
        if _kind is _tuple:
            for _value in _result:
                if _type(_value) is not _float:
                    break
            else:
                return _result
        return _to_strategy_value(_result)
    return {name}
"""
    namespace: dict[str, Any] = {
        "__builtins__": {},
        "_helper": helper,
        "_defaults": defaults,
        "_allowed": _HELPER_ARGS,
        "_check_arguments": _check_helper_arguments,
        "_to_strategy_value": to_strategy_value,
        "_type": type,
        "_float": float,
        "_tuple": tuple,
    }
    exec(compile(source, f"<helper wrapper {name}>", "exec"), namespace)  # noqa: S102 - host-generated source
    return cast("Callable[[Budget], FunctionType]", namespace["_factory"])


def is_immutable(value: Any) -> bool:
    """True for values a strategy may keep at module level without carrying state between calls."""
    t = type(value)
    if t in _PLAIN_VALUES or t is SafeModule:
        return True
    if t is tuple:
        return all(is_immutable(v) for v in value)
    if t is FunctionType:
        defaults = (value.__defaults__ or ()) + tuple((value.__kwdefaults__ or {}).values())
        return all(is_immutable(v) for v in defaults)
    return False
