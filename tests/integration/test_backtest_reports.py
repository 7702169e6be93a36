"""``tradeengine backtest`` end to end in-process: CLI options, report files, errors, databases."""

from __future__ import annotations

import asyncio
import csv
import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from tradeengine.cli import app
from tradeengine.settings import load_settings
from tradeengine.store.engine import create_engine, create_session_factory
from tradeengine.store.models import Position, Trader, User
from tradeengine.store.uow import UnitOfWork

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"
WINDOW = ["--from", "2021-05-01", "--to", "2021-05-31"]  # the May 2021 crash: oversold bounces


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["backtest", *args])
    # Errors go through rich, which wraps long lines: compare with whitespace normalized.
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_backtest_cli_writes_consistent_csv_png_json_and_html(tmp_path: Path) -> None:
    out = tmp_path / "report"
    code, stdout, stderr = run(
        "--strategy",
        "rsi_reversal",
        "--data",
        str(DATA),
        "--symbols",
        "BTC/USDT,ETH/USDT",
        *WINDOW,
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["start"] == "2021-05-01T00:00:00Z"
    # Two symbols x 30 days of 1h closes (no gaps in May 2021) plus the 4h closes the example's
    # re-analysis timer ("4h_close") subscribes to.
    assert summary["candles"] == 2 * 30 * 24 + 2 * 30 * 6
    assert summary["trades"] > 0
    assert {s["symbol"] for s in summary["perSymbol"]} <= {"BTC/USDT", "ETH/USDT"}

    with (out / "trades.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    closed = [r for r in rows if r["closed_at"]]
    assert len(closed) == summary["trades"]
    assert len(rows) - len(closed) == summary["openPositions"]
    # Money in the CSV is exact and adds up to the summary's (Decimal, not float, arithmetic).
    assert sum((Decimal(r["pnl"]) for r in closed), Decimal(0)) == Decimal(summary["realizedPnl"])
    assert sum((Decimal(r["fees"]) for r in rows), Decimal(0)) == Decimal(summary["fees"])
    wins = sum(1 for r in closed if Decimal(r["pnl"]) > 0)
    assert summary["winRate"] == pytest.approx(wins / len(closed))
    final = Decimal(summary["initialBalance"]) + Decimal(summary["realizedPnl"]) + Decimal(summary["unrealizedPnl"])
    assert final == Decimal(summary["finalEquity"])
    assert 0 <= summary["maxDrawdown"] < 1
    assert 0 < summary["exposure"] < 1

    png = (out / "equity.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page and "http" not in page.split("<body>")[1]
    assert f"Trades ({len(rows)})" in page
    assert json.loads((out / "summary.json").read_text())["finalEquity"] == summary["finalEquity"]


def test_missing_data_dir_names_the_fixing_commands(tmp_path: Path) -> None:
    code, _, stderr = run("--strategy", "rsi_reversal", "--data", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert code == 2
    assert "--data" in stderr and "does not exist" in stderr
    assert "tradeengine download-data" in stderr and "make demo" in stderr
    (tmp_path / "empty").mkdir()
    code, _, stderr = run("--strategy", "rsi_reversal", "--data", str(tmp_path / "empty"))
    assert code == 2
    assert "no candle files" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "exactly one of --strategy"),
        (("--strategy", "rsi_reversal", "--trader-id", str(uuid.uuid4())), "exactly one of --strategy"),
        (("--strategy", "no_such_thing"), "--strategy: no_such_thing is not a file"),
        (("--strategy", "rsi_reversal", "--from", "2021-13-01"), "--from"),
        (("--strategy", "rsi_reversal", "--from", "2021-02-01", "--to", "2021-01-01"), "--to: must be after"),
        (("--strategy", "rsi_reversal", "--analyst", "oracle"), "--analyst"),
        (("--strategy", "rsi_reversal", "--fee", "abc"), "--fee"),
        (("--strategy", "rsi_reversal", "--symbols", "DOGE/USDT"), "no candle file for DOGE/USDT"),
        (("--trader-id", "not-a-uuid"), "--trader-id"),
    ],
)
def test_bad_options_fail_with_a_message_naming_the_option(args: tuple[str, ...], message: str) -> None:
    code, _, stderr = run(*args, "--data", str(DATA))
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr


def test_a_strategy_that_does_not_compile_is_reported(tmp_path: Path) -> None:
    source = tmp_path / "broken.py"
    source.write_text("import os\ndef check_signal(symbol, ticker, klines):\n    return True\n")
    code, _, stderr = run("--strategy", str(source), "--data", str(DATA), "--symbols", "BTC/USDT", *WINDOW)
    assert code == 2
    assert "no trader is active" in stderr


async def _platform_trader(url: str) -> uuid.UUID:
    engine = create_engine(load_settings(database_url=url))
    try:
        async with UnitOfWork(create_session_factory(engine)) as uow:
            user = uow.users.add(User(email=f"{uuid.uuid4().hex[:8]}@x.test", paper_balance=Decimal(500)))
            await uow.flush()
            trader = uow.traders.add(
                Trader(
                    user_id=user.id,
                    name="from the platform",
                    ai_instructions="Long only.",
                    signal_code="def check_signal(symbol, ticker, klines):\n"
                    "    return get_latest_rsi(klines['1h'], 14) < 35\n",
                    timeframes=["1h"],
                    check_interval="1h_close",
                    reanalysis_interval="1h_close",
                    symbols=["SOL/USDT"],
                )
            )
            await uow.commit()
            return trader.id
    finally:
        await engine.dispose()


async def _count_positions(url: str) -> int:
    engine = create_engine(load_settings(database_url=url))
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(Position)) or 0)
    finally:
        await engine.dispose()


@pytest.mark.postgres
def test_trader_id_is_read_from_postgres_and_backtested_into_a_kept_sqlite_database(
    postgres_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    trader_id = asyncio.run(_platform_trader(postgres_url))
    code, stdout, stderr = run(
        "--trader-id",
        str(trader_id),
        "--trader-database",
        postgres_url,
        "--data",
        str(DATA),
        *WINDOW,
        "--database",
        sqlite_url,
        "--out",
        str(tmp_path),
        "--json",
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert [s["symbol"] for s in summary["perSymbol"]] == ["SOL/USDT"]  # the trader's symbols
    assert summary["trades"] + summary["openPositions"] > 0
    # The run wrote into the named database, which is kept; the platform database is untouched.
    assert asyncio.run(_count_positions(sqlite_url)) == summary["trades"] + summary["openPositions"]
    assert asyncio.run(_count_positions(postgres_url)) == 0
