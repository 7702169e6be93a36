"""FileCachedAnalyst: answers persist across instances, failures are not cached, torn lines are skipped."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult
from tradeengine.backtest.cached import FileCachedAnalyst
from tradeengine.domain.enums import Decision


class CountingAnalyst:
    """A stand-in for the model: answers from a script and counts calls."""

    def __init__(self, *results: AnalysisResult) -> None:
        self.results = list(results)
        self.calls = 0

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        self.calls += 1
        return self.results.pop(0)


def request(candle: int, *, trader: uuid.UUID | None = None) -> AnalysisRequest:
    return AnalysisRequest(
        correlation_id="c",
        user_id=uuid.uuid4(),
        trader_id=trader or uuid.uuid4(),
        signal_id=uuid.uuid4(),
        symbol="BTC/USDT",
        ai_instructions="Buy dips.",
        market_data={},
        candle_key=candle,
    )


OPEN = AnalysisResult(
    Decision.OPEN_LONG, "dip", 80, {"stopLoss": Decimal("99.5"), "positionSize": Decimal("0.1")}, total_tokens=321
)
FAILED = AnalysisResult(Decision.NO_TRADE, "model down", 0, error="503")


async def test_answers_survive_a_new_instance_with_exact_decimals(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    inner = CountingAnalyst(OPEN)
    first = await FileCachedAnalyst(inner, path).analyze(request(1))
    assert first is OPEN

    again = CountingAnalyst()
    cached = FileCachedAnalyst(again, path)
    result = await cached.analyze(request(1))  # other ids (a new run), same moment: a hit
    assert again.calls == 0 and cached.hits == 1
    assert result.decision is Decision.OPEN_LONG
    assert result.metadata == {"stopLoss": Decimal("99.5"), "positionSize": Decimal("0.1")}
    assert result.total_tokens == 0  # a hit spends no tokens


async def test_failures_are_not_cached_and_other_candles_miss(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    inner = CountingAnalyst(FAILED, OPEN, OPEN)
    cached = FileCachedAnalyst(inner, path)
    assert (await cached.analyze(request(1))).error == "503"
    assert (await cached.analyze(request(1))).decision is Decision.OPEN_LONG  # asked again
    await cached.analyze(request(2))
    assert inner.calls == 3
    assert len(path.read_text().splitlines()) == 2


async def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    await FileCachedAnalyst(CountingAnalyst(OPEN), path).analyze(request(1))
    with path.open("a") as handle:
        handle.write('{"key": "BTC|2", "result": {"decis')
    inner = CountingAnalyst(OPEN)
    cached = FileCachedAnalyst(inner, path)
    await cached.analyze(request(1))
    await cached.analyze(request(2))
    assert (cached.hits, inner.calls) == (1, 1)
