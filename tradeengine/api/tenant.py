"""The tenant's own HTTP API (seed 000 "Fly Machine Internal APIs"), protected by its bearer token.

``GET /health`` is open (platform health checks carry no token); everything else needs
``Authorization: Bearer <TRADEENGINE_TENANT_TOKEN>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tradeengine import __version__

if TYPE_CHECKING:
    from tradeengine.runtime.bootstrap import Tenant

Handler = Callable[[Request], Awaitable[Response]]


def _authorized(request: Request, token: str | None) -> bool:
    if not token:
        return False  # no token configured: only /health answers
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def _protected(token: str | None, handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        if not _authorized(request, token):
            return JSONResponse(
                {"error": "unauthorized", "detail": "Authorization: Bearer <tenant token> required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return guarded


def prometheus_text(tenant: Tenant) -> str:
    """Prometheus exposition of the runtime's counters and the analysis latency histogram."""
    rt = tenant.runtime
    c = rt.counters
    feed = tenant.feed_status()
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value: float) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value:g}"])

    metric("tradeengine_signal_checks_total", "counter", "Strategy evaluations (trader x symbol).", c.checks)
    metric("tradeengine_signal_triggers_total", "counter", "Evaluations that matched.", c.triggers)
    metric("tradeengine_signals_created_total", "counter", "Signals persisted.", c.signals_created)
    metric(
        "tradeengine_timer_skips_total",
        "counter",
        "Timer firings skipped because a run was still going.",
        rt.scheduler.skipped + c.skipped_busy,
    )
    metric("tradeengine_decisions_total", "counter", "Analyst decisions recorded.", c.decisions)
    metric(
        "tradeengine_decisions_rejected_total",
        "counter",
        "Decisions that could not apply.",
        c.decisions_rejected,
    )
    metric("tradeengine_orders_total", "counter", "Orders accepted by the broker.", c.orders_placed)
    metric("tradeengine_orders_failed_total", "counter", "Orders rejected or unreachable.", c.orders_failed)
    metric(
        "tradeengine_errors_total",
        "counter",
        "Runtime errors (strategy, analysis, trader).",
        c.errors + c.strategy_errors,
    )
    metric("tradeengine_feed_reconnects_total", "counter", "Market feed reconnects.", feed.get("reconnects", 0))
    metric("tradeengine_analysis_queue_depth", "gauge", "Analyses waiting.", rt.queue.depth)
    metric("tradeengine_analysis_in_flight", "gauge", "Analyses running.", rt.queue.in_flight)
    metric(
        "tradeengine_analysis_dropped_total",
        "counter",
        "Analyses dropped (queue full).",
        rt.queue.stats.dropped,
    )
    metric("tradeengine_open_positions", "gauge", "Open positions.", len(rt.state.positions))
    metric("tradeengine_journal_pending", "gauge", "Writes waiting in the local journal.", rt.writer.pending)
    lines.extend(
        rt.queue.stats.latency_ms.prometheus(
            "tradeengine_analysis_latency_ms", "Time from enqueue to decision, milliseconds."
        )
    )
    return "\n".join(lines) + "\n"


def build_tenant_api(tenant: Tenant, token: str | None) -> Starlette:
    """Routes over a running ``Tenant``; handlers only parse, call the runtime and serialize."""

    async def health(_: Request) -> Response:
        return JSONResponse(await tenant.health())

    async def metrics(request: Request) -> Response:
        if "text/plain" in request.headers.get("accept", "") or request.query_params.get("format") == "prometheus":
            return PlainTextResponse(prometheus_text(tenant), media_type="text/plain; version=0.0.4")
        return JSONResponse(tenant.metrics())

    async def prometheus(_: Request) -> Response:
        return PlainTextResponse(prometheus_text(tenant), media_type="text/plain; version=0.0.4")

    async def reload_traders(_: Request) -> Response:
        loaded = await tenant.runtime.reload_traders()
        await tenant.resubscribe()
        return JSONResponse({"success": True, "tradersLoaded": loaded})

    async def prepare_shutdown(_: Request) -> Response:
        return JSONResponse(await tenant.runtime.prepare_shutdown())

    async def shutdown(request: Request) -> Response:
        reason = "shutdown"
        if await request.body():
            try:
                body: Any = await request.json()
            except ValueError:
                return JSONResponse({"error": "invalid_body", "detail": "body must be JSON"}, status_code=400)
            if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
                return JSONResponse({"error": "invalid_body", "detail": "reason must be a string"}, status_code=400)
            reason = body.get("reason") or reason
        return JSONResponse(await tenant.shutdown(reason))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", _protected(token, metrics), methods=["GET"]),
        Route("/metrics/prometheus", _protected(token, prometheus), methods=["GET"]),
        Route("/reload-traders", _protected(token, reload_traders), methods=["POST"]),
        Route("/prepare-shutdown", _protected(token, prepare_shutdown), methods=["POST"]),
        Route("/shutdown", _protected(token, shutdown), methods=["POST"]),
    ]
    return Starlette(routes=routes)


__all__ = ["__version__", "build_tenant_api", "prometheus_text"]
