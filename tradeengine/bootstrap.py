"""Composition root: the one place that decides which adapters a process runs with.

Nothing here runs at import time; each builder returns an ASGI app whose lifespan owns (opens and
closes) the engines, clients and tasks it needs.
"""

from __future__ import annotations

from typing import Any

from tradeengine.settings import Mode, Settings


def build_app(settings: Settings) -> Any:
    """Return the ASGI app for ``settings.mode``."""
    if settings.mode is Mode.CONTROL:
        return build_control_app(settings)
    return build_tenant_app(settings)


def build_control_app(settings: Settings) -> Any:
    from tradeengine.api.control import create_control_app  # issue 9: the control-plane API

    return create_control_app(settings)


def build_tenant_app(settings: Settings) -> Any:
    from tradeengine.runtime.bootstrap import build_tenant_app as tenant_app  # issue 6: the tenant runtime

    return tenant_app(settings)
