"""Strategy sandbox: untrusted strategy code compiled once, run under RestrictedPython with limits.

    strategy = compile_strategy(source, time_limit_ms=50)   # StrategyCompileError
    strategy.check_signal(symbol, ticker, klines) -> bool   # StrategyRuntimeError

See docs/sandbox.md for the threat model and the design.
"""

from tradeengine.sandbox.errors import StrategyCompileError, StrategyError, StrategyRuntimeError
from tradeengine.sandbox.limits import SandboxLimits
from tradeengine.sandbox.strategy import CompiledStrategy, compile_strategy
from tradeengine.sandbox.values import freeze_klines, freeze_ticker

__all__ = [
    "CompiledStrategy",
    "SandboxLimits",
    "StrategyCompileError",
    "StrategyError",
    "StrategyRuntimeError",
    "compile_strategy",
    "freeze_klines",
    "freeze_ticker",
]
