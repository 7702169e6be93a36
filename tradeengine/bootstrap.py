"""Composition root: the one place that decides which adapters a process runs with.

Nothing here runs at import time; each builder returns an ASGI app whose lifespan owns (opens and
closes) the engines, clients and tasks it needs.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette

from tradeengine.api.health import health_route
from tradeengine.settings import Mode, Settings


def build_app(settings: Settings) -> Any:
    """Return the ASGI app for ``settings.mode``."""
    if settings.mode is Mode.CONTROL:
        return build_control_app(settings)
    return build_tenant_app(settings)


def build_control_app(settings: Settings) -> Any:
    return Starlette(routes=[health_route(Mode.CONTROL.value)])


def build_tenant_app(settings: Settings) -> Any:
    return Starlette(routes=[health_route(Mode.TENANT.value)])
