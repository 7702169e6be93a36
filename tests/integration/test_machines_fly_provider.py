"""FlyMachinesProvider (real aiohttp client) against the local fake Machines API."""

from __future__ import annotations

import pytest
from fakes.fly import FakeFlyApi

from tradeengine.domain.enums import MachineStatus
from tradeengine.machines.fly import FlyMachinesProvider
from tradeengine.machines.provider import MachineError, MachineSpec, MachineStartError


def _spec(image: str = "registry.fly.io/tradeengine:v1", memory: int = 512) -> MachineSpec:
    return MachineSpec(
        name="tenant-abc",
        user_id="0b7c5b8e-0000-4000-8000-000000000001",
        image=image,
        env={"TRADEENGINE_USER_ID": "u1", "TRADEENGINE_MODE": "tenant"},
        memory_mb=memory,
        region="ams",
        metadata={"user_id": "u1"},
    )


async def test_create_wait_update_stop_destroy_follow_fly_states() -> None:
    async with FakeFlyApi(token="tok") as fly:
        provider = FlyMachinesProvider(api_url=fly.url, app="tenants", token="tok")
        try:
            info = await provider.create(_spec())
            assert info.state in {"created", "starting"}
            assert info.base_url == f"http://{info.machine_id}.vm.tenants.internal:8080"
            started = await provider.wait_started(info.machine_id, timeout_s=5)
            assert started.state == "started"
            assert started.status is MachineStatus.RUNNING
            assert started.region == "ams"

            _method, path, body = next(r for r in fly.requests if r[0] == "POST")
            assert path == "/v1/apps/tenants/machines"
            assert body["name"] == "tenant-abc"
            assert body["config"]["guest"] == {"cpu_kind": "shared", "cpus": 1, "memory_mb": 512}
            assert body["config"]["env"]["TRADEENGINE_MODE"] == "tenant"
            assert body["config"]["init"]["cmd"] == [
                "serve",
                "--mode",
                "tenant",
                "--user-id",
                _spec().user_id,
            ]
            assert body["config"]["services"][0]["internal_port"] == 8080
            assert body["config"]["metadata"] == {"user_id": "u1"}

            updated = await provider.update_image(info.machine_id, "registry.fly.io/tradeengine:v2")
            assert updated.state == "replacing"
            after = await provider.wait_started(info.machine_id, timeout_s=5)
            assert after.image == "registry.fly.io/tradeengine:v2"
            # The update kept the rest of the config (env, guest) intact.
            assert fly.machines[info.machine_id].config["env"]["TRADEENGINE_USER_ID"] == "u1"
            assert fly.machines[info.machine_id].config["guest"]["memory_mb"] == 512

            await provider.stop(info.machine_id)
            stopped = await provider.get(info.machine_id)
            assert stopped is not None
            assert stopped.status is MachineStatus.STOPPED

            await provider.destroy(info.machine_id)
            gone = await provider.get(info.machine_id)
            assert gone is not None
            assert gone.status is MachineStatus.DESTROYED
            assert ("DELETE", f"/v1/apps/tenants/machines/{info.machine_id}?force=true", None) in fly.requests
        finally:
            await provider.aclose()


async def test_machine_that_fails_to_start_raises_start_failed() -> None:
    async with FakeFlyApi(token="tok") as fly:
        fly.failing_images.add("registry.fly.io/tradeengine:broken")
        provider = FlyMachinesProvider(api_url=fly.url, app="tenants", token="tok")
        try:
            info = await provider.create(_spec(image="registry.fly.io/tradeengine:broken"))
            with pytest.raises(MachineStartError, match="failed"):
                await provider.wait_started(info.machine_id, timeout_s=5)
            state = await provider.get(info.machine_id)
            assert state is not None
            assert state.status is MachineStatus.ERROR
        finally:
            await provider.aclose()


async def test_slow_machine_times_out_with_clear_error() -> None:
    async with FakeFlyApi(token="tok", start_delay_s=30) as fly:
        provider = FlyMachinesProvider(api_url=fly.url, app="tenants", token="tok")
        try:
            info = await provider.create(_spec())
            with pytest.raises(MachineStartError, match="not started after"):
                await provider.wait_started(info.machine_id, timeout_s=1.5)
        finally:
            await provider.aclose()


async def test_api_errors_surface_with_status_and_message() -> None:
    async with FakeFlyApi(token="tok") as fly:
        bad_token = FlyMachinesProvider(api_url=fly.url, app="tenants", token="wrong")
        good = FlyMachinesProvider(api_url=fly.url, app="tenants", token="tok")
        try:
            with pytest.raises(MachineError, match="401"):
                await bad_token.create(_spec())
            with pytest.raises(MachineError, match="multiple of 256"):
                await good.create(_spec(memory=300))
            assert await good.get("doesnotexist") is None
            await good.destroy("doesnotexist")  # already gone is fine
        finally:
            await bad_token.aclose()
            await good.aclose()


async def test_unreachable_api_is_a_machine_error() -> None:
    provider = FlyMachinesProvider(api_url="http://127.0.0.1:9", app="tenants", token="tok", request_timeout_s=2)
    try:
        with pytest.raises(MachineError, match="failed"):
            await provider.create(_spec())
    finally:
        await provider.aclose()
