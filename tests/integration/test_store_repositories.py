"""Repositories and unit of work on both backends: filters, cursor pagination, rollback by default."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fakes.store_rows import make_signal, make_trader, make_user

from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import AIPrompt, FlyMachine, Order, Position, User
from tradeengine.store.repositories import InvalidCursorError, decode_cursor, encode_cursor
from tradeengine.store.uow import UnitOfWork

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


async def _user_with_signals(session_factory: SessionFactory, n: int) -> tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    """A user, one trader, and ``n`` signals one minute apart (alternating symbols and statuses)."""
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(make_user())
        trader = uow.traders.add(make_trader(user))
        ids = []
        for i in range(n):
            sig = uow.signals.add(
                make_signal(
                    trader,
                    symbol="BTCUSDT" if i % 2 == 0 else "ETHUSDT",
                    status="closed" if i % 3 == 0 else "watching",
                    timestamp=T0 + timedelta(minutes=i),
                )
            )
            ids.append(sig.id)
        await uow.commit()
        return user.id, trader.id, ids


async def test_commit_persists_and_exit_without_commit_rolls_back(session_factory: SessionFactory) -> None:
    async with UnitOfWork(session_factory) as uow:
        kept = uow.users.add(make_user(email="kept@example.com"))
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        uow.users.add(make_user(email="dropped@example.com"))
        await uow.flush()  # written inside the transaction ...
        assert await uow.users.get_by_email("dropped@example.com") is not None
    # ... but never committed.
    async with UnitOfWork(session_factory) as uow:
        assert await uow.users.get_by_email("dropped@example.com") is None
        found = await uow.users.get_by_email("kept@example.com")
        assert found is not None
        assert found.id == kept.id


async def test_exception_rolls_back_and_propagates(session_factory: SessionFactory) -> None:
    async def fail_half_way() -> None:
        async with UnitOfWork(session_factory) as uow:
            uow.users.add(make_user(email="boom@example.com"))
            await uow.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_half_way()
    async with UnitOfWork(session_factory) as uow:
        assert await uow.users.get_by_email("boom@example.com") is None


async def test_uow_not_usable_outside_context(session_factory: SessionFactory) -> None:
    uow = UnitOfWork(session_factory)
    with pytest.raises(RuntimeError, match="outside"):
        await uow.commit()


async def test_list_for_user_paginates_newest_first_without_gaps(session_factory: SessionFactory) -> None:
    user_id, _, ids = await _user_with_signals(session_factory, 7)
    await _user_with_signals(session_factory, 3)  # another user's rows must not leak in
    seen: list[uuid.UUID] = []
    cursor = None
    pages = 0
    async with UnitOfWork(session_factory) as uow:
        while True:
            page = await uow.signals.list_for_user(user_id, cursor=cursor, limit=3)
            pages += 1
            seen.extend(s.id for s in page.items)
            assert all(s.user_id == user_id for s in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert pages == 3
    assert seen == list(reversed(ids))


async def test_pagination_breaks_timestamp_ties_by_id(session_factory: SessionFactory) -> None:
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(make_user())
        trader = uow.traders.add(make_trader(user))
        for _ in range(5):
            uow.signals.add(make_signal(trader, timestamp=T0))
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        first = await uow.signals.list_for_user(user.id, limit=2)
        second = await uow.signals.list_for_user(user.id, limit=2, cursor=first.next_cursor)
        third = await uow.signals.list_for_user(user.id, limit=2, cursor=second.next_cursor)
    got = [s.id for p in (first, second, third) for s in p.items]
    assert len(got) == 5
    assert len(set(got)) == 5
    assert third.next_cursor is None


async def test_filters_combine(session_factory: SessionFactory) -> None:
    user_id, trader_id, ids = await _user_with_signals(session_factory, 10)
    async with UnitOfWork(session_factory) as uow:
        btc = await uow.signals.list_for_user(user_id, symbol="BTCUSDT")
        assert [s.symbol for s in btc.items] == ["BTCUSDT"] * 5
        closed_eth = await uow.signals.list_for_user(user_id, symbol="ETHUSDT", status="closed")
        # i in 0..9 with i odd (ETH) and i % 3 == 0 (closed): 3, 9
        assert [s.id for s in closed_eth.items] == [ids[9], ids[3]]
        window = await uow.signals.list_for_user(
            user_id, trader_id=trader_id, since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=5)
        )
        assert [s.id for s in window.items] == [ids[4], ids[3], ids[2]]
        several = await uow.signals.list_for_user(user_id, status=["closed", "new"])
        assert {s.status for s in several.items} == {"closed"}
        assert await uow.signals.count(user_id=user_id, status="watching") == 6


async def test_bad_arguments_name_the_field(session_factory: SessionFactory) -> None:
    async with UnitOfWork(session_factory) as uow:
        with pytest.raises(ValueError, match="limit"):
            await uow.signals.list(limit=0)
        with pytest.raises(InvalidCursorError, match="cursor"):
            await uow.signals.list(cursor="not-a-cursor")
        with pytest.raises(ValueError, match="colour"):
            await uow.signals.list(colour="red")
        with pytest.raises(ValueError, match="since"):
            await uow.signals.list(since=datetime(2026, 1, 1))


def test_cursor_round_trip() -> None:
    rid = uuid.uuid4()
    ts = datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    assert decode_cursor(encode_cursor(ts, rid)) == (ts, rid)


async def test_active_signal_for_trader_symbol(session_factory: SessionFactory) -> None:
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(make_user())
        trader = uow.traders.add(make_trader(user))
        uow.signals.add(make_signal(trader, status="closed", timestamp=T0 + timedelta(hours=1)))
        watching = uow.signals.add(make_signal(trader, status="watching", timestamp=T0))
        uow.signals.add(make_signal(trader, symbol="ETHUSDT", status="new", timestamp=T0))
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        found = await uow.signals.active_for_trader_symbol(trader.id, "BTCUSDT")
        assert found is not None
        assert found.id == watching.id
        assert await uow.signals.active_for_trader_symbol(trader.id, "SOLUSDT") is None
        assert len(await uow.signals.active(user_id=user.id)) == 2


async def test_positions_orders_and_machines_queries(session_factory: SessionFactory) -> None:
    async with UnitOfWork(session_factory) as uow:
        user = uow.users.add(make_user())
        trader = uow.traders.add(make_trader(user))
        sig = uow.signals.add(make_signal(trader))
        open_pos = uow.positions.add(
            Position(
                signal_id=sig.id,
                user_id=user.id,
                trader_id=trader.id,
                symbol="BTCUSDT",
                side="long",
                entry_price=Decimal("100"),
                size=Decimal("1"),
            )
        )
        uow.positions.add(
            Position(
                signal_id=sig.id,
                user_id=user.id,
                trader_id=trader.id,
                symbol="BTCUSDT",
                side="short",
                entry_price=Decimal("100"),
                size=Decimal("1"),
                status="closed",
            )
        )
        uow.orders.add(
            Order(
                client_order_id="cid-open",
                user_id=user.id,
                position_id=open_pos.id,
                symbol="BTCUSDT",
                side="SELL",
                type="stop_market",
                purpose="stop_loss",
                status="open",
                stop_price=Decimal("95"),
                quantity=Decimal("1"),
                exchange_order_id="123",
            )
        )
        uow.orders.add(
            Order(
                client_order_id="cid-done",
                user_id=user.id,
                position_id=open_pos.id,
                symbol="BTCUSDT",
                side="BUY",
                type="market",
                purpose="entry",
                status="filled",
                quantity=Decimal("1"),
                filled_quantity=Decimal("1"),
            )
        )
        old = uow.machines.add(FlyMachine(user_id=user.id, machine_id="old", status="destroyed", created_at=T0))
        cur = uow.machines.add(
            FlyMachine(
                user_id=user.id,
                machine_id="cur",
                status="running",
                created_at=T0 + timedelta(hours=1),
                last_heartbeat=T0 + timedelta(hours=1),
            )
        )
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        opened = await uow.positions.open_for_user(user.id)
        assert [p.id for p in opened] == [open_pos.id]
        assert (await uow.positions.open_for_signal(sig.id)) is not None
        assert await uow.positions.open_for_user(user.id, symbol="ETHUSDT") == []
        by_cid = await uow.orders.get_by_client_order_id("cid-open")
        assert by_cid is not None
        assert by_cid.stop_price == Decimal("95")
        assert (await uow.orders.get_by_exchange_order_id("123")) is not None
        assert [o.client_order_id for o in await uow.orders.open_orders(user_id=user.id)] == ["cid-open"]
        assert len(await uow.orders.for_position(open_pos.id)) == 2
        current = await uow.machines.current_for_user(user.id)
        assert current is not None
        assert current.id == cur.id
        assert (await uow.machines.get_by_machine_id("old")) is not None
        assert old.id != cur.id
        stale = await uow.machines.heartbeat_older_than(T0 + timedelta(hours=2))
        assert [m.id for m in stale] == [cur.id]
        assert await uow.machines.heartbeat_older_than(T0) == []


async def test_active_prompt_and_events(session_factory: SessionFactory) -> None:
    ptype = f"test_type_{uuid.uuid4().hex[:6]}"  # migrations may seed built-in prompt types
    async with UnitOfWork(session_factory) as uow:
        uow.prompts.add(AIPrompt(type=ptype, name="v1", content="old", version=1))
        uow.prompts.add(AIPrompt(type=ptype, name="v2", content="new", version=2))
        uow.prompts.add(AIPrompt(type=ptype, name="v3", content="draft", version=3, is_active=False))
        user = uow.users.add(User(email="ev@example.com", tier="free"))
        machine = uow.machines.add(FlyMachine(user_id=user.id, machine_id="m-ev"))
        uow.events.record(user.id, "heartbeat", machine_id=machine.id, at=T0)
        uow.events.record(user.id, "error", machine_id=machine.id, message="oom", at=T0 + timedelta(seconds=5))
        uow.events.record(user.id, "heartbeat", machine_id=machine.id, payload={"n": 2}, at=T0 + timedelta(seconds=10))
        await uow.commit()
    async with UnitOfWork(session_factory) as uow:
        active = await uow.prompts.active(ptype)
        assert active is not None
        assert active.content == "new"
        beat = await uow.events.latest(machine.id, kind="heartbeat")
        assert beat is not None
        assert beat.payload == {"n": 2}
        errors = await uow.events.list_for_user(user.id, kind="error")
        assert [e.message for e in errors.items] == ["oom"]
