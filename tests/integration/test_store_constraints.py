"""Constraints and types on both backends: CHECKs refuse bad rows, FKs cascade, exact round-trips."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from fakes.store_rows import make_signal, make_trader, make_user
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import (
    AnalysisHistory,
    FlyMachine,
    MachineEvent,
    Order,
    Position,
    Signal,
    SignalAnalysis,
    Trade,
    Trader,
    User,
)
from tradeengine.store.uow import UnitOfWork

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


async def seed_graph(session_factory: SessionFactory) -> dict[str, uuid.UUID]:
    """user -> trader -> signal -> position -> order -> trade, plus analysis rows and a machine."""
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(make_user())
        await uow.flush()
        trader = uow.traders.add(make_trader(user))
        await uow.flush()
        signal = uow.signals.add(make_signal(trader))
        await uow.flush()
        pos = uow.positions.add(
            Position(
                signal_id=signal.id,
                user_id=user.id,
                trader_id=trader.id,
                symbol="BTCUSDT",
                side="long",
                entry_price=Decimal("50000"),
                size=Decimal("0.01"),
            )
        )
        machine = uow.machines.add(FlyMachine(user_id=user.id, machine_id=f"m-{uuid.uuid4().hex[:6]}"))
        await uow.flush()
        order = uow.orders.add(
            Order(
                client_order_id=f"te-{uuid.uuid4().hex}",
                user_id=user.id,
                position_id=pos.id,
                signal_id=signal.id,
                symbol="BTCUSDT",
                side="BUY",
                type="market",
                purpose="entry",
                quantity=Decimal("0.01"),
            )
        )
        await uow.flush()
        uow.trades.add(
            Trade(
                position_id=pos.id,
                user_id=user.id,
                order_id=order.id,
                type="paper",
                side="BUY",
                symbol="BTCUSDT",
                price=Decimal("50000"),
                quantity=Decimal("0.01"),
            )
        )
        uow.analyses.add(
            AnalysisHistory(
                signal_id=signal.id,
                trader_id=trader.id,
                user_id=user.id,
                decision="open_long",
                reasoning="breakout",
                confidence=80,
                market_data={"price": "50000"},
                meta={"sl": "49000"},
            )
        )
        uow.signal_analyses.add(
            SignalAnalysis(
                signal_id=signal.id,
                trader_id=trader.id,
                user_id=user.id,
                decision="enter_trade",
                confidence=Decimal("87.5"),
                reasoning="ok",
                key_levels={"support": [1]},
                trade_plan={},
            )
        )
        uow.events.record(user.id, "heartbeat", machine_id=machine.id, payload={"ok": True})
        await uow.commit()
        return {
            "user": user.id,
            "trader": trader.id,
            "signal": signal.id,
            "position": pos.id,
            "order": order.id,
            "machine": machine.id,
        }


async def _insert_expect_integrity_error(session_factory: SessionFactory, label: str, build: Any) -> None:
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(make_user())
        trader = uow.traders.add(make_trader(user))
        signal = uow.signals.add(make_signal(trader))
        await uow.flush()
        uow.session.add(build(user, trader, signal))
        try:
            await uow.flush()
        except IntegrityError:
            return
        pytest.fail(f"{label}: the database accepted the row")


VIOLATIONS: list[tuple[str, Any]] = [
    ("signal status bogus", lambda u, t, s: make_signal(t, status="bogus")),
    (
        "analysis confidence 101",
        lambda u, t, s: AnalysisHistory(
            signal_id=s.id, trader_id=t.id, user_id=u.id, decision="watch", reasoning="r", confidence=101
        ),
    ),
    (
        "analysis confidence -1",
        lambda u, t, s: AnalysisHistory(
            signal_id=s.id, trader_id=t.id, user_id=u.id, decision="watch", reasoning="r", confidence=-1
        ),
    ),
    (
        "analysis decision bogus",
        lambda u, t, s: AnalysisHistory(
            signal_id=s.id, trader_id=t.id, user_id=u.id, decision="yolo", reasoning="r", confidence=5
        ),
    ),
    ("user tier bogus", lambda u, t, s: User(email="x@y.z", tier="platinum")),
    ("machine status bogus", lambda u, t, s: FlyMachine(user_id=u.id, machine_id="m1", status="zombie")),
    ("trader status bogus", lambda u, t, s: make_trader(u, status="sleeping")),
    (
        "position side bogus",
        lambda u, t, s: Position(
            signal_id=s.id,
            user_id=u.id,
            trader_id=t.id,
            symbol="X",
            side="sideways",
            entry_price=Decimal(1),
            size=Decimal(1),
        ),
    ),
    (
        "trade side lowercase",
        lambda u, t, s: Order(
            client_order_id="c1",
            user_id=u.id,
            symbol="X",
            side="buy",
            type="market",
            purpose="entry",
            quantity=Decimal(1),
        ),
    ),
    (
        "order type bogus",
        lambda u, t, s: Order(
            client_order_id="c2",
            user_id=u.id,
            symbol="X",
            side="BUY",
            type="iceberg",
            purpose="entry",
            quantity=Decimal(1),
        ),
    ),
    (
        "order quantity zero",
        lambda u, t, s: Order(
            client_order_id="c3",
            user_id=u.id,
            symbol="X",
            side="BUY",
            type="market",
            purpose="entry",
            quantity=Decimal(0),
        ),
    ),
    (
        "signal analysis confidence 100.5",
        lambda u, t, s: SignalAnalysis(
            signal_id=s.id,
            trader_id=t.id,
            user_id=u.id,
            decision="wait",
            confidence=Decimal("100.5"),
            reasoning="r",
            key_levels={},
            trade_plan={},
        ),
    ),
    ("signal close_reason bogus", lambda u, t, s: make_signal(t, close_reason="bored")),
    (
        "signal FK to missing trader",
        lambda u, t, s: Signal(
            trader_id=uuid.uuid4(), user_id=u.id, symbol="X", timestamp=T0, trigger_price=Decimal(1)
        ),
    ),
]


async def test_constraint_violations_are_refused(session_factory: SessionFactory) -> None:
    """Each bad row in its own unit of work on one database (one database per backend is cheaper)."""
    refused = []
    for label, build in VIOLATIONS:
        await _insert_expect_integrity_error(session_factory, label, build)
        refused.append(label)
    assert len(refused) == len(VIOLATIONS)


async def test_check_refuses_raw_sql_too(session_factory: SessionFactory) -> None:
    """The CHECK lives in the database, not only in the ORM."""
    ids = await seed_graph(session_factory)
    async with UnitOfWork(session_factory) as uow:
        with pytest.raises(IntegrityError):
            await uow.session.execute(
                text("UPDATE signals SET status = 'bogus' WHERE trader_id = :t"),
                {"t": ids["trader"].hex if uow.session.bind.dialect.name == "sqlite" else ids["trader"]},
            )


async def test_unique_client_order_id(session_factory: SessionFactory) -> None:
    ids = await seed_graph(session_factory)
    async with UnitOfWork(session_factory) as uow:
        uow.orders.add(
            Order(
                client_order_id="dup",
                user_id=ids["user"],
                symbol="X",
                side="BUY",
                type="market",
                purpose="entry",
                quantity=Decimal(1),
            )
        )
        uow.orders.add(
            Order(
                client_order_id="dup",
                user_id=ids["user"],
                symbol="X",
                side="SELL",
                type="market",
                purpose="exit",
                quantity=Decimal(1),
            )
        )
        with pytest.raises(IntegrityError):
            await uow.flush()


async def test_deleting_a_user_cascades_everywhere(session_factory: SessionFactory) -> None:
    ids = await seed_graph(session_factory)
    other = await seed_graph(session_factory)
    models = [
        Trader,
        Signal,
        Position,
        Order,
        Trade,
        AnalysisHistory,
        SignalAnalysis,
        FlyMachine,
        MachineEvent,
    ]
    async with UnitOfWork(session_factory) as uow:
        before = {
            m.__tablename__: await uow.traders.session.scalar(text(f"SELECT count(*) FROM {m.__tablename__}"))
            for m in models
        }
        assert all(v == 2 for v in before.values()), before
        assert await uow.users.delete_by_id(ids["user"])
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        after = {
            m.__tablename__: await uow.session.scalar(text(f"SELECT count(*) FROM {m.__tablename__}")) for m in models
        }
        assert all(v == 1 for v in after.values()), after
        assert await uow.users.get(other["user"]) is not None
        assert await uow.positions.get(other["position"]) is not None


async def test_deleting_a_position_cascades_to_orders_and_trades(session_factory: SessionFactory) -> None:
    ids = await seed_graph(session_factory)
    async with UnitOfWork(session_factory) as uow:
        assert len(await uow.trades.for_position(ids["position"])) == 1
        await uow.positions.delete_by_id(ids["position"])
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        assert await uow.orders.get(ids["order"]) is None
        assert await uow.trades.for_position(ids["position"]) == []
        assert await uow.signals.get(ids["signal"]) is not None


AMOUNTS = [
    Decimal("12345678.12345678"),
    Decimal("0.00000001"),
    Decimal("-99999999999.99999999"),
    Decimal("0"),
]


async def test_decimal_round_trips_exactly(session_factory: SessionFactory) -> None:
    async with UnitOfWork(session_factory) as uow:
        users = [uow.users.add(make_user(paper_balance=amount)) for amount in AMOUNTS]
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        for user, amount in zip(users, AMOUNTS, strict=True):
            loaded = await uow.users.get(user.id)
            assert loaded is not None
            assert isinstance(loaded.paper_balance, Decimal)
            assert loaded.paper_balance == amount
            assert loaded.paper_balance.as_tuple().exponent == -8  # same scale on both backends
            # Exactness in the database itself, not just in Python: compare in SQL.
            same = await uow.session.scalar(
                select(func.count()).select_from(User).where(User.id == user.id, User.paper_balance == amount)
            )
            assert same == 1


async def test_money_refuses_float_and_overflow(session_factory: SessionFactory) -> None:
    async with UnitOfWork(session_factory) as uow:
        uow.users.add(make_user(paper_balance=0.1))
        with pytest.raises(StatementError, match="float"):
            await uow.flush()
    async with UnitOfWork(session_factory) as uow:
        uow.users.add(make_user(paper_balance=Decimal("1234567890123.5")))
        with pytest.raises(StatementError, match="NUMERIC"):
            await uow.flush()


async def test_percent_and_confidence_scales(session_factory: SessionFactory) -> None:
    ids = await seed_graph(session_factory)
    async with UnitOfWork(session_factory) as uow:
        pos = await uow.positions.get(ids["position"])
        assert pos is not None
        pos.pnl_percent = Decimal("-12.3456")
        pos.pnl = Decimal("-61.72800000")
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        pos = await uow.positions.get(ids["position"])
        assert pos is not None
        assert pos.pnl_percent == Decimal("-12.3456")
        assert pos.pnl == Decimal("-61.728")
        sa_rows = await uow.signal_analyses.for_signal(ids["signal"])
        assert sa_rows[0].confidence == Decimal("87.50")


async def test_aware_utc_datetimes_round_trip(session_factory: SessionFactory) -> None:
    plus_five = timezone(timedelta(hours=5))
    local = datetime(2026, 3, 4, 10, 0, 0, 654321, tzinfo=plus_five)
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(make_user())
        trader = uow.traders.add(make_trader(user))
        await uow.flush()
        sig = uow.signals.add(make_signal(trader, timestamp=local))
        await uow.commit()
        sid = sig.id
    async with UnitOfWork(session_factory) as uow:
        loaded = await uow.signals.get(sid)
        assert loaded is not None
        assert loaded.timestamp.tzinfo is not None
        assert loaded.timestamp.utcoffset() == timedelta(0)
        assert loaded.timestamp == local
        assert loaded.timestamp.hour == 5
        assert loaded.timestamp.microsecond == 654321
        assert loaded.created_at.tzinfo is not None


async def test_naive_datetime_is_refused(session_factory: SessionFactory) -> None:
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(make_user())
        trader = uow.traders.add(make_trader(user))
        await uow.flush()
        uow.signals.add(make_signal(trader, timestamp=datetime(2026, 1, 1)))
        with pytest.raises(StatementError, match="naive"):
            await uow.flush()


async def test_json_and_string_lists_round_trip(session_factory: SessionFactory) -> None:
    ids = await seed_graph(session_factory)
    async with UnitOfWork(session_factory) as uow:
        trader = await uow.traders.get(ids["trader"])
        assert trader is not None
        assert trader.timeframes == ["1m", "5m"]
        assert trader.symbols is None
        assert trader.settings == {}
        assert trader.position_size_pct == Decimal("10")
        trader.symbols = ["ETHUSDT", "BTCUSDT"]
        trader.settings = {"cooldown_s": 60, "nested": {"a": [1, 2]}}
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        trader = await uow.traders.get(ids["trader"])
        assert trader is not None
        assert trader.symbols == ["ETHUSDT", "BTCUSDT"]
        assert trader.settings == {"cooldown_s": 60, "nested": {"a": [1, 2]}}
        latest = await uow.analyses.latest_for_signal(ids["signal"])
        assert latest is not None
        assert latest.meta == {"sl": "49000"}


async def test_position_optimistic_locking(session_factory: SessionFactory) -> None:
    from sqlalchemy.orm.exc import StaleDataError

    ids = await seed_graph(session_factory)
    async with UnitOfWork(session_factory) as a, UnitOfWork(session_factory) as b:
        pa = await a.positions.get(ids["position"])
        pb = await b.positions.get(ids["position"])
        assert pa is not None
        assert pb is not None
        assert pa.version == 1
        pa.highest_price = Decimal("51000")
        await a.commit()
        pb.highest_price = Decimal("52000")
        with pytest.raises(StaleDataError):
            await b.commit()
    async with UnitOfWork(session_factory) as uow:
        pos = await uow.positions.get(ids["position"])
        assert pos is not None
        assert pos.highest_price == Decimal("51000")
        assert pos.version == 2
