"""Gemini client: google-genai's ``client.aio`` with schema-constrained JSON, quota, retries, timeout.

The SDK's own retry is off; we retry here (429 and 5xx, timeouts, connection errors) with jittered
exponential backoff, because each attempt must first pass the shared quota limiter and be counted
in the result. Parsing against the schema is the caller's job (``parse_reply``), so the caller can
time it and tell the model what was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from loguru import logger
from pydantic import BaseModel, SecretStr, ValidationError

from tradeengine.ai.limiter import RateLimiter
from tradeengine.settings import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class GeminiError(Exception):
    """The model could not be reached or refused; ``retryable`` says whether trying later may help."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False, attempts: int = 1):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.attempts = attempts


@dataclass(frozen=True, slots=True)
class Turn:
    """One conversation turn: ``role`` is ``user`` or ``model``."""

    role: str
    text: str


@dataclass(frozen=True, slots=True)
class GeminiReply:
    """The model's text plus what it cost. ``model_ms`` is time spent in HTTP calls (all attempts)."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    attempts: int
    model_ms: float
    limiter_wait_ms: float
    finish_reason: str | None
    raw: dict[str, Any]


def parse_reply(text: str, schema: type[ModelT]) -> tuple[ModelT | None, str | None]:
    """Validate the model's JSON text; return (value, None) or (None, a message fit to show the model)."""
    try:
        return schema.model_validate_json(text), None
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            snippet = text[:200].replace("\n", " ")
            return None, f"the reply was not valid JSON (started with: {snippet!r})"
        problems = []
        for err in exc.errors()[:10]:
            where = ".".join(str(part) for part in err["loc"]) or "(root)"
            problems.append(f"{where}: {err['msg']}")
        return None, "the JSON did not match the schema: " + "; ".join(problems)


class GeminiClient:
    """Async JSON generation against one Gemini model. Close with ``aclose`` (or ``async with``)."""

    def __init__(
        self,
        api_key: SecretStr,
        *,
        model: str = "gemini-2.5-flash",
        base_url: str | None = None,
        api_version: str = "v1beta",
        timeout_s: float = 30.0,
        max_attempts: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        limiter: RateLimiter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key.get_secret_value():
            raise ValueError("gemini_api_key: must not be empty")
        if max_attempts < 1:
            raise ValueError("max_attempts: must be >= 1")
        self.model = model
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.limiter = limiter
        self._rng = rng or random.Random()
        http_options = types.HttpOptions(
            api_version=api_version,
            base_url=base_url,
            # The SDK takes milliseconds. We also enforce the budget with asyncio.timeout below,
            # so a stall in any layer ends the attempt.
            timeout=int(timeout_s * 1000),
        )
        self._client = genai.Client(api_key=api_key.get_secret_value(), http_options=http_options)

    @classmethod
    def from_settings(cls, settings: Settings, *, limiter: RateLimiter | None = None) -> GeminiClient:
        if settings.gemini_api_key is None:
            raise ValueError("gemini_api_key: required for the Gemini analyst (TRADEENGINE_GEMINI_API_KEY)")
        return cls(
            settings.gemini_api_key,
            model=settings.gemini_model,
            base_url=settings.gemini_base_url,
            timeout_s=settings.gemini_timeout_s,
            limiter=limiter,
        )

    async def __aenter__(self) -> GeminiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aio.aclose()

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter backoff before retry number ``attempt`` (1-based)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def generate_json(
        self,
        turns: Sequence[Turn] | str,
        schema: type[BaseModel],
        *,
        system_instruction: str | None = None,
        temperature: float = 0.2,
        max_output_tokens: int = 4096,
        priority: int = 0,
        correlation_id: str | None = None,
    ) -> GeminiReply:
        """Ask for JSON matching ``schema``; retry transient failures; raise ``GeminiError`` at the end."""
        if isinstance(turns, str):
            turns = [Turn("user", turns)]
        contents = [types.Content(role=t.role, parts=[types.Part(text=t.text)]) for t in turns]
        config = types.GenerateContentConfig(
            response_mime_type="application/json",
            response_schema=schema,
            temperature=temperature,
            max_output_tokens=max_output_tokens,
            system_instruction=system_instruction,
        )
        model_ms = 0.0
        wait_ms = 0.0
        last_error: GeminiError | None = None
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self.backoff_s(attempt - 1))
            started_wait = time.perf_counter()
            permit = (
                self.limiter.permit(priority, hold_s=self.timeout_s + 30.0)
                if self.limiter is not None
                else contextlib.nullcontext(0.0)
            )
            started: float | None = None
            response: types.GenerateContentResponse | None = None
            try:
                async with permit:
                    started = time.perf_counter()
                    wait_ms += (started - started_wait) * 1000
                    try:
                        async with asyncio.timeout(self.timeout_s):
                            response = await self._client.aio.models.generate_content(
                                model=self.model, contents=contents, config=config
                            )
                    finally:
                        model_ms += (time.perf_counter() - started) * 1000
            except genai_errors.APIError as exc:
                status = int(exc.code) if exc.code is not None else None
                retryable = status in RETRYABLE_STATUS
                last_error = GeminiError(
                    f"gemini HTTP {status}: {exc.message or exc.status}",
                    status=status,
                    retryable=retryable,
                    attempts=attempt,
                )
            except TimeoutError:
                last_error = GeminiError(
                    f"gemini timed out after {self.timeout_s:g}s", retryable=True, attempts=attempt
                )
            except (aiohttp.ClientError, OSError) as exc:
                last_error = GeminiError(f"gemini connection failed: {exc}", retryable=True, attempts=attempt)
            if response is not None:
                return self._reply(response, attempt, model_ms, wait_ms)
            assert last_error is not None
            logger.bind(correlation_id=correlation_id).warning(
                "gemini attempt {}/{} failed: {}", attempt, self.max_attempts, last_error
            )
            if not last_error.retryable:
                break
        assert last_error is not None
        raise last_error

    def _reply(
        self, response: types.GenerateContentResponse, attempts: int, model_ms: float, wait_ms: float
    ) -> GeminiReply:
        usage = response.usage_metadata
        prompt_tokens = (usage.prompt_token_count or 0) if usage else 0
        completion_tokens = (usage.candidates_token_count or 0) if usage else 0
        total_tokens = (usage.total_token_count or prompt_tokens + completion_tokens) if usage else 0
        finish = None
        if response.candidates and response.candidates[0].finish_reason is not None:
            finish = str(response.candidates[0].finish_reason.value)
        try:
            text = response.text or ""
        except ValueError:  # the SDK raises when no candidate has text (e.g. safety block)
            text = ""
        raw = response.model_dump(mode="json", exclude_none=True, exclude={"parsed", "sdk_http_response"})
        return GeminiReply(
            text=text,
            model=response.model_version or self.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=total_tokens,
            attempts=attempts,
            model_ms=model_ms,
            limiter_wait_ms=wait_ms,
            finish_reason=finish,
            raw=raw,
        )


def raw_json(reply: GeminiReply) -> str:
    """The raw response as compact JSON, for storage."""
    return json.dumps(reply.raw, separators=(",", ":"), default=str)
