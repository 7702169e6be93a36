"""The compiled kernels: loaded once at import, never recompiled by a call (the sandbox's
strategy budget is 50 ms; a compile takes seconds)."""

from __future__ import annotations

import numpy as np

from tradeengine import indicators as ind
from tradeengine.indicators import _kernels

# The kernels core and helpers call (the others are only called from inside kernels).
ENTRY_KERNELS = (
    "sma", "ema", "wma", "rsi", "macd", "stochf", "willr", "cci", "roc", "atr", "keltner",
    "bbands", "obv", "adx", "aroon", "window_extremes", "vwap", "volume_change",
)  # fmt: skip


def _signature_counts() -> dict[str, int]:
    return {name: len(getattr(_kernels, name).signatures) for name in ENTRY_KERNELS}


def test_every_entry_kernel_is_compiled_once_at_import() -> None:
    assert _signature_counts() == dict.fromkeys(ENTRY_KERNELS, 1)


def test_calls_with_any_array_kind_reuse_the_one_specialization() -> None:
    before = _signature_counts()
    table = np.column_stack([np.linspace(10.0, 20.0, 300)] * 4) + np.arange(4.0)  # strided columns
    high, low, close, volume = (table[:, i] for i in range(4))
    writable = close.copy()
    readonly = close.copy()
    readonly.flags.writeable = False
    for c in (close, writable, readonly, list(close)):
        ind.sma(c, 5)
        ind.ema(c, 5)
        ind.wma(c, 5)
        ind.rsi(c, 5)
        ind.macd(c)
        ind.roc(c)
        ind.bollinger_bands(c)
    ind.stochastic(high, low, close)
    ind.williams_r(high, low, close)
    ind.cci(high, low, close)
    ind.atr(high, low, close)
    ind.adx(high, low, close)
    ind.keltner_channels(high, low, close)
    ind.donchian_channels(high, low)
    ind.aroon(high, low)
    ind.obv(close, volume)
    ind.vwap(high, low, close, volume)
    ind.volume_change(volume)
    assert _signature_counts() == before
    assert writable.flags.writeable  # the caller's array is untouched, only viewed read-only


def test_fma_is_a_single_rounding() -> None:
    # (1 + 2**-30)**2 = 1 + 2**-29 + 2**-60 needs 61 bits: a fused multiply-add keeps the 2**-60
    # that a multiply followed by an add rounds away (TA-Lib's build fuses; see _kernels.fma).
    x = 1.0 + 2.0**-30
    assert _fma_residual(x) == 2.0**-60


def _fma_residual(x: float) -> float:
    """x*x - round(x*x) computed with the kernel fma: nonzero only if the fma is fused."""
    import numba

    @numba.njit(cache=False)
    def residual(a: float) -> float:
        p = a * a
        return _kernels.fma(a, a, -p)

    return float(residual(x))


_HUGE_PERIODS_SCRIPT = """
import inspect, math, sys
import numpy as np
from tradeengine.indicators import core
c = np.linspace(100.0, 120.0, 300)
columns = {"close": c, "high": c + 1.0, "low": c - 1.0, "volume": np.ones(300)}
for period in (2**31, 2**62, 2**63 - 1):
    for name, fn in inspect.getmembers(core, inspect.isfunction):
        if name.startswith("_") or fn.__module__ != core.__name__:
            continue
        params = inspect.signature(fn).parameters
        if not any("period" in p for p in params):
            continue
        args = {}
        for p, spec in params.items():
            if p in columns:
                args[p] = columns[p]
            elif "period" in p:
                args[p] = period
            elif spec.default is inspect.Parameter.empty:
                break
        else:
            out = fn(**args)
            arrays = out if isinstance(out, tuple) else (out,)
            assert all(np.isnan(a).all() for a in arrays), (name, period)
            print(name, period, flush=True)
"""


def test_core_indicators_with_huge_periods_give_nan_not_a_segfault() -> None:
    """Trusted callers reach the kernels with any period; int64 arithmetic on one near 2**62
    indexed out of bounds (a segfault that killed the process). Run apart: a crash fails here."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _HUGE_PERIODS_SCRIPT], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:] or f"exit {done.returncode}"
    covered = {line.split()[0] for line in done.stdout.splitlines()}
    assert {"sma", "ema", "rsi", "macd", "adx", "atr", "bollinger_bands", "stochastic"} <= covered
