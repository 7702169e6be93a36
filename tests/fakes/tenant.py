"""A fake tenant runtime API (the seed's machine endpoints), in-process or as a subprocess.

As a subprocess it takes the same arguments the real one does
(``serve --mode tenant --user-id U --host H --port P``), checks ``TRADEENGINE_TENANT_TOKEN`` on
every request except ``/health``, and appends each call as a JSON line to ``FAKE_TENANT_LOG``
(if set). ``FAKE_TENANT_EXIT=1`` makes it exit at once (a tenant that fails to start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from aiohttp import web


class FakeTenant:
    def __init__(self, *, token: str | None, user_id: str = "", log_path: str | None = None) -> None:
        self.token = token
        self.user_id = user_id
        self.log_path = log_path
        self.calls: list[tuple[str, dict[str, Any] | None, str | None]] = []
        self.healthy = True
        self.open_positions = 2
        self.watching_signals = 5
        self.stopped = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/reload-traders", self._reload)
        app.router.add_post("/prepare-shutdown", self._prepare)
        app.router.add_post("/shutdown", self._shutdown)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> web.Response | None:
        body: dict[str, Any] | None = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = None
        auth = request.headers.get("Authorization")
        self.calls.append((request.path, body, auth))
        if self.log_path:
            self._log({"path": request.path, "body": body, "authorized": self._authorized(auth)})
        if request.path != "/health" and not self._authorized(auth):
            return web.json_response({"success": False, "error": "bad tenant token"}, status=401)
        return None

    def _log(self, entry: dict[str, Any]) -> None:
        # Tiny appends from a test fake; a blocking write is fine here.
        with open(str(self.log_path), "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def _authorized(self, auth: str | None) -> bool:
        return self.token is None or auth == f"Bearer {self.token}"

    async def _health(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self.healthy:
            return web.json_response({"status": "unhealthy"}, status=503)
        return web.json_response(
            {"status": "healthy", "uptime": 1, "activeTraders": 1, "openPositions": self.open_positions,
             "websocketConnected": True, "userId": self.user_id}
        )  # fmt: skip

    async def _reload(self, request: web.Request) -> web.Response:
        denied = await self._record(request)
        return denied or web.json_response({"success": True, "tradersLoaded": 1})

    async def _prepare(self, request: web.Request) -> web.Response:
        denied = await self._record(request)
        return denied or web.json_response({"success": True})

    async def _shutdown(self, request: web.Request) -> web.Response:
        denied = await self._record(request)
        if denied:
            return denied
        self.stopped.set()
        return web.json_response(
            {"success": True, "message": "Machine shutting down gracefully",
             "openPositions": self.open_positions, "watchingSignals": self.watching_signals}
        )  # fmt: skip


async def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--mode", default="tenant")
    parser.add_argument("--user-id", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if os.environ.get("FAKE_TENANT_EXIT") == "1":
        return 3
    tenant = FakeTenant(
        token=os.environ.get("TRADEENGINE_TENANT_TOKEN"),
        user_id=args.user_id,
        log_path=os.environ.get("FAKE_TENANT_LOG"),
    )
    if tenant.log_path:
        env = {k: v for k, v in os.environ.items() if k.startswith("TRADEENGINE_")}
        tenant._log({"path": "<start>", "argv": argv, "env": env})
    await tenant.start(args.host, args.port)
    loop = asyncio.get_running_loop()
    term = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, term.set)
    stop_wait = asyncio.ensure_future(tenant.stopped.wait())
    term_wait = asyncio.ensure_future(term.wait())
    await asyncio.wait({stop_wait, term_wait}, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.sleep(0.05)  # let the /shutdown reply go out
    await tenant.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
