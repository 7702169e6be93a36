"""Every control-API route through an ASGI client, on a real SQLite database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from fakes.control_harness import JWT_SECRET, Harness, control_harness

from tradeengine.api.auth import issue_user_token
from tradeengine.domain.enums import MachineStatus, Tier


@pytest.fixture
async def h(sqlite_url: str) -> AsyncIterator[Harness]:
    # Budgets high enough that only the rate-limit test meets them.
    async with control_harness(sqlite_url, generate_requests_per_minute=1000) as harness:
        yield harness


async def test_health_metrics_openapi_docs_are_public(h: Harness) -> None:
    r = await h.client.get("/health")
    assert r.status_code == 200
    assert r.json()["mode"] == "control"
    doc = (await h.client.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    assert "/functions/v1/generate-strategy" in doc["paths"]
    page = await h.client.get("/docs")
    assert page.status_code == 200
    assert "/v1/traders/{traderId}" in page.text
    await h.client.get("/v1/traders", headers=h.auth("alice"))
    metrics = (await h.client.get("/metrics")).json()
    assert metrics["routes"]["GET /v1/traders"]["byStatus"] == {"200": 1}
    prom = (await h.client.get("/metrics/prometheus")).text
    assert 'tradeengine_control_requests_total{method="GET",route="/v1/traders",status="200"} 1' in prom
    assert "tradeengine_control_request_seconds_bucket" in prom


async def test_auth_failures_are_401_with_envelope(h: Harness) -> None:
    r = await h.client.get("/v1/traders")
    assert r.status_code == 401
    assert r.json() == {"success": False, "error": "Authorization: Bearer <token> header is required"}
    assert r.headers["www-authenticate"] == "Bearer"
    bad = issue_user_token("another-secret-0123456789abcdef0123", h.users["alice"])
    r = await h.client.get("/v1/traders", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401
    assert r.json()["success"] is False
    expired = issue_user_token(JWT_SECRET, h.users["alice"], ttl_s=-3600)
    r = await h.client.get("/v1/traders", headers={"Authorization": f"Bearer {expired}"})
    assert r.json()["error"] == "token has expired"
    wrong_aud = issue_user_token(JWT_SECRET, h.users["alice"], audience="anon")
    r = await h.client.get("/v1/traders", headers={"Authorization": f"Bearer {wrong_aud}"})
    assert "audience" in r.json()["error"]
    r = await h.client.get("/v1/traders", headers={"Authorization": "Bearer tet_unknown"})
    assert r.status_code == 401
    assert r.json()["error"] == "unknown or revoked tenant token"


async def test_unknown_route_and_method_use_envelope(h: Harness) -> None:
    r = await h.client.get("/v1/nope")
    assert (r.status_code, r.json()) == (404, {"success": False, "error": "not found"})
    r = await h.client.put("/v1/traders", headers=h.auth("alice"))
    assert r.status_code == 405
    assert r.json()["success"] is False
    r = await h.client.get("/v1/traders/not-a-uuid", headers=h.auth("alice"))
    assert r.status_code == 404


async def test_generate_saves_trader_and_provisions_first_machine(h: Harness) -> None:
    r = await h.client.post(
        "/v1/strategies/generate",
        headers=h.auth("alice"),
        json={"description": "Buy RSI < 30 on 1h", "tier": "pro", "userId": str(h.users["alice"])},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    trader = body["trader"]
    assert trader["signalCode"].strip().startswith("def check_signal")
    assert trader["recommendedInterval"] == trader["checkInterval"] == "1h_close"
    assert trader["timeframes"] == ["1h", "4h"]
    assert Decimal(trader["positionSizePct"]) == Decimal("10")
    assert body["triggerRate"] == 0.04
    machine_id = body["machineId"]
    assert machine_id in h.fly.machines
    env = h.fly.machines[machine_id].config["env"]
    assert env["TRADEENGINE_USER_ID"] == str(h.users["alice"])
    assert env["TRADEENGINE_TENANT_TOKEN"].startswith("tet_")
    assert h.fly.machines[machine_id].config["guest"]["memory_mb"] == 256

    # Second trader: no new machine, the tenant is told to reload.
    r = await h.client.post(
        "/functions/v1/generate-strategy",
        headers=h.auth("alice"),
        json={"description": "MACD trend", "tier": "pro"},
    )
    assert r.status_code == 200
    assert r.json()["machineId"] is None
    assert len(h.fly.machines) == 1
    assert h.tenant.calls[-1][0] == "/reload-traders"
    assert h.tenant.calls[-1][2] == f"Bearer {env['TRADEENGINE_TENANT_TOKEN']}"


async def test_generate_validation_and_failures_name_the_field(h: Harness) -> None:
    r = await h.client.post("/v1/strategies/generate", headers=h.auth("alice"), json={"tier": "pro"})
    assert (r.status_code, r.json()["error"]) == (422, "description: is required")
    r = await h.client.post(
        "/v1/strategies/generate", headers=h.auth("alice"), json={"description": "x", "tier": "gold"}
    )
    assert r.status_code == 422
    assert r.json()["error"].startswith("tier:")
    r = await h.client.post(
        "/v1/strategies/generate", headers=h.auth("alice"), json={"description": "x", "tier": "elite"}
    )
    assert (r.status_code, r.json()["error"]) == (400, "tier: your account is pro, not elite")
    r = await h.client.post(
        "/v1/strategies/generate",
        headers=h.auth("alice"),
        json={"description": "x", "userId": str(h.users["bob"])},
    )
    assert (r.status_code, r.json()["error"]) == (403, "userId: you can only act for yourself")
    r = await h.client.post("/v1/strategies/generate", headers=h.auth("alice"), content=b"{not json")
    assert (r.status_code, r.json()["error"]) == (400, "body: not valid JSON")
    r = await h.client.post(
        "/v1/strategies/generate", headers=h.auth("alice"), content=b'{"description": "' + b"x" * 1_100_000 + b'"}'
    )
    assert (r.status_code, r.json()["error"]) == (413, "body: larger than 1000000 bytes")
    r = await h.client.post("/v1/strategies/generate", headers=h.auth("alice"), json={"description": "x" * 10_001})
    assert r.status_code == 422
    assert r.json()["error"].startswith("description:")
    r = await h.client.post("/v1/strategies/generate", headers=h.auth("alice"), json=[1, 2])
    assert (r.status_code, r.json()["error"]) == (400, "body: must be a JSON object")
    r = await h.client.post("/v1/strategies/generate", headers=h.auth("alice"), json={"description": "x", "bogus": 1})
    assert r.json()["error"] == "bogus: is not a known field"
    h.generator.fail_with = "the model could not produce code that compiles"
    r = await h.client.post("/v1/strategies/generate", headers=h.auth("alice"), json={"description": "x"})
    assert r.status_code == 400
    assert r.json()["error"] == "description: the model could not produce code that compiles"
    h.generator.fail_with = None
    h.generator.code = "def check_signal(:\n"
    r = await h.client.post("/v1/strategies/generate", headers=h.auth("alice"), json={"description": "x"})
    assert r.status_code == 400
    assert r.json()["error"].startswith("signalCode:")
    async with __import__("tradeengine.store.uow", fromlist=["UnitOfWork"]).UnitOfWork(h.factory) as uow:
        assert await uow.traders.count(user_id=h.users["alice"]) == 0  # nothing half-saved


async def test_tier_caps_are_enforced(h: Harness) -> None:
    free = await h.add_user("carol", Tier.FREE)
    r = await h.client.post("/v1/strategies/generate", headers=h.auth("carol"), json={"description": "x"})
    assert r.status_code == 403
    assert "free" in r.json()["error"]
    r = await h.client.post("/v1/machines/provision", headers=h.auth("carol"), json={})
    assert r.status_code == 403
    assert free not in {m.config["metadata"]["user_id"] for m in h.fly.machines.values()}
    ids = await h.seed_rows("bob")
    assert ids
    from tradeengine.store.models import Trader
    from tradeengine.store.uow import UnitOfWork

    async with UnitOfWork(h.factory) as uow:
        for i in range(19):
            uow.traders.add(
                Trader(
                    user_id=h.users["bob"],
                    name=f"t{i}",
                    signal_code="x",
                    ai_instructions="y",
                    timeframes=["1h"],
                    check_interval="1m",
                    reanalysis_interval="5m",
                )
            )
        await uow.commit()
    r = await h.client.post("/v1/strategies/generate", headers=h.auth("bob"), json={"description": "x"})
    assert (r.status_code, r.json()["error"]) == (403, "tier: pro allows 20 traders and you have 20")
    me = (await h.client.get("/v1/me", headers=h.auth("bob"))).json()["user"]
    assert (me["traderCap"], me["traderCount"], me["tier"]) == (20, 20, "pro")


async def test_trader_crud_pause_resume_delete(h: Harness) -> None:
    ids = await h.seed_rows("alice")
    trader_id = ids["traders"][0]
    r = await h.client.get("/v1/traders", headers=h.auth("alice"))
    assert [t["id"] for t in r.json()["traders"]] == [str(trader_id)]
    r = await h.client.get(f"/v1/traders/{trader_id}", headers=h.auth("alice"))
    assert r.json()["trader"]["name"] == "alice-trader"

    r = await h.client.patch(
        f"/v1/traders/{trader_id}",
        headers=h.auth("alice"),
        json={
            "name": "renamed",
            "symbols": ["ethusdt", "SOL/USDT"],
            "checkInterval": "5m_close",
            "timeframes": ["4h", "1h"],
            "aiInstructions": "be careful",
        },
    )
    assert r.status_code == 200, r.text
    t = r.json()["trader"]
    assert (t["name"], t["symbols"], t["checkInterval"], t["timeframes"]) == (
        "renamed",
        ["ETH/USDT", "SOL/USDT"],
        "5m_close",
        ["1h", "4h"],
    )
    r = await h.client.patch(f"/v1/traders/{trader_id}", headers=h.auth("alice"), json={"checkInterval": "soon"})
    assert r.status_code == 422
    assert r.json()["error"].startswith("checkInterval:")
    r = await h.client.patch(f"/v1/traders/{trader_id}", headers=h.auth("alice"), json={"signalCode": "import os"})
    assert r.status_code == 400
    assert r.json()["error"].startswith("signalCode:")
    r = await h.client.patch(f"/v1/traders/{trader_id}", headers=h.auth("alice"), json={})
    assert r.status_code == 422
    r = await h.client.patch(f"/v1/traders/{trader_id}", headers=h.auth("alice"), json={"clearSymbols": True})
    assert r.json()["trader"]["symbols"] is None

    r = await h.client.post(f"/v1/traders/{trader_id}/pause", headers=h.auth("alice"))
    assert r.json()["trader"]["status"] == "paused"
    r = await h.client.get("/v1/traders?status=paused", headers=h.auth("alice"))
    assert len(r.json()["traders"]) == 1
    r = await h.client.post(f"/v1/traders/{trader_id}/resume", headers=h.auth("alice"))
    assert r.json()["trader"]["status"] == "active"
    r = await h.client.delete(f"/v1/traders/{trader_id}", headers=h.auth("alice"))
    assert r.status_code == 200
    assert r.json() == {"success": True, "id": str(trader_id), "tenantNotified": False}
    r = await h.client.get(f"/v1/traders/{trader_id}", headers=h.auth("alice"))
    assert r.status_code == 404


async def test_reads_filter_and_paginate(h: Harness) -> None:
    ids = await h.seed_rows("alice", count=5)
    await h.seed_rows("alice", symbol="ETH/USDT", count=2)
    r = await h.client.get("/v1/signals?limit=2", headers=h.auth("alice"))
    first = r.json()
    assert len(first["signals"]) == 2
    seen = [s["id"] for s in first["signals"]]
    cursor = first["nextCursor"]
    while cursor:
        r = await h.client.get("/v1/signals", params={"limit": 2, "cursor": cursor}, headers=h.auth("alice"))
        seen += [s["id"] for s in r.json()["signals"]]
        cursor = r.json()["nextCursor"]
    assert len(seen) == len(set(seen)) == 7
    r = await h.client.get("/v1/signals", params={"symbol": "ETHUSDT"}, headers=h.auth("alice"))
    assert {s["symbol"] for s in r.json()["signals"]} == {"ETH/USDT"}
    r = await h.client.get(
        "/v1/signals",
        params={"status": "watching", "traderId": str(ids["traders"][0])},
        headers=h.auth("alice"),
    )
    assert len(r.json()["signals"]) == 2
    r = await h.client.get(
        "/v1/signals",
        params={"since": "2026-01-01T02:00:00Z", "until": "2026-01-01T04:00:00Z"},
        headers=h.auth("alice"),
    )
    assert len(r.json()["signals"]) == 2  # BTC at 02:00 and 03:00; ETH only has 00:00 and 01:00
    r = await h.client.get("/v1/positions", params={"status": "closed"}, headers=h.auth("alice"))
    assert r.json()["positions"][0]["entryPrice"] == "100.12345678"
    r = await h.client.get("/v1/trades", params={"traderId": str(ids["traders"][0])}, headers=h.auth("alice"))
    assert {t["id"] for t in r.json()["trades"]} == {str(i) for i in ids["trades"]}
    r = await h.client.get("/v1/analyses", params={"decision": "open_long", "limit": 100}, headers=h.auth("alice"))
    assert len(r.json()["analyses"]) == 7
    assert r.json()["analyses"][0]["metadata"] == {"stopLoss": "99"}

    for bad, field in [
        ({"limit": 0}, "limit"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"status": "bogus"}, "status"),
        ({"cursor": "zzz"}, "cursor"),
        ({"nope": 1}, "nope"),
        ({"traderId": "x"}, "traderId"),
    ]:
        r = await h.client.get("/v1/signals", params=bad, headers=h.auth("alice"))
        assert r.status_code in (400, 422), (bad, r.text)
        assert r.json()["error"].startswith(f"{field}:"), r.json()


async def test_provision_is_idempotent_and_destroy_records_final_state(h: Harness) -> None:
    r = await h.client.post(
        "/functions/v1/provision-machine",
        headers=h.auth("alice"),
        json={"userId": str(h.users["alice"]), "tier": "pro"},
    )
    assert r.status_code == 201, r.text
    machine = r.json()["machine"]
    assert machine["status"] == "running"
    assert machine["memoryMb"] == 256
    r = await h.client.post("/v1/machines/provision", headers=h.auth("alice"), json={})
    assert (r.status_code, r.json()["created"]) == (200, False)
    assert r.json()["machine"]["machineId"] == machine["machineId"]
    assert len(h.fly.machines) == 1
    r = await h.client.get("/v1/machines/me", headers=h.auth("alice"))
    assert r.json()["machine"]["machineId"] == machine["machineId"]

    r = await h.client.post(
        "/functions/v1/destroy-machine",
        headers=h.auth("alice"),
        json={"userId": str(h.users["alice"]), "reason": "subscription_cancelled"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "success": True,
        "finalState": {"openPositions": 2, "watchingSignals": 5},
        "tenantReached": True,
    }
    assert h.tenant.calls[-1][0] == "/shutdown"
    assert h.tenant.calls[-1][1] == {"reason": "subscription_cancelled"}
    assert h.fly.machines[machine["machineId"]].state == "destroyed"
    r = await h.client.get("/v1/machines/me", headers=h.auth("alice"))
    assert r.json()["machine"] is None
    async with __import__("tradeengine.store.uow", fromlist=["UnitOfWork"]).UnitOfWork(h.factory) as uow:
        row = await uow.machines.get(uuid.UUID(machine["id"]))
        assert row is not None
        assert row.status == MachineStatus.DESTROYED.value
        assert row.final_state == {
            "openPositions": 2,
            "watchingSignals": 5,
            "reason": "subscription_cancelled",
            "graceful": True,
        }
        assert row.tenant_token_hash is None
    # Reasons are a closed set.
    r = await h.client.post("/v1/machines/destroy", headers=h.auth("alice"), json={"reason": "because"})
    assert r.status_code == 422
    assert r.json()["error"].startswith("reason:")


async def test_machine_that_fails_to_start_is_503_and_recorded(h: Harness) -> None:
    h.fly.failing_images.add("registry.fly.io/tradeengine:v1")
    r = await h.client.post("/v1/machines/provision", headers=h.auth("alice"), json={})
    assert r.status_code == 503
    assert "failed" in r.json()["error"]
    r = await h.client.get("/v1/machines/me", headers=h.auth("alice"))
    assert r.json()["machine"]["status"] == "error"
    # Retrying after the cause is fixed replaces the failed machine.
    h.fly.failing_images.clear()
    r = await h.client.post("/v1/machines/provision", headers=h.auth("alice"), json={})
    assert r.status_code == 201
    assert r.json()["machine"]["status"] == "running"
    assert sorted(m.state for m in h.fly.machines.values()) == ["destroyed", "started"]


async def test_admin_acts_for_users_and_tenant_token_scopes_analyze(h: Harness) -> None:
    ids = await h.seed_rows("alice")
    bob_ids = await h.seed_rows("bob")
    r = await h.client.get("/v1/traders", headers=h.auth("admin"))
    assert (r.status_code, r.json()["error"]) == (400, "userId: required with a service-role token")
    r = await h.client.get("/v1/traders", params={"userId": str(h.users["bob"])}, headers=h.auth("admin"))
    assert [t["id"] for t in r.json()["traders"]] == [str(bob_ids["traders"][0])]
    r = await h.client.post("/v1/machines/provision", headers=h.auth("admin"), json={"userId": str(h.users["alice"])})
    assert r.status_code == 201
    machine_id = r.json()["machine"]["machineId"]
    token = h.fly.machines[machine_id].config["env"]["TRADEENGINE_TENANT_TOKEN"]
    tenant = {"Authorization": f"Bearer {token}"}

    payload = {
        "traderId": str(ids["traders"][0]),
        "signalId": str(ids["signals"][0]),
        "marketData": {"symbol": "BTCUSDT", "ticker": {"lastPrice": "100"}, "klines": {"1h": []}},
    }
    r = await h.client.post("/functions/v1/analyze-signal", headers=tenant, json=payload)
    assert r.status_code == 200, r.text
    assert r.json()["analysis"]["decision"] in {"no_trade", "watch", "open_long", "open_short"}
    assert 0 <= r.json()["analysis"]["confidence"] <= 100
    # The tenant token of alice can't analyze bob's trader, nor read the user API.
    other = dict(payload, traderId=str(bob_ids["traders"][0]), signalId=str(bob_ids["signals"][0]))
    r = await h.client.post("/v1/signals/analyze", headers=tenant, json=other)
    assert r.status_code == 404
    r = await h.client.get("/v1/traders", headers=tenant)
    assert (r.status_code, r.json()["error"]) == (403, "tenant tokens may not call this endpoint")
    # Signal of another trader of the same user is not accepted either.
    r = await h.client.post(
        "/v1/signals/analyze", headers=tenant, json=dict(payload, signalId=str(bob_ids["signals"][0]))
    )
    assert r.status_code == 404
    # After destroy the tenant token is revoked.
    r = await h.client.post(
        "/v1/machines/destroy",
        headers=h.auth("admin"),
        json={"userId": str(h.users["alice"]), "reason": "admin"},
    )
    assert r.status_code == 200
    r = await h.client.post("/v1/signals/analyze", headers=tenant, json=payload)
    assert (r.status_code, r.json()["error"]) == (401, "unknown or revoked tenant token")
    r = await h.client.post("/v1/machines/destroy", headers=h.auth("alice"), json={"reason": "admin"})
    assert r.status_code == 403


async def test_rate_limit_on_generate_is_per_user(sqlite_url: str) -> None:
    async with control_harness(sqlite_url, generate_requests_per_minute=2) as h:
        for _ in range(2):
            r = await h.client.post("/v1/strategies/generate", headers=h.auth("alice"), json={"description": "x"})
            assert r.status_code == 200
        r = await h.client.post("/v1/strategies/generate", headers=h.auth("alice"), json={"description": "x"})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"].startswith("rate limit:")
        r = await h.client.post("/v1/strategies/generate", headers=h.auth("bob"), json={"description": "x"})
        assert r.status_code == 200
        assert (await h.client.get("/metrics")).json()["events"]["rate_limited_generate"] == 1
