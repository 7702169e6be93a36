"""The health route every process serves, whatever its mode."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tradeengine import __version__

HealthDetails = Callable[[], Awaitable[dict[str, Any]]]


def health_route(mode: str, details: HealthDetails | None = None) -> Route:
    """``GET /health``: 200 with status, mode and version (plus ``details()`` when given)."""

    async def health(_: Request) -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "mode": mode, "version": __version__}
        if details is not None:
            body.update(await details())
        return JSONResponse(body)

    return Route("/health", health, methods=["GET"])
