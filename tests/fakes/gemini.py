"""A local fake of the Gemini REST API (``generateContent``) with scripted replies.

The real google-genai SDK talks to it over HTTP on 127.0.0.1, so tests exercise the SDK's real
request building, error mapping and response parsing. Replies are consumed in order; when the
script is empty the ``default`` responder answers (or a 500 if there is none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """One scripted answer. ``text`` is the model's text part (usually a JSON document)."""

    status: int = 200
    text: str | None = None
    body: dict[str, Any] | None = None  # a full response body overrides ``text``
    delay_s: float = 0.0
    prompt_tokens: int = 12
    completion_tokens: int = 9


def ok(payload: Any, *, prompt_tokens: int = 12, completion_tokens: int = 9, delay_s: float = 0.0) -> Reply:
    """A 200 whose text part is ``payload`` (a str is sent as is, anything else as JSON)."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return Reply(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, delay_s=delay_s)


def error(status: int, message: str = "scripted error", *, delay_s: float = 0.0) -> Reply:
    names = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 400: "INVALID_ARGUMENT"}
    body = {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}
    return Reply(status=status, body=body, delay_s=delay_s)


def stall(seconds: float) -> Reply:
    """A reply that arrives only after ``seconds`` (use a value past the client's timeout)."""
    return Reply(text="{}", delay_s=seconds)


@dataclass
class RecordedRequest:
    model: str
    api_version: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def prompt_text(self) -> str:
        """All text parts of all turns, joined (what the model was shown)."""
        parts = [p.get("text", "") for c in self.body.get("contents", []) for p in c.get("parts", [])]
        return "\n".join(parts)

    @property
    def last_user_text(self) -> str:
        contents = self.body.get("contents", [])
        return "\n".join(p.get("text", "") for p in contents[-1].get("parts", [])) if contents else ""


@dataclass
class FakeGemini:
    """Start with ``async with FakeGemini() as fake:``; point the SDK at ``fake.base_url``."""

    script: list[Reply] = field(default_factory=list)
    default: Callable[[RecordedRequest], Reply] | None = None
    # Optional server-side quota: more than ``quota`` requests in ``quota_window_s`` get a 429,
    # like the real service. Used to prove that the limiter keeps callers under the quota.
    quota: int | None = None
    quota_window_s: float = 60.0
    requests: list[RecordedRequest] = field(default_factory=list)
    rejected_429: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _served: list[float] = field(default_factory=list)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, *replies: Reply) -> None:
        self.script.extend(replies)

    async def __aenter__(self) -> FakeGemini:
        app = web.Application()
        app.router.add_post(r"/{version}/models/{model}:generateContent", self._generate)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        recorded = RecordedRequest(
            model=request.match_info["model"],
            api_version=request.match_info["version"],
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        self.requests.append(recorded)
        if self.quota is not None:
            now = asyncio.get_running_loop().time()
            self._served = [t for t in self._served if now - t < self.quota_window_s]
            if len(self._served) >= self.quota:
                self.rejected_429 += 1
                reply = error(429, "quota exceeded")
                return web.json_response(reply.body, status=429)
            self._served.append(now)
        if self.script:
            reply = self.script.pop(0)
        elif self.default is not None:
            reply = self.default(recorded)
        else:
            reply = error(500, "fake gemini: script exhausted")
        if reply.delay_s:
            # A stall ends early when the server closes, so tests don't wait it out.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), reply.delay_s)
        if reply.body is not None:
            return web.json_response(reply.body, status=reply.status)
        payload = {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": reply.text or ""}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": reply.prompt_tokens,
                "candidatesTokenCount": reply.completion_tokens,
                "totalTokenCount": reply.prompt_tokens + reply.completion_tokens,
            },
            "modelVersion": recorded.model,
        }
        return web.json_response(payload, status=reply.status)
