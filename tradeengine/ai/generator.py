"""StrategyGenerator: plain language -> a trader whose code is proven on real candles before saving.

generate(description, tier):
  1. ask the model for a ``GeneratedStrategy`` (schema-constrained JSON);
  2. prove it: compile ``signal_code`` in the sandbox, then run ``check_signal`` over a replay of
     real candles for its timeframes (>= 500 candles each where the data has them) and count
     how often it fires;
  3. a schema, compile or runtime problem goes back to the model with the message, at most
     ``max_repairs`` (2) times; a strategy that never runs cleanly comes back ``ok=False`` with
     the reason and must not be saved.

Trader caps per tier (pro 20, elite 50, power 100) are enforced by ``save_generated_trader`` in
the same transaction as the insert (the user row is locked, so two concurrent saves can't both
squeeze past the cap). The HTTP layer calls ``ensure_trader_capacity`` first so a user at the
cap does not spend tokens.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from tradeengine.ai.gemini import GeminiClient, GeminiError, GeminiReply, Turn, parse_reply
from tradeengine.ai.hygiene import AIInputError, cap_user_text, fence, normalize_symbol
from tradeengine.ai.prompts import REPAIR_STRATEGY, STRATEGY_HELPERS, PromptLibrary, render
from tradeengine.ai.schemas import TIMEFRAMES, GeneratedStrategy
from tradeengine.domain.enums import PromptType, Tier, TraderStatus
from tradeengine.exchange.files import data_path, load_candles
from tradeengine.exchange.symbols import timeframe_ms
from tradeengine.indicators.klines import Klines
from tradeengine.store.models import Trader
from tradeengine.store.uow import UnitOfWork

TRADER_CAPS: dict[Tier, int] = {Tier.FREE: 0, Tier.PRO: 20, Tier.ELITE: 50, Tier.POWER: 100}

SYSTEM_INSTRUCTION = (
    "You are a senior quant developer. Answer only with the JSON object the schema describes. "
    "signal_code must be plain Python for the platform's sandbox."
)


class TraderLimitError(Exception):
    """The user's tier allows no more traders."""

    def __init__(self, tier: Tier, cap: int, count: int) -> None:
        super().__init__(f"tier: {tier.value} allows {cap} traders and the user has {count}")
        self.tier, self.cap, self.count = tier, cap, count


def parse_tier(value: Tier | str) -> Tier:
    try:
        return Tier(value)
    except ValueError:
        raise AIInputError("tier", f"must be one of pro, elite, power (got {str(value)[:20]!r})") from None


def check_trader_cap(tier: Tier | str, count: int) -> int:
    """Return how many more traders the tier allows; raise ``TraderLimitError`` at the cap."""
    tier = parse_tier(tier)
    cap = TRADER_CAPS[tier]
    if count >= cap:
        raise TraderLimitError(tier, cap, count)
    return cap - count


async def ensure_trader_capacity(uow: UnitOfWork, user_id: uuid.UUID, tier: Tier | str) -> int:
    """Count the user's traders in the store and apply the tier cap (see ``check_trader_cap``)."""
    return check_trader_cap(tier, await uow.traders.count(user_id=user_id))


@dataclass(frozen=True, slots=True)
class StrategyProof:
    """What the replay showed: how often the strategy fired on real candles, and on which data."""

    trigger_rate: float  # triggers / evaluations
    evaluations: int
    triggers: int
    symbols: tuple[str, ...]
    candles: dict[str, int]  # timeframe -> candles covered by the replay period (per symbol)
    period_start_ms: int
    period_end_ms: int
    eval_ms: float  # wall time of the whole replay
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "triggerRate": self.trigger_rate,
            "evaluations": self.evaluations,
            "triggers": self.triggers,
            "symbols": list(self.symbols),
            "candles": dict(self.candles),
            "periodStart": self.period_start_ms,
            "periodEnd": self.period_end_ms,
            "evalMs": round(self.eval_ms, 1),
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class GenerationResult:
    ok: bool
    strategy: GeneratedStrategy | None
    proof: StrategyProof | None
    reason: str | None  # why it failed (ok=False)
    rounds: int  # model calls made (1 + repairs)
    problems: tuple[str, ...] = ()  # the problem of each failed round, in order
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    latency_ms: float = 0.0
    correlation_id: str = ""
    retryable: bool = False  # ok=False because the model was unavailable; trying later may work


class ProofError(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def resample(klines: Klines, source_ms: int, target_ms: int) -> Klines:
    """Aggregate candles into a multiple of their timeframe; incomplete buckets are dropped."""
    ratio = target_ms // source_ms
    if ratio == 1:
        return klines
    bucket = klines.open_time // target_ms
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    counts = np.diff(np.r_[starts, len(bucket)])
    full = starts[counts == ratio]
    if len(full) == 0:
        return Klines.empty()
    idx = full[:, None] + np.arange(ratio)[None, :]
    return Klines.from_arrays(
        bucket[full] * target_ms,
        klines.open[full],
        klines.high[idx].max(axis=1),
        klines.low[idx].min(axis=1),
        klines.close[full + ratio - 1],
        klines.volume[idx].sum(axis=1),
    )


def _window(klines: Klines, end: int, count: int) -> Klines:
    start = max(0, end - count)
    return Klines(
        klines.open_time[start:end], klines.open[start:end], klines.high[start:end],
        klines.low[start:end], klines.close[start:end], klines.volume[start:end],
    )  # fmt: skip


class CandleLibrary:
    """Real candles from a directory of freqtrade files, any timeframe derived from the nearest file."""

    def __init__(self, directory: Path, available: Sequence[str] = ("1m", "5m", "15m", "1h", "4h", "1d")) -> None:
        self.directory = Path(directory)
        self.available = tuple(available)
        self._cache: dict[tuple[str, str], tuple[Klines, int, str | None]] = {}

    def has_symbol(self, symbol: str) -> bool:
        return any(data_path(self.directory, symbol, tf).exists() for tf in self.available)

    def load(self, symbol: str, timeframe: str) -> tuple[Klines, int, str | None]:
        """Return (candles, their real timeframe in ms, note on how they were derived or approximated)."""
        key = (symbol, timeframe)
        if key not in self._cache:
            self._cache[key] = self._load(symbol, timeframe)
        return self._cache[key]

    def _load(self, symbol: str, timeframe: str) -> tuple[Klines, int, str | None]:
        target = timeframe_ms(timeframe)
        files = [(timeframe_ms(tf), tf) for tf in self.available if data_path(self.directory, symbol, tf).exists()]
        if not files:
            raise FileNotFoundError(f"no candle files for {symbol} in {self.directory}")
        divisors = sorted((ms, tf) for ms, tf in files if ms <= target and target % ms == 0)
        if divisors:
            ms, tf = divisors[-1]
            klines = load_candles(data_path(self.directory, symbol, tf))
            note = None if ms == target else f"{timeframe} candles built from {tf} candles"
            return resample(klines, ms, target), target, note
        ms, tf = min(files)
        # Finer than any file we have: replay the finest series in its place and say so.
        note = f"{timeframe} approximated by {tf} candles (no finer data available)"
        return load_candles(data_path(self.directory, symbol, tf)), ms, note


class StrategyGenerator:
    """Generate and prove strategies. ``compile`` defaults to ``tradeengine.sandbox.compile_strategy``."""

    def __init__(
        self,
        client: GeminiClient,
        *,
        data_dir: Path,
        prompts: PromptLibrary | None = None,
        default_symbols: Sequence[str] = ("BTC/USDT", "ETH/USDT"),
        proof_candles: int = 500,
        warmup_candles: int = 100,
        max_evaluations: int = 600,
        max_proof_symbols: int = 2,
        max_repairs: int = 2,
        time_limit_ms: float = 100.0,
        compile: Callable[[str], Any] | None = None,
    ) -> None:
        self.client = client
        self.candles = CandleLibrary(data_dir)
        self.prompts = prompts or PromptLibrary()
        self.default_symbols = tuple(default_symbols)
        self.proof_candles = proof_candles
        self.warmup_candles = warmup_candles
        self.max_evaluations = max_evaluations
        self.max_proof_symbols = max_proof_symbols
        self.max_repairs = max_repairs
        self.time_limit_ms = time_limit_ms
        self._compile = compile

    def compile(self, source: str) -> Any:
        if self._compile is not None:
            return self._compile(source)
        from tradeengine.sandbox import compile_strategy

        return compile_strategy(source, time_limit_ms=self.time_limit_ms)

    async def generate(
        self, description: str, tier: Tier | str, *, correlation_id: str | None = None
    ) -> GenerationResult:
        """Generate, prove and repair. Raises ``AIInputError`` for bad input; otherwise never raises."""
        started = time.perf_counter()
        correlation_id = correlation_id or uuid.uuid4().hex
        description = cap_user_text(description, field="description")
        tier = parse_tier(tier)
        template = await self.prompts.get(PromptType.STRATEGY_GENERATION)
        prompt = render(
            template,
            {
                "DESCRIPTION": fence(description, "user_description"),
                "TIER": tier.value,
                "SYMBOLS": ", ".join(self.default_symbols),
                "HELPERS": "; ".join(STRATEGY_HELPERS),
                "TIMEFRAMES": ", ".join(TIMEFRAMES),
            },
        )
        turns = [Turn("user", prompt)]
        replies: list[GeminiReply] = []
        problems: list[str] = []
        log = logger.bind(event="strategy_generation", correlation_id=correlation_id)

        def finish(ok: bool, strategy: GeneratedStrategy | None, proof: StrategyProof | None,
                   reason: str | None, retryable: bool = False) -> GenerationResult:  # fmt: skip
            result = GenerationResult(
                ok=ok, strategy=strategy, proof=proof, reason=reason, rounds=len(replies),
                problems=tuple(problems), model=replies[-1].model if replies else self.client.model,
                prompt_tokens=sum(r.prompt_tokens for r in replies),
                completion_tokens=sum(r.completion_tokens for r in replies),
                total_tokens=sum(r.total_tokens for r in replies),
                latency_ms=(time.perf_counter() - started) * 1000, correlation_id=correlation_id,
                retryable=retryable,
            )  # fmt: skip
            log.bind(ok=ok, rounds=result.rounds, total_tokens=result.total_tokens,
                     latency_ms=round(result.latency_ms, 1),
                     trigger_rate=proof.trigger_rate if proof else None, reason=reason).info(
                "strategy generation {}", "proven" if ok else "failed"
            )  # fmt: skip
            return result

        for round_ in range(1 + self.max_repairs):
            try:
                reply = await self.client.generate_json(
                    turns, GeneratedStrategy, system_instruction=SYSTEM_INSTRUCTION,
                    temperature=0.3, max_output_tokens=8192, correlation_id=correlation_id,
                )  # fmt: skip
            except GeminiError as exc:
                return finish(False, None, None, f"model unavailable: {exc}", retryable=exc.retryable)
            replies.append(reply)
            strategy, error = parse_reply(reply.text, GeneratedStrategy)
            stage = "read your JSON"
            if strategy is not None:
                try:
                    strategy = self._normalize(strategy)
                    proof = await asyncio.to_thread(self.prove, strategy)
                    return finish(True, strategy, proof, None)
                except AIInputError as exc:
                    error, stage = str(exc), "checked the fields"
                except ProofError as exc:
                    error, stage = str(exc), exc.stage
            assert error is not None
            problems.append(f"{stage}: {error}")
            log.warning("strategy round {} rejected ({}): {}", round_ + 1, stage, error)
            if round_ < self.max_repairs:
                turns = [
                    *turns,
                    Turn("model", reply.text or "(empty)"),
                    Turn("user", REPAIR_STRATEGY.format(stage=stage, problems=error)),
                ]
        reason = f"the generated strategy did not run cleanly after {self.max_repairs} repairs: {problems[-1]}"
        return finish(False, None, None, reason)

    def _normalize(self, strategy: GeneratedStrategy) -> GeneratedStrategy:
        symbols = strategy.symbols
        if symbols is not None:
            symbols = list(dict.fromkeys(normalize_symbol(s, field=f"symbols[{i}]") for i, s in enumerate(symbols)))
        timeframes = list(dict.fromkeys(strategy.timeframes))
        return strategy.model_copy(update={"symbols": symbols or None, "timeframes": timeframes})

    def prove(self, strategy: GeneratedStrategy) -> StrategyProof:
        """Compile and replay the strategy on real candles; raise ``ProofError`` on any failure."""
        from tradeengine.sandbox import StrategyError

        started = time.perf_counter()
        try:
            compiled = self.compile(strategy.signal_code)
        except StrategyError as exc:
            raise ProofError("compiled it", str(exc)) from None
        wanted = list(strategy.symbols or self.default_symbols)
        symbols = [s for s in wanted if self.candles.has_symbol(s)][: self.max_proof_symbols]
        notes: list[str] = []
        if not symbols:
            symbols = [s for s in self.default_symbols if self.candles.has_symbol(s)][:1]
            notes.append(f"no candles for {', '.join(wanted)}; proven on {', '.join(symbols)}")
        if not symbols:
            raise ProofError("loaded candles", f"no candle data in {self.candles.directory}")
        timeframes = sorted(strategy.timeframes, key=timeframe_ms)
        evaluations = triggers = 0
        covered: dict[str, int] = {}
        period = (0, 0)
        for symbol in symbols:
            series: dict[str, tuple[Klines, int]] = {}
            for tf in timeframes:
                klines, step_ms, note = self.candles.load(symbol, tf)
                if note and note not in notes:
                    notes.append(note)
                series[tf] = (klines, step_ms)
            e, t, covered, period = self._replay(compiled, symbol, series, timeframes, notes)
            evaluations += e
            triggers += t
        return StrategyProof(
            trigger_rate=triggers / evaluations if evaluations else 0.0,
            evaluations=evaluations, triggers=triggers, symbols=tuple(symbols), candles=covered,
            period_start_ms=period[0], period_end_ms=period[1],
            eval_ms=(time.perf_counter() - started) * 1000, notes=tuple(notes),
        )  # fmt: skip

    def _replay(
        self,
        compiled: Any,
        symbol: str,
        series: Mapping[str, tuple[Klines, int]],
        timeframes: Sequence[str],
        notes: list[str],
    ) -> tuple[int, int, dict[str, int], tuple[int, int]]:
        from tradeengine.sandbox import StrategyError

        primary = timeframes[0]
        base, primary_ms = series[primary]
        # The replay ends where every timeframe has data and covers proof_candles of the largest
        # timeframe after a warm-up, or as much as the files hold. Times use each series' real
        # candle length, so an approximated timeframe never sees a candle before it closed.
        end_ms = min(int(k.open_time[-1]) + ms for k, ms in series.values() if len(k))
        start_ms = max(int(k.open_time[0]) + self.warmup_candles * ms for k, ms in series.values())
        largest_tf = max(timeframes, key=lambda tf: series[tf][1])
        largest_ms = series[largest_tf][1]
        wanted_start = end_ms - self.proof_candles * largest_ms
        if wanted_start < start_ms:
            notes.append(
                f"only {(end_ms - start_ms) // largest_ms} {largest_tf} candles of history after warm-up "
                f"(wanted {self.proof_candles})"
            )
        else:
            start_ms = wanted_start
        close_times = base.open_time + primary_ms
        steps = np.flatnonzero((close_times > start_ms) & (close_times <= end_ms))
        if len(steps) == 0:
            raise ProofError("loaded candles", f"no {primary} candles for {symbol} to replay")
        stride = max(1, -(-len(steps) // self.max_evaluations))
        steps = steps[::stride]
        covered = {
            tf: int(np.count_nonzero((k.open_time >= start_ms) & (k.open_time + ms <= end_ms)))
            for tf, (k, ms) in series.items()
        }
        evaluations = triggers = 0
        volume = base.volume
        per_day = max(1, 86_400_000 // primary_ms)
        for i in steps.tolist():
            now = int(close_times[i])
            window: dict[str, Klines] = {}
            for tf, (k, ms) in series.items():
                end = int(np.searchsorted(k.open_time, now - ms, side="right"))
                window[tf] = _window(k, end, self.proof_candles)
            last = float(base.close[i])
            back = max(0, i - per_day)
            ticker = {
                "last_price": last,
                "volume_24h": float(volume[back : i + 1].sum()),
                "price_change_24h": last - float(base.close[back]),
            }
            try:
                fired = compiled.check_signal(symbol, ticker, window)
            except StrategyError as exc:
                when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(now / 1000))
                raise ProofError("ran it on real candles", f"{symbol} at {when} UTC: {exc}") from None
            evaluations += 1
            triggers += bool(fired)
        return evaluations, triggers, covered, (start_ms, end_ms)


def new_trader(user_id: uuid.UUID, description: str, strategy: GeneratedStrategy) -> Trader:
    """The ``traders`` row for a proven strategy."""
    return Trader(
        user_id=user_id,
        name=strategy.name,
        description=description,
        signal_code=strategy.signal_code,
        ai_instructions=strategy.ai_instructions,
        timeframes=list(strategy.timeframes),
        check_interval=strategy.check_interval,
        reanalysis_interval=strategy.reanalysis_interval,
        symbols=strategy.symbols,
        status=TraderStatus.ACTIVE.value,
    )


async def save_generated_trader(
    uow: UnitOfWork, *, user_id: uuid.UUID, tier: Tier | str, description: str, result: GenerationResult
) -> Trader:
    """Insert the trader for a proven result under the tier cap (caller commits).

    Raises ``ValueError`` for a result that was not proven and ``TraderLimitError`` at the cap.
    """
    if not result.ok or result.strategy is None:
        raise ValueError(f"strategy: not proven, not saved ({result.reason})")
    user = await uow.users.get_for_update(user_id)
    if user is None:
        raise LookupError(f"user_id: no user {user_id}")
    check_trader_cap(tier, await uow.traders.count(user_id=user_id))
    trader = uow.traders.add(new_trader(user_id, description, result.strategy))
    await uow.flush()
    return trader
