"""OfflineAnalyst rules and build_market_data's marketData shape (checked against TA-Lib)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import numpy as np
import pytest
import talib

from tradeengine.ai.analyst import AnalysisRequest, PositionSnapshot
from tradeengine.ai.market_data import build_market_data, klines_from_market_data
from tradeengine.ai.offline import OfflineAnalyst
from tradeengine.domain.decisions import DecisionMetadata
from tradeengine.domain.enums import Decision, PositionSide
from tradeengine.indicators.klines import Klines

MARKET = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "market"
HOUR = 3_600_000


def synthetic(closes: list[float], spread: float = 0.5) -> Klines:
    n = len(closes)
    opens = [closes[0], *closes[:-1]]
    highs = [max(o, c) + spread for o, c in zip(opens, closes, strict=True)]
    lows = [min(o, c) - spread for o, c in zip(opens, closes, strict=True)]
    return Klines.from_arrays([i * HOUR for i in range(n)], opens, highs, lows, closes, [10.0] * n)


def wave(n: int, drift: float, start: float = 100.0) -> list[float]:
    """A trend with a zig-zag so RSI stays away from 0/100."""
    return [start + drift * i + (1.5 if i % 2 else -1.5) for i in range(n)]


def turn(up_then_down: bool) -> list[float]:
    """60 bars one way, then 19 bars back the other way, faster: a momentum reversal."""
    s = 1 if up_then_down else -1
    closes = [100 + s * 0.5 * i + (1 if i % 2 else -1) for i in range(60)]
    closes += [closes[-1] - s * 1.0 * j + (1 if j % 2 else -1) for j in range(1, 20)]
    return closes


def btc_1h(count: int, end: int) -> Klines:
    rows = json.loads((MARKET / "BTC_USDT-1h.json").read_text())
    return Klines.from_rows(rows[end - count : end])


def request(
    klines: Klines,
    *,
    price: str | None = None,
    position: PositionSnapshot | None = None,
    settings: dict[str, Any] | None = None,
    instructions: str = "Buy the dip when RSI is low",
) -> AnalysisRequest:
    ticker = {"lastPrice": price} if price is not None else None
    return AnalysisRequest(
        correlation_id="c1",
        user_id=uuid4(),
        trader_id=uuid4(),
        signal_id=uuid4(),
        symbol="BTC/USDT",
        ai_instructions=instructions,
        market_data=build_market_data("BTC/USDT", ticker, {"1h": klines}),
        position=position,
        is_reanalysis=position is not None,
        trader_settings=settings or {},
    )


def position(side: PositionSide, entry: str, stop: str | None, pid: UUID | None = None) -> PositionSnapshot:
    return PositionSnapshot(
        position_id=pid or uuid4(),
        side=side,
        entry_price=D(entry),
        size=D("1"),
        stop_loss=None if stop is None else D(stop),
        take_profit=None,
        unrealized_pnl=D(0),
        unrealized_pnl_percent=D(0),
    )


def talib_atr(k: Klines) -> D:
    value = talib.ATR(np.array(k.high), np.array(k.low), np.array(k.close), 14)[-1]
    return D(repr(float(value)))


# ---------------------------------------------------------------- build_market_data


def test_market_data_has_the_seed_shape_and_indicators_match_talib() -> None:
    k1h = btc_1h(300, 2000)
    k4h = btc_1h(120, 2000)  # any second timeframe will do for the shape
    ticker = {
        "last": 35123.45,
        "quoteVolume": 123456.7,
        "percentage": -1.25,
        "bid": 35123.0,
        "info": {"x": 1},
    }
    data = build_market_data("BTC/USDT", ticker, {"1h": k1h, "4h": k4h}, limit=100)
    json.dumps(data)  # JSON-safe as is

    assert data["symbol"] == "BTC/USDT"
    assert data["primaryTimeframe"] == "1h"
    assert data["ticker"]["lastPrice"] == "35123.45"
    assert data["ticker"]["volume24h"] == "123456.7"
    assert data["ticker"]["priceChange24h"] == "-1.25"
    assert data["ticker"]["bid"] == "35123.0"
    assert "info" not in data["ticker"]
    assert data["price"] == "35123.45"
    assert data["timestamp"] == (int(k1h.open_time[-1]) + HOUR) // 1000

    rows = data["klines"]["1h"]
    assert len(rows) == 100
    assert len(data["klines"]["4h"]) == 100
    last = rows[-1]
    assert last[0] == int(k1h.open_time[-1])
    assert last[6] == last[0] + HOUR - 1
    assert D(last[4]) == D(repr(float(k1h.close[-1])))
    assert all(isinstance(v, str) for v in last[1:6])

    ind = data["calculatedIndicators"]
    close, high, low = np.array(k1h.close), np.array(k1h.high), np.array(k1h.low)
    assert math.isclose(ind["rsi_14"], talib.RSI(close, 14)[-1], rel_tol=1e-9)
    assert math.isclose(ind["atr_14"], talib.ATR(high, low, close, 14)[-1], rel_tol=1e-9)
    assert math.isclose(ind["sma_200"], talib.SMA(close, 200)[-1], rel_tol=1e-12)
    assert math.isclose(ind["ema_26"], talib.EMA(close, 26)[-1], rel_tol=1e-9)
    _macd, _signal, hist = talib.MACD(close)
    assert math.isclose(ind["macd"]["histogram"], hist[-1], rel_tol=1e-6)
    upper, middle, _ = talib.BBANDS(close, 20, 2.0, 2.0)
    assert math.isclose(ind["bb"]["upper"], upper[-1], rel_tol=1e-9)
    assert math.isclose(ind["bb"]["middle"], middle[-1], rel_tol=1e-12)
    assert set(ind["byTimeframe"]) == {"1h", "4h"}
    assert ind["byTimeframe"]["1h"]["rsi_14"] == ind["rsi_14"]
    assert "sma_200" not in ind["byTimeframe"]["4h"]  # only 120 candles: still warming up

    round_trip = klines_from_market_data(data)
    assert np.array_equal(round_trip.close, k1h.close[-100:])


def test_market_data_falls_back_to_last_close_and_omits_warmup_indicators() -> None:
    k = synthetic(wave(10, 1.0))
    data = build_market_data("ETH/USDT", None, {"5m": k})
    assert data["ticker"]["lastPrice"] == repr(float(k.close[-1]))
    ind = data["calculatedIndicators"]
    assert "rsi_14" not in ind
    assert "macd" not in ind
    assert "sma_20" not in ind
    assert "vwap" in ind
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in ind.values())


def test_market_data_bad_arguments_name_the_field() -> None:
    k = synthetic(wave(30, 1.0))
    with pytest.raises(ValueError, match="limit must be >= 1"):
        build_market_data("BTC/USDT", None, {"1h": k}, limit=0)
    with pytest.raises(ValueError, match="primary_timeframe '4h'"):
        build_market_data("BTC/USDT", None, {"1h": k}, primary_timeframe="4h")


# ---------------------------------------------------------------- new signals


async def test_new_signal_opens_long_with_atr_stop_and_target() -> None:
    k = synthetic(wave(80, 0.2))
    result = await OfflineAnalyst().analyze(request(k, price="120", settings={"position_size_pct": 25}))
    assert result.error is None
    assert result.decision is Decision.OPEN_LONG
    atr = talib_atr(k)
    meta = result.metadata
    assert abs(meta["stopLoss"] - (D(120) - D("1.5") * atr)) < D("1e-6")
    assert abs(meta["takeProfit"] - (D(120) + 3 * atr)) < D("1e-6")
    assert meta["positionSize"] == D("0.25")
    assert all(isinstance(meta[key], D) for key in ("stopLoss", "takeProfit", "positionSize"))
    parsed = DecisionMetadata.parse(meta)  # the runtime's parser accepts it
    assert parsed.position_size == D("0.25")
    assert result.model == "offline-rules-v1"


async def test_indicators_come_from_the_payload_else_from_its_candles() -> None:
    k = synthetic([100 + 0.2 * i + 3 * math.sin(i / 3) for i in range(110)])  # RSI ~50
    base = request(k, price="125")
    short_payload = build_market_data("BTC/USDT", {"lastPrice": "125"}, {"1h": k}, limit=20)
    with_indicators = AnalysisRequest(**{**_fields(base), "market_data": short_payload})
    result = await OfflineAnalyst().analyze(with_indicators)
    full_atr = talib_atr(k)  # over all 110 candles, as calculatedIndicators has it
    assert abs(result.metadata["stopLoss"] - (D(125) - D("1.5") * full_atr)) < D("1e-6")

    bare = {**short_payload, "calculatedIndicators": {}}
    fallback = await OfflineAnalyst().analyze(AnalysisRequest(**{**_fields(base), "market_data": bare}))
    tail_atr = talib_atr(k.tail(20))  # only the 20 candles the payload carries
    assert tail_atr != full_atr
    assert abs(fallback.metadata["stopLoss"] - (D(125) - D("1.5") * tail_atr)) < D("1e-6")


def _fields(r: AnalysisRequest) -> dict[str, Any]:
    return {name: getattr(r, name) for name in AnalysisRequest.__dataclass_fields__}


async def test_take_profit_pct_setting_overrides_atr_target() -> None:
    k = synthetic(wave(80, 0.2))
    result = await OfflineAnalyst().analyze(request(k, price="120", settings={"take_profit_pct": "5"}))
    assert result.metadata["takeProfit"] == D("126.00000000")
    assert result.metadata["positionSize"] == D("0.10")


@pytest.mark.parametrize(
    ("settings", "instructions"),
    [({"direction": "short"}, "Trade RSI extremes"), ({}, "Short overbought pumps; bearish divergence")],
)
async def test_short_bias_opens_short_with_stop_above(settings: dict[str, Any], instructions: str) -> None:
    k = synthetic(wave(80, -0.2, start=140))
    result = await OfflineAnalyst().analyze(request(k, price="120", settings=settings, instructions=instructions))
    assert result.decision is Decision.OPEN_SHORT
    atr = talib_atr(k)
    assert abs(result.metadata["stopLoss"] - (D(120) + D("1.5") * atr)) < D("1e-6")
    assert abs(result.metadata["takeProfit"] - (D(120) - 3 * atr)) < D("1e-6")


async def test_overbought_long_is_watched_not_opened() -> None:
    k = synthetic([100 + 2.0 * i for i in range(60)])  # straight up: RSI 100
    result = await OfflineAnalyst().analyze(request(k))
    assert result.decision is Decision.WATCH
    assert "RSI" in result.reasoning
    assert result.metadata == {}


async def test_too_few_candles_is_no_trade() -> None:
    result = await OfflineAnalyst().analyze(request(synthetic(wave(10, 0.1))))
    assert result.decision is Decision.NO_TRADE
    assert "not enough candles for ATR(14): 10 given" in result.reasoning


async def test_missing_data_returns_safe_default_with_error() -> None:
    req = AnalysisRequest("c", uuid4(), uuid4(), uuid4(), "BTC/USDT", "", market_data={})
    result = await OfflineAnalyst().analyze(req)
    assert result.decision is Decision.NO_TRADE
    assert result.error is not None
    assert "no price" in result.error


# ---------------------------------------------------------------- open positions


async def test_position_ladder_breakeven_partial_then_lock_one_r() -> None:
    k = synthetic(wave(80, 0.2))  # uptrend: no momentum reversal
    analyst = OfflineAnalyst()
    pid = uuid4()

    held = await analyst.analyze(request(k, price="102", position=position(PositionSide.LONG, "100", "95", pid)))
    assert held.decision is Decision.WATCH  # +0.4R

    be = await analyst.analyze(request(k, price="106", position=position(PositionSide.LONG, "100", "95", pid)))
    assert be.decision is Decision.UPDATE_STOP_LOSS
    assert be.metadata == {"newStopLoss": D("100.00000000")}

    partial = await analyst.analyze(request(k, price="111", position=position(PositionSide.LONG, "100", "95", pid)))
    assert partial.decision is Decision.PARTIAL_CLOSE
    assert partial.metadata == {"closePercentage": D("0.5")}

    lock = await analyst.analyze(request(k, price="111", position=position(PositionSide.LONG, "100", "95", pid)))
    assert lock.decision is Decision.UPDATE_STOP_LOSS
    assert lock.metadata == {"newStopLoss": D("105.00000000")}

    # Stop above entry: R falls back to 1.5 ATR; the partial was done and the stop is beyond +1R.
    atr = talib_atr(k)
    price = D(100) + 2 * D("1.5") * atr + 1
    done = await analyst.analyze(request(k, price=str(price), position=position(PositionSide.LONG, "100", "110", pid)))
    assert done.decision is Decision.WATCH  # stop already above entry + 1R


async def test_short_position_reversal_closes() -> None:
    k = synthetic(turn(up_then_down=False))  # fell, now rising: momentum against a short
    result = await OfflineAnalyst().analyze(
        request(k, price="91.5", position=position(PositionSide.SHORT, "118", "125"))
    )
    assert result.decision is Decision.CLOSE
    assert "momentum reversed" in result.reasoning


async def test_long_position_reversal_closes() -> None:
    k = synthetic(turn(up_then_down=True))
    result = await OfflineAnalyst().analyze(
        request(k, price="112.5", position=position(PositionSide.LONG, "121", "110"))
    )
    assert result.decision is Decision.CLOSE


# ---------------------------------------------------------------- always_open


async def test_always_open_policy_uses_fixed_percentages() -> None:
    analyst = OfflineAnalyst(policy="always_open", stop_loss_pct=D("0.01"), take_profit_pct=D("0.03"))
    k = synthetic([100 + 2.0 * i for i in range(60)])  # would be "overbought" under the rules
    result = await analyst.analyze(request(k, price="200"))
    assert result.decision is Decision.OPEN_LONG
    assert result.metadata == {
        "stopLoss": D("198.00000000"),
        "takeProfit": D("206.00000000"),
        "positionSize": D("0.10"),
    }
    short = await analyst.analyze(request(k, price="200", settings={"bias": "short"}))
    assert short.decision is Decision.OPEN_SHORT
    assert short.metadata["stopLoss"] == D("202.00000000")
    held = await analyst.analyze(request(k, price="150", position=position(PositionSide.LONG, "200", "198")))
    assert held.decision is Decision.WATCH


def test_analyst_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="policy"):
        OfflineAnalyst(policy="yolo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop_loss_pct"):
        OfflineAnalyst(stop_loss_pct=D(2))


# ---------------------------------------------------------------- real candles


async def test_real_candles_give_consistent_deterministic_decisions() -> None:
    rows = json.loads((MARKET / "BTC_USDT-1h.json").read_text())
    analyst_a, analyst_b = OfflineAnalyst(), OfflineAnalyst()
    seen: set[Decision] = set()
    for end in range(200, 5400, 97):
        k = Klines.from_rows(rows[end - 200 : end])
        req = request(k)
        a, b = await analyst_a.analyze(req), await analyst_b.analyze(req)
        assert (a.decision, a.metadata) == (b.decision, b.metadata)
        assert a.error is None
        seen.add(a.decision)
        price = D(repr(float(k.close[-1])))
        if a.decision is Decision.OPEN_LONG:
            assert a.metadata["stopLoss"] < price < a.metadata["takeProfit"]
            assert a.metadata["takeProfit"] - price == pytest.approx(
                2 * (price - a.metadata["stopLoss"]), abs=D("1e-6")
            )
    assert {Decision.OPEN_LONG, Decision.WATCH} <= seen


# ---------------------------------------------------------------- carried candles


@pytest.mark.parametrize("policy", ["rules", "always_open"])
async def test_carried_candles_decide_exactly_like_the_parsed_rows(policy: str) -> None:
    """The runtime's requests carry the candles of ``market_data["klines"]``; the analyst reads
    those instead of parsing the rows, with the same outcome in every branch, fallbacks included."""
    cases = [
        request(synthetic(wave(80, 0.2)), price="120"),
        request(synthetic(wave(10, 0.1))),  # too few candles: the reasoning counts them
        request(synthetic(turn(True)), price="112.5", position=position(PositionSide.LONG, "121", "110")),
    ]
    no_price = request(synthetic(wave(80, 0.2)))
    bare = {**no_price.market_data, "calculatedIndicators": {}, "price": None, "ticker": {}}
    cases.append(AnalysisRequest(**{**_fields(no_price), "market_data": bare}))  # price and indicators from candles
    for base in cases:
        rows = base.market_data["klines"]["1h"]
        carried = AnalysisRequest(**{**_fields(base), "candles": {"1h": Klines.from_rows(rows)}})
        parsed = await OfflineAnalyst(policy).analyze(base)  # type: ignore[arg-type]
        direct = await OfflineAnalyst(policy).analyze(carried)  # type: ignore[arg-type]
        assert direct.error is None
        assert replace(direct, latency_ms=0.0) == replace(parsed, latency_ms=0.0)
