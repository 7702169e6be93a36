"""Assemble the Gemini-backed AI services from settings (for the composition roots).

One client, one quota limiter (Postgres-backed when the engine is Postgres, so every control-plane
replica and tenant shares the 60/min; in-process on SQLite), one cache, one per-user concurrency
gate, and the active prompt templates from ``ai_prompts``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from tradeengine.ai.cache import AnalysisCache
from tradeengine.ai.gemini import GeminiClient
from tradeengine.ai.gemini_analyst import GeminiAnalyst
from tradeengine.ai.generator import StrategyGenerator
from tradeengine.ai.limiter import PriorityRateLimiter, UserConcurrency, build_rate_limiter
from tradeengine.ai.prompts import PromptLibrary, store_template_loader
from tradeengine.ai.records import SignalAnalysisRecorder
from tradeengine.settings import Settings
from tradeengine.store.engine import SessionFactory


@dataclass(frozen=True, slots=True)
class GeminiServices:
    client: GeminiClient
    limiter: PriorityRateLimiter
    analyst: GeminiAnalyst
    generator: StrategyGenerator


@contextlib.asynccontextmanager
async def gemini_services(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    session_factory: SessionFactory | None = None,
    data_dir: Path | None = None,
    record_analyses: bool = True,
    limiter_window_s: float = 60.0,
) -> AsyncIterator[GeminiServices]:
    """Yield the services; the client is closed on exit. Needs ``settings.gemini_api_key``.

    ``record_analyses``: write ``signal_analyses`` rows (the control plane does; a tenant calling
    Gemini directly may too, given a session factory).
    """
    limiter = build_rate_limiter(limit=settings.gemini_requests_per_minute, window_s=limiter_window_s, engine=engine)
    client = GeminiClient.from_settings(settings, limiter=limiter)
    prompts = PromptLibrary(store_template_loader(session_factory) if session_factory is not None else None)
    recorder = SignalAnalysisRecorder(session_factory) if session_factory is not None and record_analyses else None
    try:
        analyst = GeminiAnalyst(
            client,
            prompts=prompts,
            recorder=recorder,
            cache=AnalysisCache(300.0),
            concurrency=UserConcurrency(settings.analyses_per_user_concurrency),
        )
        generator = StrategyGenerator(
            client,
            data_dir=data_dir or settings.replay_data_dir,
            prompts=prompts,
            default_symbols=settings.default_symbols,
            time_limit_ms=max(100.0, settings.strategy_time_limit_ms),
        )
        yield GeminiServices(client=client, limiter=limiter, analyst=analyst, generator=generator)
    finally:
        await client.aclose()
