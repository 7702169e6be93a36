"""Crashes inside a flip and the trailing high-water mark across a restart (SQLite, Postgres).

A crash is simulated in process: the writer raises at the commit of a chosen batch (so that batch
and everything after it never reach the database), the runtime is discarded, and a new one is
rebuilt from the database (which rebuilds the paper account from the stored balance and positions).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from fakes.runtime_world import make_runtime, seed_user
from test_runtime_decisions import decide, rows, set_price

from tradeengine.clock import SimClock
from tradeengine.domain.enums import Decision
from tradeengine.exchange.events import CandleUpdated
from tradeengine.exchange.paper import PaperBroker
from tradeengine.runtime.journal import DurableWriter
from tradeengine.runtime.tenant import TenantRuntime
from tradeengine.store.batch import WriteBatch
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import Order, Position, Signal

START = 1_700_000_000_000


class SimulatedCrash(Exception):
    """The process died at this write."""


class CrashingWriter(DurableWriter):
    """A DurableWriter that dies instead of committing the batch labelled ``crash_at``."""

    crash_at: str | None = None

    async def write(self, batch: WriteBatch) -> bool:
        if self.crash_at is not None and batch.label == self.crash_at:
            raise SimulatedCrash(batch.label)
        return await super().write(batch)


async def crash(rt: TenantRuntime) -> None:
    """Drop the runtime without any shutdown work (nothing more is written)."""
    await rt.queue.stop(drain=False)
    rt.writer.journal.close()


def crashing_runtime(
    factory: SessionFactory, user_id: uuid.UUID, clock: SimClock, tmp_path: Path, broker: PaperBroker, label: str
) -> TenantRuntime:
    rt = make_runtime(factory, user_id, clock, tmp_path, broker=broker)
    rt.writer.__class__ = CrashingWriter
    assert isinstance(rt.writer, CrashingWriter)
    rt.writer.crash_at = label
    return rt


@pytest.mark.parametrize(
    "crash_at",
    [
        "fill:flip_close",  # close placed and filled, its result never committed
        "flip:open",  # close committed, the open's intent never committed (the old gap)
        "fill:flip_open",  # open placed and filled, its result never committed
    ],
)
async def test_flip_completes_exactly_once_after_a_crash(
    session_factory: SessionFactory, tmp_path: Path, crash_at: str
) -> None:
    user_id, (trader_id,) = await seed_user(session_factory, [{}])
    clock = SimClock(START)
    broker = PaperBroker({"USDT": Decimal(10000)})
    rt = crashing_runtime(session_factory, user_id, clock, tmp_path, broker, crash_at)
    await rt.start()
    await set_price(rt, "100")
    signal = await rt.inject_signal(trader_id, "BTC/USDT", analyse=False)
    await decide(rt, signal.id, Decision.OPEN_LONG, stopLoss=90, takeProfit=130, positionSize=0.2)
    (long_row,) = await rows(session_factory, Position, signal_id=signal.id)
    await set_price(rt, "105")

    with pytest.raises(SimulatedCrash):
        await decide(rt, signal.id, Decision.FLIP_POSITION, positionSize=0.1, stopLoss=110)
    await crash(rt)
    assert await rows(session_factory, Position, signal_id=signal.id, status="open", side="short") == []

    again = make_runtime(session_factory, user_id, clock, tmp_path, broker=broker)
    summary = await again.start()
    assert summary["pendingOrders"] + summary["interruptedFlips"] == 1
    await set_price(again, "105")  # recovery finishes orders once a price is known
    await again.on_event(CandleUpdated("BTC/USDT", "5m", START, 105.0, 105.0, 105.0, 105.0, 1.0, False))

    (old,) = await rows(session_factory, Position, id=long_row.id)
    assert (old.status, old.close_reason, old.size) == ("closed", "flip", Decimal(0))
    (short,) = await rows(session_factory, Position, signal_id=signal.id, status="open")
    assert short.side == "short"
    # 10 % of the balance after the long's round trip (0.1 % fees), sized once.
    free = Decimal(10000) - Decimal(2000) - Decimal(2) + Decimal(2100) - Decimal("2.1")
    assert short.size == (free * Decimal("0.1") / Decimal(105)).quantize(Decimal("0.00000001"), rounding="ROUND_DOWN")
    assert short.stop_loss == Decimal(110)  # the levels planned with the decision
    orders = await rows(session_factory, Order, signal_id=signal.id)
    assert sorted(o.purpose for o in orders) == ["entry", "entry", "flip"]
    assert all(o.status == "filled" for o in orders)
    opens = [o for o in orders if o.client_order_id.endswith("-fopn")]
    assert len(opens) == 1
    assert opens[0].position_id == short.id
    # The (rebuilt) paper account saw one opening order for the flip, not two.
    assert isinstance(again.broker, PaperBroker)
    sent = [o["request"]["client_order_id"] for o in again.broker.snapshot()["orders"]]
    assert len([c for c in sent if c.endswith("-fopn")]) == 1
    (sig,) = await rows(session_factory, Signal, id=signal.id)
    assert sig.status == "position_open"
    assert [p.id for p in again.state.positions.values()] == [short.id]

    # A second restart finds nothing left to do: the flip is not replayed.
    await again.shutdown()
    await again.writer.close()
    third = make_runtime(session_factory, user_id, clock, tmp_path, broker=broker)
    summary = await third.start()
    assert (summary["pendingOrders"], summary["interruptedFlips"], summary["openPositions"]) == (0, 0, 1)
    await third.shutdown()
    await third.writer.close()


async def test_trailing_high_water_mark_survives_a_restart(session_factory: SessionFactory, tmp_path: Path) -> None:
    user_id, (trader_id,) = await seed_user(
        session_factory, [{"trailing_stop_pct": Decimal(5), "take_profit_pct": Decimal(50)}]
    )
    clock = SimClock(START)
    broker = PaperBroker({"USDT": Decimal(10000)})
    rt = make_runtime(session_factory, user_id, clock, tmp_path, broker=broker)
    await rt.start()
    await set_price(rt, "100")
    signal = await rt.inject_signal(trader_id, "BTC/USDT", analyse=False)
    await decide(rt, signal.id, Decision.OPEN_LONG, stopLoss=90)
    (position,) = await rows(session_factory, Position, signal_id=signal.id)
    version = position.version

    # Tiny moves are coalesced (no write per tick); a move past the fraction is saved at once.
    await set_price(rt, "100.05")
    (position,) = await rows(session_factory, Position, id=position.id)
    assert position.highest_price == Decimal(100)
    await set_price(rt, "120")
    (position,) = await rows(session_factory, Position, id=position.id)
    assert position.highest_price == Decimal(120)
    assert position.version == version  # not a position change

    # Crash (no shutdown) and rebuild from the database.
    await crash(rt)
    again = make_runtime(session_factory, user_id, clock, tmp_path, broker=broker)
    await again.start()
    (live,) = again.state.positions.values()
    assert live.extreme_price == 120.0
    # 5 % under 120 is 114: 115 keeps it open (from the entry's 100 it would be 95) ...
    await set_price(again, "115")
    (position,) = await rows(session_factory, Position, id=position.id)
    assert position.status == "open"
    # ... and 113.9 closes it on the trailing stop of the restored mark.
    await set_price(again, "113.9")
    (position,) = await rows(session_factory, Position, id=position.id)
    assert (position.status, position.close_reason) == ("closed", "trailing_stop")
    assert position.highest_price == Decimal(120)
    await again.shutdown()
    await again.writer.close()


async def test_monitor_interval_saves_small_moves_and_stop_updates_keep_the_mark(
    session_factory: SessionFactory, tmp_path: Path
) -> None:
    user_id, (trader_id,) = await seed_user(
        session_factory, [{"trailing_stop_pct": Decimal(5), "take_profit_pct": Decimal(50)}]
    )
    clock = SimClock(START)
    rt = make_runtime(session_factory, user_id, clock, tmp_path)
    await rt.start()
    await set_price(rt, "100")
    signal = await rt.inject_signal(trader_id, "BTC/USDT", analyse=False)
    await decide(rt, signal.id, Decision.OPEN_LONG, stopLoss=90)
    await set_price(rt, "100.1")  # under the save fraction: kept in memory only
    (position,) = await rows(session_factory, Position, signal_id=signal.id)
    assert position.highest_price == Decimal(100)
    await rt._save_extremes("BTC/USDT")  # what the monitor loop does once per interval
    (position,) = await rows(session_factory, Position, id=position.id)
    assert position.highest_price == Decimal("100.1")

    await set_price(rt, "100.2")
    await decide(rt, signal.id, Decision.UPDATE_STOP_LOSS, newStopLoss=95)
    (position,) = await rows(session_factory, Position, id=position.id)
    assert (position.stop_loss, position.highest_price) == (Decimal(95), Decimal("100.2"))
    # The stop update must not reset the in-memory mark to the entry's.
    (live,) = rt.state.positions.values()
    assert live.extreme_price == pytest.approx(100.2)
    await rt.shutdown()
    await rt.writer.close()
