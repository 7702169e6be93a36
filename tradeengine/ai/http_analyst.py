"""HttpAnalyst: a tenant asks the control plane's ``POST /v1/signals/analyze`` with its tenant token.

Retries (jittered exponential backoff, ``Retry-After`` honoured up to the cap) on timeouts,
connection errors, 429 and 5xx; a 4xx means the request itself is wrong and is not retried. After
the last attempt it returns the safe default with ``error`` set. It never raises. It writes no
``signal_analyses`` rows (the control plane's analyst does) and the runtime writes
``analysis_history`` as for any analyst.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aiohttp
from loguru import logger
from pydantic import SecretStr

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult
from tradeengine.ai.wire import request_to_json, result_from_json
from tradeengine.domain.enums import Decision
from tradeengine.settings import Settings

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class HttpAnalyst:
    """Implements ``Analyst`` over HTTP. Close with ``aclose`` (or ``async with``) if it made the session."""

    def __init__(
        self,
        base_url: str,
        token: SecretStr,
        *,
        session: aiohttp.ClientSession | None = None,
        path: str = "/v1/signals/analyze",
        timeout_s: float = 90.0,
        max_attempts: int = 3,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if not token.get_secret_value():
            raise ValueError("tenant_token: must not be empty")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"control_url: must be an http(s) URL, got {base_url[:60]!r}")
        self.url = base_url.rstrip("/") + path
        self._token = token
        self._session = session
        self._owns_session = session is None
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = rng or random.Random()

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> HttpAnalyst:
        if settings.control_url is None or settings.tenant_token is None:
            raise ValueError("control_url and tenant_token: both are required for the http analyst")
        return cls(settings.control_url, settings.tenant_token, **kw)

    async def __aenter__(self) -> HttpAnalyst:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        started = time.perf_counter()
        log = logger.bind(correlation_id=request.correlation_id)
        try:
            body = request_to_json(request)
        except Exception as exc:  # never raise into the runtime
            return self._safe_default(request, f"request could not be encoded: {exc}", started, 0)
        headers = {
            "Authorization": f"Bearer {self._token.get_secret_value()}",
            "X-Correlation-Id": request.correlation_id,
        }
        last_error = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            try:
                result = await self._post(body, headers)
                result = _with(result, latency_ms=(time.perf_counter() - started) * 1000, attempts=attempt)
                log.bind(event="analysis", decision=result.decision.value, attempts=attempt,
                         total_ms=round(result.latency_ms, 1), error=result.error).info(
                    "analysis via control plane -> {}", result.decision.value
                )  # fmt: skip
                return result
            except _RetryableError as exc:
                last_error = str(exc)
                if attempt == self.max_attempts:
                    break
                delay = self._backoff_s(attempt)
                if exc.retry_after_s is not None:
                    delay = min(max(delay, exc.retry_after_s), self.backoff_max_s)
                log.warning("analyze attempt {}/{} failed ({}); retrying in {:.2f}s", attempt,
                            self.max_attempts, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
            except ValueError as exc:  # a 4xx or a response we cannot read: retrying won't help
                last_error = str(exc)
                return self._safe_default(request, last_error, started, attempt)
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                return self._safe_default(request, last_error, started, attempt)
        error = f"control plane unavailable: {last_error}"
        return self._safe_default(request, error, started, self.max_attempts)

    def _backoff_s(self, attempt: int) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> AnalysisResult:
        try:
            post = self._client().post(self.url, json=body, headers=headers, timeout=self.timeout)
            async with post as response:
                status = response.status
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    payload = None
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            raise _RetryableError(f"timed out after {self.timeout.total:g}s") from None
        except aiohttp.ClientError as exc:
            raise _RetryableError(f"connection failed: {exc}") from None
        message = payload.get("error") if isinstance(payload, dict) else None
        if status in RETRYABLE_STATUS:
            delay = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
            raise _RetryableError(f"HTTP {status}: {message or 'no detail'}", delay)
        if status != 200:
            raise ValueError(f"control plane refused the request: HTTP {status}: {message or 'no detail'}")
        try:
            return result_from_json(payload)
        except ValueError as exc:
            raise ValueError(f"unreadable response: {exc}") from None

    def _safe_default(self, request: AnalysisRequest, error: str, started: float, attempts: int) -> AnalysisResult:
        decision = Decision.NO_TRADE if request.position is None else Decision.WATCH
        result = AnalysisResult(
            decision=decision,
            reasoning=f"Analysis failed; safe default applied. Reason: {error}",
            confidence=0,
            metadata={"safeDefault": True},
            latency_ms=(time.perf_counter() - started) * 1000,
            error=error,
            attempts=max(attempts, 1),
        )
        logger.bind(
            event="analysis", correlation_id=request.correlation_id, decision=decision.value,
            attempts=attempts, error=error,
        ).warning("analysis via control plane failed: {}", error)  # fmt: skip
        return result


def _with(result: AnalysisResult, **changes: Any) -> AnalysisResult:
    from dataclasses import replace

    return replace(result, **changes)
