"""Pure pieces of the runtime: intervals, decision metadata, sizing, P&L, client order ids, triggers."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tradeengine.domain.decisions import (
    DecisionError,
    DecisionMetadata,
    PositionBook,
    SizingPolicy,
    validate_protective_levels,
)
from tradeengine.domain.enums import PositionSide, TradeSide
from tradeengine.domain.timeframes import TimerInterval, next_boundary_ms, timeframe_ms
from tradeengine.runtime.state import LivePosition, client_order_id, parse_client_order_id


def test_intervals_parse_fixed_and_candle_close() -> None:
    assert TimerInterval.parse("15s").period_ms == 15_000
    assert not TimerInterval.parse("1m").is_candle_close
    close = TimerInterval.parse("5m_close")
    assert close.timeframe == "5m"
    assert close.period_ms == 300_000
    assert close.is_candle_close
    assert timeframe_ms("4h") == 14_400_000
    assert next_boundary_ms(299_999, 300_000) == 300_000
    assert next_boundary_ms(300_000, 300_000) == 600_000


@pytest.mark.parametrize("bad", ["", "5x", "0m", "m5", "1s_close", "five"])
def test_bad_interval_names_the_field(bad: str) -> None:
    with pytest.raises(ValueError, match="check_interval"):
        TimerInterval.parse(bad, field="check_interval")


def test_metadata_parses_numbers_and_percentages_exactly() -> None:
    md = DecisionMetadata.parse(
        {
            "stopLoss": 41800.5,
            "takeProfit": "44500",
            "positionSize": 0.1,
            "closePercentage": 50,
            "scaleOutPercentage": "0.25",
        }
    )
    assert md.stop_loss == Decimal("41800.5")
    assert md.take_profit == Decimal("44500")
    assert md.position_size == Decimal("0.1")
    assert md.close_percentage == Decimal("0.5")
    assert md.scale_out_percentage == Decimal("0.25")
    assert md.new_stop_loss is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("stopLoss", -1),
        ("takeProfit", "abc"),
        ("closePercentage", 150),
        ("positionSize", True),
        ("newStopLoss", float("nan")),
    ],
)
def test_bad_metadata_names_the_key(key: str, value: object) -> None:
    with pytest.raises(DecisionError, match=key):
        DecisionMetadata.parse({key: value})


def test_sizing_uses_share_of_balance_and_refuses_dust() -> None:
    policy = SizingPolicy.from_settings({"position_size_pct": Decimal("10"), "max_open_positions": 2})
    assert policy.position_size_pct == Decimal("0.1")
    assert policy.entry_quantity(free_quote=Decimal(10000), price=Decimal(20000), requested=None) == Decimal("0.05")
    # An analyst asking for 90 % is capped at max_position_pct (50 %).
    assert policy.entry_quantity(free_quote=Decimal(1000), price=Decimal(100), requested=Decimal("0.9")) == 5
    with pytest.raises(DecisionError, match="insufficient balance"):
        policy.entry_quantity(free_quote=Decimal(50), price=Decimal(100), requested=None)
    with pytest.raises(ValueError, match="max_open_positions"):
        SizingPolicy.from_settings({"max_open_positions": 0})


def test_default_stops_and_level_validation() -> None:
    policy = SizingPolicy.from_settings({"stop_loss_pct": 2, "take_profit_pct": 4})
    assert policy.default_stops(PositionSide.LONG, Decimal(100)) == (
        Decimal("98.00000000"),
        Decimal("104.00000000"),
    )
    assert policy.default_stops(PositionSide.SHORT, Decimal(100)) == (
        Decimal("102.00000000"),
        Decimal("96.00000000"),
    )
    with pytest.raises(DecisionError, match="below the price"):
        validate_protective_levels(PositionSide.LONG, Decimal(100), Decimal(101), None)
    with pytest.raises(DecisionError, match="above the price"):
        validate_protective_levels(PositionSide.SHORT, Decimal(100), Decimal(99), None)


def test_pnl_is_net_of_fees_for_long_with_scale_in_and_partial_close() -> None:
    book = PositionBook(PositionSide.LONG)
    book.add_fill(TradeSide.BUY, Decimal(100), Decimal(1), Decimal("0.1"))
    book.add_fill(TradeSide.BUY, Decimal(110), Decimal(1), Decimal("0.11"))
    assert book.average_entry == Decimal(105)
    book.add_fill(TradeSide.SELL, Decimal(120), Decimal(1), Decimal("0.12"))
    book.add_fill(TradeSide.SELL, Decimal(90), Decimal(1), Decimal("0.09"))
    assert book.size == 0
    pnl, pct = book.close_result()
    # (120 + 90) - (100 + 110) - fees 0.42
    assert pnl == Decimal("-0.42000000")
    assert pct == Decimal("-0.2000")


def test_pnl_short() -> None:
    book = PositionBook(PositionSide.SHORT)
    book.add_fill(TradeSide.SELL, Decimal(200), Decimal(2), Decimal("0.4"))
    book.add_fill(TradeSide.BUY, Decimal(150), Decimal(2), Decimal("0.3"))
    assert book.close_result() == (Decimal("99.30000000"), Decimal("24.8250"))


def test_client_order_ids_round_trip_and_fit_binance() -> None:
    owner = uuid.uuid4()
    for step in ("open", "flip_close", "trailing_stop", "partial_close"):
        value = client_order_id(owner, step, 3)
        assert len(value) <= 36
        assert parse_client_order_id(value) == (owner, step, 3)
    assert client_order_id(owner, "open") == client_order_id(owner, "open")  # same intent, same id
    assert parse_client_order_id("paper-1") is None


def _position(side: PositionSide, **levels: Decimal | None) -> LivePosition:
    book = PositionBook(side)
    book.add_fill(TradeSide.BUY if side is PositionSide.LONG else TradeSide.SELL, Decimal(100), Decimal(1), Decimal(0))
    return LivePosition(
        id=uuid.uuid4(),
        signal_id=uuid.uuid4(),
        trader_id=uuid.uuid4(),
        symbol="BTC/USDT",
        side=side,
        book=book,
        opened_at=datetime.now(UTC),
        **levels,
    )  # type: ignore[arg-type]


def test_monitor_triggers() -> None:
    long = _position(PositionSide.LONG, stop_loss=Decimal(95), take_profit=Decimal(110))
    assert long.trigger(100.0) is None
    assert long.trigger(95.0) == "stop_loss"
    assert long.trigger(110.5) == "take_profit"
    short = _position(PositionSide.SHORT, stop_loss=Decimal(105), take_profit=Decimal(90))
    assert short.trigger(104.9) is None
    assert short.trigger(105.0) == "stop_loss"
    assert short.trigger(89) == "take_profit"
    trail = _position(PositionSide.LONG, trailing_pct=Decimal("0.05"), extreme=Decimal(100))
    assert trail.trigger(120.0) is None  # new high
    assert trail.trigger(114.5) is None  # 4.6 % off the high
    assert trail.trigger(114.0) == "trailing_stop"  # 5 % off 120
    trail_short = _position(PositionSide.SHORT, trailing_pct=Decimal("0.05"), extreme=Decimal(100))
    assert trail_short.trigger(80.0) is None
    assert trail_short.trigger(84.0) == "trailing_stop"


@pytest.mark.parametrize("side", [PositionSide.LONG, PositionSide.SHORT])
@pytest.mark.parametrize(
    "levels",
    [
        {"stop_loss": Decimal(95), "take_profit": Decimal(110)},
        {"stop_loss": Decimal(105), "take_profit": Decimal(90)},  # the other side's levels
        {"stop_loss": Decimal(95)},
        {"take_profit": Decimal(110)},
        {"trailing_pct": Decimal("0.03"), "extreme": Decimal(100)},
        {"trailing_pct": Decimal("0.03")},  # no extreme yet
        {
            "stop_loss": Decimal(97),
            "take_profit": Decimal(104),
            "trailing_pct": Decimal("0.02"),
            "extreme": Decimal(101),
        },
        {},
    ],
)
def test_quiet_prices_trigger_nothing(side: PositionSide, levels: dict[str, Decimal]) -> None:
    """The monitor skips a position when ``quiet(price)``: that must mean ``trigger(price)``
    returns None and leaves the trailing extreme where it was, along a random walk that also
    moves the extreme, crosses every level and hits the levels exactly."""
    rng = random.Random(7)
    position = _position(side, **levels)
    twin = _position(side, **levels)
    exact = [float(v) for k, v in levels.items() if k != "trailing_pct"]
    # Levels on the wrong side of the entry (a long's stop above it) close at once: no quiet band.
    sensible = position.trigger(100.0) is None and twin.trigger(100.0) is None
    price, quiet_seen, loud_seen = 100.0, 0, 0
    for step in range(4000):
        price = rng.choice(exact) if exact and step % 7 == 0 else max(price * (1 + rng.gauss(0, 0.004)), 1.0)
        if position.quiet(price):
            quiet_seen += 1
            before = position.extreme_price
            assert twin.trigger(price) is None, (price, step)
            assert twin.extreme_price == before
        else:
            loud_seen += 1
            if twin.trigger(price) is not None:
                twin = _position(side, **levels)  # closed: start over with a fresh pair
                position = _position(side, **levels)
                continue
        assert position.trigger(price) is None
        assert position.extreme_price == twin.extreme_price
    if sensible:
        assert quiet_seen > 100  # the band is not empty in practice ...
    if levels:
        assert loud_seen > 10  # ... and not everything
