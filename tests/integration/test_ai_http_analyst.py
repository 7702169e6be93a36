"""HttpAnalyst against a tiny local aiohttp server standing in for the control plane."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from fakes import ai_samples
from pydantic import SecretStr

from tradeengine.ai.analyst import AnalysisResult
from tradeengine.ai.http_analyst import HttpAnalyst
from tradeengine.ai.hygiene import AIInputError
from tradeengine.ai.wire import request_from_json, result_from_json, result_to_json
from tradeengine.domain.enums import Decision

TOKEN = "tenant-token-abcdef"
USER = uuid.uuid4()
MD = ai_samples.market_data(ai_samples.candles(), 1200)

GOOD = result_to_json(
    AnalysisResult(
        decision=Decision.OPEN_LONG,
        reasoning="breakout",
        confidence=81,
        metadata={
            "stopLoss": Decimal("41800.25"),
            "takeProfit": Decimal("44500"),
            "positionSize": Decimal("0.1"),
        },
        key_levels={"side": "long", "stopLoss": "41800.25"},
        model="gemini-2.5-flash",
        total_tokens=900,
    )
)


@dataclass
class FakeControlPlane:
    script: list[tuple[int, Any, float, dict[str, str]]] = field(default_factory=list)
    seen: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    port: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(({k.lower(): v for k, v in request.headers.items()}, body))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"success": False, "error": "bad token"}, status=401)
        try:  # the real handler's parse step, so the tenant's body is proven readable
            request_from_json(body, user_id=USER, ai_instructions="from the traders row")
        except AIInputError as exc:
            return web.json_response({"success": False, "error": str(exc)}, status=400)
        status, payload, delay, headers = self.script.pop(0) if self.script else (200, GOOD, 0.0, {})
        if delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), delay)
        if isinstance(payload, str):
            return web.Response(text=payload, status=status, headers=headers)
        return web.json_response(payload, status=status, headers=headers)


@pytest.fixture
async def control() -> AsyncIterator[FakeControlPlane]:
    fake = FakeControlPlane()
    app = web.Application()
    app.router.add_post("/v1/signals/analyze", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake
    fake.closing.set()
    await runner.cleanup()


def analyst(port: int, **kw: Any) -> HttpAnalyst:
    token = kw.pop("token", TOKEN)
    options: dict[str, Any] = {"timeout_s": 2.0, "backoff_base_s": 0.01, "backoff_max_s": 0.1}
    options.update(kw)
    return HttpAnalyst(f"http://127.0.0.1:{port}", SecretStr(token), **options)


async def test_happy_path_round_trips_the_seed_shapes(control: FakeControlPlane) -> None:
    position = ai_samples.long_position(Decimal("42000.5"))
    request = ai_samples.request(md=MD, position=position, candle_key=123)
    async with analyst(control.port) as http:
        result = await http.analyze(request)
    assert result.error is None
    assert result.decision is Decision.OPEN_LONG
    assert result.confidence == 81
    assert result.metadata["stopLoss"] == Decimal("41800.25")
    assert result.metadata["positionSize"] == Decimal("0.1")
    assert result.total_tokens == 900
    assert result.model == "gemini-2.5-flash"
    assert result.attempts == 1
    headers, body = control.seen[0]
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["x-correlation-id"] == request.correlation_id
    assert body["traderId"] == str(request.trader_id)
    assert body["signalId"] == str(request.signal_id)
    assert body["marketData"]["klines"]["1h"] == MD["klines"]["1h"]
    assert body["position"]["entryPrice"] == "42000.5"
    assert body["candleKey"] == 123


async def test_503_then_success_is_retried(control: FakeControlPlane) -> None:
    control.script = [(503, {"success": False, "error": "busy"}, 0.0, {})]
    async with analyst(control.port) as http:
        result = await http.analyze(ai_samples.request(md=MD))
    assert result.error is None
    assert result.attempts == 2
    assert len(control.seen) == 2


async def test_429_honours_retry_after(control: FakeControlPlane) -> None:
    control.script = [(429, {"success": False, "error": "slow down"}, 0.0, {"Retry-After": "0.05"})]
    async with analyst(control.port) as http:
        result = await http.analyze(ai_samples.request(md=MD))
    assert result.error is None
    assert result.attempts == 2


async def test_401_is_not_retried_and_gives_safe_default(control: FakeControlPlane) -> None:
    async with analyst(control.port, token="wrong-token-123") as http:
        result = await http.analyze(ai_samples.request(md=MD))
    assert result.decision is Decision.NO_TRADE
    assert result.error is not None
    assert "401" in result.error
    assert len(control.seen) == 1


async def test_400_message_is_kept_in_the_error(control: FakeControlPlane) -> None:
    control.script = [(400, {"success": False, "error": "marketData: must be an object"}, 0.0, {})]
    async with analyst(control.port) as http:
        result = await http.analyze(ai_samples.request(md=MD))
    assert result.error is not None
    assert "HTTP 400: marketData: must be an object" in result.error
    assert len(control.seen) == 1


async def test_stall_keeps_open_position(control: FakeControlPlane) -> None:
    control.script = [(200, GOOD, 5.0, {}), (200, GOOD, 5.0, {})]
    position = ai_samples.long_position(Decimal("42000"))
    async with analyst(control.port, timeout_s=0.2, max_attempts=2) as http:
        result = await http.analyze(ai_samples.request(md=MD, position=position))
    assert result.decision is Decision.WATCH
    assert result.error is not None
    assert "timed out" in result.error
    assert result.attempts == 2


async def test_unreadable_200_is_not_retried(control: FakeControlPlane) -> None:
    control.script = [
        (200, {"success": True, "analysis": {"decision": "moon", "confidence": 5, "reasoning": "x"}}, 0.0, {})
    ]
    async with analyst(control.port) as http:
        result = await http.analyze(ai_samples.request(md=MD))
    assert result.error is not None
    assert "analysis.decision" in result.error
    assert len(control.seen) == 1


async def test_control_plane_down_gives_safe_default() -> None:
    async with analyst(1, max_attempts=2) as http:  # nothing listens on port 1
        result = await http.analyze(ai_samples.request(md=MD))
    assert result.decision is Decision.NO_TRADE
    assert result.error is not None
    assert "control plane unavailable" in result.error


def test_wire_rejects_bad_fields() -> None:
    base = {"traderId": str(uuid.uuid4()), "signalId": str(uuid.uuid4()), "marketData": {"symbol": "BTCUSDT"}}
    parsed = request_from_json(base, user_id=USER, ai_instructions="i")
    assert parsed.symbol == "BTC/USDT"
    assert parsed.ai_instructions == "i"
    for broken, field_name in (
        ({**base, "traderId": "nope"}, "traderId"),
        ({**base, "marketData": {"symbol": "NOT A SYMBOL!"}}, "marketData.symbol"),
        ({**base, "position": {"side": "up"}}, "position.side"),
        ({**base, "candleKey": "soon"}, "candleKey"),
    ):
        with pytest.raises(AIInputError) as info:
            request_from_json(broken, user_id=USER, ai_instructions="i")
        assert info.value.field == field_name
    with pytest.raises(ValueError, match="analysis"):
        result_from_json({"success": False})
