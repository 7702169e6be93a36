"""FileCachedAnalyst: remember an analyst's answers on disk so a re-run of a backtest is free.

A Gemini backtest costs tokens per analysis; run it twice (another report, a fixed bug in a metric)
and the second run should cost nothing and decide the same. Answers are keyed by what the model
saw that identifies the moment: trader instructions, symbol, last closed candle, and the open
position's side and entry (ids differ between runs, the situation does not). Failed answers (``error``
set) are not stored, so a rerun asks again.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult, Analyst
from tradeengine.domain.enums import Decision


def cache_key(request: AnalysisRequest) -> str:
    position = request.position
    parts = [
        hashlib.sha256(request.ai_instructions.encode()).hexdigest()[:16],
        request.symbol,
        str(request.candle_key),
        "reanalysis" if request.is_reanalysis else "new",
        "" if position is None else f"{position.side.value}@{position.entry_price}:{position.stop_loss}",
    ]
    return "|".join(parts)


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$decimal"}:
            return Decimal(value["$decimal"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class FileCachedAnalyst:
    """Wrap an Analyst; answers live in a JSON-lines file (append-only, last line per key wins)."""

    def __init__(self, inner: Analyst, path: Path) -> None:
        self.inner = inner
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self._answers: dict[str, AnalysisResult] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self._answers[entry["key"]] = _result(entry["result"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: ignore it, the answer is asked again

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        key = cache_key(request)
        cached = self._answers.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        result = await self.inner.analyze(request)
        if result.error is None:
            self._answers[key] = result
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps({"key": key, "result": _record(result)}) + "\n")
        return result


def _record(result: AnalysisResult) -> dict[str, Any]:
    return {
        "decision": result.decision.value,
        "reasoning": result.reasoning,
        "confidence": result.confidence,
        "metadata": _encode(result.metadata),
        "keyLevels": _encode(result.key_levels),
        "model": result.model,
        "totalTokens": result.total_tokens,
    }


def _result(data: dict[str, Any]) -> AnalysisResult:
    return AnalysisResult(
        decision=Decision(data["decision"]),
        reasoning=str(data["reasoning"]),
        confidence=int(data["confidence"]),
        metadata=_decode(data.get("metadata") or {}),
        key_levels=_decode(data.get("keyLevels") or {}),
        model=data.get("model"),
        total_tokens=0,  # a cache hit spends no tokens
    )
