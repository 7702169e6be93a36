"""`tradeengine serve --mode control` as an operator runs it: services built from settings."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tradeengine.api.auth import issue_user_token
from tradeengine.domain.enums import Tier
from tradeengine.machines.commands import create_user
from tradeengine.settings import load_settings

SECRET = "serve-test-secret-0123456789abcdef0123456"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_control_builds_services_and_answers_the_api(sqlite_url: str, tmp_path: Path) -> None:
    user = asyncio.run(create_user(load_settings(database_url=sqlite_url), "op@example.com", Tier.PRO))
    port = _port()
    env = {
        **os.environ,
        "TRADEENGINE_DATABASE_URL": sqlite_url,
        "TRADEENGINE_JWT_SECRET": SECRET,
        "TRADEENGINE_MASTER_KEY": "serve-master-key-0123456789abcdef",
        "TRADEENGINE_LOG_FORMAT": "json",
    }
    log = (tmp_path / "control.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tradeengine.cli", "serve", "--mode", "control", "--port", str(port)],
        env=env, stdout=log, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "control.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "control plane never answered /health"
            time.sleep(0.2)
        token = issue_user_token(SECRET, user.id)
        r = httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=90)
        assert r.status_code == 200, r.text
        assert r.json()["user"]["email"] == "op@example.com"
        assert httpx.get(f"{base}/health", timeout=5).json()["ready"] is True
        # No model configured: generation is unavailable, said plainly.
        r = httpx.post(
            f"{base}/v1/strategies/generate",
            headers={"Authorization": f"Bearer {token}"},
            json={"description": "x"},
            timeout=30,
        )
        assert (r.status_code, r.json()["success"]) == (503, False)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_serve_control_refuses_fly_without_token(sqlite_url: str) -> None:
    env = {**os.environ, "TRADEENGINE_DATABASE_URL": sqlite_url, "TRADEENGINE_MACHINE_PROVIDER": "fly"}
    env.pop("TRADEENGINE_FLY_API_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "tradeengine.cli", "serve", "--mode", "control", "--port", str(_port())],
        env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert b"TRADEENGINE_FLY_API_TOKEN" in result.stdout + result.stderr
