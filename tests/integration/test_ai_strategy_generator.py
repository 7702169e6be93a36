"""StrategyGenerator: real SDK -> fake Gemini; generated code proven in the real sandbox on real candles."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes import ai_samples
from fakes.gemini import FakeGemini, error, ok
from pydantic import SecretStr

from tradeengine.ai.gemini import GeminiClient
from tradeengine.ai.generator import (
    StrategyGenerator,
    TraderLimitError,
    check_trader_cap,
    ensure_trader_capacity,
    save_generated_trader,
)
from tradeengine.ai.hygiene import AIInputError
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import Trader, User
from tradeengine.store.uow import UnitOfWork

GOOD_CODE = """
def check_signal(symbol, ticker, klines):
    hourly = klines["1h"]
    if len(hourly.close) < 50:
        return False
    rsi = get_latest_rsi(hourly, 14)
    macd, signal, _ = getLatestMACD(klines["4h"])
    return rsi < 40 and macd > signal
"""


def strategy(code: str = GOOD_CODE, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "RSI dip with 4h MACD",
        "signal_code": code,
        "ai_instructions": "Confirm the dip holds above the 4h swing low; stop 1.5 ATR below.",
        "timeframes": ["1h", "4h"],
        "check_interval": "1h_close",
        "reanalysis_interval": "15m",
        "symbols": ["BTCUSDT"],
    }
    base.update(kw)
    return base


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    async with FakeGemini() as server:
        yield server


def generator(fake: FakeGemini) -> StrategyGenerator:
    client = GeminiClient(SecretStr("k-123456"), base_url=fake.base_url, backoff_base_s=0.01, backoff_max_s=0.02)
    return StrategyGenerator(client, data_dir=ai_samples.MARKET_DIR, max_evaluations=300)


async def test_valid_strategy_is_proven_with_trigger_rate(fake: FakeGemini) -> None:
    fake.add(ok(strategy(), prompt_tokens=1500, completion_tokens=400))
    gen = generator(fake)
    result = await gen.generate("Buy BTC when 1h RSI is oversold and 4h MACD is bullish", "pro")
    await gen.client.aclose()
    assert result.ok
    assert result.reason is None
    assert result.rounds == 1
    assert result.strategy is not None
    assert result.strategy.symbols == ["BTC/USDT"]
    proof = result.proof
    assert proof is not None
    assert proof.evaluations >= 250
    assert 0 <= proof.triggers <= proof.evaluations
    assert proof.trigger_rate == proof.triggers / proof.evaluations
    assert 0 < proof.trigger_rate < 1  # this strategy fires sometimes on 2021 BTC, not always
    assert proof.candles["4h"] >= 500
    assert proof.candles["1h"] >= 500
    assert proof.symbols == ("BTC/USDT",)
    assert "4h candles built from 1h candles" in proof.notes
    assert result.total_tokens == 1900
    prompt = fake.requests[0].prompt_text
    assert "def check_signal(symbol, ticker, klines)" in prompt
    assert 'klines["1h"].close' in prompt
    assert "get_latest_rsi(klines, period)" in prompt
    assert "<user_description>" in prompt


async def test_compile_error_is_repaired_on_second_round(fake: FakeGemini) -> None:
    broken = "import os\n\ndef check_signal(symbol, ticker, klines):\n    return os.getcwd() == '/'\n"
    fake.add(ok(strategy(broken)), ok(strategy()))
    gen = generator(fake)
    result = await gen.generate("RSI dip", "elite")
    await gen.client.aclose()
    assert result.ok
    assert result.rounds == 2
    assert result.problems[0].startswith("compiled it:")
    repair = fake.requests[1].last_user_text
    assert "failed when we compiled it" in repair
    assert "os" in repair


async def test_runtime_error_on_real_candles_goes_back_to_the_model(fake: FakeGemini) -> None:
    reads_undeclared = GOOD_CODE.replace('klines["4h"]', 'klines["15m"]')
    fake.add(ok(strategy(reads_undeclared)), ok(strategy()))
    gen = generator(fake)
    result = await gen.generate("RSI dip", "pro")
    await gen.client.aclose()
    assert result.ok
    assert result.rounds == 2
    assert "ran it on real candles" in result.problems[0]
    assert "BTC/USDT at 20" in result.problems[0]
    assert "ran it on real candles" in fake.requests[1].last_user_text


async def test_never_compiles_is_not_saved_and_says_why(fake: FakeGemini) -> None:
    broken = "def check_signal(symbol, ticker, klines)\n    return True\n"  # missing colon
    fake.add(ok(strategy(broken)), ok(strategy(broken)), ok(strategy(broken)), ok(strategy()))
    gen = generator(fake)
    result = await gen.generate("anything", "power")
    await gen.client.aclose()
    assert not result.ok
    assert result.strategy is None
    assert result.proof is None
    assert result.rounds == 3
    assert len(fake.requests) == 3
    assert result.reason is not None
    assert "after 2 repairs" in result.reason
    assert "line" in result.reason


async def test_schema_violation_is_repaired(fake: FakeGemini) -> None:
    fake.add(ok(strategy(timeframes=["7m"], check_interval="soon")), ok(strategy()))
    gen = generator(fake)
    result = await gen.generate("RSI dip", "pro")
    await gen.client.aclose()
    assert result.ok
    assert result.rounds == 2
    assert "timeframes" in result.problems[0]
    assert "check_interval" in result.problems[0]


async def test_model_down_is_a_retryable_failure(fake: FakeGemini) -> None:
    fake.add(error(503), error(503), error(503))
    gen = generator(fake)
    result = await gen.generate("RSI dip", "pro")
    await gen.client.aclose()
    assert not result.ok
    assert result.retryable
    assert result.reason is not None
    assert "model unavailable" in result.reason


@pytest.mark.parametrize(
    ("description", "tier", "field"),
    [
        ("", "pro", "description"),
        ("x" * 10_001, "pro", "description"),
        ("ok", "platinum", "tier"),
    ],
)
async def test_bad_input_names_the_field(fake: FakeGemini, description: str, tier: str, field: str) -> None:
    gen = generator(fake)
    with pytest.raises(AIInputError) as info:
        await gen.generate(description, tier)
    await gen.client.aclose()
    assert info.value.field == field
    assert fake.requests == []


def test_trader_caps_per_tier() -> None:
    assert check_trader_cap("pro", 19) == 1
    assert check_trader_cap("elite", 0) == 50
    assert check_trader_cap("power", 99) == 1
    for tier, cap in (("pro", 20), ("elite", 50), ("power", 100), ("free", 0)):
        with pytest.raises(TraderLimitError):
            check_trader_cap(tier, cap)


async def test_cap_is_enforced_against_the_store(fake: FakeGemini, session_factory: SessionFactory) -> None:
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(User(email=f"{uuid.uuid4().hex[:8]}@example.com", tier="pro"))
        await uow.flush()
        for i in range(19):
            uow.traders.add(
                Trader(
                    user_id=user.id,
                    name=f"t{i}",
                    signal_code="x",
                    ai_instructions="y",
                    timeframes=["1h"],
                    check_interval="1h_close",
                    reanalysis_interval="15m",
                )
            )
        await uow.commit()
        user_id = user.id
    fake.add(ok(strategy()))
    gen = generator(fake)
    result = await gen.generate("RSI dip", "pro")
    await gen.client.aclose()
    async with UnitOfWork(session_factory) as uow:
        assert await ensure_trader_capacity(uow, user_id, "pro") == 1
        trader = await save_generated_trader(uow, user_id=user_id, tier="pro", description="RSI dip", result=result)
        await uow.commit()
    assert trader.signal_code == GOOD_CODE
    assert trader.timeframes == ["1h", "4h"]
    async with UnitOfWork(session_factory) as uow:
        with pytest.raises(TraderLimitError):
            await save_generated_trader(uow, user_id=user_id, tier="pro", description="again", result=result)
        assert await uow.traders.count(user_id=user_id) == 20
