"""Postgres stops mid-run: writes go to the local journal, the monitor keeps protecting positions,
and everything lands in the database, in order, once it is back."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from fakes.runtime_world import make_runtime, seed_user
from sqlalchemy import select

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult
from tradeengine.clock import LiveClock
from tradeengine.domain.enums import Decision
from tradeengine.exchange.events import TickerUpdated
from tradeengine.runtime.journal import Journal
from tradeengine.store import migrations
from tradeengine.store.batch import WriteBatch, batch_from_json, batch_to_json, coalesce
from tradeengine.store.engine import create_engine, create_session_factory
from tradeengine.store.models import MachineEvent, Position, Signal, Trade


async def _price(rt: Any, value: str) -> None:
    await rt.on_event(TickerUpdated("BTC/USDT", rt.clock.now_ms(), Decimal(value), Decimal(1), Decimal(1), Decimal(0)))


async def test_postgres_outage_is_journaled_and_replayed(own_postgres: Any, tmp_path: Path) -> None:
    url = own_postgres.admin_url
    await migrations.upgrade_async(url)
    engine = create_engine(url)
    factory = create_session_factory(engine)
    user_id, (trader_id,) = await seed_user(factory, [{"take_profit_pct": None}])
    rt = make_runtime(factory, user_id, LiveClock(), tmp_path)
    rt.writer._retry_interval_s = 0.2
    await rt.start()
    await _price(rt, "100")
    signal = await rt.inject_signal(trader_id, "BTC/USDT", analyse=False)
    request = AnalysisRequest(
        correlation_id="j",
        user_id=user_id,
        trader_id=trader_id,
        signal_id=signal.id,
        symbol="BTC/USDT",
        ai_instructions="",
        market_data={},
    )
    await rt.executor.apply_analysis(signal.id, request, AnalysisResult(Decision.OPEN_LONG, "go", 80, {"stopLoss": 95}))
    assert not rt.writer.degraded

    own_postgres.stop()
    await _price(rt, "94")  # the monitor still protects the position while the database is down
    assert rt.writer.degraded
    assert rt.writer.pending == 2
    assert not rt.state.positions
    second = await rt.inject_signal(trader_id, "BTC/USDT", analyse=False)
    pending = rt.writer.pending
    assert pending == 3
    assert len(Journal(rt.writer.journal.path)) == pending

    own_postgres.start()
    deadline = time.monotonic() + 30
    while rt.writer.pending and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a counter
        await asyncio.sleep(0.1)
    assert rt.writer.pending == 0
    assert rt.writer.replayed_total == pending

    async with factory() as session:
        (position,) = (await session.execute(select(Position))).scalars()
        assert (position.status, position.close_reason) == ("closed", "stop_loss")
        assert position.exit_price == Decimal(94)
        trades = list((await session.execute(select(Trade).where(Trade.position_id == position.id))).scalars())
        assert sorted(t.side for t in trades) == ["BUY", "SELL"]
        signals = {s.id: s for s in (await session.execute(select(Signal))).scalars()}
        assert signals[signal.id].status == "closed"
        assert signals[second.id].status == "new"
        assert (await session.execute(select(MachineEvent).where(MachineEvent.kind == "started"))).first()
    await rt.shutdown()
    await rt.writer.close()
    await engine.dispose()


def test_journal_codec_and_coalesce_keep_values_exact() -> None:
    import uuid
    from datetime import UTC, datetime

    row = uuid.uuid4()
    batch = WriteBatch("x")
    batch.insert(
        "signals",
        id=row,
        trigger_price=Decimal("0.12345678"),
        timestamp=datetime(2021, 1, 1, tzinfo=UTC),
        status="new",
    )
    batch.update("signals", row, status="watching")
    batch.update("positions", uuid.uuid4(), size=Decimal(1), increment={"version": 1})
    again = batch_from_json(batch_to_json(batch))
    assert again.operations == batch.operations
    merged = coalesce([again, again])
    inserts = [op for op in merged.operations if op.table == "signals"]
    assert len(inserts) == 2
    assert inserts[0].values["status"] == "watching"
    (update,) = [op for op in merged.operations if op.table == "positions"]
    assert update.increment == {"version": 2}


def test_coalesce_folds_fills_into_their_orders_and_groups_inserts_by_columns() -> None:
    """What a backtest's write-behind merges: an order inserted pending, then filled and linked
    to the position opened in the same merge, becomes one insert; a link to a row the merge does
    not insert stays an update after the inserts; inserts of one table with the same columns
    form one run (one executemany), whatever order the columns were set in."""
    import uuid

    from tradeengine.store.batch import Insert, Update

    signal, position, elsewhere = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    orders = [uuid.uuid4() for _ in range(4)]
    batches = []
    for i, order in enumerate(orders):
        b = WriteBatch(f"open {i}")
        if i == 0:
            b.insert("signals", id=signal, status="new")
        b.insert("orders", id=order, signal_id=signal, status="pending", quantity=Decimal(1))
        batches.append(b)
        fill = WriteBatch(f"fill {i}")
        if i == 0:
            fill.insert("positions", id=position, signal_id=signal, status="open")
        target = position if i < 3 else elsewhere
        fill.update("orders", order, status="filled", filled_quantity=Decimal(1), position_id=target)
        batches.append(fill)
    merged = coalesce(batches)
    inserts = [op for op in merged.operations if isinstance(op, Insert)]
    assert [op.table for op in inserts] == ["signals", "positions", "orders", "orders", "orders", "orders"]
    by_id = {op.values["id"]: op.values for op in inserts}
    for order in orders[:3]:
        assert by_id[order]["position_id"] == position and by_id[order]["status"] == "filled"
    assert by_id[orders[3]]["status"] == "pending"  # its fill links a row from outside the merge
    (update,) = [op for op in merged.operations if isinstance(op, Update)]
    assert (update.id, update.values["position_id"], update.values["status"]) == (orders[3], elsewhere, "filled")
    # Folded orders first (one column set), then the unfolded one: two runs, not alternating.
    shapes = [frozenset(op.values) for op in inserts if op.table == "orders"]
    assert shapes[0] == shapes[1] == shapes[2] != shapes[3]
    # Reordering inserts within a table is only safe while no table refers to itself.
    from tradeengine.store.models import Base

    assert not [t.name for t in Base.metadata.sorted_tables for fk in t.foreign_keys if fk.column.table is t]


async def test_refused_batch_is_set_aside_not_lost(sqlite_url: str, tmp_path: Path) -> None:
    import uuid

    engine = create_engine(sqlite_url)
    factory = create_session_factory(engine)
    user_id, _ = await seed_user(factory, [])
    journal = Journal(tmp_path / "j.db")
    bad = WriteBatch("bad")  # a machine event of a user that does not exist: FK violation for good
    bad.insert(
        "machine_events",
        id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        kind="x",
        message=None,
        payload={},
        created_at=LiveClock().now(),
    )
    good = WriteBatch("good")
    good.insert(
        "machine_events",
        id=uuid.uuid4(),
        user_id=user_id,
        kind="ok",
        message=None,
        payload={},
        created_at=LiveClock().now(),
    )
    journal.append(bad)
    journal.append(good)
    from tradeengine.runtime.journal import DurableWriter

    writer = DurableWriter(factory, journal, LiveClock())
    assert writer.pending == 2
    assert await writer.replay_once()
    assert writer.pending == 0
    assert journal.refused_count() == 1
    async with factory() as session:
        kinds = [e.kind for e in (await session.execute(select(MachineEvent))).scalars()]
    assert kinds == ["ok"]
    await writer.close()
    await engine.dispose()
