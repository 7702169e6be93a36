"""FlyMachinesProvider: tenant machines through the Fly Machines REST API (aiohttp).

Endpoints used (``{api}/v1/apps/{app}/machines``): ``POST`` create, ``GET /{id}``,
``GET /{id}/wait?state=started&timeout=N``, ``POST /{id}/stop``, ``POST /{id}`` (update config),
``DELETE /{id}?force=true``.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from loguru import logger

from tradeengine.machines.provider import (
    TENANT_PORT,
    MachineError,
    MachineInfo,
    MachineNotFoundError,
    MachineSpec,
    MachineStartError,
    status_for_state,
)

# Fly caps a single wait call at 60 s; longer waits are several calls.
_MAX_WAIT_CALL_S = 60
_TERMINAL_FAILURES = frozenset({"failed", "destroyed", "destroying"})


class FlyMachinesProvider:
    """Machines on Fly. ``tenant_url_template`` says how the control plane reaches a tenant's API;
    the default uses Fly's private DNS (``<id>.vm.<app>.internal``), which works inside the org's
    private network (where the control app runs)."""

    name = "fly"

    def __init__(
        self,
        *,
        api_url: str,
        app: str,
        token: str,
        tenant_url_template: str = "http://{machine_id}.vm.{app}.internal:" + str(TENANT_PORT),
        request_timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._base = f"{api_url.rstrip('/')}/v1/apps/{app}/machines"
        self._app = app
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._template = tenant_url_template
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._session = session
        self._owns_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and self._owns_session and not self._session.closed:
            await self._session.close()

    async def _call(
        self,
        method: str,
        path: str = "",
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        timeout_s: float | None = None,
    ) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s is not None else self._timeout
        try:
            async with self._client().request(
                method, self._base + path, json=body, params=params, headers=self._headers, timeout=timeout
            ) as resp:
                payload: Any = await resp.json(content_type=None) if resp.content_length != 0 else None
                if resp.status not in ok:
                    message = payload.get("error") if isinstance(payload, dict) else None
                    if resp.status == 404:
                        raise MachineNotFoundError(f"fly: {method} {path or '/'}: not found")
                    raise MachineError(f"fly: {method} {path or '/'} returned {resp.status}: {message or ''}")
                return resp.status, payload
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MachineError(f"fly: {method} {path or '/'} failed: {type(exc).__name__}: {exc}") from exc

    def _info(self, machine: dict[str, Any]) -> MachineInfo:
        machine_id = str(machine["id"])
        state = str(machine.get("state", "unknown"))
        config = machine.get("config") or {}
        private_ip = machine.get("private_ip")
        return MachineInfo(
            machine_id=machine_id,
            state=state,
            status=status_for_state(state),
            base_url=self._template.format(
                machine_id=machine_id, app=self._app, private_ip=private_ip or "", port=TENANT_PORT
            ),
            ip_address=str(private_ip) if private_ip else None,
            region=machine.get("region"),
            image=config.get("image"),
        )

    async def create(self, spec: MachineSpec) -> MachineInfo:
        body: dict[str, Any] = {
            "name": spec.name,
            "config": {
                "image": spec.image,
                # The image's default command runs the control plane; a tenant runs the same image
                # with this command instead.
                "init": {"cmd": ["serve", "--mode", "tenant", "--user-id", spec.user_id]},
                "env": dict(spec.env),
                "guest": {"cpu_kind": "shared", "cpus": spec.cpus, "memory_mb": spec.memory_mb},
                "services": [
                    {
                        "protocol": "tcp",
                        "internal_port": TENANT_PORT,
                        "ports": [{"port": 443, "handlers": ["tls", "http"]}],
                        "autostop": "off",
                    }
                ],
                "checks": {
                    "health": {
                        "type": "http",
                        "port": TENANT_PORT,
                        "path": "/health",
                        "interval": "15s",
                        "timeout": "5s",
                    }
                },
                "metadata": dict(spec.metadata),
                "restart": {"policy": "on-failure", "max_retries": 5},
            },
        }
        if spec.region:
            body["region"] = spec.region
        _, machine = await self._call("POST", body=body)
        info = self._info(machine)
        logger.info("fly: created machine {} for user {} ({} MB)", info.machine_id, spec.user_id, spec.memory_mb)
        return info

    async def get(self, machine_id: str) -> MachineInfo | None:
        try:
            _, machine = await self._call("GET", f"/{machine_id}")
        except MachineNotFoundError:
            return None
        return self._info(machine)

    async def wait_started(self, machine_id: str, *, timeout_s: float = 60.0) -> MachineInfo:
        deadline = time.monotonic() + timeout_s
        while True:
            info = await self.get(machine_id)
            if info is None:
                raise MachineStartError(f"fly: machine {machine_id} disappeared while starting")
            if info.state == "started":
                return info
            if info.state in _TERMINAL_FAILURES:
                raise MachineStartError(f"fly: machine {machine_id} is {info.state}, not started")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MachineStartError(f"fly: machine {machine_id} not started after {timeout_s:.0f}s")
            wait_s = max(1, min(_MAX_WAIT_CALL_S, int(remaining)))
            status, _ = await self._call(
                "GET",
                f"/{machine_id}/wait",
                params={"state": "started", "timeout": str(wait_s)},
                ok=(200, 408, 400),
                timeout_s=wait_s + 10,
            )
            if status == 200:
                info = await self.get(machine_id)
                if info is not None and info.state == "started":
                    return info
            # 408 (timed out) or 400 (the machine went to a state that can't reach started):
            # loop to re-read the state, which tells failure from slowness.

    async def stop(self, machine_id: str) -> None:
        await self._call("POST", f"/{machine_id}/stop")

    async def destroy(self, machine_id: str) -> None:
        try:
            await self._call("DELETE", f"/{machine_id}", params={"force": "true"})
        except MachineNotFoundError:
            logger.info("fly: machine {} already gone", machine_id)

    async def update_image(self, machine_id: str, image: str) -> MachineInfo:
        _, machine = await self._call("GET", f"/{machine_id}")
        config = dict(machine.get("config") or {})
        config["image"] = image
        _, updated = await self._call("POST", f"/{machine_id}", body={"config": config})
        return self._info(updated)
