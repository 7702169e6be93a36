"""Runtime counters and a latency histogram, rendered as the seed's JSON and as Prometheus text."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Analysis latency buckets in milliseconds (an LLM call takes seconds; the offline analyst < 1 ms).
DEFAULT_BUCKETS_MS: tuple[float, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


@dataclass(slots=True)
class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics) plus exact quantiles over a bounded sample."""

    buckets: tuple[float, ...] = DEFAULT_BUCKETS_MS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0
    _sample: list[float] = field(default_factory=list)
    max_sample: int = 10_000

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1
        if len(self._sample) < self.max_sample:
            self._sample.append(value)

    def quantile(self, q: float) -> float | None:
        if not self._sample:
            return None
        ordered = sorted(self._sample)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index]

    def prometheus(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
        cumulative += self.counts[-1]
        lines.append(f'{name}_bucket{{le="+Inf"}} {cumulative}')
        lines.append(f"{name}_sum {self.total:g}")
        lines.append(f"{name}_count {self.count}")
        return lines


@dataclass(slots=True)
class RuntimeCounters:
    """Plain counters the runtime bumps on its hot path (ints, no locks: one event loop)."""

    checks: int = 0  # strategy evaluations (trader x symbol)
    series_skips: int = 0  # replay closes the series form answered without a check_signal call
    series_errors: int = 0  # series forms that failed (their pairs are checked every close)
    triggers: int = 0  # evaluations that matched
    signals_created: int = 0
    signals_suppressed: int = 0  # matched while the trader+symbol already had an active signal
    skipped_busy: int = 0  # timer firings skipped because the previous run was still going
    strategy_errors: int = 0
    decisions: int = 0
    decisions_rejected: int = 0
    orders_placed: int = 0
    orders_failed: int = 0
    positions_opened: int = 0
    positions_closed: int = 0
    monitor_checks: int = 0
    errors: int = 0
    journaled_writes: int = 0
    journal_replayed: int = 0
    heartbeats: int = 0
    heartbeat_failures: int = 0
    reanalyses: int = 0
