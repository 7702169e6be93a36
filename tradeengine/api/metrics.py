"""Request metrics of the control plane: JSON for humans and Prometheus text for scrapers."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from typing import Any

LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Histogram:
    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.count += 1
        self.total += seconds


class ControlMetrics:
    """Counters keyed by route template (never the raw path: ids would explode cardinality)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = defaultdict(_Histogram)
        self.events: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        self.latency[route].observe(seconds)

    def count(self, event: str, n: int = 1) -> None:
        self.events[event] += n

    def as_json(self) -> dict[str, Any]:
        by_route: dict[str, dict[str, Any]] = {}
        for (method, route, status), n in sorted(self.requests.items()):
            entry = by_route.setdefault(f"{method} {route}", {"count": 0, "byStatus": {}})
            entry["count"] += n
            entry["byStatus"][str(status)] = n
        for key, entry in by_route.items():
            hist = self.latency[key.split(" ", 1)[1]]
            entry["meanLatencyMs"] = round(1000 * hist.total / hist.count, 3) if hist.count else 0.0
        return {
            "uptimeSeconds": round(time.monotonic() - self.started, 1),
            "requestsTotal": sum(self.requests.values()),
            "routes": by_route,
            "events": dict(sorted(self.events.items())),
        }

    def as_prometheus(self) -> str:
        lines = [
            "# HELP tradeengine_control_requests_total HTTP requests by route and status.",
            "# TYPE tradeengine_control_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.requests.items()):
            lines.append(
                f'tradeengine_control_requests_total{{method="{method}",route="{_esc(route)}",status="{status}"}} {n}'
            )
        lines += [
            "# HELP tradeengine_control_request_seconds Request latency by route.",
            "# TYPE tradeengine_control_request_seconds histogram",
        ]
        for route, hist in sorted(self.latency.items()):
            cumulative = 0
            label = f'route="{_esc(route)}"'
            for bound, n in zip(LATENCY_BUCKETS_S, hist.counts, strict=False):
                cumulative += n
                lines.append(f'tradeengine_control_request_seconds_bucket{{{label},le="{bound}"}} {cumulative}')
            lines.append(f'tradeengine_control_request_seconds_bucket{{{label},le="+Inf"}} {hist.count}')
            lines.append(f"tradeengine_control_request_seconds_sum{{{label}}} {hist.total:.6f}")
            lines.append(f"tradeengine_control_request_seconds_count{{{label}}} {hist.count}")
        lines += [
            "# HELP tradeengine_control_events_total Control-plane events (provisioned, rate_limited, ...).",
            "# TYPE tradeengine_control_events_total counter",
        ]
        for event, n in sorted(self.events.items()):
            lines.append(f'tradeengine_control_events_total{{event="{_esc(event)}"}} {n}')
        lines.append(f"tradeengine_control_uptime_seconds {time.monotonic() - self.started:.1f}")
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
