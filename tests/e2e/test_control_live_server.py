"""The control API over real TCP (hypercorn on loopback): a user's whole journey, and schemathesis
fuzzing every documented operation for 5xx and schema violations."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from fakes.live_control import LiveControl
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tradeengine.api.control import route_table


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LiveControl]:
    template: Path = request.getfixturevalue("_sqlite_template")
    path = tmp_path_factory.mktemp("live-control") / "control.db"
    shutil.copyfile(template, path)
    with LiveControl(f"sqlite+aiosqlite:///{path}", generate_requests_per_minute=1000) as server:
        yield server


def test_user_journey_over_tcp(live: LiveControl) -> None:
    h = live.harness
    assert h is not None
    alice = {"Authorization": f"Bearer {h.tokens['alice']}"}
    with httpx.Client(base_url=live.url, timeout=30) as client:
        assert client.get("/health").json()["status"] == "ok"
        r = client.post("/functions/v1/generate-strategy", headers=alice, json={"description": "RSI dip buyer"})
        assert r.status_code == 200, r.text
        trader_id = r.json()["trader"]["id"]
        machine_id = r.json()["machineId"]
        assert machine_id
        r = client.get("/v1/machines/me", headers=alice)
        assert r.json()["machine"]["status"] == "running"
        r = client.patch(f"/v1/traders/{trader_id}", headers=alice, json={"aiInstructions": "be patient"})
        assert (r.status_code, r.json()["tenantNotified"]) == (200, True)
        ids = live.run(h.seed_rows("alice", count=3))
        r = client.get("/v1/signals", params={"limit": 2}, headers=alice)
        assert len(r.json()["signals"]) == 2
        assert r.json()["nextCursor"]
        token = h.fly.machines[machine_id].config["env"]["TRADEENGINE_TENANT_TOKEN"]
        r = client.post(
            "/v1/signals/analyze",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "traderId": str(ids["traders"][0]),
                "signalId": str(ids["signals"][0]),
                "marketData": {"symbol": "BTCUSDT", "ticker": {"lastPrice": "42500.00"}},
            },
        )
        assert r.status_code == 200, r.text
        r = client.post("/v1/machines/destroy", headers=alice, json={"reason": "user_request"})
        assert r.json()["finalState"] == {"openPositions": 2, "watchingSignals": 5}


def test_openapi_describes_every_route(live: LiveControl) -> None:
    doc = httpx.get(f"{live.url}/openapi.json", timeout=30).json()
    documented = {f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method in ops}
    assert documented == set(route_table())
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            assert "default" in op["responses"]


@pytest.mark.slow
def test_fuzz_no_server_errors_or_schema_violations(live: LiveControl) -> None:
    """Schemathesis over every documented operation: positive and negative data, a few examples each."""
    from schemathesis.checks import positive_data_acceptance

    h = live.harness
    assert h is not None
    headers = {"Authorization": f"Bearer {h.tokens['alice']}"}
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    failures: list[str] = []
    operations: set[str] = set()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        operations.add(f"{operation.method.upper()} {operation.path}")
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=5,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def check(case: schemathesis.Case) -> None:
                # Business rules (unknown ids, tier caps, unparseable symbols) legitimately refuse
                # schema-valid input, so "positive data is accepted" is not a property of this API.
                case.call_and_validate(
                    base_url=live.url, headers=headers, excluded_checks=[positive_data_acceptance], timeout=30
                )

            try:
                check()
            except Unsatisfiable:
                # Negative mode on an operation without parameters or body: nothing to get wrong.
                assert mode is schemathesis.GenerationMode.NEGATIVE
                assert (not operation.query and operation.body is None) or not operation.body
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.method.upper()} {operation.path} [{mode.value}]: {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
    # Schemathesis never fuzzes the document it was loaded from.
    assert operations == set(route_table()) - {"GET /openapi.json"}


async def test_tenant_http_analyst_round_trip(live: LiveControl) -> None:
    """The tenant's real HttpAnalyst (tradeengine.ai) against this API, with a provisioned tenant token."""
    from decimal import Decimal

    from pydantic import SecretStr

    from tradeengine.ai.analyst import AnalysisRequest, PositionSnapshot
    from tradeengine.ai.http_analyst import HttpAnalyst
    from tradeengine.domain.enums import PositionSide

    h = live.harness
    assert h is not None
    user = h.users["bob"]
    ids = live.run(h.seed_rows("bob"))
    machine = live.run(h.machines.provision(user)).machine
    token = h.fly.machines[machine.machine_id].config["env"]["TRADEENGINE_TENANT_TOKEN"]
    request = AnalysisRequest(
        correlation_id="corr-1", user_id=user, trader_id=ids["traders"][0], signal_id=ids["signals"][0],
        symbol="BTC/USDT", ai_instructions="ignored: the control plane uses its own row",
        market_data={"symbol": "BTCUSDT", "ticker": {"lastPrice": "100"}, "klines": {"1h": []}},
        position=PositionSnapshot(
            position_id=ids["positions"][0], side=PositionSide.LONG, entry_price=Decimal("100.5"),
            size=Decimal("0.1"), stop_loss=Decimal("95"), take_profit=None, unrealized_pnl=Decimal(0),
            unrealized_pnl_percent=Decimal(0),
        ),
        is_reanalysis=True, candle_key=1_704_067_200_000, priority=5,
    )  # fmt: skip
    async with HttpAnalyst(live.url, SecretStr(token), max_attempts=1) as analyst:
        result = await analyst.analyze(request)
    assert result.error is None, result.error
    assert result.model == "offline-rules-v1"
    async with HttpAnalyst(live.url, SecretStr("tet_wrong"), max_attempts=1) as analyst:
        refused = await analyst.analyze(request)
    assert refused.error is not None
    assert "401" in refused.error or "revoked" in refused.error
