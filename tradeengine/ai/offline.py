"""OfflineAnalyst: deterministic decisions from our own indicators, no network.

Inputs: ``market_data`` as ``build_market_data`` makes it, the last price (``market_data["price"]``
/ ``ticker.lastPrice``, else the newest close) and the trader's settings. Indicators: ATR(14),
RSI(14), MACD(12, 26, 9) histogram, read from ``calculatedIndicators`` (primary timeframe) or,
when missing there, computed from the primary timeframe's candles in ``market_data["klines"]``.

Policy ``"rules"`` (default):

* New signal. Direction is short when ``trader_settings["direction"]`` (or ``"bias"``) is
  ``short``/``short_only``, or the AI instructions mention shorting and never longs; else long.
  Not enough candles for ATR -> ``no_trade``. Overextended entry (long with RSI >= 70, short with
  RSI <= 30) -> ``watch``. Otherwise ``open_long``/``open_short`` with ``stopLoss`` = price -/+ 1.5
  ATR, ``takeProfit`` = price +/- the trader's ``take_profit_pct`` when set, else 3 ATR, and
  ``positionSize`` = the trader's ``position_size_pct`` as a fraction (default 0.10). Confidence
  is 70, 80 when the MACD histogram agrees with the direction.
* Open position (re-analysis). ``R`` is the distance from entry to the stop when the stop is still
  on the losing side of entry, else 1.5 ATR; ``gain`` is the favourable move from entry. In order:
  1. momentum reversal (long: MACD histogram < 0 and RSI < 45; short: > 0 and RSI > 55) -> ``close``;
  2. ``gain >= 2R`` and no partial close yet for this position -> ``partial_close`` of 0.5;
  3. ``gain >= 2R`` and the stop locks less than +1R -> ``update_stop_loss`` to entry +/- 1R;
  4. ``gain >= 1R`` and the stop is still worse than breakeven -> ``update_stop_loss`` to entry;
  5. else ``watch`` (hold).
  Which positions were partially closed is remembered per analyst instance (so a restart could
  repeat rule 2 once for a position; rule 3 then moves the stop).

Policy ``"always_open"`` (backtest cross-checks): every new signal opens (direction as above) with
``stopLoss`` / ``takeProfit`` at ``stop_loss_pct`` / ``take_profit_pct`` from the price; open
positions are held (``watch``) so that only the stops close them.

Prices in metadata are Decimals quantized to 8 decimals; the analyst never raises (errors come back
as ``no_trade``/``watch`` with ``error`` set).
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal, NamedTuple
from uuid import UUID

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult, PositionSnapshot
from tradeengine.ai.market_data import klines_from_market_data
from tradeengine.domain.decisions import DecisionError, fraction, to_decimal
from tradeengine.domain.enums import Decision, PositionSide
from tradeengine.indicators.klines import Klines

Policy = Literal["rules", "always_open"]

MODEL_NAME = "offline-rules-v1"
STOP_ATR = Decimal("1.5")
TAKE_PROFIT_ATR = Decimal(3)
RSI_OVERBOUGHT = 70.0
RSI_OVERSOLD = 30.0
DEFAULT_POSITION_SIZE = Decimal("0.10")
PRICE_QUANTUM = Decimal("0.00000001")

_SHORT_WORDS = re.compile(r"\bshort(s|ing|ed)?\b|\bsell[- ]side\b|\bbearish\b", re.IGNORECASE)
_LONG_WORDS = re.compile(r"\blong(s)?\b|\bbuy(ing)?\b|\bbullish\b", re.IGNORECASE)


class _Decided(NamedTuple):
    """What the rules decided: an AnalysisResult but for the model and the latency, which
    ``analyze`` adds once the decision is made."""

    decision: Decision
    reasoning: str
    confidence: int
    metadata: dict[str, Any]
    key_levels: dict[str, Any]


class OfflineAnalyst:
    """Rules-based Analyst; see the module docstring for every rule."""

    # It reads the candles as columns (``AnalysisRequest.candles``), never market_data's formatted
    # rows: the runtime then formats only the few rows the stored snapshot keeps.
    reads_kline_rows = False

    def __init__(
        self,
        policy: Policy = "rules",
        *,
        stop_loss_pct: Decimal = Decimal("0.02"),
        take_profit_pct: Decimal = Decimal("0.04"),
        atr_period: int = 14,
        rsi_period: int = 14,
    ) -> None:
        if policy not in ("rules", "always_open"):
            raise ValueError(f"policy must be 'rules' or 'always_open', got {policy!r}")
        for name, value in (("stop_loss_pct", stop_loss_pct), ("take_profit_pct", take_profit_pct)):
            if not (0 < value < 1):
                raise ValueError(f"{name} must be a fraction in (0, 1), got {value}")
        if atr_period < 1 or rsi_period < 1:
            raise ValueError("atr_period and rsi_period must be >= 1")
        self.policy: Policy = policy
        self.stop_loss_pct = Decimal(stop_loss_pct)
        self.take_profit_pct = Decimal(take_profit_pct)
        self.atr_period = atr_period
        self.rsi_period = rsi_period
        self._partially_closed: set[UUID] = set()

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        """Decide; never raises."""
        started = time.perf_counter()  # latency only, never a decision input
        try:
            decided = self._decide(request)
        except Exception as exc:  # the port promises a safe default instead of an exception
            safe = Decision.WATCH if request.position is not None else Decision.NO_TRADE
            return AnalysisResult(
                decision=safe,
                reasoning=f"offline analyst could not decide: {exc}",
                confidence=0,
                model=MODEL_NAME,
                latency_ms=(time.perf_counter() - started) * 1000,
                error=f"{type(exc).__name__}: {exc}",
            )
        return AnalysisResult(
            decision=decided.decision,
            reasoning=decided.reasoning,
            confidence=decided.confidence,
            metadata=decided.metadata,
            key_levels=decided.key_levels,
            model=MODEL_NAME,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    # ------------------------------------------------------------------ rules

    def _decide(self, request: AnalysisRequest) -> _Decided:
        data = request.market_data
        klines = _primary_klines(request)
        price = _price_of(data, klines.close.item(-1) if len(klines) else None)
        if self.policy == "always_open":
            return self._always_open(request, price)

        atr, rsi, hist = self._indicators(data, klines)
        levels: dict[str, Any] = {"price": price}
        if atr is not None:
            levels["atr"] = _dec(atr)
        if rsi is not None:
            levels["rsi"] = round(rsi, 2)
        if hist is not None:
            levels["macdHistogram"] = hist

        if request.position is not None:
            return self._manage(request.position, price, atr, rsi, hist, levels)
        if atr is None or atr <= 0:
            return _result(
                Decision.NO_TRADE,
                f"not enough candles for ATR({self.atr_period}): {len(klines)} given",
                0,
                {},
                levels,
            )
        side = _direction(request)
        if rsi is not None and side is PositionSide.LONG and rsi >= RSI_OVERBOUGHT:
            return _result(
                Decision.WATCH, f"RSI {rsi:.1f} >= {RSI_OVERBOUGHT}: long entry overextended", 40, {}, levels
            )
        if rsi is not None and side is PositionSide.SHORT and rsi <= RSI_OVERSOLD:
            return _result(Decision.WATCH, f"RSI {rsi:.1f} <= {RSI_OVERSOLD}: short entry overextended", 40, {}, levels)

        atr_d = _dec(atr)
        sign = 1 if side is PositionSide.LONG else -1
        stop = _q(price - sign * STOP_ATR * atr_d)
        tp_pct = _setting_fraction(request.trader_settings, "take_profit_pct")
        if tp_pct is not None:
            take = _q(price * (1 + sign * tp_pct))
            tp_why = f"take profit {tp_pct:%} from the trader's settings"
        else:
            take = _q(price + sign * TAKE_PROFIT_ATR * atr_d)
            tp_why = f"take profit {TAKE_PROFIT_ATR} ATR"
        if stop <= 0 or take <= 0:
            return _result(Decision.NO_TRADE, f"ATR {atr_d} too large for price {price}", 0, {}, levels)
        agrees = hist is not None and (hist > 0 if side is PositionSide.LONG else hist < 0)
        metadata = {
            "stopLoss": stop,
            "takeProfit": take,
            "positionSize": self._position_size(request.trader_settings),
        }
        decision = Decision.OPEN_LONG if side is PositionSide.LONG else Decision.OPEN_SHORT
        reasoning = f"{decision} at {price}: stop {STOP_ATR} ATR ({atr_d:.8f}) at {stop}, {tp_why} at {take}" + (
            "; MACD histogram agrees" if agrees else ""
        )
        return _result(decision, reasoning, 80 if agrees else 70, metadata, levels)

    def _indicators(self, data: Mapping[str, Any], klines: Klines) -> tuple[float | None, float | None, float | None]:
        """ATR, RSI and MACD histogram: the payload's ``calculatedIndicators`` when they match our
        periods (computed on more candles than the payload carries), else from the candles."""
        given = data.get("calculatedIndicators") or {}
        atr = _number(given.get(f"atr_{self.atr_period}"))
        rsi = _number(given.get(f"rsi_{self.rsi_period}"))
        macd = given.get("macd")
        hist = _number(macd.get("histogram")) if isinstance(macd, Mapping) else None
        if atr is not None and rsi is not None and hist is not None:
            return atr, rsi, hist

        from tradeengine.indicators import core  # lazy: loads the compiled kernels

        if atr is None:
            atr = _latest(core.atr(klines.high, klines.low, klines.close, self.atr_period))
        if rsi is None:
            rsi = _latest(core.rsi(klines.close, self.rsi_period))
        if hist is None:
            hist = _latest(core.macd(klines.close)[2])
        return atr, rsi, hist

    def _manage(
        self,
        position: PositionSnapshot,
        price: Decimal,
        atr: float | None,
        rsi: float | None,
        hist: float | None,
        levels: dict[str, Any],
    ) -> _Decided:
        long = position.side is PositionSide.LONG
        sign = 1 if long else -1
        entry = position.entry_price
        stop = position.stop_loss
        if (
            rsi is not None
            and hist is not None
            and ((long and hist < 0 and rsi < 45) or (not long and hist > 0 and rsi > 55))
        ):
            return _result(
                Decision.CLOSE,
                f"momentum reversed against the {position.side}: MACD histogram {hist:.6g}, RSI {rsi:.1f}",
                70,
                {},
                levels,
            )
        if stop is not None and sign * (entry - stop) > 0:
            risk = abs(entry - stop)
        elif atr is not None and atr > 0:
            risk = STOP_ATR * _dec(atr)
        else:
            return _result(Decision.WATCH, "holding: no stop and no ATR to size R", 50, {}, levels)
        gain = sign * (price - entry)
        r_multiple = gain / risk
        levels["rMultiple"] = _q(r_multiple)

        def stop_worse_than(level: Decimal) -> bool:
            return stop is None or sign * (stop - level) < 0

        if r_multiple >= 2 and position.position_id not in self._partially_closed:
            self._partially_closed.add(position.position_id)
            return _result(
                Decision.PARTIAL_CLOSE,
                f"+{r_multiple:.2f}R: taking half off",
                75,
                {"closePercentage": Decimal("0.5")},
                levels,
            )
        one_r = _q(entry + sign * risk)
        if r_multiple >= 2 and stop_worse_than(one_r):
            return _result(
                Decision.UPDATE_STOP_LOSS,
                f"+{r_multiple:.2f}R: locking +1R with the stop at {one_r}",
                75,
                {"newStopLoss": one_r},
                levels,
            )
        if r_multiple >= 1 and stop_worse_than(entry):
            return _result(
                Decision.UPDATE_STOP_LOSS,
                f"+{r_multiple:.2f}R: stop to breakeven at {entry}",
                75,
                {"newStopLoss": _q(entry)},
                levels,
            )
        return _result(Decision.WATCH, f"holding at {r_multiple:.2f}R", 60, {}, levels)

    def _always_open(self, request: AnalysisRequest, price: Decimal) -> _Decided:
        levels: dict[str, Any] = {"price": price}
        if request.position is not None:
            return _result(Decision.WATCH, "always_open policy holds positions until their stops", 50, {}, levels)
        side = _direction(request)
        sign = 1 if side is PositionSide.LONG else -1
        metadata = {
            "stopLoss": _q(price * (1 - sign * self.stop_loss_pct)),
            "takeProfit": _q(price * (1 + sign * self.take_profit_pct)),
            "positionSize": self._position_size(request.trader_settings),
        }
        decision = Decision.OPEN_LONG if side is PositionSide.LONG else Decision.OPEN_SHORT
        return _result(
            decision,
            f"always_open policy: {decision} at {price}, stop {self.stop_loss_pct:%}, take profit"
            f" {self.take_profit_pct:%}",
            100,
            metadata,
            levels,
        )

    @staticmethod
    def _position_size(settings: Mapping[str, Any]) -> Decimal:
        return _setting_fraction(settings, "position_size_pct") or DEFAULT_POSITION_SIZE


# ---------------------------------------------------------------------- helpers


def _direction(request: AnalysisRequest) -> PositionSide:
    settings = request.trader_settings
    for key in ("direction", "bias"):
        value = str(settings.get(key) or "").lower()
        if value in ("short", "short_only"):
            return PositionSide.SHORT
        if value in ("long", "long_only"):
            return PositionSide.LONG
    return PositionSide.SHORT if _instructions_short(request.ai_instructions or "") else PositionSide.LONG


@functools.lru_cache(maxsize=256)
def _instructions_short(text: str) -> bool:
    """The AI instructions mention shorting and never longs (a trader's text rarely changes: its
    answer is kept rather than searching the whole text at every analysis)."""
    return bool(_SHORT_WORDS.search(text)) and not _LONG_WORDS.search(text)


def _primary_klines(request: AnalysisRequest) -> Klines:
    """The primary timeframe's candles of ``market_data["klines"]``: the columns the request
    carries for it when it has them (what parsing the rows gives, without parsing), else parsed."""
    data = request.market_data
    timeframe = data.get("primaryTimeframe") or next(iter(data.get("klines") or {}), None)
    if timeframe is not None and timeframe in request.candles:
        return request.candles[timeframe]
    return klines_from_market_data(data)


def _setting_fraction(settings: Mapping[str, Any], key: str) -> Decimal | None:
    value = settings.get(key)
    if value is None or value == "":
        return None
    try:
        return fraction(value, field=key)
    except DecisionError as exc:
        raise ValueError(f"trader setting {exc}") from None


def _price_of(market_data: Mapping[str, Any], fallback: float | None) -> Decimal:
    ticker = market_data.get("ticker") or {}
    for value in (market_data.get("price"), ticker.get("lastPrice"), ticker.get("last")):
        if value is not None and value != "":
            price = to_decimal(value, field="price")
            if price > 0:
                return price
    if fallback is not None and math.isfinite(fallback) and fallback > 0:
        return _dec(fallback)
    raise ValueError("market_data has no price: no ticker.lastPrice and no klines")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _latest(series: Any) -> float | None:
    if len(series) == 0:
        return None
    value = float(series[-1])
    return value if math.isfinite(value) else None


def _dec(value: float) -> Decimal:
    return _q(Decimal(repr(value)))


def _q(value: Decimal) -> Decimal:
    return value.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_EVEN)


def _result(
    decision: Decision, reasoning: str, confidence: int, metadata: dict[str, Any], levels: dict[str, Any]
) -> _Decided:
    return _Decided(decision, reasoning, confidence, metadata, levels)
