"""All eleven decisions through the executor, a real PaperBroker and a real database (SQLite, Postgres)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from fakes.runtime_world import make_runtime, seed_user
from sqlalchemy import select

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult
from tradeengine.clock import SimClock
from tradeengine.domain.enums import Decision
from tradeengine.exchange.events import CandleUpdated, TickerUpdated
from tradeengine.runtime.tenant import TenantRuntime
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import AnalysisHistory, Order, Position, Signal, Trade, User

START = 1_700_000_000_000


async def set_price(rt: TenantRuntime, price: str) -> None:
    await rt.on_event(TickerUpdated("BTC/USDT", rt.clock.now_ms(), Decimal(price), Decimal(1), Decimal(1), Decimal(0)))


async def decide(rt: TenantRuntime, signal_id: uuid.UUID, decision: Decision, **metadata: Any) -> dict[str, Any]:
    signal = rt.state.signals.get(signal_id)
    trader_id = signal.trader_id if signal else next(iter(rt.state.traders))
    request = AnalysisRequest(
        correlation_id="t",
        user_id=rt.user_id,
        trader_id=trader_id,
        signal_id=signal_id,
        symbol="BTC/USDT",
        ai_instructions="",
        market_data={"symbol": "BTC/USDT"},
    )
    analysis_id = await rt.executor.apply_analysis(
        signal_id, request, AnalysisResult(decision, "because", 70, metadata)
    )
    async with rt.session_factory() as session:
        row = await session.get(AnalysisHistory, analysis_id)
        assert row is not None
        assert row.decision == decision.value
        return dict(row.meta or {})


async def rows(factory: SessionFactory, model: Any, **where: Any) -> list[Any]:
    async with factory() as session:
        stmt = select(model).filter_by(**where)
        return list((await session.execute(stmt)).scalars())


async def test_all_eleven_decisions(session_factory: SessionFactory, tmp_path: Path) -> None:
    user_id, (trader_id,) = await seed_user(session_factory, [{"max_open_positions": 2}])
    clock = SimClock(START)
    rt = make_runtime(session_factory, user_id, clock, tmp_path)
    await rt.start()
    await set_price(rt, "100")

    # no_trade closes a fresh signal; watch moves one to the watchlist.
    first = await rt.inject_signal(trader_id, "BTC/USDT", analyse=False)
    await decide(rt, first.id, Decision.NO_TRADE)
    (row,) = await rows(session_factory, Signal, id=first.id)
    assert (row.status, row.close_reason) == ("closed", "no_trade")
    signal = await rt.inject_signal(trader_id, "BTC/USDT", analyse=False)
    await decide(rt, signal.id, Decision.WATCH)
    assert (await rows(session_factory, Signal, id=signal.id))[0].status == "watching"

    # Decisions that need a position are recorded with the reason, never crash.
    meta = await decide(rt, signal.id, Decision.CLOSE)
    assert meta["execution"]["status"] == "rejected"
    assert "no open position" in meta["execution"]["reason"]
    meta = await decide(rt, signal.id, Decision.OPEN_LONG, positionSize="0.0001")
    assert "insufficient balance" in meta["execution"]["reason"]

    # open_long with stops and 20 % of the balance.
    meta = await decide(rt, signal.id, Decision.OPEN_LONG, stopLoss=90, takeProfit="120", positionSize=0.2)
    assert meta["execution"]["status"] == "applied"
    (position,) = await rows(session_factory, Position, signal_id=signal.id)
    assert (position.side, position.size, position.entry_price) == ("long", Decimal(20), Decimal(100))
    assert (position.stop_loss, position.take_profit) == (Decimal(90), Decimal(120))
    assert (await rows(session_factory, Signal, id=signal.id))[0].status == "position_open"
    (order,) = await rows(session_factory, Order, signal_id=signal.id)
    assert order.status == "filled"
    assert order.client_order_id.startswith("te-")
    assert order.position_id == position.id
    (user,) = await rows(session_factory, User, id=user_id)
    assert user.paper_balance == Decimal(10000) - Decimal(2000) - Decimal(2)  # notional and 0.1 % fee

    meta = await decide(rt, signal.id, Decision.OPEN_SHORT)
    assert "already has an open long position" in meta["execution"]["reason"]
    meta = await decide(rt, signal.id, Decision.UPDATE_STOP_LOSS, newStopLoss=101)
    assert "must be below the price" in meta["execution"]["reason"]
    await decide(rt, signal.id, Decision.UPDATE_STOP_LOSS, newStopLoss=95)
    await decide(rt, signal.id, Decision.UPDATE_TAKE_PROFIT, newTakeProfit=130)
    (position,) = await rows(session_factory, Position, id=position.id)
    assert (position.stop_loss, position.take_profit) == (Decimal(95), Decimal(130))

    await set_price(rt, "110")
    await decide(rt, signal.id, Decision.SCALE_IN, scaleInAmount=0.5)  # +10 at 110
    (position,) = await rows(session_factory, Position, id=position.id)
    assert position.size == Decimal(30)
    assert position.entry_price == Decimal("103.33333333")
    await decide(rt, signal.id, Decision.PARTIAL_CLOSE, closePercentage=50)  # -15
    await decide(rt, signal.id, Decision.SCALE_OUT, scaleOutPercentage="20")  # -3
    (position,) = await rows(session_factory, Position, id=position.id)
    assert position.size == Decimal(12)
    assert position.status == "open"

    await set_price(rt, "105")
    meta = await decide(rt, signal.id, Decision.FLIP_POSITION, positionSize=0.1)
    (old,) = await rows(session_factory, Position, id=position.id)
    assert (old.status, old.close_reason, old.size) == ("closed", "flip", Decimal(0))
    trades = await rows(session_factory, Trade, position_id=old.id)
    sells = sum(t.price * t.quantity for t in trades if t.side == "SELL")
    buys = sum(t.price * t.quantity for t in trades if t.side == "BUY")
    assert old.pnl == sells - buys - sum(t.fee for t in trades)  # net of every fee, exact
    assert old.exit_price is not None
    assert old.pnl_percent is not None
    (short,) = [p for p in await rows(session_factory, Position, signal_id=signal.id) if p.status == "open"]
    assert short.side == "short"
    # No stops in the metadata: the trader's defaults (2 % / 4 %) around the new entry.
    assert (short.stop_loss, short.take_profit) == (Decimal("107.1"), Decimal("100.8"))
    assert (await rows(session_factory, Signal, id=signal.id))[0].status == "position_open"

    await set_price(rt, "102")
    await decide(rt, signal.id, Decision.CLOSE)
    (short,) = await rows(session_factory, Position, id=short.id)
    assert (short.status, short.close_reason) == ("closed", "ai_close")
    assert short.pnl is not None
    assert short.pnl > 0
    (closed,) = await rows(session_factory, Signal, id=signal.id)
    assert (closed.status, closed.close_reason) == ("closed", "ai_close")
    meta = await decide(rt, signal.id, Decision.CLOSE)
    assert meta["execution"]["reason"] == "signal is no longer active"

    decisions = {row.decision for row in await rows(session_factory, AnalysisHistory, trader_id=trader_id)}
    assert decisions == {d.value for d in Decision}
    orders = await rows(session_factory, Order, user_id=user_id)
    assert len({o.client_order_id for o in orders}) == len(orders) == 7  # open, sin, pcls, sout, fcls, fopn, close
    await rt.shutdown()
    await rt.writer.close()


async def test_monitor_closes_on_stop_loss_and_trailing(session_factory: SessionFactory, tmp_path: Path) -> None:
    user_id, (trader_id,) = await seed_user(
        session_factory, [{"trailing_stop_pct": Decimal(5), "take_profit_pct": Decimal(50)}]
    )
    rt = make_runtime(session_factory, user_id, SimClock(START), tmp_path)
    await rt.start()
    await set_price(rt, "100")
    signal = await rt.inject_signal(trader_id, "BTC/USDT", analyse=False)
    await decide(rt, signal.id, Decision.OPEN_LONG, stopLoss=90)
    for price in (104.0, 120.0, 115.0):
        await rt.on_event(CandleUpdated("BTC/USDT", "5m", START, price, price, price, price, 1.0, False))
    (position,) = await rows(session_factory, Position, signal_id=signal.id)
    assert position.status == "open"
    await rt.on_event(CandleUpdated("BTC/USDT", "5m", START, 113.9, 113.9, 113.9, 113.9, 1.0, False))
    (position,) = await rows(session_factory, Position, signal_id=signal.id)
    assert (position.status, position.close_reason) == ("closed", "trailing_stop")
    assert position.highest_price == Decimal(120)
    assert position.exit_price == Decimal("113.9")
    assert position.pnl is not None
    assert position.pnl > 0

    second = await rt.inject_signal(trader_id, "BTC/USDT", analyse=False)
    await decide(rt, second.id, Decision.OPEN_LONG, stopLoss=110)
    await set_price(rt, "109.5")
    (position,) = await rows(session_factory, Position, signal_id=second.id)
    assert (position.status, position.close_reason) == ("closed", "stop_loss")
    assert (await rows(session_factory, Signal, id=second.id))[0].close_reason == "stop_loss"
    assert rt.counters.positions_closed == 2
    await rt.shutdown()
    await rt.writer.close()
