"""Which analyst ``build_tenant`` wires: HTTP to the real control app, Gemini with the shared
services, and the settings errors. Real SQLite, real hypercorn/aiohttp/google-genai on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes.control_harness import Harness, control_harness
from fakes.gemini import FakeGemini, RecordedRequest, Reply, ok
from hypercorn.asyncio import serve
from hypercorn.config import Config
from sqlalchemy import func, select

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult
from tradeengine.ai.gemini_analyst import GeminiAnalyst
from tradeengine.ai.http_analyst import HttpAnalyst
from tradeengine.ai.offline import OfflineAnalyst
from tradeengine.domain.enums import Decision, PromptType
from tradeengine.runtime.bootstrap import Tenant, TenantConfigError, build_tenant
from tradeengine.settings import Settings, load_settings
from tradeengine.store.engine import SessionFactory, create_engine, create_session_factory
from tradeengine.store.models import AIPrompt, AnalysisHistory, Signal, SignalAnalysis, Trader, User

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
T0 = 1_606_780_800_000
START = T0 + 86_400_000
END = START + 2 * 3_600_000  # two hours of 5m candles: ~24 closes, each firing a signal
ALWAYS = "def check_signal(symbol, ticker, klines):\n    return True\n"
CONTROL_REASONING = "control plane: no edge here"


class RecordingAnalyst:
    """The control plane's analyst: a fixed verdict, and a note of every request it got."""

    def __init__(self) -> None:
        self.requests: list[AnalysisRequest] = []

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        self.requests.append(request)
        return AnalysisResult(decision=Decision.NO_TRADE, reasoning=CONTROL_REASONING, confidence=12)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def _served(harness: Harness) -> AsyncIterator[str]:
    """The harness's control app on real TCP (hypercorn), in this event loop."""
    port = _free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2
    stop = asyncio.Event()
    task = asyncio.create_task(serve(harness.app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if task.done():
                    await task
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _add_trader(factory: SessionFactory, user_id: uuid.UUID) -> uuid.UUID:
    trader_id = uuid.uuid4()
    async with factory() as session:
        session.add(Trader(
            id=trader_id, user_id=user_id, name="always", signal_code=ALWAYS, ai_instructions="buy dips",
            timeframes=["5m"], check_interval="5m_close", reanalysis_interval="1h", symbols=["BTC/USDT"],
        ))  # fmt: skip
        await session.commit()
    return trader_id


def _tenant_settings(db_url: str, user_id: uuid.UUID, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mode": "tenant",
        "user_id": str(user_id),
        "database_url": db_url,
        "feed": "replay",
        "replay_data_dir": DATA,
        "replay_start_ms": START,
        "replay_end_ms": END,
        "journal_path": tmp_path / "journal.db",
        "heartbeat_interval_s": 5,
    }
    values.update(overrides)
    return load_settings(**values)


def _analyst_of(tenant: Tenant) -> object:
    return tenant.runtime.queue._analyst  # the analyst the queue calls


async def _count(factory: SessionFactory, model: Any, *where: Any) -> int:
    async with factory() as session:
        return int((await session.execute(select(func.count()).select_from(model).where(*where))).scalar_one())


async def test_auto_on_a_provisioned_tenant_asks_the_real_control_plane(sqlite_url: str, tmp_path: Path) -> None:
    control_analyst = RecordingAnalyst()
    async with control_harness(sqlite_url, analyst=control_analyst) as h, _served(h) as control_url:
        r = await h.client.post("/v1/machines/provision", headers=h.auth("alice"), json={})
        assert r.status_code == 201, r.text
        token = h.fly.machines[r.json()["machine"]["machineId"]].config["env"]["TRADEENGINE_TENANT_TOKEN"]
        alice = h.users["alice"]
        trader_id = await _add_trader(h.factory, alice)
        # analyst=auto (the default) with no Gemini key: a provisioned tenant asks the control plane.
        settings = _tenant_settings(sqlite_url, alice, tmp_path, control_url=control_url, tenant_token=token)
        assert settings.gemini_api_key is None
        async with build_tenant(settings) as tenant:
            http = _analyst_of(tenant)
            assert isinstance(http, HttpAnalyst)
            assert http.url == f"{control_url}/v1/signals/analyze"
            assert tenant.feed_task is not None
            await tenant.feed_task  # the replayed window; each candle settles its analyses
            await tenant.shutdown("test done")
        assert http._session is None  # the tenant closed the analyst's HTTP session on exit

        # Every analysis went over HTTP, authenticated as alice's tenant, for the tenant's own signals.
        assert len(control_analyst.requests) >= 10
        assert {q.user_id for q in control_analyst.requests} == {alice}
        assert {q.trader_id for q in control_analyst.requests} == {trader_id}
        assert all(q.ai_instructions == "buy dips" for q in control_analyst.requests)  # from the traders row
        assert all(q.market_data.get("klines", {}).get("5m") for q in control_analyst.requests)
        signal_ids = {q.signal_id for q in control_analyst.requests}
        assert len(signal_ids) == len(control_analyst.requests)
        assert await _count(h.factory, Signal, Signal.id.in_(signal_ids)) == len(signal_ids)
        # The tenant applied the control plane's verdicts: its analysis_history carries that reasoning.
        applied = await _count(
            h.factory, AnalysisHistory, AnalysisHistory.trader_id == trader_id,
            AnalysisHistory.reasoning == CONTROL_REASONING,
        )  # fmt: skip
        assert applied == len(control_analyst.requests)
        # The tenant wrote no signal_analyses of its own (the control plane's analyst owns those).
        assert await _count(h.factory, SignalAnalysis) == 0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({}, ["TRADEENGINE_CONTROL_URL", "TRADEENGINE_TENANT_TOKEN"]),
        ({"tenant_token": "tet_x"}, ["TRADEENGINE_CONTROL_URL"]),
        ({"control_url": "http://control.internal:8080"}, ["TRADEENGINE_TENANT_TOKEN"]),
        ({"control_url": "ftp://control", "tenant_token": "tet_x"}, ["TRADEENGINE_CONTROL_URL"]),
    ],
)
async def test_http_without_control_settings_names_the_variables(
    sqlite_url: str, tmp_path: Path, overrides: dict[str, Any], named: list[str]
) -> None:
    engine = create_engine(sqlite_url)
    factory = create_session_factory(engine)
    try:
        async with factory() as session:
            user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", tier="pro")
            session.add(user)
            await session.commit()
        settings = _tenant_settings(sqlite_url, user.id, tmp_path, analyst="http", **overrides)
        with pytest.raises(TenantConfigError) as caught:
            async with build_tenant(settings):
                pytest.fail("the tenant must not start")
        for name in named:
            assert name in str(caught.value)
        if len(named) == 1:
            other = {"TRADEENGINE_CONTROL_URL", "TRADEENGINE_TENANT_TOKEN"} - set(named)
            assert f"{other.pop()} and" not in str(caught.value)
    finally:
        await engine.dispose()


async def test_auto_falls_back_to_offline_without_key_or_full_control_settings(sqlite_url: str, tmp_path: Path) -> None:
    engine = create_engine(sqlite_url)
    factory = create_session_factory(engine)
    try:
        async with factory() as session:
            user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", tier="pro")
            session.add(user)
            await session.commit()
        # A control URL alone (no tenant token) is not a provisioned tenant.
        settings = _tenant_settings(sqlite_url, user.id, tmp_path, control_url="http://control.internal:8080")
        async with build_tenant(settings, start_feed=False) as tenant:
            assert isinstance(_analyst_of(tenant), OfflineAnalyst)
    finally:
        await engine.dispose()


NO_TRADE = {"decision": "no_trade", "reasoning": "RSI 55, no edge", "confidence": 30}


@pytest.mark.parametrize("analyst", ["gemini", "auto"])
async def test_gemini_builds_the_wired_analyst(sqlite_url: str, tmp_path: Path, analyst: str) -> None:
    engine = create_engine(sqlite_url)
    factory = create_session_factory(engine)

    def answer(_: RecordedRequest) -> Reply:
        return ok(NO_TRADE)

    try:
        async with factory() as session:
            user = User(email=f"{uuid.uuid4().hex[:8]}@example.com", tier="pro")
            session.add(user)
            # A newer active template: only an analyst reading ai_prompts will send it.
            session.add(AIPrompt(
                type=PromptType.STRUCTURED_ANALYSIS.value, name="db marker", version=99, is_active=True,
                content="DB-TEMPLATE-MARKER for {{SYMBOL}}\n{{MARKET_DATA}}\n{{INDICATORS}}",
            ))  # fmt: skip
            await session.commit()
        trader_id = await _add_trader(factory, user.id)
        async with FakeGemini(default=answer) as fake:
            settings = _tenant_settings(
                sqlite_url, user.id, tmp_path, analyst=analyst, gemini_api_key="k-123456",
                gemini_base_url=fake.base_url, gemini_timeout_s=5,
                # Ignored: a Gemini key wins over the control plane under AUTO.
                control_url="http://127.0.0.1:9", tenant_token="tet_unused",
            )  # fmt: skip
            async with build_tenant(settings) as tenant:
                gemini = _analyst_of(tenant)
                assert isinstance(gemini, GeminiAnalyst)
                assert gemini.recorder is not None
                assert gemini.cache is not None
                assert gemini.client.limiter is not None  # the shared quota, not a bare client
                assert tenant.feed_task is not None
                await tenant.feed_task
                await tenant.shutdown("test done")
            calls = len(fake.requests)
            assert calls >= 10
            assert all("DB-TEMPLATE-MARKER" in rq.prompt_text for rq in fake.requests)
        # The recorder wrote one signal_analyses row per model call, for this trader.
        assert await _count(factory, SignalAnalysis, SignalAnalysis.trader_id == trader_id) == calls
        rows = await _count(factory, AnalysisHistory, AnalysisHistory.reasoning == NO_TRADE["reasoning"])
        assert rows == calls
    finally:
        await engine.dispose()


async def test_gemini_without_a_key_names_the_variable(sqlite_url: str, tmp_path: Path) -> None:
    settings = _tenant_settings(sqlite_url, uuid.uuid4(), tmp_path, analyst="gemini")
    with pytest.raises(TenantConfigError, match="TRADEENGINE_GEMINI_API_KEY"):
        async with build_tenant(settings):
            pytest.fail("the tenant must not start")
