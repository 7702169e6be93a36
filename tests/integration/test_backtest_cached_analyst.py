"""``--analyst cached``: the real google-genai SDK against a local fake Gemini; the second run of
the same backtest is answered from the cache file (no requests) and decides exactly the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fakes.gemini import FakeGemini, RecordedRequest, Reply, ok

from tradeengine.backtest.runner import BacktestConfig, TraderSpec, run_backtest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"
STRATEGY = "def check_signal(symbol, ticker, klines):\n    return get_latest_rsi(klines['1h'], 14) < 40\n"


def no_trade(_: RecordedRequest) -> Reply:
    return ok(
        {
            "decision": "no_trade",
            "reasoning": "momentum still down; wait",
            "confidence": 40,
            "metadata": {},
            "tradePlan": {"setup": "none", "execution": "none", "invalidation": "n/a", "riskReward": 0},
        }
    )


@pytest.mark.slow
async def test_second_run_is_served_from_the_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeGemini(default=no_trade) as fake:
        monkeypatch.setenv("TRADEENGINE_GEMINI_API_KEY", "k-123456")
        monkeypatch.setenv("TRADEENGINE_GEMINI_BASE_URL", fake.base_url)
        config = BacktestConfig(
            traders=(TraderSpec(name="rsi", source=STRATEGY, ai_instructions="Buy dips."),),
            data_dir=DATA,
            symbols=("BTC/USDT",),
            start=datetime(2021, 5, 10, tzinfo=UTC),
            end=datetime(2021, 5, 20, tzinfo=UTC),
            analyst="cached",
            cache_path=tmp_path / "cache.jsonl",
        )
        first = await run_backtest(config)
        asked = len(fake.requests)
        assert asked > 0
        assert first.summary.signals > 0
        assert first.summary.analyses == first.summary.signals  # each signal analysed once: no_trade
        lines = (tmp_path / "cache.jsonl").read_text().splitlines()
        assert len(lines) == asked
        assert json.loads(lines[0])["result"]["decision"] == "no_trade"

        second = await run_backtest(config)
        assert len(fake.requests) == asked  # not one more request
        assert (second.summary.signals, second.summary.analyses) == (first.summary.signals, first.summary.analyses)
        assert second.summary.trades == first.summary.trades == 0


async def test_gemini_analysts_need_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from tradeengine.backtest.errors import BacktestError

    monkeypatch.delenv("TRADEENGINE_GEMINI_API_KEY", raising=False)
    config = BacktestConfig(
        traders=(TraderSpec(name="x", source=STRATEGY),), data_dir=DATA, symbols=("BTC/USDT",), analyst="gemini"
    )
    with pytest.raises(BacktestError, match="TRADEENGINE_GEMINI_API_KEY"):
        await run_backtest(config)
