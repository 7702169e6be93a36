"""MachineService: rolling updates, the dead-machine sweeper, secrets handed to tenants (never logged)."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fakes.control_harness import JWT_SECRET, MASTER_KEY, Harness, control_harness
from loguru import logger

from tradeengine.ai.offline import OfflineAnalyst
from tradeengine.api.auth import TokenVerifier, issue_user_token
from tradeengine.api.control import ControlServices, create_control_app
from tradeengine.api.services import ControlService
from tradeengine.domain.enums import MachineStatus
from tradeengine.domain.secrets import SecretBox
from tradeengine.machines.local import LocalProcessProvider
from tradeengine.machines.service import MachineConfig, MachineService
from tradeengine.settings import load_settings
from tradeengine.store.engine import create_engine, create_session_factory
from tradeengine.store.models import User
from tradeengine.store.uow import UnitOfWork

FAKE_TENANT = str(Path(__file__).resolve().parents[1] / "fakes" / "tenant.py")


@pytest.fixture
async def h(sqlite_url: str) -> AsyncIterator[Harness]:
    async with control_harness(sqlite_url) as harness:
        yield harness


async def _provision_all(h: Harness, names: list[str]) -> list[str]:
    machine_ids = []
    for name in names:
        if name not in h.users:
            await h.add_user(name)
        result = await h.machines.provision(h.users[name])
        machine_ids.append(result.machine.machine_id)
    return machine_ids


async def test_rolling_update_goes_one_at_a_time_and_continues_past_failures(h: Harness) -> None:
    ids = await _provision_all(h, ["alice", "bob", "carol"])
    h.fly.failing_machine_ids.add(ids[1])
    h.tenant.calls.clear()
    outcomes = await h.machines.rolling_update("registry.fly.io/tradeengine:v2")

    assert [(o.machine_id, o.ok, o.step) for o in outcomes] == [
        (ids[0], True, "done"),
        (ids[1], False, "wait"),
        (ids[2], True, "done"),
    ]
    assert "failed" in (outcomes[1].error or "")
    # Each machine was asked to prepare, and healthy ones were health-checked after the update.
    paths = [c[0] for c in h.tenant.calls]
    assert paths.count("/prepare-shutdown") == 3
    assert paths.count("/health") == 2

    # One at a time: machine n's update starts only after machine n-1's last request.
    def last(mid: str) -> int:
        return max(i for i, r in enumerate(h.fly.requests) if mid in r[1])

    def update_post(mid: str) -> int:
        return next(i for i, r in enumerate(h.fly.requests) if r[0] == "POST" and r[1].endswith(f"/machines/{mid}"))

    assert last(ids[0]) < update_post(ids[1])
    assert last(ids[1]) < update_post(ids[2])
    async with UnitOfWork(h.factory) as uow:
        rows = {m.machine_id: m for m in (await uow.machines.list(limit=10)).items}
        assert rows[ids[0]].image == "registry.fly.io/tradeengine:v2"
        assert rows[ids[0]].status == MachineStatus.RUNNING.value
        assert rows[ids[1]].status == MachineStatus.ERROR.value
        failed = await uow.events.latest(rows[ids[1]].id, kind="update_failed")
        assert failed is not None
        assert (failed.message or "").startswith("wait:")


async def test_sweeper_marks_machines_without_heartbeat_as_error(h: Harness) -> None:
    ids = await _provision_all(h, ["alice", "bob"])
    now = datetime.now(UTC)
    async with UnitOfWork(h.factory) as uow:
        rows = {m.machine_id: m for m in (await uow.machines.list(limit=10)).items}
        rows[ids[0]].last_heartbeat = now - timedelta(minutes=3)
        rows[ids[1]].last_heartbeat = now - timedelta(seconds=30)
        await uow.commit()
    dead = await h.machines.sweep_dead_machines()
    assert [m.machine_id for m in dead] == [ids[0]]
    async with UnitOfWork(h.factory) as uow:
        rows = {m.machine_id: m for m in (await uow.machines.list(limit=10)).items}
        assert rows[ids[0]].status == MachineStatus.ERROR.value
        assert rows[ids[1]].status == MachineStatus.RUNNING.value
        event = await uow.events.latest(rows[ids[0]].id, kind="heartbeat_lost")
        assert event is not None
        assert event.payload is not None
        assert event.payload["lastHeartbeat"] is not None
    assert await h.machines.sweep_dead_machines() == []  # error machines are not swept twice


async def test_exchange_keys_are_encrypted_handed_to_the_tenant_and_never_logged(
    sqlite_url: str, tmp_path: Path
) -> None:
    api_key, secret_key = "BINANCEapiKEY" + uuid.uuid4().hex, "BINANCEsecret" + uuid.uuid4().hex
    captured: list[str] = []
    sink = logger.add(lambda m: captured.append(str(m)), level="TRACE", format="{message} {extra} {exception}")
    settings = load_settings(database_url=sqlite_url, jwt_secret=JWT_SECRET, master_key=MASTER_KEY)
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    log = tmp_path / "tenant.jsonl"
    provider = LocalProcessProvider(command=[sys.executable, FAKE_TENANT], log_dir=tmp_path / "logs")
    box = SecretBox(MASTER_KEY)
    machines = MachineService(
        factory, provider,
        MachineConfig(image="local", database_url=sqlite_url, control_url="http://127.0.0.1:1",
                      start_timeout_s=20, extra_env={"FAKE_TENANT_LOG": str(log)}),
        box,
    )  # fmt: skip
    service = ControlService(factory, machines=machines, analyst=OfflineAnalyst(), secrets=box)
    app = create_control_app(
        settings, ControlServices(service, TokenVerifier(jwt_secret=JWT_SECRET, tenant_tokens=machines))
    )
    try:
        async with UnitOfWork(factory) as uow:
            user = uow.users.add(User(email="keys@example.com", tier="elite"))
            await uow.commit()
        auth = {"Authorization": f"Bearer {issue_user_token(JWT_SECRET, user.id)}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            r = await client.put(
                "/v1/me/exchange-keys", headers=auth, json={"apiKey": api_key, "secretKey": secret_key}
            )
            assert r.status_code == 200, r.text
            assert r.json()["user"]["hasExchangeKeys"] is True
            r = await client.put("/v1/me/exchange-keys", headers=auth, json={"apiKey": "short", "secretKey": "x y"})
            assert r.status_code == 422
            assert r.json()["error"].startswith("apiKey:")
            assert "short" not in r.text  # rejected input is not echoed either
            r = await client.post("/v1/machines/provision", headers=auth, json={})
            assert r.status_code == 201, r.text
            machine = r.json()["machine"]
            assert machine["memoryMb"] == 512
            responses = [
                r.text,
                (await client.get("/v1/me", headers=auth)).text,
                (await client.get("/v1/machines/me", headers=auth)).text,
            ]
            r = await client.post("/v1/machines/destroy", headers=auth, json={"reason": "user_request"})
            assert r.json()["tenantReached"] is True
            responses.append(r.text)

        async with UnitOfWork(factory) as uow:
            stored = await uow.users.get(user.id)
            assert stored is not None
            assert stored.binance_api_key is not None
            assert stored.binance_api_key.startswith("v1:")
            assert api_key not in stored.binance_api_key
            assert box.decrypt(stored.binance_api_key, user_id=user.id, field="binance_api_key") == api_key

        start = json.loads(log.read_text().splitlines()[0])
        assert start["env"]["TRADEENGINE_EXCHANGE_API_KEY"] == api_key
        assert start["env"]["TRADEENGINE_EXCHANGE_SECRET"] == secret_key
        assert start["env"]["TRADEENGINE_USER_ID"] == str(user.id)
        assert start["env"]["TRADEENGINE_TENANT_TOKEN"].startswith("tet_")
        assert start["env"]["TRADEENGINE_CONTROL_URL"] == "http://127.0.0.1:1"
    finally:
        await provider.aclose()
        await engine.dispose()
        logger.remove(sink)
    text = "\n".join(captured)
    assert "provision" in text or "started tenant" in text  # the sink did see our logs
    for secret in (api_key, secret_key):
        assert secret not in text
        assert all(secret not in body for body in responses)
