"""Key levels, output validation, prompt rendering and hygiene (pure functions)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from fakes import ai_samples

import tradeengine.indicators as indicators
from tradeengine.ai.hygiene import AIInputError, cap_user_text, fence, normalize_symbol
from tradeengine.ai.key_levels import average_true_range, compute_key_levels, swing_points
from tradeengine.ai.prompts import BUILTIN_TEMPLATES, STRATEGY_HELPERS, render
from tradeengine.ai.schemas import AnalysisOutput
from tradeengine.ai.validation import validate_analysis
from tradeengine.domain.enums import PositionSide, PromptType
from tradeengine.indicators.klines import Klines

PRICE = Decimal("100")


def out(decision: str, **meta: Any) -> AnalysisOutput:
    return AnalysisOutput.model_validate({"decision": decision, "reasoning": "r", "confidence": 50, "metadata": meta})


def test_atr_is_the_seed_simple_mean_of_true_ranges() -> None:
    high = np.array([10.0, 12.0, 11.0])
    low = np.array([9.0, 10.0, 8.0])
    close = np.array([9.5, 11.0, 9.0])
    # TR1 = max(2, |12-9.5|, |10-9.5|) = 2.5; TR2 = max(3, |11-11|, |8-11|) = 3
    assert average_true_range(high, low, close, 14) == pytest.approx(2.75)


def test_swing_points_find_local_extremes() -> None:
    lows = np.array([5.0, 4.0, 3.0, 4.0, 5.0, 2.0, 6.0, 7.0, 8.0])
    assert swing_points(lows, 2, lows=True).tolist() == [3.0, 2.0]


def test_key_levels_on_real_candles_sit_on_the_right_sides() -> None:
    klines = ai_samples.candles().tail(300)
    entry = Decimal(repr(float(klines.close[-1])))
    long = compute_key_levels(klines, entry, PositionSide.LONG)
    short = compute_key_levels(klines, entry, PositionSide.SHORT)
    assert long is not None
    assert short is not None
    atr = average_true_range(klines.high[-100:], klines.low[-100:], klines.close[-100:], 14)
    tick = 0.011  # levels are rounded to the entry's precision (2 places here)
    assert float(long.atr) == pytest.approx(atr, abs=tick)
    assert float(entry - long.stop_loss) == pytest.approx(1.5 * atr, abs=tick)
    expected = [2 * atr, 3 * atr, 5 * atr]
    assert [float(tp - entry) for tp in long.take_profits] == pytest.approx(expected, abs=tick)
    assert short.stop_loss > entry > short.take_profits[0] > short.take_profits[2]
    assert all(s < entry for s in long.support)
    assert all(r > entry for r in long.resistance)
    assert list(long.support) == sorted(long.support, reverse=True)  # nearest first
    assert 1 <= len(long.support) <= 3


def test_key_levels_need_candles() -> None:
    assert compute_key_levels(Klines.empty(), PRICE, PositionSide.LONG) is None


@pytest.mark.parametrize(
    ("decision", "meta", "problem"),
    [
        ("open_long", {"stopLoss": 101.0}, "metadata.stopLoss 101.0 must be below"),
        ("open_long", {"takeProfit": 99.0}, "metadata.takeProfit 99.0 must be above"),
        ("open_short", {"stopLoss": 99.0}, "must be above the current price"),
        ("open_long", {"positionSize": 1.5}, "metadata.positionSize must be a fraction in (0, 1]"),
        ("open_long", {"positionSize": 0.0}, "metadata.positionSize must be a fraction"),
        ("close", {}, "not allowed when there is no open position"),
        ("open_long", {"stopLoss": -5.0}, "metadata.stopLoss must be a positive price"),
    ],
)
def test_new_signal_problems(decision: str, meta: dict[str, Any], problem: str) -> None:
    problems = validate_analysis(out(decision, **meta), price=PRICE, position=None)
    assert any(problem in p for p in problems), problems


def test_valid_new_signal_has_no_problems() -> None:
    good = out("open_long", stopLoss=97.0, takeProfit=106.0, positionSize=0.1)
    assert validate_analysis(good, price=PRICE, position=None) == []
    assert validate_analysis(out("no_trade"), price=PRICE, position=None) == []


@pytest.mark.parametrize(
    ("decision", "meta", "problem"),
    [
        ("partial_close", {}, "closePercentage is required"),
        ("scale_out", {"scaleOutPercentage": 2.0}, "scaleOutPercentage must be a fraction"),
        ("scale_in", {}, "scaleInAmount is required"),
        ("update_stop_loss", {"newStopLoss": 105.0}, "newStopLoss 105.0 must be below"),
        ("update_take_profit", {"newTakeProfit": 90.0}, "newTakeProfit 90.0 must be above"),
        ("flip_position", {"stopLoss": 95.0}, "must be above the current price"),
        ("open_long", {}, "not allowed when a position is already open"),
    ],
)
def test_position_problems(decision: str, meta: dict[str, Any], problem: str) -> None:
    position = ai_samples.long_position(PRICE)
    problems = validate_analysis(out(decision, **meta), price=PRICE, position=position)
    assert any(problem in p for p in problems), problems


def test_render_is_single_pass() -> None:
    assert render("A {{X}} B {{Y}}", {"X": "{{Y}}", "Y": "y"}) == "A {{Y}} B y"


def test_every_helper_named_in_the_prompt_exists() -> None:
    for entry in STRATEGY_HELPERS:
        name = entry.split("(", 1)[0]
        assert callable(getattr(indicators, name)), name
    assert set(BUILTIN_TEMPLATES) == set(PromptType)


def test_hygiene() -> None:
    assert normalize_symbol("btcusdt") == "BTC/USDT"
    assert normalize_symbol("ETH/USDT") == "ETH/USDT"
    with pytest.raises(AIInputError, match="symbol"):
        normalize_symbol("BTC/USDT'; --")
    with pytest.raises(AIInputError) as info:
        cap_user_text("y" * 10_001, field="description")
    assert info.value.field == "description"
    with pytest.raises(AIInputError, match="must not be empty"):
        cap_user_text("  ", field="description")
    assert fence("a </user_text> b", "user_text") == "<user_text>\na  b\n</user_text>"
