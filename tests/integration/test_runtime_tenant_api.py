"""The tenant API and boot through ``build_tenant``: auth, health, metrics, reload, shutdown, heartbeat."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from fakes.runtime_world import seed_user
from sqlalchemy import select

from tradeengine.runtime.bootstrap import TenantConfigError, build_tenant
from tradeengine.settings import load_settings
from tradeengine.store.engine import create_engine, create_session_factory
from tradeengine.store.models import FlyMachine, MachineEvent, Trader

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
TOKEN = "tet_api-test"
T0 = 1_606_780_800_000


async def test_tenant_api_end_to_end(sqlite_url: str, tmp_path: Path) -> None:
    engine = create_engine(sqlite_url)
    factory = create_session_factory(engine)
    user_id, (trader_id,) = await seed_user(factory, [{"symbols": ["BTC/USDT"]}])
    async with factory() as session:
        session.add(FlyMachine(user_id=user_id, machine_id="m-1", status="running"))
        await session.commit()
    settings = load_settings(
        mode="tenant",
        user_id=str(user_id),
        database_url=sqlite_url,
        feed="replay",
        replay_data_dir=DATA,
        replay_start_ms=T0 + 86_400_000,
        replay_end_ms=T0 + 2 * 86_400_000,
        analyst="offline",
        tenant_token=TOKEN,
        journal_path=tmp_path / "journal.db",
        heartbeat_interval_s=0.2,
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with build_tenant(settings) as tenant:
        assert tenant.app is not None
        transport = httpx.ASGITransport(app=tenant.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tenant") as http:
            health = (await http.get("/health")).json()
            assert {
                "status",
                "uptime",
                "activeTraders",
                "openPositions",
                "websocketConnected",
                "version",
                "feed",
            } <= set(health)
            assert health["activeTraders"] == 1
            for path in ("/metrics", "/metrics/prometheus"):
                assert (await http.get(path)).status_code == 401
                assert (await http.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await http.post("/shutdown")).status_code == 401
            if tenant.feed_task is not None:
                await tenant.feed_task  # the replayed day
            metrics = (await http.get("/metrics", headers=auth)).json()
            assert {
                "activeTraders",
                "signalsChecked",
                "signalsChecked1h",
                "signalsTriggered1h",
                "signalsTriggered",
                "openPositions",
                "watchingSignals",
                "memoryUsageMB",
                "websocketStatus",
                "lastKlineUpdate",
            } <= set(metrics)
            assert metrics["signalsChecked"] > 200  # 288 five-minute closes in a day, minus warm-up
            assert 0 < metrics["signalsChecked1h"] <= 13  # one check per 5 minutes in the last hour
            prom = await http.get("/metrics/prometheus", headers=auth)
            assert prom.headers["content-type"].startswith("text/plain")
            for name in (
                "tradeengine_signal_checks_total",
                "tradeengine_analysis_latency_ms_bucket",
                "tradeengine_analysis_queue_depth",
                "tradeengine_orders_total",
                "tradeengine_feed_reconnects_total",
                "tradeengine_errors_total",
            ):
                assert name in prom.text
            negotiated = await http.get("/metrics", headers={**auth, "Accept": "text/plain"})
            assert "tradeengine_signal_checks_total" in negotiated.text

            async with factory() as session:
                trader = await session.get(Trader, trader_id)
                assert trader is not None
                session.add(
                    Trader(
                        user_id=user_id,
                        name="second",
                        signal_code=trader.signal_code,
                        ai_instructions="x",
                        timeframes=["5m"],
                        check_interval="1m",
                        reanalysis_interval="5m",
                        symbols=["ETH/USDT"],
                    )
                )
                await session.commit()
            reload = (await http.post("/reload-traders", headers=auth)).json()
            assert reload == {"success": True, "tradersLoaded": 2}
            prepared = (await http.post("/prepare-shutdown", headers=auth)).json()
            assert prepared["accepting"] is False
            assert (await http.post("/shutdown", headers=auth, content=b"[1]")).status_code == 400
            final = (await http.post("/shutdown", headers=auth, json={"reason": "subscription_cancelled"})).json()
            assert final["success"] is True
            assert {"openPositions", "watchingSignals"} <= set(final)
            assert (await http.get("/health")).json()["status"] == "stopped"
    async with factory() as session:
        machine = (await session.execute(select(FlyMachine))).scalar_one()
        assert machine.last_heartbeat is not None
        kinds = {e.kind for e in (await session.execute(select(MachineEvent))).scalars()}
        assert {"started", "traders_reloaded", "stopped"} <= kinds
    await engine.dispose()


async def test_build_tenant_names_bad_settings(sqlite_url: str, tmp_path: Path) -> None:
    settings = load_settings(
        mode="tenant", user_id="not-a-uuid", database_url=sqlite_url, journal_path=tmp_path / "j.db"
    )
    with pytest.raises(TenantConfigError, match="TRADEENGINE_USER_ID"):
        async with build_tenant(settings):
            pass
    missing = load_settings(
        mode="tenant",
        user_id=str(uuid.uuid4()),
        database_url=sqlite_url,
        feed="replay",
        replay_data_dir=DATA,
        journal_path=tmp_path / "j2.db",
        analyst="offline",
    )
    with pytest.raises(ValueError, match="does not exist"):
        async with build_tenant(missing):
            pass
