"""The control plane driving a real `tradeengine serve --mode tenant` process (local provider):
provision, reload on a trader change, graceful destroy; all through the API, tokens derived."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from fakes.control_harness import JWT_SECRET, MASTER_KEY, ScriptedGenerator, strategy_code_validator

from tradeengine.ai.offline import OfflineAnalyst
from tradeengine.api.auth import TokenVerifier, issue_user_token
from tradeengine.api.control import ControlServices, create_control_app
from tradeengine.api.services import ControlService
from tradeengine.domain.secrets import SecretBox
from tradeengine.machines.local import LocalProcessProvider
from tradeengine.machines.service import MachineConfig, MachineService
from tradeengine.settings import load_settings
from tradeengine.store.engine import create_engine, create_session_factory
from tradeengine.store.models import User
from tradeengine.store.uow import UnitOfWork

MARKET = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"


@pytest.mark.slow
async def test_provision_reload_and_destroy_a_real_tenant(sqlite_url: str, tmp_path: Path) -> None:
    settings = load_settings(database_url=sqlite_url, jwt_secret=JWT_SECRET, master_key=MASTER_KEY)
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    env = {
        **os.environ,
        "TRADEENGINE_FEED": "replay",
        "TRADEENGINE_REPLAY_DATA_DIR": str(MARKET),
        "TRADEENGINE_LOG_LEVEL": "WARNING",
        "TRADEENGINE_HEARTBEAT_INTERVAL_S": "1",
    }
    provider = LocalProcessProvider(base_env=env, log_dir=tmp_path, state_dir=tmp_path / "pids")
    box = SecretBox(MASTER_KEY)
    machines = MachineService(
        factory, provider,
        MachineConfig(image="local", database_url=sqlite_url, start_timeout_s=90, health_timeout_s=30),
        box,
    )  # fmt: skip
    service = ControlService(
        factory,
        machines=machines,
        generator=ScriptedGenerator(),
        analyst=OfflineAnalyst(),
        secrets=box,
        validate_code=strategy_code_validator,
    )
    app = create_control_app(
        settings, ControlServices(service, TokenVerifier(jwt_secret=JWT_SECRET, tenant_tokens=machines))
    )
    try:
        async with UnitOfWork(factory) as uow:
            user = uow.users.add(User(email="real@example.com", tier="pro"))
            await uow.commit()
        auth = {"Authorization": f"Bearer {issue_user_token(JWT_SECRET, user.id)}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=120) as c:
            r = await c.post("/v1/strategies/generate", headers=auth, json={"description": "dip buyer"})
            assert r.status_code == 200, r.text
            machine_id = r.json()["machineId"]
            assert machine_id is not None, "provisioning failed: see the tenant log in " + str(tmp_path)
            trader_id = r.json()["trader"]["id"]
            machine = (await c.get("/v1/machines/me", headers=auth)).json()["machine"]
            assert machine["status"] == "running"
            port = machine_id.rsplit("-", 1)[1]
            async with httpx.AsyncClient(timeout=10) as direct:
                health = (await direct.get(f"http://127.0.0.1:{port}/health")).json()
            assert health["mode"] == "tenant"

            r = await c.post(f"/v1/traders/{trader_id}/pause", headers=auth)
            assert r.json()["tenantNotified"] is True  # the real tenant accepted our derived token

            r = await c.post("/v1/machines/destroy", headers=auth, json={"reason": "user_request"})
            assert r.status_code == 200, r.text
            assert r.json()["tenantReached"] is True
            # The tenant replays real candles, so how far it got before the destroy varies; what it
            # reports must be what it left in the database once stopped.
            final_state = r.json()["finalState"]
        assert provider.running() == {}
        async with UnitOfWork(factory) as uow:
            open_positions = await uow.positions.count(user_id=user.id, status="open")
            watching = await uow.signals.count(user_id=user.id, status="watching")
        assert final_state == {"openPositions": open_positions, "watchingSignals": watching}
    finally:
        await provider.aclose()
        await engine.dispose()
