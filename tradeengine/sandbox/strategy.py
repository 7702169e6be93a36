"""compile_strategy: load untrusted strategy source once; CompiledStrategy: run its checks."""

from __future__ import annotations

import ast
import asyncio
import math
import threading
from collections.abc import Callable, Mapping
from functools import cache
from types import FunctionType, TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tradeengine.indicators.klines import Klines
from tradeengine.sandbox.errors import StrategyCompileError, StrategyRuntimeError
from tradeengine.sandbox.guards import Output, build_namespace, builtin_names, is_immutable
from tradeengine.sandbox.limits import Budget, LimitExceeded, SandboxLimits, monotonic
from tradeengine.sandbox.policy import check_free_names, instrument, restricted_ast
from tradeengine.sandbox.series import series_klines, signal_mask
from tradeengine.sandbox.values import FROZEN, MATH, freeze_klines, freeze_ticker, safe_repr

FILENAME = "<strategy>"
ENTRY_POINTS = ("check_signal", "checkSignal")
SERIES_ENTRY_POINTS = ("signal_series", "signalSeries")
_MAX_MESSAGE = 500


@cache
def _default_helpers() -> Mapping[str, Callable[..., Any]]:
    from tradeengine.indicators import HELPERS

    return HELPERS


@cache
def _builtins() -> frozenset[str]:
    return builtin_names()


def _line_of(tb: TracebackType | None) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _exception_text(exc: BaseException) -> str:
    # str(exc) could render an arbitrarily large object the strategy raised; stay bounded.
    args = exc.args
    if isinstance(exc, KeyError) and len(args) == 1:
        text = safe_repr(args[0])
    elif len(args) == 1 and type(args[0]) is str:
        text = args[0]
    elif not args:
        text = ""
    else:
        text = safe_repr(args if len(args) > 1 else args[0])
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _with_line(message: str, line: int | None) -> str:
    return f"line {line}: {message}" if line is not None else message


class CompiledStrategy:
    """A strategy loaded once and run many times; each call gets a fresh budget.

    Calls on one instance are serialized (the budget is per instance); separate instances share
    nothing and may run in different threads.
    """

    def __init__(
        self,
        source: str,
        function: FunctionType,
        entry_point: str,
        budget: Budget,
        output: Output,
        limits: SandboxLimits,
        series_function: FunctionType | None = None,
    ) -> None:
        self.source = source
        self.entry_point = entry_point
        self.limits = limits
        self._function = function
        self._series_function = series_function
        self._budget = budget
        self._output = output
        # The right to run, as one item: list.pop and list.append are atomic, so whoever pops it
        # runs alone. Uncontended that costs a tenth of a threading.Lock in a with-statement,
        # which would otherwise be a good part of a cheap check's overhead. Callers that find it
        # taken wait on the condition (see _wait_turn).
        self._turn = [True]
        self._turn_free = threading.Condition(threading.Lock())
        self._waiting = 0
        self.last_output = ""

    @property
    def time_limit_ms(self) -> float:
        return self.limits.time_limit_ms

    def check_signal(self, symbol: str, ticker: Any, klines: Mapping[str, Klines]) -> bool:
        """Run the strategy's check_signal for one symbol.

        Raises StrategyRuntimeError on an exception in the strategy, a time, memory or recursion
        limit, or a result that is not a truth value; ValueError for malformed inputs from the host.
        """
        if type(symbol) is not str:
            raise ValueError(f"symbol must be a string, got {type(symbol).__name__}")
        # Inputs frozen by the host once per tick are recognized by identity (see values.FROZEN).
        if id(ticker) not in FROZEN:
            ticker = freeze_ticker(ticker)
        if id(klines) not in FROZEN:
            klines = freeze_klines(klines)
        result = self._call(self._function, (symbol, ticker, klines))
        if type(result) is bool:
            return result
        return self._truth(result)

    @property
    def has_series(self) -> bool:
        """Whether the strategy defines the series form, ``signal_series(symbol, klines)``."""
        return self._series_function is not None

    def signal_series(self, symbol: str, timeframe: str, history: Klines, window: int) -> NDArray[np.bool_]:
        """Run ``signal_series`` once over a whole history of one timeframe: one bool per candle,
        True where the strategy says its check may match at that candle's close.

        ``window`` is how many candles ``check_signal`` sees per timeframe at a close (the ``ta``
        helpers give what the ``get_latest_*`` helpers give on such a view). The time budget is
        the per-call one for every ``window`` candles. Raises StrategyRuntimeError as
        ``check_signal`` does, and ValueError when the strategy has no series form.
        """
        function = self._series_function
        if function is None:
            raise ValueError("the strategy defines no signal_series")
        if type(window) is not int or window < 1:
            raise ValueError("window must be a positive whole number")
        length = len(history.close)
        budget = self._budget

        def run() -> NDArray[np.bool_]:
            return signal_mask(function(symbol, series_klines(timeframe, history, window, budget)), length)

        time_limit_s = self.limits.time_limit_ms / 1000.0 * max(1.0, length / window)
        result: NDArray[np.bool_] = self._call(run, (), time_limit_s)
        return result

    def _call(self, function: Callable[..., Any], args: tuple[Any, ...], time_limit_s: float | None = None) -> Any:
        """Call ``function(*args)`` as strategy code: alone (the turn), within the budget (with
        ``time_limit_s`` instead of the per-call limit when given), what it prints kept in
        ``last_output``. A strategy error or a spent limit raises StrategyRuntimeError."""
        turn = self._turn
        try:
            turn.pop()
        except IndexError:
            self._wait_turn()
        budget = self._budget
        per_call = budget.time_limit_s
        try:
            if time_limit_s is not None:
                budget.time_limit_s = time_limit_s
            output = self._output  # empty: every call and the module body leave it so
            budget.start()
            try:
                result = function(*args)
                if budget.tripped:
                    raise LimitExceeded(budget.kind, budget.message)
                now = monotonic()
                if now > budget.deadline:  # a result that came too late is no result
                    budget.check_time(now)
                return result
            except LimitExceeded as exc:
                raise self._runtime_error(exc, exc.__traceback__) from None
            except (Exception, RecursionError, MemoryError) as exc:
                raise self._runtime_error(exc, exc.__traceback__) from None
            finally:
                self.last_output = output.take() if output.size or output.truncated else ""
                budget.depth = 0
        finally:
            budget.time_limit_s = per_call
            turn.append(True)
            if self._waiting:
                with self._turn_free:
                    self._turn_free.notify()

    def _wait_turn(self) -> None:
        """Block until the call running on another thread hands the turn back.

        The count is raised under the condition's lock before each attempt, and the running call
        appends the turn before it reads the count: either it sees this waiter and notifies
        (which cannot happen before the wait, as it needs the same lock), or the attempt after
        the raise finds the turn.
        """
        turn_free = self._turn_free
        with turn_free:
            self._waiting += 1
            try:
                while True:
                    try:
                        self._turn.pop()
                        return
                    except IndexError:
                        turn_free.wait()
            finally:
                self._waiting -= 1

    async def check_signal_async(self, symbol: str, ticker: Any, klines: Mapping[str, Klines]) -> bool:
        """check_signal in a worker thread, so a slow strategy never stalls the event loop."""
        return await asyncio.to_thread(self.check_signal, symbol, ticker, klines)

    def _runtime_error(self, exc: BaseException, tb: TracebackType | None) -> StrategyRuntimeError:
        line = _line_of(tb)
        budget = self._budget
        if budget.tripped:  # a limit wins over whatever the strategy raised after it
            return StrategyRuntimeError(_with_line(budget.message, line), line, budget.kind)
        if isinstance(exc, RecursionError):
            return StrategyRuntimeError(_with_line("recursion too deep", line), line, "recursion")
        if isinstance(exc, MemoryError):
            return StrategyRuntimeError(_with_line("out of memory", line), line, "memory")
        return StrategyRuntimeError(_with_line(_exception_text(exc), line), line, "error")

    def _truth(self, result: Any) -> bool:
        t = type(result)
        if t is bool:
            return bool(result)
        if t is int:
            return bool(result != 0)
        if t is float:
            if math.isnan(result):
                raise StrategyRuntimeError("check_signal returned NaN, not a truth value", None, "result")
            return bool(result != 0.0)
        if result is None:
            return False
        if t in (list, tuple, dict, str):
            return len(result) > 0
        raise StrategyRuntimeError(f"check_signal must return a bool, got a {t.__name__} value", None, "result")


def compile_strategy(
    source: str,
    time_limit_ms: float = 50.0,
    *,
    memory_limit_mb: float = 64.0,
    max_depth: int = 50,
    max_output_chars: int = 10_000,
    max_items: int = 100_000,
    max_int_bits: int = 10_000,
    max_source_chars: int = 64_000,
    helpers: Mapping[str, Callable[..., Any]] | None = None,
) -> CompiledStrategy:
    """Compile strategy source once and return a CompiledStrategy.

    Raises StrategyCompileError whose message starts with ``line N:`` where there is a line.
    ``helpers`` replaces ``tradeengine.indicators.HELPERS`` (tests, tools).
    """
    try:
        limits = SandboxLimits(
            time_limit_ms=time_limit_ms,
            memory_limit_mb=memory_limit_mb,
            max_depth=max_depth,
            max_output_chars=max_output_chars,
            max_items=max_items,
            max_int_bits=max_int_bits,
            max_source_chars=max_source_chars,
        )
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(source, str):
        raise StrategyCompileError("strategy source must be text")
    if len(source) > limits.max_source_chars:
        raise StrategyCompileError(
            f"strategy source is {len(source)} characters, over the limit of {limits.max_source_chars}"
        )
    helper_map = _default_helpers() if helpers is None else helpers

    try:
        tree = ast.parse(source, FILENAME, "exec")
    except SyntaxError as exc:
        raise StrategyCompileError(_with_line(f"syntax error: {exc.msg}", exc.lineno), exc.lineno) from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise StrategyCompileError(f"cannot parse strategy: {type(exc).__name__}") from None

    errors = check_free_names(source, tree, FILENAME, _builtins() | frozenset(helper_map))
    tree, policy_errors = restricted_ast(tree)
    errors = policy_errors + errors
    if errors:
        raise StrategyCompileError("; ".join(errors[:5]), _first_line(errors))
    try:
        code = compile(instrument(tree, limits.max_depth), FILENAME, "exec")
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise StrategyCompileError(f"cannot compile strategy: {exc}") from None

    budget = Budget(limits)
    output = Output(limits.max_output_chars)
    namespace = build_namespace(budget, limits, helper_map, output)
    initial = dict(namespace)
    budget.start()
    try:
        exec(code, namespace)  # noqa: S102 - restricted, instrumented code in a guarded namespace
        if budget.tripped:
            raise LimitExceeded(budget.kind, budget.message)
    except (LimitExceeded, Exception, RecursionError, MemoryError) as exc:
        line = _line_of(exc.__traceback__)
        message = budget.message if budget.tripped else _exception_text(exc)
        raise StrategyCompileError(_with_line(f"error while loading the strategy: {message}", line), line) from None
    output.reset()  # what the module body printed is not the first call's output

    _check_module_state(tree, namespace, initial)
    entry = next((name for name in ENTRY_POINTS if name in namespace and name not in initial), None)
    function = namespace.get(entry) if entry else None
    if not isinstance(function, FunctionType) or function.__code__.co_filename != FILENAME:
        raise StrategyCompileError("the strategy must define a function check_signal(symbol, ticker, klines)")
    code_obj = function.__code__
    if code_obj.co_argcount < 3 and not code_obj.co_flags & 0x04:  # 0x04: *args
        raise StrategyCompileError(
            _with_line("check_signal must take three arguments: symbol, ticker, klines", code_obj.co_firstlineno),
            code_obj.co_firstlineno,
        )
    series = next((name for name in SERIES_ENTRY_POINTS if name in namespace and name not in initial), None)
    series_function = namespace.get(series) if series else None
    if series is not None:
        if not isinstance(series_function, FunctionType) or series_function.__code__.co_filename != FILENAME:
            raise StrategyCompileError(f"{series} must be a function signal_series(symbol, klines)")
        series_code = series_function.__code__
        if series_code.co_argcount != 2 and not series_code.co_flags & 0x04:
            raise StrategyCompileError(
                _with_line(f"{series} must take two arguments: symbol, klines", series_code.co_firstlineno),
                series_code.co_firstlineno,
            )
    return CompiledStrategy(source, function, entry or ENTRY_POINTS[0], budget, output, limits, series_function)


def _first_line(errors: list[str]) -> int | None:
    head = errors[0]
    if head.startswith("line "):
        number = head[5:].split(":", 1)[0]
        return int(number) if number.isdigit() else None
    return None


def _check_module_state(tree: ast.Module, namespace: dict[str, Any], initial: dict[str, Any]) -> None:
    """Reject module-level lists, dicts and mutable defaults: calls must not share state."""
    lines: dict[str, int] = {}
    for node in tree.body:
        for target in ast.walk(node):
            if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                lines.setdefault(target.id, target.lineno)
        if isinstance(node, ast.FunctionDef):
            lines.setdefault(node.name, node.lineno)
    provided = {id(v) for v in initial.values()} | {id(v) for v in MATH.members().values()}
    for name, value in namespace.items():
        if (name in initial and initial[name] is value) or id(value) in provided:
            continue  # our own helpers, builtins and math functions, possibly under another name
        if not is_immutable(value):
            line = lines.get(name)
            raise StrategyCompileError(
                _with_line(
                    f"module-level name {name!r} holds mutable state ({type(value).__name__}); "
                    "define it inside check_signal so every check starts fresh",
                    line,
                ),
                line,
            )
