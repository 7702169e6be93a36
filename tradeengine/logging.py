"""Logging, configured once per process: readable lines on a terminal, JSON lines otherwise.

Every formatted line passes a redactor that replaces known secret values (from settings, or
registered later, e.g. a user's decrypted exchange key) before it is written anywhere.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

if TYPE_CHECKING:
    from tradeengine.settings import Settings

REDACTED = "***"
_MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words


class SecretRedactor:
    """Replaces registered secret values in formatted log output."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def register(self, *values: str | None) -> None:
        with self._lock:
            for value in values:
                if value and len(value) >= _MIN_SECRET_LENGTH:
                    self._secrets.add(value)
            if self._secrets:
                alternatives = sorted(self._secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(v) for v in alternatives))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(REDACTED, text) if pattern is not None else text

    def write_to(self, target: TextIO) -> Callable[[str], None]:
        """A loguru sink that redacts the fully formatted line (message, extras, tracebacks alike)."""

        def sink(message: str) -> None:
            target.write(self.redact(message))
            target.flush()

        return sink


redactor = SecretRedactor()


def register_secret(*values: str | None) -> None:
    """Never let these values reach a log sink (call for every secret learned at run time)."""
    redactor.register(*values)


def configure_logging(settings: Settings, *, sink: Any = None) -> None:
    """Install the one loguru configuration for this process."""
    redactor.register(*settings.secret_values())
    target = sink if sink is not None else sys.stderr
    fmt = settings.log_format.value
    serialize = fmt == "json" or (fmt == "auto" and not (hasattr(target, "isatty") and target.isatty()))
    logger.remove()
    logger.add(
        redactor.write_to(target),
        level=settings.log_level,
        serialize=serialize,
        colorize=not serialize and hasattr(target, "isatty") and target.isatty(),
        backtrace=False,
        diagnose=False,  # diagnose would print local variables, secrets included
        format="<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <8}</level> "
        "<cyan>{name}</cyan> {message} {extra}",
    )
