"""Per-call limits and the budget state the injected checks update while strategy code runs."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from typing import Any

from tradeengine.sandbox.errors import RuntimeKind

# The wall-clock budget is an elapsed-time measurement, not domain time, so it reads the
# monotonic clock directly instead of going through tradeengine.clock: it sits on the hottest
# path of the sandbox and must not be replaced by a simulated clock during backtests.
monotonic = time.monotonic
_thread_time = time.thread_time
# A call past its wall-clock budget that has used less than this share of the budget on CPU was
# mostly descheduled (a loaded host, GIL contention), not busy; it gets more wall time, up to
# _HARD_WALL_FACTOR times the budget.
_MIN_CPU_SHARE = 0.5
_HARD_WALL_FACTOR = 4.0
_MAX_GC_CREDIT = 0.5


class _GcClock:
    """Total wall and CPU time spent in garbage collections, from gc.callbacks.

    A full collection of a large heap can take tens of milliseconds on a busy host; it is the
    interpreter's time, not the strategy's, so budgets subtract it.
    """

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._wall_start = 0.0
        self._cpu_start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._wall_start = monotonic()
            self._cpu_start = _thread_time()
        else:
            self.wall += monotonic() - self._wall_start
            self.cpu += _thread_time() - self._cpu_start


gc_clock = _GcClock()
gc.callbacks.append(gc_clock)

TICKS_PER_CLOCK_READ = 64  # loop iterations / calls between two clock reads
BIG_ITEMS = 512  # an allocation at least this large re-checks time and memory before it happens
_RSS_INTERVAL_S = 0.001  # sample the process RSS at most once per millisecond of strategy time
_RSS_BYTES_STEP = 1 << 20  # ...or after every MiB of large guarded allocations


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Limits for one strategy call (and for loading its module body)."""

    time_limit_ms: float = 50.0
    memory_limit_mb: float = 64.0
    max_depth: int = 50
    max_output_chars: int = 10_000
    max_items: int = 100_000
    max_int_bits: int = 10_000
    max_source_chars: int = 64_000

    def __post_init__(self) -> None:
        for name in (
            "time_limit_ms",
            "memory_limit_mb",
            "max_depth",
            "max_output_chars",
            "max_items",
            "max_int_bits",
            "max_source_chars",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    @property
    def memory_limit_bytes(self) -> int:
        return int(self.memory_limit_mb * 1024 * 1024)


class LimitExceeded(BaseException):
    """Raised inside strategy code when a limit trips.

    A BaseException so that ``except Exception:`` in strategy code does not swallow it; the
    budget is sticky, so even a bare ``except:`` only gets until the next loop iteration or call.
    """

    def __init__(self, kind: RuntimeKind, message: str) -> None:
        super().__init__(message)
        self.kind: RuntimeKind = kind
        self.message = message


class _RssReader:
    """Resident set size of this process from /proc (Linux); 0 where unavailable."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None

    def __call__(self) -> int:
        if self._fd is None:
            return 0
        try:
            fields = os.pread(self._fd, 128, 0).split()
            return int(fields[1]) * self._page
        except (OSError, IndexError, ValueError):
            return 0


read_rss = _RssReader()


class Budget:
    """Mutable per-strategy state the injected checks touch; reset before every call."""

    __slots__ = (
        "big_bytes",
        "cpu_started",
        "deadline",
        "depth",
        "gc_cpu_started",
        "gc_wall_started",
        "kind",
        "limits",
        "message",
        "next_rss_time",
        "rss_base",
        "started",
        "ticks",
        "time_limit_s",
        "tripped",
    )

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits
        self.time_limit_s = limits.time_limit_ms / 1000.0
        self.ticks = TICKS_PER_CLOCK_READ
        self.deadline = 0.0
        self.started = 0.0
        self.cpu_started = 0.0
        self.gc_wall_started = 0.0
        self.gc_cpu_started = 0.0
        self.depth = 0
        self.tripped = False
        self.kind: RuntimeKind = "error"
        self.message = ""
        self.rss_base = -1
        self.next_rss_time = 0.0
        self.big_bytes = 0

    def start(self) -> None:
        now = monotonic()
        self.started = now
        self.cpu_started = -1.0  # read at the first slow check: a syscall costs ~1 us per call
        self.gc_wall_started = gc_clock.wall
        self.gc_cpu_started = gc_clock.cpu
        self.deadline = now + self.time_limit_s
        self.ticks = TICKS_PER_CLOCK_READ
        self.depth = 0
        self.tripped = False
        self.rss_base = -1  # taken lazily: reading /proc costs more than a whole cheap call
        self.next_rss_time = now + _RSS_INTERVAL_S
        self.big_bytes = 0

    def trip(self, kind: RuntimeKind, message: str) -> LimitExceeded:
        if not self.tripped:
            self.tripped = True
            self.kind = kind
            self.message = message
        self.ticks = -1  # every later check raises again
        return LimitExceeded(self.kind, self.message)

    def slow_check(self) -> None:
        """Run when the tick counter runs out: re-raise if tripped, else check the clock and RSS."""
        if self.tripped:
            raise LimitExceeded(self.kind, self.message)
        self.ticks = TICKS_PER_CLOCK_READ
        if self.cpu_started < 0:
            self.cpu_started = _thread_time()
        now = monotonic()
        if now > self.deadline:
            self.check_time(now)
        if now >= self.next_rss_time:
            self.next_rss_time = now + _RSS_INTERVAL_S
            self.check_memory(0)

    def check_memory(self, upcoming: int) -> None:
        rss = read_rss()
        if rss == 0:
            return
        if self.rss_base < 0:
            self.rss_base = rss
        if rss - self.rss_base + upcoming > self.limits.memory_limit_bytes:
            raise self.trip("memory", f"memory limit of {self.limits.memory_limit_mb:g} MB exceeded")

    def big(self, nbytes: int) -> None:
        """Vet a large allocation before it happens: size cap, clock and (every MiB) memory."""
        if self.tripped:
            raise LimitExceeded(self.kind, self.message)
        if nbytes > self.limits.memory_limit_bytes:
            raise self.trip("memory", f"memory limit of {self.limits.memory_limit_mb:g} MB exceeded")
        if self.cpu_started < 0:
            self.cpu_started = _thread_time()
        now = monotonic()
        if now > self.deadline:
            self.check_time(now)
        self.big_bytes += nbytes
        if self.big_bytes >= _RSS_BYTES_STEP or now >= self.next_rss_time or self.rss_base < 0:
            self.big_bytes = 0
            self.next_rss_time = now + _RSS_INTERVAL_S
            self.check_memory(nbytes)

    def check_time(self, now: float) -> None:
        """Trip on a spent wall-clock budget unless the call was mostly waiting for a CPU.

        Garbage-collection pauses are not charged; a call that used less than half its budget
        on CPU was descheduled (loaded host, GIL) and may run up to 4x its budget of wall time.
        A call that never reached a slow check (fewer than TICKS_PER_CLOCK_READ loop iterations
        and calls, no large allocation) has no CPU reading and is treated the same way: all it
        can have done is a bounded amount of straight-line work.
        """
        budget = self.time_limit_s
        # At most half a budget of GC is forgiven: a strategy that allocates containers
        # non-stop causes its own collections, and must still stop within twice its budget.
        wall = now - self.started - min(gc_clock.wall - self.gc_wall_started, budget * _MAX_GC_CREDIT)
        if wall <= budget:
            return
        if wall <= budget * _HARD_WALL_FACTOR:
            if self.cpu_started < 0:
                return
            gc_cpu = min(gc_clock.cpu - self.gc_cpu_started, budget * _MAX_GC_CREDIT)
            if _thread_time() - self.cpu_started - gc_cpu < budget * _MIN_CPU_SHARE:
                return
        raise self.trip("timeout", f"time limit of {self.limits.time_limit_ms:g} ms exceeded")
