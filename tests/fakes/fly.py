"""A local fake of the Fly Machines REST API (aiohttp), with the real endpoint shapes and states.

Machines move created -> starting -> started after ``start_delay_s``; an image listed in
``failing_images`` goes created -> starting -> failed instead (a machine that fails to start).
Updates go replacing -> starting -> started (or failed; ``failing_machine_ids`` makes one chosen
machine fail its next start). Every request is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeMachine:
    id: str
    name: str
    region: str
    config: dict[str, Any]
    state: str = "created"
    instance_id: str = field(default_factory=lambda: secrets.token_hex(13).upper())
    private_ip: str = field(default_factory=lambda: f"fdaa:0:1:a7b:{secrets.token_hex(2)}::2")
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        image = str(self.config.get("image", ""))
        repository, _, tag = image.rpartition(":")
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "region": self.region,
            "instance_id": self.instance_id,
            "private_ip": self.private_ip,
            "config": self.config,
            "image_ref": {"registry": "registry.fly.io", "repository": repository, "tag": tag, "digest": ""},
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "events": self.events[-5:],
        }


class FakeFlyApi:
    """Run with ``async with FakeFlyApi(token="t") as fly: fly.url``."""

    def __init__(self, *, token: str = "fly-test-token", start_delay_s: float = 0.05) -> None:
        self.token = token
        self.start_delay_s = start_delay_s
        self.failing_images: set[str] = set()
        self.failing_machine_ids: set[str] = set()  # these fail at their next (re)start
        self.machines: dict[str, FakeMachine] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeFlyApi:
        app = web.Application(middlewares=[self._auth])
        base = "/v1/apps/{app}/machines"
        app.router.add_post(base, self._create)
        app.router.add_get(base, self._list)
        app.router.add_get(base + "/{id}", self._get)
        app.router.add_post(base + "/{id}", self._update)
        app.router.add_delete(base + "/{id}", self._destroy)
        app.router.add_post(base + "/{id}/stop", self._stop)
        app.router.add_post(base + "/{id}/start", self._start)
        app.router.add_get(base + "/{id}/wait", self._wait)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                body = await request.json()
        self.requests.append((request.method, request.path_qs, body))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    # --- state machine -------------------------------------------------------------------------

    async def _set_state(self, machine: FakeMachine, state: str) -> None:
        async with self._changed:
            machine.state = state
            machine.updated_at = _now()
            machine.events.append({"type": state, "status": state, "source": "flyd", "timestamp": 0})
            self._changed.notify_all()

    def _boot(self, machine: FakeMachine) -> None:
        async def run() -> None:
            await self._set_state(machine, "starting")
            await asyncio.sleep(self.start_delay_s)
            failed = machine.config.get("image") in self.failing_images or machine.id in self.failing_machine_ids
            await self._set_state(machine, "failed" if failed else "started")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _machine(self, request: web.Request) -> FakeMachine:
        machine = self.machines.get(request.match_info["id"])
        if machine is None:
            raise web.HTTPNotFound(text='{"error":"machine not found"}', content_type="application/json")
        return machine

    # --- handlers ------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        config = body.get("config") or {}
        if not config.get("image"):
            return web.json_response({"error": "config.image is required"}, status=400)
        memory = (config.get("guest") or {}).get("memory_mb", 256)
        if memory % 256:
            return web.json_response({"error": "memory_mb must be a multiple of 256"}, status=400)
        name = body.get("name") or secrets.token_hex(4)
        if any(m.name == name and m.state != "destroyed" for m in self.machines.values()):
            return web.json_response({"error": f"machine name {name} already taken"}, status=409)
        machine = FakeMachine(id=secrets.token_hex(7), name=name, region=body.get("region") or "iad", config=config)
        self.machines[machine.id] = machine
        self._boot(machine)
        return web.json_response(machine.to_json())

    async def _list(self, _: web.Request) -> web.Response:
        return web.json_response([m.to_json() for m in self.machines.values() if m.state != "destroyed"])

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self._machine(request).to_json())

    async def _update(self, request: web.Request) -> web.Response:
        machine = self._machine(request)
        body = await request.json()
        config = body.get("config")
        if not isinstance(config, dict) or not config.get("image"):
            return web.json_response({"error": "config.image is required"}, status=400)
        machine.config = config
        machine.instance_id = secrets.token_hex(13).upper()
        await self._set_state(machine, "replacing")
        self._boot(machine)
        return web.json_response(machine.to_json())

    async def _stop(self, request: web.Request) -> web.Response:
        machine = self._machine(request)
        await self._set_state(machine, "stopping")
        await self._set_state(machine, "stopped")
        return web.json_response({"ok": True})

    async def _start(self, request: web.Request) -> web.Response:
        machine = self._machine(request)
        self._boot(machine)
        return web.json_response({"previous_state": machine.state})

    async def _destroy(self, request: web.Request) -> web.Response:
        machine = self._machine(request)
        if machine.state == "started" and request.query.get("force") != "true":
            return web.json_response({"error": "machine is running; stop it or use force=true"}, status=412)
        await self._set_state(machine, "destroyed")
        return web.json_response({"ok": True})

    async def _wait(self, request: web.Request) -> web.Response:
        machine = self._machine(request)
        wanted = request.query.get("state", "started")
        try:
            timeout = min(60, int(request.query.get("timeout", "60")))
        except ValueError:
            return web.json_response({"error": "timeout must be an integer"}, status=400)

        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: machine.state in {wanted, "failed", "destroyed"})

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            return web.json_response({"error": "deadline_exceeded: timeout waiting for machine"}, status=408)
        if machine.state != wanted:
            return web.json_response({"error": f"machine entered {machine.state}, not {wanted}"}, status=400)
        return web.json_response({"ok": True})
