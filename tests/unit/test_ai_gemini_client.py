"""The Gemini client (real google-genai SDK) against the local fake Gemini server."""

from __future__ import annotations

import time

import pytest
from fakes.gemini import FakeGemini, error, ok, stall
from pydantic import SecretStr

from tradeengine.ai.gemini import GeminiClient, GeminiError, Turn, parse_reply
from tradeengine.ai.limiter import MemoryQuota, PriorityRateLimiter
from tradeengine.ai.schemas import AnalysisOutput

VALID = {"decision": "watch", "reasoning": "RSI 41, no edge yet", "confidence": 55}


def client(fake: FakeGemini, **kw: object) -> GeminiClient:
    options: dict[str, object] = {
        "base_url": fake.base_url,
        "timeout_s": 2.0,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    }
    options.update(kw)
    return GeminiClient(SecretStr("test-key-123"), **options)  # type: ignore[arg-type]


async def test_valid_json_reply_carries_text_tokens_and_request_shape() -> None:
    async with FakeGemini() as fake:
        fake.add(ok(VALID, prompt_tokens=120, completion_tokens=30))
        async with client(fake, model="gemini-2.5-flash") as gemini:
            reply = await gemini.generate_json("analyse this", AnalysisOutput, system_instruction="be brief")
    parsed, problem = parse_reply(reply.text, AnalysisOutput)
    assert problem is None
    assert parsed is not None
    assert parsed.decision == "watch"
    assert parsed.confidence == 55
    assert (reply.prompt_tokens, reply.completion_tokens, reply.total_tokens) == (120, 30, 150)
    assert reply.attempts == 1
    assert reply.model_ms > 0
    sent = fake.requests[0]
    assert sent.model == "gemini-2.5-flash"
    assert sent.api_version == "v1beta"
    assert sent.headers["x-goog-api-key"] == "test-key-123"
    config = sent.body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert "decision" in config["responseSchema"]["properties"]
    assert len(config["responseSchema"]["properties"]["decision"]["enum"]) == 11
    assert sent.body["systemInstruction"]["parts"][0]["text"] == "be brief"


async def test_429_then_success_is_retried() -> None:
    async with FakeGemini() as fake:
        fake.add(error(429), ok(VALID))
        async with client(fake) as gemini:
            reply = await gemini.generate_json("x", AnalysisOutput)
    assert reply.attempts == 2
    assert len(fake.requests) == 2


async def test_repeated_500s_give_up_after_max_attempts() -> None:
    async with FakeGemini() as fake:
        fake.add(error(500), error(503), error(500), ok(VALID))
        async with client(fake, max_attempts=3) as gemini:
            with pytest.raises(GeminiError) as info:
                await gemini.generate_json("x", AnalysisOutput)
    assert info.value.retryable
    assert info.value.status == 500
    assert info.value.attempts == 3
    assert len(fake.requests) == 3  # the fourth, successful reply was never asked for


async def test_400_is_not_retried() -> None:
    async with FakeGemini() as fake:
        fake.add(error(400, "bad schema"), ok(VALID))
        async with client(fake) as gemini:
            with pytest.raises(GeminiError) as info:
                await gemini.generate_json("x", AnalysisOutput)
    assert info.value.status == 400
    assert not info.value.retryable
    assert len(fake.requests) == 1


async def test_stall_past_timeout_is_cut_and_retried() -> None:
    async with FakeGemini() as fake:
        fake.add(stall(5.0), ok(VALID))
        async with client(fake, timeout_s=0.3) as gemini:
            started = time.perf_counter()
            reply = await gemini.generate_json("x", AnalysisOutput)
            elapsed = time.perf_counter() - started
    assert reply.attempts == 2
    assert elapsed < 2.0  # the 5 s stall was abandoned at ~0.3 s


async def test_stall_on_every_attempt_raises_timeout() -> None:
    async with FakeGemini() as fake:
        fake.add(stall(5.0), stall(5.0))
        async with client(fake, timeout_s=0.2, max_attempts=2) as gemini:
            with pytest.raises(GeminiError, match="timed out"):
                await gemini.generate_json("x", AnalysisOutput)


async def test_every_attempt_passes_the_limiter_and_multi_turn_is_sent() -> None:
    limiter = PriorityRateLimiter(MemoryQuota(10, 60.0))
    async with FakeGemini() as fake:
        fake.add(error(503), ok(VALID))
        async with client(fake, limiter=limiter) as gemini:
            await gemini.generate_json([Turn("user", "a"), Turn("model", "{}"), Turn("user", "fix it")], AnalysisOutput)
    assert limiter.granted == 2
    roles = [c["role"] for c in fake.requests[-1].body["contents"]]
    assert roles == ["user", "model", "user"]


def test_parse_reply_names_the_problem() -> None:
    value, problem = parse_reply("{not json", AnalysisOutput)
    assert value is None
    assert problem is not None
    assert "not valid JSON" in problem
    value, problem = parse_reply('{"decision": "buy_now", "reasoning": "x", "confidence": 150}', AnalysisOutput)
    assert value is None
    assert problem is not None
    assert "decision" in problem
    assert "confidence" in problem


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="gemini_api_key"):
        GeminiClient(SecretStr(""))
