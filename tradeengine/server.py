"""Run an ASGI app on hypercorn until SIGTERM/SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from loguru import logger

from tradeengine.settings import Settings


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout_s
    config.accesslog = None  # request lines go through our own logging, not hypercorn's
    config.errorlog = None
    return config


async def serve_until_signalled(app: Any, settings: Settings) -> None:
    """Serve ``app``; on SIGTERM or SIGINT stop accepting, run the lifespan shutdown and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logger.info("serving {mode} on {host}:{port}", mode=settings.mode.value, host=settings.host, port=settings.port)
    try:
        await serve(app, hypercorn_config(settings), shutdown_trigger=stop.wait)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    logger.info("stopped")
