"""The server as an operator runs it: a real process on loopback, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        try:
            return httpx.get(url, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_control_server_answers_health_and_stops_on_signal(tmp_path: Path, stop_signal: signal.Signals) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TRADEENGINE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'te.db'}",
        "TRADEENGINE_LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tradeengine.cli", "serve", "--mode", "control", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        response = wait_healthy(f"http://127.0.0.1:{port}/health", process)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        assert response.json()["mode"] == "control"
        started = time.monotonic()
        process.send_signal(stop_signal)
        assert process.wait(timeout=5) == 0
        assert time.monotonic() - started < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
