"""Adapters from the AI layer to the control plane's ports, and their assembly from settings.

``StrategyGeneratorAdapter`` turns the AI layer's ``StrategyGenerator`` (generate, prove on real
candles, repair) into the control plane's ``StrategyGeneration`` port. ``build_ai`` picks Gemini
when a key is configured and the offline analyst otherwise (then generation is unavailable: 503).
The Gemini side is ``tradeengine.ai.factory.gemini_services``: one client, the shared quota
(Postgres-backed on Postgres), the analyses cache, the ``signal_analyses`` recorder and the active
``ai_prompts`` templates, all over the control plane's own engine and session factory.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult, Analyst
from tradeengine.ai.hygiene import AIInputError
from tradeengine.api.errors import UpstreamUnavailableError
from tradeengine.api.services import GeneratedTrader, StrategyGeneration, StrategyGenerationError
from tradeengine.domain.enums import Tier
from tradeengine.settings import AnalystKind, Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tradeengine.ai.factory import GeminiServices
    from tradeengine.ai.generator import StrategyGenerator
    from tradeengine.store.engine import SessionFactory

DEFAULT_MARKET_DATA = Path("../shared/data/market")


class LazyOfflineAnalyst:
    """The offline analyst, imported on first use: its numeric stack (numpy, numba kernels) costs seconds
    of start-up that the control plane's health check should not wait for."""

    def __init__(self) -> None:
        self._inner: Analyst | None = None

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        if self._inner is None:
            from tradeengine.ai.offline import OfflineAnalyst

            self._inner = OfflineAnalyst()
        return await self._inner.analyze(request)


class StrategyGeneratorAdapter:
    """``StrategyGeneration`` over the AI layer's ``StrategyGenerator``."""

    def __init__(self, generator: StrategyGenerator) -> None:
        self._generator = generator

    async def generate(self, description: str, *, tier: Tier, user_id: uuid.UUID) -> GeneratedTrader:
        try:
            result = await self._generator.generate(description, tier, correlation_id=uuid.uuid4().hex)
        except AIInputError as exc:
            raise StrategyGenerationError(str(exc).split(": ", 1)[-1]) from None
        if result.retryable:
            raise UpstreamUnavailableError(f"the model is unavailable, try again later: {result.reason}")
        if not result.ok or result.strategy is None:
            raise StrategyGenerationError(result.reason or "no working strategy could be generated")
        strategy = result.strategy
        return GeneratedTrader(
            name=strategy.name,
            signal_code=strategy.signal_code,
            ai_instructions=strategy.ai_instructions,
            timeframes=list(strategy.timeframes),
            check_interval=strategy.check_interval,
            reanalysis_interval=strategy.reanalysis_interval,
            symbols=list(strategy.symbols) if strategy.symbols else None,
            trigger_rate=result.proof.trigger_rate if result.proof is not None else None,
        )


@dataclass(frozen=True, slots=True)
class AiParts:
    generation: StrategyGeneration | None
    analyst: Analyst
    gemini: GeminiServices | None = None  # the wired Gemini set, when configured


@contextlib.asynccontextmanager
async def build_ai(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    session_factory: SessionFactory | None = None,
    market_data_dir: Path | None = None,
) -> AsyncIterator[AiParts]:
    """Gemini-backed generation and analysis when configured, else the offline analyst only.

    ``engine`` selects the quota backend (Postgres: shared across processes) and
    ``session_factory`` enables the recorder and the stored prompt templates; the Gemini client
    is closed on exit.
    """
    use_gemini = settings.gemini_api_key is not None and settings.analyst in {
        AnalystKind.AUTO,
        AnalystKind.GEMINI,
    }
    if not use_gemini:
        yield AiParts(generation=None, analyst=LazyOfflineAnalyst())
        return
    from tradeengine.ai.factory import gemini_services

    data_dir = market_data_dir
    if data_dir is None:
        data_dir = settings.replay_data_dir if settings.replay_data_dir.exists() else DEFAULT_MARKET_DATA
    async with gemini_services(settings, engine=engine, session_factory=session_factory, data_dir=data_dir) as services:
        yield AiParts(
            generation=StrategyGeneratorAdapter(services.generator), analyst=services.analyst, gemini=services
        )
