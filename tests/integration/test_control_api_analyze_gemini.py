"""analyze-signal on the control plane's Gemini wiring (real google-genai SDK -> fake Gemini).

The app builds its AI services in its lifespan (``gemini_services`` over the app's own engine and
session factory); a signal that is unknown or belongs to someone else is a 404 naming the field,
before any model call or ``signal_analyses`` row.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fakes import ai_samples
from fakes.control_harness import JWT_SECRET, MASTER_KEY, control_harness
from fakes.gemini import FakeGemini, ok
from sqlalchemy import func, select
from starlette.applications import Starlette

from tradeengine.ai.factory import gemini_services
from tradeengine.ai.gemini_analyst import GeminiAnalyst
from tradeengine.ai.limiter import MemoryQuota, PostgresQuota
from tradeengine.api.ai_wiring import AiParts, LazyOfflineAnalyst
from tradeengine.api.auth import issue_user_token
from tradeengine.api.control import create_control_app
from tradeengine.settings import Settings, load_settings
from tradeengine.store.engine import SessionFactory, create_engine, create_session_factory
from tradeengine.store.models import SignalAnalysis

MD = ai_samples.market_data(ai_samples.candles(), 1000)
NO_TRADE = {"decision": "no_trade", "reasoning": "RSI 55, no edge at resistance", "confidence": 35}
ANALYZE_PATHS = ("/v1/signals/analyze", "/functions/v1/analyze-signal")


def _payload(trader: uuid.UUID, signal: uuid.UUID) -> dict[str, Any]:
    return {"traderId": str(trader), "signalId": str(signal), "marketData": MD}


async def _rows(factory: SessionFactory) -> int:
    async with factory() as session:
        return int((await session.execute(select(func.count()).select_from(SignalAnalysis))).scalar_one())


@contextlib.asynccontextmanager
async def _lifespan_app(settings: Settings) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    """The production composition: ``create_control_app`` without services, its lifespan running."""
    app = create_control_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.ready.wait()
        assert app.state.startup_error is None, app.state.startup_error
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control.test") as client:
            yield app, client


async def _assert_foreign_and_unknown_are_404(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    mine: dict[str, uuid.UUID],
    theirs: dict[str, uuid.UUID],
) -> None:
    for path in ANALYZE_PATHS:
        for signal in (theirs["signal"], uuid.uuid4()):
            r = await client.post(path, headers=headers, json=_payload(mine["trader"], signal))
            assert r.status_code == 404, (path, r.text)
            assert r.json() == {"success": False, "error": f"signalId: no signal {signal} for this trader"}
        r = await client.post(path, headers=headers, json=_payload(theirs["trader"], theirs["signal"]))
        assert r.status_code == 404, (path, r.text)
        assert r.json() == {"success": False, "error": f"traderId: no trader {theirs['trader']}"}


async def test_lifespan_wires_gemini_services_and_scopes_analyze(db_url: str) -> None:
    async with FakeGemini() as fake:
        settings = load_settings(
            database_url=db_url, jwt_secret=JWT_SECRET, master_key=MASTER_KEY,
            gemini_api_key="k-123456", gemini_base_url=fake.base_url, gemini_timeout_s=5,
            gemini_requests_per_minute=9, replay_data_dir=ai_samples.MARKET_DIR,
        )  # fmt: skip
        engine = create_engine(settings)
        factory = create_session_factory(engine)
        try:
            alice = await ai_samples.seed_signal(factory)
            bob = await ai_samples.seed_signal(factory)
            headers = {"Authorization": f"Bearer {issue_user_token(JWT_SECRET, alice['user'])}"}
            async with _lifespan_app(settings) as (app, client):
                ai: AiParts = app.state.services.extra["ai"]
                assert ai.gemini is not None
                assert isinstance(ai.analyst, GeminiAnalyst)
                assert ai.analyst is ai.gemini.analyst
                assert ai.generation is not None
                # The quota is the shared one: Postgres-backed on Postgres, in-process on SQLite.
                quota = PostgresQuota if engine.dialect.name == "postgresql" else MemoryQuota
                assert isinstance(ai.gemini.limiter.backend, quota)

                fake.add(ok(NO_TRADE))
                own = _payload(alice["trader"], alice["signal"])
                r = await client.post("/v1/signals/analyze", headers=headers, json=own)
                assert r.status_code == 200, r.text
                assert r.json()["analysis"]["decision"] == "no_trade"
                assert r.json()["analysis"]["confidence"] == 35
                assert len(fake.requests) == 1
                assert ai.gemini.limiter.granted == 1
                # The control plane's analyst recorded it (the recorder got the app's session factory).
                assert await _rows(factory) == 1

                await _assert_foreign_and_unknown_are_404(client, headers, alice, bob)
                # No model call, no quota spent, no row written (or lost) for any refused request.
                assert len(fake.requests) == 1
                assert ai.gemini.limiter.granted == 1
                assert await _rows(factory) == 1
        finally:
            await engine.dispose()


async def test_without_a_key_the_lifespan_keeps_the_offline_analyst(sqlite_url: str) -> None:
    settings = load_settings(database_url=sqlite_url, jwt_secret=JWT_SECRET, master_key=MASTER_KEY)
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    try:
        alice = await ai_samples.seed_signal(factory)
        bob = await ai_samples.seed_signal(factory)
        headers = {"Authorization": f"Bearer {issue_user_token(JWT_SECRET, alice['user'])}"}
        async with _lifespan_app(settings) as (app, client):
            ai: AiParts = app.state.services.extra["ai"]
            assert isinstance(ai.analyst, LazyOfflineAnalyst)
            assert (ai.gemini, ai.generation) == (None, None)
            own = _payload(alice["trader"], alice["signal"])
            r = await client.post("/v1/signals/analyze", headers=headers, json=own)
            assert r.status_code == 200, r.text
            await _assert_foreign_and_unknown_are_404(client, headers, alice, bob)
            r = await client.post("/v1/strategies/generate", headers=headers, json={"description": "RSI dips"})
            assert r.status_code == 503, r.text
    finally:
        await engine.dispose()


@pytest.mark.parametrize("path", ANALYZE_PATHS)
async def test_tenant_token_analyzes_only_its_users_signals(sqlite_url: str, path: str) -> None:
    async with FakeGemini() as fake:
        settings = load_settings(
            database_url=sqlite_url, gemini_api_key="k-123456", gemini_base_url=fake.base_url, gemini_timeout_s=5
        )
        engine = create_engine(settings)
        factory = create_session_factory(engine)
        try:
            async with (
                gemini_services(settings, engine=engine, session_factory=factory) as ai,
                control_harness(sqlite_url, analyst=ai.analyst) as h,
            ):
                mine = await h.seed_rows("alice")
                theirs = await h.seed_rows("bob")
                r = await h.client.post("/v1/machines/provision", headers=h.auth("alice"), json={})
                assert r.status_code == 201, r.text
                token = h.fly.machines[r.json()["machine"]["machineId"]].config["env"]["TRADEENGINE_TENANT_TOKEN"]
                tenant = {"Authorization": f"Bearer {token}"}

                fake.add(ok(NO_TRADE))
                r = await h.client.post(path, headers=tenant, json=_payload(mine["traders"][0], mine["signals"][0]))
                assert r.status_code == 200, r.text
                assert len(fake.requests) == 1
                assert await _rows(factory) == 1

                ids_mine = {"trader": mine["traders"][0], "signal": mine["signals"][0]}
                ids_theirs = {"trader": theirs["traders"][0], "signal": theirs["signals"][0]}
                await _assert_foreign_and_unknown_are_404(h.client, tenant, ids_mine, ids_theirs)
                assert len(fake.requests) == 1
                assert await _rows(factory) == 1
        finally:
            await engine.dispose()
