"""LocalProcessProvider: real subprocesses on loopback (the fake tenant script stands in for the runtime)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tradeengine.domain.enums import MachineStatus
from tradeengine.machines.local import LocalProcessProvider
from tradeengine.machines.provider import MachineSpec, MachineStartError
from tradeengine.machines.tenant_client import TenantClient, TenantUnreachableError

FAKE_TENANT = str(Path(__file__).resolve().parents[1] / "fakes" / "tenant.py")
USER = "6f1c2d3e-0000-4000-8000-00000000000a"


def _spec(log: Path, **env: str) -> MachineSpec:
    return MachineSpec(
        name=f"tenant-{USER[:8]}",
        user_id=USER,
        image="local",
        env={"TRADEENGINE_TENANT_TOKEN": "tet_secret", "FAKE_TENANT_LOG": str(log), **env},
        memory_mb=256,
    )


def _log_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


async def test_spawn_wait_call_and_destroy(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    provider = LocalProcessProvider(command=[sys.executable, FAKE_TENANT], log_dir=tmp_path / "logs")
    try:
        info = await provider.create(_spec(log))
        started = await provider.wait_started(info.machine_id, timeout_s=20)
        assert started.status is MachineStatus.RUNNING
        assert started.base_url is not None
        assert started.base_url.startswith("http://127.0.0.1:")

        start = _log_lines(log)[0]
        assert start["argv"][:4] == ["serve", "--mode", "tenant", "--user-id"]  # type: ignore[index]
        env = start["env"]
        assert isinstance(env, dict)
        assert env["TRADEENGINE_TENANT_TOKEN"] == "tet_secret"
        assert env["TRADEENGINE_PORT"] == started.base_url.rsplit(":", 1)[1]

        client = TenantClient(started.base_url, "tet_secret")
        assert (await client.reload_traders())["success"] is True
        with pytest.raises(TenantUnreachableError, match="401"):
            await TenantClient(started.base_url, "tet_wrong").reload_traders()

        final = await client.shutdown("user_request")
        assert (final.open_positions, final.watching_signals) == (2, 5)
        await provider.destroy(info.machine_id)
        assert await provider.get(info.machine_id) is None
    finally:
        await provider.aclose()


async def test_update_restarts_on_same_port(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    provider = LocalProcessProvider(command=[sys.executable, FAKE_TENANT])
    try:
        info = await provider.create(_spec(log))
        first = await provider.wait_started(info.machine_id, timeout_s=20)
        await provider.update_image(info.machine_id, "v2")
        second = await provider.wait_started(info.machine_id, timeout_s=20)
        assert second.base_url == first.base_url
        assert second.image == "v2"
        assert sum(1 for line in _log_lines(log) if line["path"] == "<start>") == 2
    finally:
        await provider.aclose()
    assert provider.running() == {}


async def test_tenant_that_exits_fails_to_start(tmp_path: Path) -> None:
    provider = LocalProcessProvider(command=[sys.executable, FAKE_TENANT])
    try:
        info = await provider.create(_spec(tmp_path / "x.jsonl", FAKE_TENANT_EXIT="1"))
        with pytest.raises(MachineStartError, match="exited with code 3"):
            await provider.wait_started(info.machine_id, timeout_s=20)
        state = await provider.get(info.machine_id)
        assert state is not None
        assert state.status is MachineStatus.ERROR
    finally:
        await provider.aclose()
