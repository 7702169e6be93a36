"""Check a schema-valid analysis against the market and the position before anyone acts on it.

Each problem is a sentence naming the field, because it goes back to the model verbatim in the
repair round and into the stored error when the repair fails too.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tradeengine.ai.analyst import PositionSnapshot
from tradeengine.ai.schemas import AnalysisOutput
from tradeengine.domain.enums import Decision, PositionSide

NEW_SIGNAL_DECISIONS: tuple[Decision, ...] = (
    Decision.NO_TRADE,
    Decision.WATCH,
    Decision.OPEN_LONG,
    Decision.OPEN_SHORT,
)
POSITION_DECISIONS: tuple[Decision, ...] = (
    Decision.WATCH,
    Decision.CLOSE,
    Decision.PARTIAL_CLOSE,
    Decision.SCALE_IN,
    Decision.SCALE_OUT,
    Decision.UPDATE_STOP_LOSS,
    Decision.UPDATE_TAKE_PROFIT,
    Decision.FLIP_POSITION,
)

_FRACTIONS = ("positionSize", "closePercentage", "scaleInAmount", "scaleOutPercentage")
_PRICES = ("stopLoss", "takeProfit", "newStopLoss", "newTakeProfit")


def allowed_decisions(position: PositionSnapshot | None) -> tuple[Decision, ...]:
    return NEW_SIGNAL_DECISIONS if position is None else POSITION_DECISIONS


def _side_checks(
    problems: list[str],
    side: PositionSide,
    price: Decimal,
    meta: dict[str, Any],
    stop_key: str,
    target_key: str,
    what: str,
) -> None:
    stop, target = meta.get(stop_key), meta.get(target_key)
    if side is PositionSide.LONG:
        if stop is not None and not stop < price:
            problems.append(f"metadata.{stop_key} {stop} must be below the current price {price} for {what}")
        if target is not None and not target > price:
            problems.append(f"metadata.{target_key} {target} must be above the current price {price} for {what}")
    else:
        if stop is not None and not stop > price:
            problems.append(f"metadata.{stop_key} {stop} must be above the current price {price} for {what}")
        if target is not None and not target < price:
            problems.append(f"metadata.{target_key} {target} must be below the current price {price} for {what}")


def to_decimal_metadata(output: AnalysisOutput) -> dict[str, Decimal]:
    """The metadata the model set, as exact Decimals (from the float's shortest repr)."""
    return {k: Decimal(repr(v)) for k, v in output.metadata.model_dump(exclude_none=True).items()}


def validate_analysis(output: AnalysisOutput, *, price: Decimal | None, position: PositionSnapshot | None) -> list[str]:
    """Return the problems with ``output`` (empty when it can be acted on)."""
    problems: list[str] = []
    decision = Decision(output.decision)
    allowed = allowed_decisions(position)
    if decision not in allowed:
        state = "there is no open position" if position is None else "a position is already open"
        problems.append(
            f"decision {decision.value!r} is not allowed when {state}; use one of "
            + ", ".join(d.value for d in allowed)
        )
    meta = to_decimal_metadata(output)
    for key in _PRICES:
        if key in meta and meta[key] <= 0:
            problems.append(f"metadata.{key} must be a positive price (got {meta[key]})")
    for key in _FRACTIONS:
        if key in meta and not Decimal(0) < meta[key] <= Decimal(1):
            problems.append(f"metadata.{key} must be a fraction in (0, 1] (got {meta[key]})")
    if price is None or price <= 0:
        return problems  # nothing to check prices against; the caller records the missing price

    if decision is Decision.OPEN_LONG:
        _side_checks(problems, PositionSide.LONG, price, meta, "stopLoss", "takeProfit", "open_long")
    elif decision is Decision.OPEN_SHORT:
        _side_checks(problems, PositionSide.SHORT, price, meta, "stopLoss", "takeProfit", "open_short")
    elif position is not None:
        if decision is Decision.PARTIAL_CLOSE and "closePercentage" not in meta:
            problems.append("metadata.closePercentage is required for partial_close")
        elif decision is Decision.SCALE_OUT and "scaleOutPercentage" not in meta:
            problems.append("metadata.scaleOutPercentage is required for scale_out")
        elif decision is Decision.SCALE_IN and "scaleInAmount" not in meta:
            problems.append("metadata.scaleInAmount is required for scale_in")
        elif decision is Decision.UPDATE_STOP_LOSS:
            if "newStopLoss" not in meta:
                problems.append("metadata.newStopLoss is required for update_stop_loss")
            _side_checks(problems, position.side, price, meta, "newStopLoss", "_", "update_stop_loss")
        elif decision is Decision.UPDATE_TAKE_PROFIT:
            if "newTakeProfit" not in meta:
                problems.append("metadata.newTakeProfit is required for update_take_profit")
            _side_checks(problems, position.side, price, meta, "_", "newTakeProfit", "update_take_profit")
        elif decision is Decision.FLIP_POSITION:
            new_side = PositionSide.SHORT if position.side is PositionSide.LONG else PositionSide.LONG
            _side_checks(problems, new_side, price, meta, "stopLoss", "takeProfit", f"flip_position to {new_side}")
    return problems
