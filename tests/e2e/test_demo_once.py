"""``tradeengine demo --once`` as a user runs it: a real control plane, a real tenant process
(local machine provider) replaying real candles, three example traders, and the report files."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "market"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tradeengine() -> list[str]:
    script = Path(sys.executable).with_name("tradeengine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tradeengine.cli"]


@pytest.mark.slow
def test_demo_once_runs_the_system_and_writes_the_report(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEENGINE_")}
    done = subprocess.run(
        [
            *tradeengine(),
            "demo",
            "--once",
            "--data",
            str(DATA),
            "--workdir",
            str(workdir),
            "--port",
            str(free_port()),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    summary = result["summary"]
    # One day of 5 symbols: 288 5m + 24 1h + 6 4h closes each, all delivered by the tenant process.
    assert summary["candles"] == 5 * (288 + 24 + 6)
    assert summary["signals"] > 0
    assert summary["analyses"] >= summary["signals"]  # every signal was analysed by the offline analyst
    files = {k: Path(v) for k, v in result["files"].items()}
    assert all(path.is_file() and path.stat().st_size > 0 for path in files.values())
    assert files["equityPng"].read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64," in files["reportHtml"].read_text()
    with files["tradesCsv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["trades"] + summary["openPositions"]
    assert {r["trader"] for r in rows} <= {"RSI reversal 1h", "MACD trend 4h", "Bollinger breakout 5m"}
    closed = [r for r in rows if r["closed_at"]]
    assert sum((Decimal(r["pnl"]) for r in closed), Decimal(0)) == Decimal(summary["realizedPnl"])
    # The demo's database holds what the tenant did.
    assert (workdir / "demo.db").is_file()
    assert "Traceback" not in done.stderr


def test_demo_without_candles_says_how_to_get_them(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tradeengine.cli import app

    result = CliRunner().invoke(app, ["demo", "--data", str(tmp_path / "data"), "--workdir", str(tmp_path / "w")])
    message = " ".join(result.stderr.split())
    assert result.exit_code == 2
    assert "--data" in message and "make demo" in message and "tradeengine download-data" in message
    assert not (tmp_path / "w").exists()  # nothing started, nothing written
