"""The control app (with the harness's fakes) served by a real hypercorn on loopback, in a thread.

Sync tests (schemathesis, e2e over TCP) drive it like any remote server; ``run`` executes a
coroutine (e.g. seeding rows) on the server's own event loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from fakes.control_harness import Harness, control_harness
from hypercorn.asyncio import serve
from hypercorn.config import Config

T = TypeVar("T")


class LiveControl:
    def __init__(self, db_url: str, **settings_overrides: Any) -> None:
        self.db_url = db_url
        self.overrides = settings_overrides
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.harness: Harness | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-control", daemon=True)

    def __enter__(self) -> LiveControl:
        self._thread.start()
        if not self._ready.wait(120):
            raise RuntimeError("live control server did not start in 120 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with control_harness(self.db_url, **self.overrides) as harness:
            self.harness = harness
            config = Config()
            config.bind = [f"127.0.0.1:{self.port}"]
            config.accesslog = None
            config.errorlog = None
            config.graceful_timeout = 2
            task = asyncio.create_task(serve(harness.app, config, shutdown_trigger=self._stop.wait))
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    break
                except OSError:
                    if task.done():
                        await task
                    await asyncio.sleep(0.05)
            self._ready.set()
            await task
