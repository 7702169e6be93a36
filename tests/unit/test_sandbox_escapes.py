"""Hostile-code corpus: every escape attempt fails closed, with no side effect on the host.

Each entry must end in StrategyCompileError or StrategyRuntimeError. While the corpus runs, an
audit hook records imports, file opens, process/network/ctypes events and frame or code object
access; os.environ is swapped for a recording mapping; sys.modules and a canary file are compared
before and after.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from fakes.sandbox_candles import klines_1h, klines_4h, ticker_for

from tradeengine.indicators import HELPERS
from tradeengine.sandbox import StrategyCompileError, StrategyRuntimeError, compile_strategy

CANARY = "canary-file-content"


def strategy(body: str) -> str:
    """Wrap statements as the body of check_signal(symbol, ticker, klines)."""
    lines = body.strip("\n").splitlines()
    return (
        "def check_signal(symbol, ticker, klines):\n"
        + "\n".join("    " + line for line in lines)
        + "\n    return True\n"
    )


CANARY_PATH_PLACEHOLDER = "__CANARY__"

CORPUS: list[tuple[str, str]] = [
    # -- imports and builtins recovery
    ("import_os", "import os\n" + strategy("os.remove('__CANARY__')")),
    ("import_inside_function", strategy("import subprocess\nsubprocess.run(['true'])")),
    ("from_import_os", "from os import environ\n" + strategy("environ['HOME']")),
    ("import_star_math", "from math import *\n" + strategy("pi")),
    ("dunder_import_call", strategy("__import__('os').getcwd()")),
    ("builtins_dict", strategy("__builtins__['open']('__CANARY__', 'w')")),
    ("builtins_name", strategy("builtins.open('__CANARY__')")),
    ("open_builtin", strategy("open('__CANARY__', 'w').write('x')")),
    ("eval_builtin", strategy("eval('1+1')")),
    ("exec_builtin", strategy("exec('import os')")),
    ("compile_builtin", strategy("compile('1', 'x', 'eval')")),
    ("globals_locals_vars", strategy("globals()['__builtins__']")),
    ("getattr_builtin", strategy("getattr(ticker, '__class__')")),
    ("type_builtin", strategy("type(ticker).__subclasses__()")),
    ("math_module_loader", "import math\n" + strategy("math.__loader__.load_module('os')")),
    ("math_missing_member", "import math\n" + strategy("math.factorial(10**6)")),
    ("math_member_via_from", "from math import factorial\n" + strategy("factorial(100)")),
    # -- dunder and subclass hunts
    ("subclasses_hunt", strategy("[c for c in ().__class__.__bases__[0].__subclasses__()]")),
    ("mro_walk", strategy("x = ''.__class__.__mro__[-1]")),
    ("function_globals", strategy("check_signal.__globals__['_getattr_']")),
    ("helper_code_object", strategy("getLatestRSI.__code__")),
    ("helper_closure", strategy("get_latest_rsi.__closure__[0].cell_contents")),
    ("dunder_in_fstring", strategy("x = f'{check_signal.__globals__}'")),
    ("dunder_dict_klines", strategy("klines['1h'].__dict__")),
    # -- frame walks
    ("generator_frame", strategy("g = (i for i in range(3))\nf = g.gi_frame.f_back.f_globals")),
    ("generator_function", "def gen():\n    yield 1\n" + strategy("gen()")),
    (
        "traceback_frame",
        strategy("try:\n    1 / 0\nexcept Exception as e:\n    e.__traceback__.tb_frame.f_back"),
    ),
    (
        "with_traceback_method",
        strategy("try:\n    1 / 0\nexcept Exception as e:\n    e.with_traceback(None)"),
    ),
    ("coroutine_frame", "async def co():\n    return 1\n" + strategy("co().cr_frame")),
    ("sys_getframe", strategy("sys._getframe(1)")),
    # -- format string leaks
    ("str_format_attribute", strategy("'{0.__class__.__mro__}'.format(ticker)")),
    ("str_format_map", strategy("'{x.__globals__}'.format_map({'x': check_signal})")),
    ("string_formatter", "import string\n" + strategy("string.Formatter().format('{0.__class__}', 1)")),
    ("percent_format_width", strategy("x = '%999999999d' % 1")),
    ("fstring_dynamic_spec", strategy("w = 10 ** 9\nx = f'{1:{w}}'")),
    ("fstring_huge_width", strategy("x = f'{1:>999999999}'")),
    # -- RestrictedPython advisories
    ("try_star", strategy("try:\n    pass\nexcept* ValueError:\n    pass")),
    ("positional_only_guard_shadow", "def f(_getattr_, /):\n    return _getattr_\n" + strategy("f(1)")),
    ("lambda_guard_shadow", strategy("f = lambda _getiter_: _getiter_")),
    ("walrus_guard_rebind", strategy("(_getitem_ := 1)")),
    (
        "class_with_dunders",
        "class Evil:\n    def __index__(self):\n        return 10**10\n" + strategy("[0] * Evil()"),
    ),
    ("global_statement", "x = 1\n" + strategy("global x\nx = 2")),
    ("nonlocal_statement", strategy("def f():\n    nonlocal symbol\n    symbol = 1\nf()")),
    ("with_statement", strategy("with ticker as t:\n    pass")),
    ("setattr_builtin", strategy("setattr(get_latest_rsi, 'x', 1)")),
    # -- mutation of helpers and inputs
    ("helper_attribute_write", strategy("get_latest_rsi.cache = 1")),
    ("kline_column_write", strategy("klines['1h'].close[0] = 0.0")),
    ("kline_slice_write", strategy("klines['1h'].close[0:2] = [0.0, 0.0]")),
    ("klines_mapping_write", strategy("klines['1h'] = None")),
    ("klines_attribute_write", strategy("klines['1h'].close = None")),
    ("ticker_write", strategy("ticker['lastPrice'] = 0.0")),
    ("ticker_delete", strategy("del ticker['lastPrice']")),
    ("array_setflags", strategy("klines['1h'].close.setflags(write=True)")),
    ("array_base", strategy("klines['1h'].close.obj.base")),
    ("array_ctypes", strategy("klines['1h'].close.ctypes")),
    ("array_tofile", strategy("klines['1h'].close.tofile('__CANARY__')")),
    ("array_view", strategy("klines['1h'].close.view()")),
    ("array_dump", strategy("klines['1h'].close.dump('__CANARY__')")),
    ("array_interface", strategy("klines['1h'].close.__array_interface__")),
    ("array_flags", strategy("klines['1h'].close.flags")),
    ("memoryview_cast", strategy("klines['1h'].close.cast('B')")),
    ("klines_from_rows", strategy("klines['1h'].from_rows([])")),
    ("helper_list_rows", strategy("get_latest_rsi([[0, 1, 1, 1, 1, 1]] * 50000)")),
    ("klines_class_method", strategy("Klines.from_arrays([], [], [], [], [], [])")),
    ("mapping_copy_internal", strategy("ticker.copy()")),
    # -- time, recursion and memory exhaustion
    ("infinite_while", strategy("while True:\n    pass")),
    ("infinite_while_swallowing", strategy("while True:\n    try:\n        pass\n    except:\n        pass")),
    ("huge_for_range", strategy("for i in range(10**12):\n    pass")),
    ("deep_recursion", "def f(n):\n    return f(n + 1)\n" + strategy("f(0)")),
    (
        "recursion_caught",
        "def f(n):\n    try:\n        return f(n + 1)\n    except Exception:\n        return f(n + 1)\n"
        + strategy("f(0)"),
    ),
    ("lambda_recursion", strategy("f = lambda n: f(n + 1)\nf(0)")),
    ("list_times_huge", strategy("x = [0] * 10**10")),
    ("str_times_huge", strategy("x = 'a' * 10**10")),
    ("list_of_huge_range", strategy("x = list(range(10**10))")),
    ("sum_huge_range", strategy("x = sum(range(10**10))")),
    ("sorted_huge_range", strategy("x = sorted(range(10**9))")),
    ("list_doubling", strategy("x = [1]\nwhile True:\n    x = x + x")),
    ("list_inplace_doubling", strategy("x = [1]\nwhile True:\n    x += x")),
    ("star_doubling", strategy("x = [1]\nwhile True:\n    x = [*x, *x]")),
    ("extend_doubling", strategy("x = [1]\nwhile True:\n    x.extend(x)")),
    ("fstring_doubling", strategy("s = 'ab'\nwhile True:\n    s = f'{s}{s}'")),
    ("join_doubling", strategy("s = 'ab'\nwhile True:\n    s = s.join([s, s])")),
    ("int_power_tower", strategy("x = 10 ** 10 ** 10")),
    ("int_shift", strategy("x = 1 << 10**10")),
    ("int_pow_builtin", strategy("x = pow(7, 10**10)")),
    ("int_squaring_loop", strategy("x = 3\nwhile True:\n    x = x * x")),
    ("round_huge_digits", strategy("x = round(5, -10**9)")),
    ("nested_list_into_helper", strategy("m = [[1.0] * 50000] * 50000\nget_latest_sma(m)")),
    ("nested_list_column_arithmetic", strategy("m = [[1.0] * 50000] * 50000\nx = klines['1h'].close - m")),
    ("retained_allocations", strategy("keep = []\nwhile True:\n    keep.append([0] * 90000)")),
    ("unpack_huge_range", strategy("a, *b = range(10**10)")),
    ("print_flood", strategy("while True:\n    print('x' * 1000)")),
    ("str_of_huge_structure", strategy("s = 'x' * 90000\nbig = [s] * 90000\nwhile True:\n    t = str(big)")),
    ("slice_assign_huge", strategy("x = []\nx[0:0] = range(10**10)")),
    ("comprehension_forever", strategy("x = [i for i in range(10**12)]")),
    ("dict_update_huge", strategy("d = {}\nd.update(enumerate(range(10**10)))")),
]


class RecordingEnviron(MutableMapping[str, str]):
    """Stands in for os.environ and remembers every key read."""

    def __init__(self, real: MutableMapping[str, str]) -> None:
        self.real = real
        self.reads: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.reads.append(key)
        return self.real[key]

    def __setitem__(self, key: str, value: str) -> None:
        self.reads.append(key)
        self.real[key] = value

    def __delitem__(self, key: str) -> None:
        self.reads.append(key)
        del self.real[key]

    def __iter__(self) -> Iterator[str]:
        self.reads.append("<iter>")
        return iter(self.real)

    def __len__(self) -> int:
        return len(self.real)


_AUDIT: dict[str, Any] = {"active": False, "events": [], "busy": False}
# The sandbox's own bookkeeping legitimately runs the module body (exec) and reads code objects,
# defaults and traceback frames of the strategy, and while building the namespace (before any
# strategy code runs) reads the host helpers' signatures and compiles their wrappers; events
# raised directly by these host functions are not the strategy's doing. Everything else
# (strategy frames, guards, helper wrappers, helpers) is recorded.
_HOST_BOOKKEEPING = {
    ("strategy.py", "compile_strategy"),
    ("strategy.py", "_line_of"),
    ("strategy.py", "_check_module_state"),
    ("guards.py", "is_immutable"),
    ("guards.py", "_plain_signature"),
    ("guards.py", "_wrapper_factory"),
}
_WATCHED_PREFIXES = (
    "import",
    "open",
    "os.",
    "subprocess.",
    "socket.",
    "ctypes.",
    "sys._getframe",
    "sys._current_frames",
    "object.__getattr__",
    "object.__setattr__",
    "function.__new__",
    "code.__new__",
    "builtins.input",
    "shutil.",
    "sys.settrace",
    "sys.setprofile",
    "marshal.",
    "pickle.",
    "urllib.",
    "mmap.",
    "exec",
)


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if not _AUDIT["active"] or _AUDIT["busy"] or not event.startswith(_WATCHED_PREFIXES):
        return
    _AUDIT["busy"] = True  # the frame inspection below raises audit events of its own
    try:
        code = sys._getframe(1).f_code
        origin = (os.path.basename(code.co_filename), code.co_name)
        if origin not in _HOST_BOOKKEEPING:
            _AUDIT["events"].append((event, origin, repr(args)[:200]))
    finally:
        _AUDIT["busy"] = False


@pytest.fixture(scope="session")
def audit_hook() -> None:
    # Audit hooks cannot be removed; this one is installed once, when first needed, and only
    # records while _AUDIT["active"] is set.
    sys.addaudithook(_audit_hook)


@pytest.fixture(scope="module")
def inputs(audit_hook: None) -> tuple[dict[str, float], dict[str, Any]]:
    k1 = klines_1h("BTC/USDT", 500)
    return ticker_for(k1), {"1h": k1, "4h": klines_4h("BTC/USDT", 200)}


def test_corpus_is_large_enough_and_unique() -> None:
    names = [name for name, _ in CORPUS]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(("name", "source"), CORPUS, ids=[name for name, _ in CORPUS])
def test_escape_attempt_fails_closed_without_side_effects(
    name: str,
    source: str,
    inputs: tuple[dict[str, float], dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text(CANARY)
    source = source.replace(CANARY_PATH_PLACEHOLDER, str(canary))
    ticker, klines = inputs
    before_close = klines["1h"].close.copy()
    helpers_before = dict(HELPERS)
    environ = RecordingEnviron(os.environ)
    monkeypatch.setattr(os, "environ", environ)
    modules_before = set(sys.modules)
    _AUDIT["events"] = []
    _AUDIT["active"] = True
    started = time.thread_time()
    try:
        with pytest.raises((StrategyCompileError, StrategyRuntimeError)) as info:
            compile_strategy(source, time_limit_ms=50).check_signal("BTC/USDT", ticker, klines)
    finally:
        _AUDIT["active"] = False
        elapsed = time.thread_time() - started
    assert _AUDIT["events"] == [], f"{name}: host events {_AUDIT['events']}"
    assert environ.reads == [], f"{name}: read environment {environ.reads}"
    assert set(sys.modules) == modules_before
    assert canary.read_text() == CANARY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    assert (klines["1h"].close == before_close).all()
    assert helpers_before == HELPERS
    # Compile + one call, in CPU time (this two-core host is shared): the call's budget is
    # 50 ms and a hostile one ends within a small multiple (test_sandbox_limits checks 2x).
    assert elapsed < 0.5, f"{name} used {elapsed:.3f} s of CPU"
    assert str(info.value)


def test_a_successful_escape_would_be_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, audit_hook: None
) -> None:
    """The side-effect probes themselves work: plain Python doing the same things trips them."""
    environ = RecordingEnviron(os.environ)
    monkeypatch.setattr(os, "environ", environ)
    _AUDIT["events"] = []
    _AUDIT["active"] = True
    try:
        (tmp_path / "x").write_text("x")
        os.environ.get("HOME")
        sys._getframe(0)
    finally:
        _AUDIT["active"] = False
    events = {event for event, _, _ in _AUDIT["events"]}
    assert "open" in events
    assert "sys._getframe" in events
    assert environ.reads == ["HOME"]
