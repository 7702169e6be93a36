"""Errors raised by the strategy sandbox; messages are written for the strategy's author."""

from __future__ import annotations

from typing import Literal

RuntimeKind = Literal["error", "timeout", "memory", "recursion", "limit", "result"]


class StrategyError(Exception):
    """Base class: anything wrong with a user strategy (never a bug of the host)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class StrategyCompileError(StrategyError):
    """The source cannot be loaded: syntax, a forbidden construct or name, or no check_signal."""


class StrategyRuntimeError(StrategyError):
    """One check failed: an exception in the strategy, a time/memory/recursion limit, a bad result."""

    def __init__(self, message: str, line: int | None = None, kind: RuntimeKind = "error") -> None:
        super().__init__(message, line)
        self.kind: RuntimeKind = kind
