"""How the control plane talks to a tenant's own API (the seed's machine endpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp


class TenantUnreachableError(Exception):
    """The tenant did not answer, or answered with an error status."""


@dataclass(frozen=True, slots=True)
class FinalState:
    """What a tenant reports when it shuts down (the seed's destroy-machine ``finalState``)."""

    open_positions: int
    watching_signals: int


class TenantClient:
    """Calls ``GET /health``, ``POST /reload-traders``, ``/prepare-shutdown``, ``/shutdown``."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.request(method, self._base + path, json=body, headers=self._headers) as resp,
            ):
                payload = await resp.json(content_type=None) if resp.content_length != 0 else {}
                if resp.status >= 400:
                    raise TenantUnreachableError(f"{method} {path} returned {resp.status}")
                return payload if isinstance(payload, dict) else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TenantUnreachableError(f"{method} {self._base}{path} failed: {type(exc).__name__}") from exc

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/health")

    async def reload_traders(self) -> dict[str, Any]:
        return await self._call("POST", "/reload-traders")

    async def prepare_shutdown(self) -> dict[str, Any]:
        return await self._call("POST", "/prepare-shutdown")

    async def shutdown(self, reason: str) -> FinalState:
        body = await self._call("POST", "/shutdown", {"reason": reason})
        return FinalState(
            open_positions=_count(body.get("openPositions")),
            watching_signals=_count(body.get("watchingSignals")),
        )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
