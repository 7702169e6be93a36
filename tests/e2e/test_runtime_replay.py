"""End to end: real Binance candles replayed through a tenant with several traders.

ReplayFeed + SimClock + the real sandbox + OfflineAnalyst + PaperBroker + SQLite/Postgres. The
test then checks the database against what the strategies and the offline analyst imply,
recomputed independently from the source files.
"""

from __future__ import annotations

import uuid
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import numpy as np
from fakes.runtime_world import make_runtime, seed_user
from sqlalchemy import select

from tradeengine.ai.analyst import AnalysisRequest
from tradeengine.ai.market_data import build_market_data
from tradeengine.ai.offline import OfflineAnalyst
from tradeengine.clock import SimClock
from tradeengine.exchange.files import load_candles
from tradeengine.exchange.paper import PaperBroker
from tradeengine.exchange.replay import ReplayFeed
from tradeengine.indicators.klines import Klines
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import AnalysisHistory, Order, Position, Signal, Trade, Trader, User

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
DAY = 86_400_000
T0 = 1_606_780_800_000  # 2020-12-01, first candle in the files
START, END = T0 + 2 * DAY, T0 + 6 * DAY

DROP = """
def check_signal(symbol, ticker, klines):
    k = klines["5m"]
    if len(k.close) < 2:
        return False
    return k.close[-1] < k.open[-1] * 0.992
"""
RALLY = """
def check_signal(symbol, ticker, klines):
    k = klines["1h"]
    return len(k.close) > 20 and k.close[-1] > k.open[-1] * 1.02
"""
BROKEN = """
def check_signal(symbol, ticker, klines):
    return klines["5m"].close[-1] / 0
"""
NOT_PYTHON = "def check_signal(symbol, ticker, klines) return True"


def _candles(symbol: str, timeframe: str) -> Klines:
    return load_candles(DATA / f"{symbol.replace('/', '_')}-{timeframe}.json")


def _upto(k: Klines, close_ms: int, step: int, count: int) -> Klines:
    end = int(np.searchsorted(k.open_time, close_ms - step, side="right"))
    return (
        k.tail(count)
        if end >= len(k)
        else Klines.from_arrays(
            *(c[max(0, end - count) : end] for c in (k.open_time, k.open, k.high, k.low, k.close, k.volume))
        )
    )


async def _all(factory: SessionFactory, model: Any, **where: Any) -> list[Any]:
    async with factory() as session:
        return list((await session.execute(select(model).filter_by(**where))).scalars())


async def test_replay_real_candles_through_tenant(session_factory: SessionFactory, tmp_path: Path) -> None:
    user_id, (drop_id, rally_id, broken_id, bad_id) = await seed_user(
        session_factory,
        [
            {
                "name": "drop",
                "signal_code": DROP,
                "symbols": ["BTC/USDT", "ETH/USDT"],
                "check_interval": "5m_close",
                "reanalysis_interval": "1h",
                "max_open_positions": 2,
                "stop_loss_pct": None,
                "take_profit_pct": None,
            },
            {
                "name": "rally-short",
                "signal_code": RALLY,
                "symbols": ["SOL/USDT"],
                "timeframes": ["1h"],
                "check_interval": "1h_close",
                "reanalysis_interval": "1h_close",
                "settings": {"direction": "short"},
            },
            {"name": "broken", "signal_code": BROKEN, "symbols": ["ADA/USDT"]},
            {"name": "bad", "signal_code": NOT_PYTHON, "symbols": ["XRP/USDT"]},
        ],
    )
    clock = SimClock(START)
    feed = ReplayFeed.from_directory(
        DATA,
        ["BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT"],
        ["5m", "1h"],
        clock=clock,
        start_ms=START,
        end_ms=END,
    )
    broker = PaperBroker({"USDT": Decimal(10000)})
    rt = make_runtime(
        session_factory, user_id, clock, tmp_path, analyst=OfflineAnalyst(), broker=broker, store=feed.store
    )
    summary = await rt.start()
    assert summary["traders"] == 3  # the one that does not compile is out
    feed.subscribe(rt.on_event)
    await feed.run()
    await rt.flush()
    for position in list(rt.state.positions.values()):
        await rt.close_position_manually(position.id)
    await rt.shutdown()
    await rt.writer.close()

    traders = {t.id: t for t in await _all(session_factory, Trader, user_id=user_id)}
    assert traders[bad_id].status == "error"
    assert "compile" in (traders[bad_id].error_message or "")
    assert traders[broken_id].status == "error"
    assert "5 times in a row" in (traders[broken_id].error_message or "")
    assert traders[drop_id].status == "active"
    assert traders[rally_id].status == "active"

    signals = await _all(session_factory, Signal, user_id=user_id)
    assert len({s.trader_id for s in signals}) == 2
    assert len(signals) >= 5
    # 1. Every signal sits on a candle close where its strategy is true, at that close price.
    for s in signals:
        close_ms = int(s.timestamp.timestamp() * 1000)
        tf, step = ("5m", 300_000) if s.trader_id == drop_id else ("1h", 3_600_000)
        k = _upto(_candles(s.symbol, tf), close_ms, step, 2)
        assert int(k.open_time[-1]) + step == close_ms
        ratio = k.close[-1] / k.open[-1]
        assert (ratio < 0.992) if s.trader_id == drop_id else (ratio > 1.02)
        assert s.trigger_price == Decimal(repr(float(k.close[-1])))
    # ... and every close where a strategy is true while its trader+symbol had no active signal made one.
    drop_signals = sorted(
        (s for s in signals if s.trader_id == drop_id and s.symbol == "BTC/USDT"), key=lambda s: s.timestamp
    )
    btc = _candles("BTC/USDT", "5m")
    window = (btc.open_time + 300_000 > START) & (btc.open_time + 300_000 <= END)
    true_closes = [
        int(t) + 300_000
        for t, o, c in zip(btc.open_time[window], btc.open[window], btc.close[window], strict=True)
        if c < o * 0.992
    ]
    made = {int(s.timestamp.timestamp() * 1000) for s in drop_signals}
    busy = [
        (int(s.timestamp.timestamp() * 1000), int(s.closed_at.timestamp() * 1000) if s.closed_at else END)
        for s in drop_signals
    ]
    for t in true_closes:
        covered = any(a < t <= b for a, b in busy)
        assert (t in made) or covered, f"strategy true at {t} but no signal and none active"

    # 2. The first analysis of each signal is what the offline analyst decides on that market data.
    analyses = sorted(await _all(session_factory, AnalysisHistory, user_id=user_id), key=lambda a: a.timestamp)
    assert analyses
    assert all(a.reasoning for a in analyses)
    offline = OfflineAnalyst()
    for s in signals:
        first = next(a for a in analyses if a.signal_id == s.id)
        tf, step = ("5m", 300_000) if s.trader_id == drop_id else ("1h", 3_600_000)
        close_ms = int(s.timestamp.timestamp() * 1000)
        klines = _upto(_candles(s.symbol, tf), close_ms, step, 300)
        trader = traders[s.trader_id]
        request = AnalysisRequest(
            correlation_id="check",
            user_id=user_id,
            trader_id=s.trader_id,
            signal_id=s.id,
            symbol=s.symbol,
            ai_instructions=trader.ai_instructions,
            market_data=build_market_data(
                s.symbol,
                {"lastPrice": float(s.trigger_price), "volume24h": None, "priceChange24h": None},
                {tf: klines},
                limit=100,
            ),
            trader_settings={
                **trader.settings,
                "position_size_pct": str(trader.position_size_pct),
                "stop_loss_pct": None if trader.stop_loss_pct is None else str(trader.stop_loss_pct),
                "take_profit_pct": None if trader.take_profit_pct is None else str(trader.take_profit_pct),
            },
        )
        expected = await offline.analyze(request)
        assert first.decision == expected.decision.value, (s.symbol, s.timestamp)

    # 3. Orders, trades and positions agree with each other, the candles and the fee schedule.
    orders = await _all(session_factory, Order, user_id=user_id)
    trades = await _all(session_factory, Trade, user_id=user_id)
    positions = await _all(session_factory, Position, user_id=user_id)
    opened = [
        a
        for a in analyses
        if a.decision in ("open_long", "open_short") and (a.meta or {}).get("execution", {}).get("status") == "applied"
    ]
    assert len(opened) == len(positions) > 0
    assert {p.side for p in positions if p.trader_id == rally_id} <= {"short"}
    assert all(o.status == "filled" and o.client_order_id.startswith("te-") for o in orders)
    assert len({o.client_order_id for o in orders}) == len(orders) == len(trades)
    for t in trades:
        assert t.type == "paper"
        assert t.status == "filled"
        assert t.fee == (t.price * t.quantity * Decimal("0.001")).quantize(Decimal("1e-8"), rounding=ROUND_CEILING)
    total_pnl = Decimal(0)
    for p in positions:
        assert p.status == "closed"
        assert p.size == 0
        assert p.close_reason
        mine = [t for t in trades if t.position_id == p.id]
        sells = sum((t.price * t.quantity for t in mine if t.side == "SELL"), Decimal(0))
        buys = sum((t.price * t.quantity for t in mine if t.side == "BUY"), Decimal(0))
        fees = sum((t.fee for t in mine), Decimal(0))
        assert p.pnl == (sells - buys - fees).quantize(Decimal("1e-8"))
        last = max(mine, key=lambda t: t.executed_at).price  # exit_price averages partial closes too
        if p.close_reason == "stop_loss":
            assert (last <= p.stop_loss) if p.side == "long" else (last >= p.stop_loss)
        if p.close_reason == "take_profit":
            assert (last >= p.take_profit) if p.side == "long" else (last <= p.take_profit)
        total_pnl += p.pnl
    assert {p.close_reason for p in positions} - {"manual"}, "some positions must close by themselves"
    # 4. The paper account is exactly the starting balance plus every net P&L.
    (user,) = await _all(session_factory, User, id=user_id)
    assert user.paper_balance == Decimal(10000) + total_pnl
    assert all(s.status == "closed" or s.status == "watching" for s in signals)
    assert uuid.UUID(str(user.id)) == user_id
