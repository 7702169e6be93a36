"""generate-strategy through the AI layer's StrategyGenerator: real google-genai SDK -> fake Gemini,
code proven in the real sandbox on real candles, saved by the control plane."""

from __future__ import annotations

from typing import Any

from fakes import ai_samples
from fakes.control_harness import control_harness
from fakes.gemini import FakeGemini, error, ok
from pydantic import SecretStr

from tradeengine.ai.gemini import GeminiClient
from tradeengine.ai.generator import StrategyGenerator
from tradeengine.api.ai_wiring import StrategyGeneratorAdapter
from tradeengine.store.uow import UnitOfWork

GOOD_CODE = """
def check_signal(symbol, ticker, klines):
    hourly = klines["1h"]
    if len(hourly.close) < 50:
        return False
    return get_latest_rsi(hourly, 14) < 40
"""


def _strategy(code: str = GOOD_CODE) -> dict[str, Any]:
    return {
        "name": "RSI dip", "signal_code": code, "ai_instructions": "Confirm the dip; stop 1.5 ATR below.",
        "timeframes": ["1h"], "check_interval": "1h_close", "reanalysis_interval": "15m", "symbols": ["BTCUSDT"],
    }  # fmt: skip


async def test_generate_with_gemini_proves_saves_and_reports_failures(sqlite_url: str) -> None:
    async with FakeGemini() as fake:
        client = GeminiClient(SecretStr("k-123456"), base_url=fake.base_url, backoff_base_s=0.01, backoff_max_s=0.02)
        adapter = StrategyGeneratorAdapter(
            StrategyGenerator(client, data_dir=ai_samples.MARKET_DIR, max_evaluations=200)
        )
        try:
            async with control_harness(sqlite_url, generation=adapter, generate_requests_per_minute=100) as h:
                fake.add(ok(_strategy()))
                r = await h.client.post(
                    "/v1/strategies/generate", headers=h.auth("alice"), json={"description": "Buy BTC dips on 1h RSI"}
                )
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["trader"]["symbols"] == ["BTC/USDT"]
                assert 0 <= body["triggerRate"] <= 1
                assert body["machineId"] is not None

                # Code that never compiles, across every repair round: 400 naming the field, nothing saved.
                fake.add(*(ok(_strategy("def check_signal(:")) for _ in range(3)))
                r = await h.client.post(
                    "/v1/strategies/generate", headers=h.auth("alice"), json={"description": "broken"}
                )
                assert r.status_code == 400, r.text
                assert r.json()["error"].startswith("description:")

                # The model unavailable (repeated 503s): 503, not the client's fault.
                fake.add(*(error(503) for _ in range(10)))
                r = await h.client.post(
                    "/v1/strategies/generate", headers=h.auth("alice"), json={"description": "later"}
                )
                assert r.status_code == 503, r.text
                async with UnitOfWork(h.factory) as uow:
                    assert await uow.traders.count(user_id=h.users["alice"]) == 1
        finally:
            await client.aclose()
