"""PaperBroker: fill rules, fees, slippage, reservations, shorts, idempotency, snapshot/restore."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradeengine.domain.enums import OrderPurpose, OrderStatus, OrderType, TradeSide
from tradeengine.exchange.broker import Broker, OrderRejected, OrderRequest, OrderState
from tradeengine.exchange.paper import PaperBroker

SYM = "BTC/USDT"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def req(
    cid: str,
    side: TradeSide,
    typ: OrderType = OrderType.MARKET,
    qty: str = "0.1",
    purpose: OrderPurpose = OrderPurpose.ENTRY,
    **kw: object,
) -> OrderRequest:
    return OrderRequest(cid, SYM, side, typ, D(qty), purpose, **kw)  # type: ignore[arg-type]


async def make(price: str = "40000", usdt: str = "10000", **kw: object) -> PaperBroker:
    broker = PaperBroker({"USDT": D(usdt)}, **kw)  # type: ignore[arg-type]
    await broker.on_price(SYM, D(price), T0)
    return broker


def recorder(broker: PaperBroker) -> list[OrderState]:
    seen: list[OrderState] = []

    async def handler(state: OrderState) -> None:
        seen.append(state)

    broker.subscribe(handler)
    return seen


def test_paper_broker_implements_every_port_method() -> None:
    import inspect

    port_methods = [name for name in vars(Broker) if not name.startswith("_")]
    assert {"place_order", "on_price", "subscribe", "balances"} <= set(port_methods)
    for name in port_methods:
        ours, theirs = getattr(PaperBroker, name), getattr(Broker, name)
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), name
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters), name
    broker: Broker = PaperBroker({"USDT": D(1)})  # mypy checks the structural match
    assert isinstance(broker, PaperBroker)


async def test_market_close_notifies_the_protective_orders_it_expires() -> None:
    broker = await make()
    seen = recorder(broker)
    await broker.place_order(req("b", TradeSide.BUY))
    await broker.place_order(
        req("sl", TradeSide.SELL, OrderType.STOP_MARKET, purpose=OrderPurpose.STOP_LOSS, stop_price=D("39000"))
    )
    closed = await broker.place_order(req("x", TradeSide.SELL, purpose=OrderPurpose.EXIT))
    assert closed.status is OrderStatus.FILLED
    assert [(s.client_order_id, s.status) for s in seen] == [("sl", OrderStatus.EXPIRED)]


# ---------------------------------------------------------------- market orders, fees, slippage


async def test_market_buy_fills_at_last_price_plus_slippage_with_taker_fee() -> None:
    broker = await make(slippage_bps=D("10"))
    state = await broker.place_order(req("b1", TradeSide.BUY))
    assert state.status is OrderStatus.FILLED
    assert state.filled_quantity == D("0.1")
    assert state.average_price == D("40040")  # 40000 * 1.001
    (fill,) = state.fills
    assert fill.price == D("40040")
    assert fill.fee == D("4.004")  # 0.1% of 4004
    assert fill.fee_asset == "USDT"
    assert fill.timestamp == T0
    assert state.exchange_order_id == "paper-b1"
    assert fill.trade_id == "paper-b1-1"
    balances = await broker.balances()
    assert balances["USDT"] == D("10000") - D("4004") - D("4.004")
    assert balances["BTC"] == D("0.1")


async def test_market_sell_of_holdings_gets_price_minus_slippage() -> None:
    broker = await make(slippage_bps=D("10"))
    await broker.place_order(req("b1", TradeSide.BUY))
    state = await broker.place_order(req("s1", TradeSide.SELL, purpose=OrderPurpose.EXIT))
    assert state.fills[0].price == D("39960")
    assert state.fee == D("3.996")
    balances = await broker.balances()
    assert balances["BTC"] == 0
    assert balances["USDT"] == D("10000") - D("4004") - D("4.004") + D("3996") - D("3.996")


async def test_fee_rate_is_configurable_and_zero_fee_is_exact() -> None:
    broker = await make(fee_rate=D(0))
    state = await broker.place_order(req("b1", TradeSide.BUY, qty="0.25"))
    assert state.fee == 0
    assert (await broker.balances())["USDT"] == D("0")


async def test_market_order_without_a_price_is_rejected() -> None:
    broker = PaperBroker({"USDT": D(100)})
    with pytest.raises(OrderRejected, match="no price seen for BTC/USDT"):
        await broker.place_order(req("b1", TradeSide.BUY))


async def test_insufficient_balance_rejects_with_amounts_and_changes_nothing() -> None:
    broker = await make(usdt="1000")
    with pytest.raises(OrderRejected, match=r"insufficient USDT balance: buying 0\.1 BTC costs 4004"):
        await broker.place_order(req("b1", TradeSide.BUY))
    assert await broker.balances() == {"USDT": D("1000")}
    assert await broker.fetch_order("b1", SYM) is None


async def test_quantity_is_rounded_down_to_the_step() -> None:
    broker = await make(quantity_steps={SYM: D("0.001")})
    state = await broker.place_order(req("b1", TradeSide.BUY, qty="0.12345"))
    assert state.quantity == D("0.123")
    assert state.filled_quantity == D("0.123")
    with pytest.raises(OrderRejected, match=r"rounds to 0 at step 0\.001"):
        await broker.place_order(req("b2", TradeSide.BUY, qty="0.0009"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"qty": "0"}, "quantity must be a positive Decimal"),
        ({"qty": "-1"}, "quantity must be a positive Decimal"),
        ({"typ": OrderType.LIMIT}, "price must be a positive Decimal for a limit order"),
        ({"typ": OrderType.STOP_MARKET}, "stop_price must be a positive Decimal for a stop_market order"),
        ({"typ": OrderType.STOP_LIMIT, "price": D(1)}, "stop_price must be a positive Decimal"),
        ({"typ": OrderType.TRAILING_STOP}, "trailing_percent must be a fraction"),
        (
            {"typ": OrderType.TRAILING_STOP, "trailing_percent": D("1.5")},
            "trailing_percent must be a fraction",
        ),
    ],
)
async def test_bad_requests_name_the_field(kwargs: dict[str, object], message: str) -> None:
    broker = await make()
    with pytest.raises(OrderRejected, match=message):
        await broker.place_order(req("x", TradeSide.BUY, **kwargs))  # type: ignore[arg-type]


async def test_bad_symbol_is_rejected() -> None:
    broker = await make()
    bad = OrderRequest("x", "BTCUSDT", TradeSide.BUY, OrderType.MARKET, D(1), OrderPurpose.ENTRY)
    with pytest.raises(OrderRejected, match="BASE/QUOTE"):
        await broker.place_order(bad)


async def test_min_notional_is_enforced() -> None:
    broker = await make(min_notional=D("10"))
    with pytest.raises(OrderRejected, match="below min_notional 10"):
        await broker.place_order(req("b1", TradeSide.BUY, qty="0.0002"))  # 8 USDT


# ---------------------------------------------------------------- idempotency


async def test_place_is_idempotent_per_client_order_id() -> None:
    broker = await make()
    first = await broker.place_order(req("b1", TradeSide.BUY))
    await broker.on_price(SYM, D("41000"), T0 + timedelta(seconds=1))
    again = await broker.place_order(req("b1", TradeSide.BUY))
    assert again == first
    assert (await broker.balances())["BTC"] == D("0.1")  # bought once
    with pytest.raises(OrderRejected, match="already used by a different order"):
        await broker.place_order(req("b1", TradeSide.BUY, qty="0.2"))


async def test_idempotent_resting_order_reserves_once() -> None:
    broker = await make()
    r = req("l1", TradeSide.BUY, OrderType.LIMIT, price=D("39000"))
    await broker.place_order(r)
    await broker.place_order(r)
    assert broker.reserved() == {"USDT": D("3903.9")}  # 0.1 * 39000 * 1.001
    assert len(await broker.open_orders()) == 1


# ---------------------------------------------------------------- limit orders


async def test_resting_limit_buy_fills_at_limit_on_cross_with_maker_fee() -> None:
    broker = await make(slippage_bps=D("50"), maker_fee_rate=D("0.0005"))
    seen = recorder(broker)
    state = await broker.place_order(req("l1", TradeSide.BUY, OrderType.LIMIT, price=D("39000")))
    assert state.status is OrderStatus.OPEN
    assert (await broker.balances())["USDT"] == D("10000") - D("3903.9")
    await broker.on_price(SYM, D("39001"), T0)  # not crossed
    assert seen == []
    await broker.on_price(SYM, D("38000"), T0 + timedelta(minutes=1))  # gap below: still the limit price
    (update,) = seen
    assert update.status is OrderStatus.FILLED
    assert update.average_price == D("39000")
    assert update.fee == D("1.95")  # maker 0.05% of 3900, no slippage
    assert update.fills[0].timestamp == T0 + timedelta(minutes=1)
    assert broker.reserved() == {}
    assert await broker.balances() == {"USDT": D("10000") - D("3900") - D("1.95"), "BTC": D("0.1")}


async def test_marketable_limit_fills_at_once_never_worse_than_limit() -> None:
    broker = await make(slippage_bps=D("100"))
    # last 40000, +1% slippage = 40400 but the limit caps it
    state = await broker.place_order(req("l1", TradeSide.BUY, OrderType.LIMIT, price=D("40200")))
    assert state.status is OrderStatus.FILLED
    assert state.average_price == D("40200")
    state = await broker.place_order(req("l2", TradeSide.BUY, OrderType.LIMIT, price=D("41000")))
    assert state.average_price == D("40400")


async def test_limit_sell_take_profit_fills_when_price_rises_to_it() -> None:
    broker = await make()
    await broker.place_order(req("b", TradeSide.BUY))
    tp = req("tp", TradeSide.SELL, OrderType.LIMIT, purpose=OrderPurpose.TAKE_PROFIT, price=D("42000"))
    assert (await broker.place_order(tp)).status is OrderStatus.OPEN
    assert broker.reserved() == {}  # reducing orders reserve nothing
    await broker.on_price(SYM, D("41999.99"), T0)
    assert (await broker.fetch_order("tp", SYM)).status is OrderStatus.OPEN  # type: ignore[union-attr]
    await broker.on_price(SYM, D("42500"), T0)
    done = await broker.fetch_order("tp", SYM)
    assert done is not None
    assert done.status is OrderStatus.FILLED
    assert done.average_price == D("42000")


async def test_cancel_releases_reservation_and_finished_orders_are_returned_as_is() -> None:
    broker = await make()
    await broker.place_order(req("l1", TradeSide.BUY, OrderType.LIMIT, price=D("39000")))
    cancelled = await broker.cancel_order("l1", SYM)
    assert cancelled.status is OrderStatus.CANCELLED
    assert await broker.balances() == {"USDT": D("10000")}
    assert broker.reserved() == {}
    await broker.on_price(SYM, D("30000"), T0)
    assert (await broker.cancel_order("l1", SYM)).status is OrderStatus.CANCELLED
    assert await broker.open_orders() == []
    filled = await broker.place_order(req("m", TradeSide.BUY))
    assert (await broker.cancel_order("m", SYM)) == filled
    with pytest.raises(OrderRejected, match="unknown order"):
        await broker.cancel_order("nope", SYM)


async def test_resting_buy_needs_free_quote_for_reservation() -> None:
    broker = await make(usdt="3000")
    with pytest.raises(OrderRejected, match=r"needs 3903\.9 USDT reserved, free is 3000$"):
        await broker.place_order(req("l1", TradeSide.BUY, OrderType.LIMIT, price=D("39000")))


# ---------------------------------------------------------------- stops


async def test_stop_market_sell_fills_at_crossing_price_and_gap_price() -> None:
    broker = await make(slippage_bps=D("10"))
    await broker.place_order(req("b", TradeSide.BUY, qty="0.2"))
    sl = req("sl", TradeSide.SELL, OrderType.STOP_MARKET, qty="0.2", purpose=OrderPurpose.STOP_LOSS)
    await broker.place_order(OrderRequest(**{**_fields(sl), "stop_price": D("39000")}))
    seen = recorder(broker)
    await broker.on_price(SYM, D("39000.01"), T0)
    assert seen == []
    await broker.on_price(SYM, D("37000"), T0)  # gap through the stop
    (update,) = seen
    assert update.status is OrderStatus.FILLED
    assert update.average_price == D("36963")  # gap price minus 10 bps
    assert (await broker.balances())["BTC"] == 0


async def test_stop_market_buy_triggers_at_or_above_stop() -> None:
    broker = await make()
    await broker.place_order(req("st", TradeSide.BUY, OrderType.STOP_MARKET, stop_price=D("41000")))
    await broker.on_price(SYM, D("41000"), T0)
    state = await broker.fetch_order("st", SYM)
    assert state is not None
    assert state.status is OrderStatus.FILLED
    assert state.average_price == D("41000")


async def test_stop_that_would_trigger_immediately_is_rejected() -> None:
    broker = await make()
    await broker.place_order(req("b", TradeSide.BUY))
    with pytest.raises(OrderRejected, match="stop price 40500 would trigger immediately"):
        await broker.place_order(
            req(
                "sl",
                TradeSide.SELL,
                OrderType.STOP_MARKET,
                purpose=OrderPurpose.STOP_LOSS,
                stop_price=D("40500"),
            )
        )
    with pytest.raises(OrderRejected, match="take-profit price 39000 would trigger immediately"):
        await broker.place_order(
            req(
                "tp",
                TradeSide.SELL,
                OrderType.TAKE_PROFIT_LIMIT,
                purpose=OrderPurpose.TAKE_PROFIT,
                stop_price=D("39000"),
                price=D("38900"),
            )
        )


async def test_stop_limit_fills_if_marketable_else_rests_at_limit() -> None:
    broker = await make()
    await broker.place_order(req("b", TradeSide.BUY, qty="0.2"))
    sl1 = req(
        "sl1",
        TradeSide.SELL,
        OrderType.STOP_LIMIT,
        purpose=OrderPurpose.STOP_LOSS,
        stop_price=D("39000"),
        price=D("38900"),
    )
    await broker.place_order(sl1)
    await broker.on_price(SYM, D("38950"), T0)  # triggered, price above limit: fills at market
    s1 = await broker.fetch_order("sl1", SYM)
    assert s1 is not None
    assert s1.status is OrderStatus.FILLED
    assert s1.average_price == D("38950")

    sl2 = req(
        "sl2",
        TradeSide.SELL,
        OrderType.STOP_LIMIT,
        purpose=OrderPurpose.STOP_LOSS,
        stop_price=D("38000"),
        price=D("37900"),
    )
    await broker.place_order(sl2)
    await broker.on_price(SYM, D("37000"), T0)  # gapped through the limit: rests
    s2 = await broker.fetch_order("sl2", SYM)
    assert s2 is not None
    assert s2.status is OrderStatus.OPEN
    await broker.on_price(SYM, D("37899"), T0)  # still below the limit
    assert (await broker.fetch_order("sl2", SYM)).status is OrderStatus.OPEN  # type: ignore[union-attr]
    await broker.on_price(SYM, D("38500"), T0)  # back at/above: fills at the limit
    s2 = await broker.fetch_order("sl2", SYM)
    assert s2 is not None
    assert s2.status is OrderStatus.FILLED
    assert s2.average_price == D("37900")


async def test_take_profit_limit_sell_triggers_on_rise() -> None:
    broker = await make()
    await broker.place_order(req("b", TradeSide.BUY))
    tp = req(
        "tp",
        TradeSide.SELL,
        OrderType.TAKE_PROFIT_LIMIT,
        purpose=OrderPurpose.TAKE_PROFIT,
        stop_price=D("42000"),
        price=D("41900"),
    )
    await broker.place_order(tp)
    await broker.on_price(SYM, D("41950"), T0)
    assert (await broker.fetch_order("tp", SYM)).status is OrderStatus.OPEN  # type: ignore[union-attr]
    await broker.on_price(SYM, D("42100"), T0)
    state = await broker.fetch_order("tp", SYM)
    assert state is not None
    assert state.status is OrderStatus.FILLED
    assert state.average_price == D("42100")


async def test_trailing_stop_sell_follows_the_high() -> None:
    broker = await make()
    await broker.place_order(req("b", TradeSide.BUY))
    ts = req(
        "ts",
        TradeSide.SELL,
        OrderType.TRAILING_STOP,
        purpose=OrderPurpose.TRAILING_STOP,
        trailing_percent=D("0.05"),
    )
    await broker.place_order(ts)
    await broker.on_price(SYM, D("38500"), T0)  # above 40000*0.95 = 38000
    await broker.on_price(SYM, D("50000"), T0)  # new high: stop 47500
    await broker.on_price(SYM, D("47600"), T0)
    assert (await broker.fetch_order("ts", SYM)).status is OrderStatus.OPEN  # type: ignore[union-attr]
    await broker.on_price(SYM, D("47400"), T0)
    state = await broker.fetch_order("ts", SYM)
    assert state is not None
    assert state.status is OrderStatus.FILLED
    assert state.average_price == D("47400")


async def test_trailing_stop_with_activation_price_waits_for_it() -> None:
    broker = await make()
    await broker.place_order(req("b", TradeSide.BUY))
    ts = req(
        "ts",
        TradeSide.SELL,
        OrderType.TRAILING_STOP,
        purpose=OrderPurpose.TRAILING_STOP,
        trailing_percent=D("0.01"),
        stop_price=D("42000"),
    )
    await broker.place_order(ts)
    await broker.on_price(SYM, D("30000"), T0)  # not active yet, so no trigger
    assert (await broker.fetch_order("ts", SYM)).status is OrderStatus.OPEN  # type: ignore[union-attr]
    await broker.on_price(SYM, D("42000"), T0)  # activates, stop 41580
    await broker.on_price(SYM, D("41600"), T0)
    assert (await broker.fetch_order("ts", SYM)).status is OrderStatus.OPEN  # type: ignore[union-attr]
    await broker.on_price(SYM, D("41500"), T0)
    state = await broker.fetch_order("ts", SYM)
    assert state is not None
    assert state.status is OrderStatus.FILLED
    assert state.average_price == D("41500")


async def test_trailing_stop_buy_follows_the_low_for_a_short() -> None:
    broker = await make()
    await broker.place_order(req("s", TradeSide.SELL))  # opens a short
    ts = req(
        "ts",
        TradeSide.BUY,
        OrderType.TRAILING_STOP,
        purpose=OrderPurpose.TRAILING_STOP,
        trailing_percent=D("0.1"),
    )
    await broker.place_order(ts)
    await broker.on_price(SYM, D("30000"), T0)  # stop 33000
    await broker.on_price(SYM, D("32999"), T0)
    assert (await broker.fetch_order("ts", SYM)).status is OrderStatus.OPEN  # type: ignore[union-attr]
    await broker.on_price(SYM, D("33000"), T0)
    state = await broker.fetch_order("ts", SYM)
    assert state is not None
    assert state.status is OrderStatus.FILLED
    assert state.average_price == D("33000")
    assert broker.shorts() == {}


async def test_trailing_entry_reserves_at_its_first_possible_level_and_fills() -> None:
    broker = await make()
    entry = req("te", TradeSide.BUY, OrderType.TRAILING_STOP, trailing_percent=D("0.01"), stop_price=D("39000"))
    await broker.place_order(entry)
    assert broker.reserved() == {"USDT": D("3942.939")}  # 0.1 * 39000 * 1.01 * 1.001
    await broker.on_price(SYM, D("38000"), T0)  # activates, trails from 38000: level 38380
    await broker.on_price(SYM, D("38400"), T0)
    state = await broker.fetch_order("te", SYM)
    assert state is not None
    assert state.status is OrderStatus.FILLED
    assert state.average_price == D("38400")
    assert broker.reserved() == {}
    assert (await broker.balances())["BTC"] == D("0.1")


async def test_position_close_expires_the_other_protective_orders() -> None:
    broker = await make()
    seen = recorder(broker)
    await broker.place_order(req("b", TradeSide.BUY))
    await broker.place_order(
        req("sl", TradeSide.SELL, OrderType.STOP_MARKET, purpose=OrderPurpose.STOP_LOSS, stop_price=D("39000"))
    )
    await broker.place_order(
        req("tp", TradeSide.SELL, OrderType.LIMIT, purpose=OrderPurpose.TAKE_PROFIT, price=D("42000"))
    )
    await broker.on_price(SYM, D("42000"), T0)
    assert [(s.client_order_id, s.status) for s in seen] == [
        ("tp", OrderStatus.FILLED),
        ("sl", OrderStatus.EXPIRED),
    ]
    assert await broker.open_orders() == []


async def test_reducing_order_larger_than_position_is_rejected_or_clipped() -> None:
    broker = await make()
    await broker.place_order(req("b", TradeSide.BUY, qty="0.1"))
    with pytest.raises(OrderRejected, match=r"exceeds the long holdings of 0.1"):
        await broker.place_order(req("x", TradeSide.SELL, qty="0.2", purpose=OrderPurpose.EXIT))
    await broker.place_order(
        req("sl", TradeSide.SELL, OrderType.STOP_MARKET, purpose=OrderPurpose.STOP_LOSS, stop_price=D("39000"))
    )
    await broker.place_order(req("half", TradeSide.SELL, qty="0.04", purpose=OrderPurpose.PARTIAL_CLOSE))
    await broker.on_price(SYM, D("38000"), T0)
    state = await broker.fetch_order("sl", SYM)
    assert state is not None
    assert state.status is OrderStatus.EXPIRED
    assert state.filled_quantity == D("0.06")
    assert "clipped" in (state.error_message or "")


async def test_triggered_opening_order_that_cannot_be_paid_is_rejected_with_message() -> None:
    broker = await make(usdt="4100")
    seen = recorder(broker)
    await broker.place_order(req("st", TradeSide.BUY, OrderType.STOP_MARKET, stop_price=D("40500")))
    await broker.on_price(SYM, D("60000"), T0)  # gap far above the reservation
    (update,) = seen
    assert update.status is OrderStatus.REJECTED
    assert "insufficient USDT balance" in (update.error_message or "")
    assert await broker.balances() == {"USDT": D("4100")}
    assert broker.reserved() == {}


# ---------------------------------------------------------------- shorts


async def test_short_locks_margin_and_proceeds_and_cover_realises_pnl() -> None:
    broker = await make()
    state = await broker.place_order(req("s", TradeSide.SELL, qty="0.1"))
    assert state.status is OrderStatus.FILLED
    # margin 4000 + fee 4 leaves free quote; proceeds 4000 + margin 4000 are collateral
    assert await broker.balances() == {"USDT": D("5996")}
    short = broker.shorts()[SYM]
    assert short.quantity == D("0.1")
    assert short.collateral == D("8000")
    assert broker.equity() == D("9996")
    await broker.on_price(SYM, D("35000"), T0)
    assert broker.equity() == D("9996") + D("500")
    cover = await broker.place_order(req("c", TradeSide.BUY, qty="0.1", purpose=OrderPurpose.EXIT))
    assert cover.fee == D("3.5")
    assert broker.shorts() == {}
    assert await broker.balances() == {"USDT": D("10000") - D(4) + D(500) - D("3.5")}


async def test_partial_cover_releases_collateral_proportionally() -> None:
    broker = await make(usdt="20000")
    await broker.place_order(req("s", TradeSide.SELL, qty="0.4"))
    await broker.place_order(req("c", TradeSide.BUY, qty="0.1", reduce_only=True))
    short = broker.shorts()[SYM]
    assert short.quantity == D("0.3")
    assert short.collateral == D("24000")


async def test_short_needs_margin() -> None:
    broker = await make(usdt="1000")
    with pytest.raises(OrderRejected, match="insufficient USDT balance for short margin"):
        await broker.place_order(req("s", TradeSide.SELL, qty="0.1"))


async def test_cover_without_short_is_rejected() -> None:
    broker = await make()
    with pytest.raises(OrderRejected, match="exceeds the short of 0"):
        await broker.place_order(req("c", TradeSide.BUY, purpose=OrderPurpose.EXIT))


async def test_short_loss_beyond_collateral_is_paid_from_free_quote_or_rejected() -> None:
    broker = await make(usdt="4004", fee_rate=D("0.001"))
    await broker.place_order(req("s", TradeSide.SELL, qty="0.1"))  # free quote now 0
    await broker.on_price(SYM, D("90000"), T0)  # cover costs 9000 > collateral 8000
    with pytest.raises(OrderRejected, match=r"covering 0\.1 BTC costs 9009"):
        await broker.place_order(req("c", TradeSide.BUY, purpose=OrderPurpose.EXIT))
    assert await broker.balances() == {"USDT": D(0)}
    assert broker.shorts()[SYM].collateral == D("8000")


# ---------------------------------------------------------------- snapshot / restore


async def test_snapshot_restore_round_trips_through_json_and_keeps_working() -> None:
    broker = await make(usdt="20000", slippage_bps=D("5"), quantity_steps={SYM: D("0.001")})
    await broker.place_order(req("b", TradeSide.BUY, qty="0.2"))
    await broker.place_order(
        req("sl", TradeSide.SELL, OrderType.STOP_MARKET, purpose=OrderPurpose.STOP_LOSS, stop_price=D("39000"))
    )
    await broker.place_order(
        req(
            "ts",
            TradeSide.SELL,
            OrderType.TRAILING_STOP,
            purpose=OrderPurpose.TRAILING_STOP,
            trailing_percent=D("0.1"),
        )
    )
    await broker.place_order(req("l", TradeSide.BUY, OrderType.LIMIT, price=D("30000")))
    await broker.on_price("ETH/USDT", D("2000"), T0)
    await broker.place_order(OrderRequest("e", "ETH/USDT", TradeSide.SELL, OrderType.MARKET, D(1), OrderPurpose.ENTRY))
    await broker.on_price(SYM, D("45000"), T0 + timedelta(hours=1))

    snap = json.loads(json.dumps(broker.snapshot()))
    restored = PaperBroker.restore(snap)
    assert restored.snapshot() == broker.snapshot()
    assert await restored.balances() == await broker.balances()
    assert await restored.open_orders() == await broker.open_orders()
    assert await restored.fetch_order("b", SYM) == await broker.fetch_order("b", SYM)

    # The same later prices give the same results in both.
    for b in (broker, restored):
        await b.on_price(SYM, D("40400"), T0 + timedelta(hours=2))  # trailing stop from 45000 at 10%
    assert restored.snapshot() == broker.snapshot()
    ts = await restored.fetch_order("ts", SYM)
    assert ts is not None
    assert ts.status is OrderStatus.FILLED
    # idempotency survives the restore
    assert (await restored.place_order(req("b", TradeSide.BUY, qty="0.2"))).fills[0].trade_id == "paper-b-1"


async def test_prune_forgets_oldest_finished_orders_only() -> None:
    broker = await make(usdt="100000")
    for i in range(5):
        await broker.place_order(req(f"m{i}", TradeSide.BUY, qty="0.01"))
    await broker.place_order(req("l", TradeSide.BUY, OrderType.LIMIT, price=D("30000")))
    assert broker.prune(keep_finished=2) == 3
    assert await broker.fetch_order("m2", SYM) is None
    assert await broker.fetch_order("m3", SYM) is not None
    assert await broker.fetch_order("l", SYM) is not None  # resting orders are never pruned
    assert len(broker.snapshot()["orders"]) == 3
    with pytest.raises(ValueError, match="keep_finished"):
        broker.prune(-1)


def test_restore_rejects_unknown_version_and_garbage() -> None:
    with pytest.raises(ValueError, match="snapshot version"):
        PaperBroker.restore({"version": 99})
    with pytest.raises(ValueError, match="malformed paper broker snapshot"):
        PaperBroker.restore({"version": 1, "config": {}})


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="fee_rate"):
        PaperBroker({}, fee_rate=D("1.5"))
    with pytest.raises(ValueError, match="slippage_bps"):
        PaperBroker({}, slippage_bps=D("-1"))
    with pytest.raises(ValueError, match="quantity_step"):
        PaperBroker({}, quantity_step=D(0))
    with pytest.raises(ValueError, match=r"balances\['USDT'\]"):
        PaperBroker({"USDT": D(-1)})


async def test_on_price_rejects_non_positive_price() -> None:
    broker = PaperBroker({})
    with pytest.raises(ValueError, match="positive finite Decimal"):
        await broker.on_price(SYM, D(0), T0)


async def test_a_failing_handler_does_not_stop_other_handlers() -> None:
    broker = await make()

    async def broken(state: OrderState) -> None:
        raise RuntimeError("boom")

    broker.subscribe(broken)
    seen = recorder(broker)
    await broker.place_order(req("l", TradeSide.BUY, OrderType.LIMIT, price=D("39000")))
    await broker.on_price(SYM, D("38000"), T0)
    assert [s.status for s in seen] == [OrderStatus.FILLED]


def test_from_settings_uses_paper_balance_fee_and_slippage() -> None:
    from tradeengine.settings import Settings

    settings = Settings(paper_balance=D("500"), fee_rate=D("0.002"), slippage_bps=D("3"))
    broker = PaperBroker.from_settings(settings)
    assert asyncio.run(broker.balances()) == {"USDT": D("500")}
    assert broker.fee_rate == D("0.002")
    assert broker.slippage_bps == D("3")


def _fields(r: OrderRequest) -> dict[str, object]:
    return {name: getattr(r, name) for name in OrderRequest.__dataclass_fields__}


# ---------------------------------------------------------------- property: conservation


_actions = st.lists(
    st.one_of(
        st.tuples(st.just("price"), st.integers(min_value=20_000, max_value=80_000)),
        st.tuples(
            st.just("order"),
            st.sampled_from([OrderType.MARKET, OrderType.MARKET, *OrderType]),
            st.sampled_from(list(TradeSide)),
            st.booleans(),  # reduce_only
            st.integers(min_value=1, max_value=100),  # quantity in 0.001 BTC
            st.integers(min_value=20_000, max_value=80_000),  # price / stop
            st.integers(min_value=1, max_value=20),  # trailing percent
        ),
        st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=30)),
    ),
    min_size=5,
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=_actions, slippage=st.sampled_from([D(0), D(7)]))
def test_property_balances_never_negative_and_value_is_conserved(
    actions: list[tuple[object, ...]], slippage: D
) -> None:
    asyncio.run(_run_property(actions, slippage))


async def _run_property(actions: list[tuple[object, ...]], slippage: D) -> None:
    initial = D("20000")
    broker = PaperBroker({"USDT": initial}, slippage_bps=slippage, quantity_step=D("0.001"))
    await broker.on_price(SYM, D(40000), T0)
    placed: list[str] = []
    for n, action in enumerate(actions):
        at = T0 + timedelta(seconds=n)
        if action[0] == "price":
            await broker.on_price(SYM, D(int(action[1])), at)  # type: ignore[call-overload]
        elif action[0] == "order":
            _, typ, side, reduce_only, qty, level, pct = action
            last = broker.last_price(SYM)
            assert last is not None
            level_d = D(int(level))  # type: ignore[call-overload]
            request = OrderRequest(
                f"o{n}",
                SYM,
                side,  # type: ignore[arg-type]
                typ,  # type: ignore[arg-type]
                D(int(qty)) / 1000,  # type: ignore[call-overload]
                OrderPurpose.ENTRY,
                price=level_d,
                stop_price=level_d if typ is not OrderType.TRAILING_STOP else None,
                trailing_percent=D(int(pct)) / 100,  # type: ignore[call-overload]
                reduce_only=bool(reduce_only),
            )
            try:
                await broker.place_order(request)
                placed.append(request.client_order_id)
            except OrderRejected:
                pass
        elif placed:
            await broker.cancel_order(placed[int(action[1]) % len(placed)], SYM)  # type: ignore[call-overload]

        balances = await broker.balances()
        assert all(v >= 0 for v in balances.values()), balances
        assert all(v >= 0 for v in broker.reserved().values())
        # Value conservation at any mark: every fill moves value by side*(mark - price)*qty minus fees.
        mark = D(50_000)
        expected = initial
        reserved_expected = D(0)
        for cid in placed:
            state = await broker.fetch_order(cid, SYM)
            assert state is not None
            sign = 1 if state.side is TradeSide.BUY else -1
            for fill in state.fills:
                expected += sign * fill.quantity * (mark - fill.price) - fill.fee
        assert broker.equity(prices={SYM: mark}) == expected
        assert sum(broker.reserved().values(), reserved_expected) >= 0
