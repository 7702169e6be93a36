"""Per-route isolation: user A never sees or changes user B's rows (SQLite and Postgres)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakes.control_harness import Harness, control_harness

from tradeengine.store.uow import UnitOfWork


@pytest.fixture
async def h(db_url: str) -> AsyncIterator[Harness]:
    async with control_harness(db_url) as harness:
        yield harness


async def test_reads_only_return_the_callers_rows(h: Harness) -> None:
    mine = await h.seed_rows("alice", count=3)
    theirs = await h.seed_rows("bob", count=4)
    for kind in ("signals", "positions", "trades", "analyses"):
        for who, ids in (("alice", mine), ("bob", theirs)):
            r = await h.client.get(f"/v1/{kind}", params={"limit": 500}, headers=h.auth(who))
            assert r.status_code == 200, r.text
            assert {row["id"] for row in r.json()[kind]} == {str(i) for i in ids[kind]}, (kind, who)
        # Filtering by the other user's trader yields nothing rather than their rows.
        r = await h.client.get(f"/v1/{kind}", params={"traderId": str(theirs["traders"][0])}, headers=h.auth("alice"))
        assert r.json()[kind] == [], kind
    r = await h.client.get("/v1/traders", headers=h.auth("alice"))
    assert [t["id"] for t in r.json()["traders"]] == [str(mine["traders"][0])]
    # A cursor from bob's listing does not leak bob's rows to alice either.
    r = await h.client.get("/v1/signals", params={"limit": 1}, headers=h.auth("bob"))
    cursor = r.json()["nextCursor"]
    r = await h.client.get("/v1/signals", params={"cursor": cursor}, headers=h.auth("alice"))
    assert {row["id"] for row in r.json()["signals"]} <= {str(i) for i in mine["signals"]}


async def test_trader_routes_treat_other_users_traders_as_missing(h: Harness) -> None:
    await h.seed_rows("alice")
    theirs = await h.seed_rows("bob")
    trader = theirs["traders"][0]
    calls = [
        ("GET", f"/v1/traders/{trader}", None),
        ("PATCH", f"/v1/traders/{trader}", {"name": "pwned"}),
        ("POST", f"/v1/traders/{trader}/pause", None),
        ("POST", f"/v1/traders/{trader}/resume", None),
        ("DELETE", f"/v1/traders/{trader}", None),
    ]
    for method, path, body in calls:
        r = await h.client.request(method, path, json=body, headers=h.auth("alice"))
        assert (r.status_code, r.json()["success"]) == (404, False), (method, path)
        assert r.json()["error"] == f"traderId: no trader {trader}"
    async with UnitOfWork(h.factory) as uow:
        row = await uow.traders.get(trader)
        assert row is not None
        assert (row.name, row.status) == ("bob-trader", "active")  # untouched


async def test_machine_routes_and_analyze_are_scoped(h: Harness) -> None:
    mine = await h.seed_rows("alice")
    theirs = await h.seed_rows("bob")
    r = await h.client.post("/v1/machines/provision", headers=h.auth("bob"), json={})
    assert r.status_code == 201
    bob_machine = r.json()["machine"]["machineId"]
    r = await h.client.get("/v1/machines/me", headers=h.auth("alice"))
    assert r.json()["machine"] is None
    r = await h.client.get("/v1/machines/me", params={"userId": str(h.users["bob"])}, headers=h.auth("alice"))
    assert r.status_code == 403
    r = await h.client.post(
        "/v1/machines/destroy",
        headers=h.auth("alice"),
        json={"userId": str(h.users["bob"]), "reason": "user_request"},
    )
    assert r.status_code == 403
    r = await h.client.post("/v1/machines/destroy", headers=h.auth("alice"), json={"reason": "user_request"})
    assert r.status_code == 200
    assert r.json()["tenantReached"] is False  # alice had no machine; bob's is untouched
    assert h.fly.machines[bob_machine].state == "started"
    payload = {
        "traderId": str(theirs["traders"][0]),
        "signalId": str(theirs["signals"][0]),
        "marketData": {"symbol": "BTC/USDT"},
    }
    r = await h.client.post("/v1/signals/analyze", headers=h.auth("alice"), json=payload)
    assert r.status_code == 404
    r = await h.client.post(
        "/v1/signals/analyze",
        headers=h.auth("alice"),
        json=dict(payload, traderId=str(mine["traders"][0]), signalId=str(mine["signals"][0])),
    )
    assert r.status_code == 200
