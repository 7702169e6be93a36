"""Bearer authentication: Supabase-style user JWTs, service-role (admin) JWTs and tenant tokens.

- User tokens: HS256 signed with ``TRADEENGINE_JWT_SECRET`` (or ES256/RS256 keys from a JWKS URL),
  ``aud`` = the configured audience, ``sub`` = the user's UUID.
- ``role: service_role`` tokens are admins (Supabase service keys carry no ``sub`` and no ``aud``).
- Tenant tokens (``tet_...``) are issued at provisioning, scoped to one user, and stored only as a
  SHA-256 hash; a tenant presents one to call the analyze endpoint.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

import jwt
from loguru import logger
from starlette.requests import Request

from tradeengine.api.errors import ForbiddenError, UnauthorizedError
from tradeengine.domain.secrets import TENANT_TOKEN_PREFIX, tenant_token_hash

_HMAC_ALGORITHMS = frozenset({"HS256"})
_ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "RS256"})


class PrincipalKind(StrEnum):
    USER = "user"
    ADMIN = "admin"
    TENANT = "tenant"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``user_id`` is the user a user or tenant token is scoped to (None for admins)."""

    kind: PrincipalKind
    user_id: UUID | None
    email: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind is PrincipalKind.ADMIN

    def subject(self) -> str:
        return str(self.user_id) if self.user_id is not None else "admin"


class TenantTokenLookup(Protocol):
    async def user_for_tenant_token(self, token_hash: str) -> UUID | None:
        """Return the user a tenant token hash was issued to, or None when unknown/revoked."""
        ...


class JwksKeySource:
    """Public keys from a JWKS URL, cached; refetched at most every ``min_refresh_s`` on unknown kids."""

    def __init__(self, url: str, *, ttl_s: float = 600.0, min_refresh_s: float = 30.0, timeout_s: float = 5.0):
        self._url = url
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._timeout_s = timeout_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._fetched_at > self._ttl_s
        unknown = kid not in self._keys and now - self._fetched_at > self._min_refresh_s
        if stale or unknown:
            async with self._lock:
                if time.monotonic() - self._fetched_at > self._min_refresh_s or not self._keys:
                    await self._refresh()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid or "")

    async def _refresh(self) -> None:
        import aiohttp  # only deployments with a JWKS URL pay for the import

        timeout = aiohttp.ClientTimeout(total=self._timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self._url) as resp,
            ):
                resp.raise_for_status()
                document = await resp.json(content_type=None)
            key_set = jwt.PyJWKSet.from_dict(document)
        except (aiohttp.ClientError, TimeoutError, jwt.PyJWTError, ValueError) as exc:
            # Keep serving with the keys we had; an outage of the auth server must not log everyone out.
            logger.warning("JWKS refresh from {} failed: {}", self._url, type(exc).__name__)
            self._fetched_at = time.monotonic()
            return
        self._keys = {key.key_id or "": key for key in key_set.keys}
        self._fetched_at = time.monotonic()


class TokenVerifier:
    """Turn a bearer token into a ``Principal`` or raise ``UnauthorizedError``."""

    def __init__(
        self,
        *,
        jwt_secret: str | None,
        audience: str = "authenticated",
        jwks: JwksKeySource | None = None,
        tenant_tokens: TenantTokenLookup | None = None,
        leeway_s: float = 30.0,
    ) -> None:
        self._secret = jwt_secret
        self._audience = audience
        self._jwks = jwks
        self._tenant_tokens = tenant_tokens
        self._leeway_s = leeway_s

    async def verify(self, token: str) -> Principal:
        if token.startswith(TENANT_TOKEN_PREFIX):
            return await self._verify_tenant(token)
        return await self._verify_jwt(token)

    async def _verify_tenant(self, token: str) -> Principal:
        if self._tenant_tokens is None:
            raise UnauthorizedError("tenant tokens are not accepted here")
        user_id = await self._tenant_tokens.user_for_tenant_token(tenant_token_hash(token))
        if user_id is None:
            raise UnauthorizedError("unknown or revoked tenant token")
        return Principal(PrincipalKind.TENANT, user_id)

    async def _verify_jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise UnauthorizedError("malformed bearer token") from None
        algorithm = header.get("alg")
        key: Any
        if algorithm in _HMAC_ALGORITHMS:
            if not self._secret:
                raise UnauthorizedError("HS256 tokens are not accepted: no JWT secret configured")
            key = self._secret
        elif algorithm in _ASYMMETRIC_ALGORITHMS:
            jwk = await self._jwks.key_for(header.get("kid")) if self._jwks is not None else None
            if jwk is None:
                raise UnauthorizedError("token signed by an unknown key")
            key = jwk
        else:
            raise UnauthorizedError(f"unsupported token algorithm: {algorithm!s:.20}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(algorithm)],
                leeway=self._leeway_s,
                options={"require": ["exp"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("token has expired") from None
        except jwt.PyJWTError:
            raise UnauthorizedError("invalid token signature or claims") from None
        if claims.get("role") == "service_role":
            return Principal(PrincipalKind.ADMIN, None)
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self._audience not in audiences:
            raise UnauthorizedError(f"token audience must be {self._audience!r}")
        try:
            user_id = UUID(str(claims.get("sub")))
        except ValueError:
            raise UnauthorizedError("token subject (sub) must be a user UUID") from None
        email = claims.get("email")
        return Principal(PrincipalKind.USER, user_id, email if isinstance(email, str) else None)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("Authorization: Bearer <token> header is required")
    return token.strip()


async def authenticate(request: Request, *, allow: frozenset[PrincipalKind]) -> Principal:
    """Verify the request's bearer token and check the caller's kind is allowed here."""
    verifier: TokenVerifier = request.app.state.verifier
    principal = await verifier.verify(bearer_token(request))
    if principal.kind not in allow:
        raise ForbiddenError(f"{principal.kind.value} tokens may not call this endpoint")
    return principal


USERS = frozenset({PrincipalKind.USER, PrincipalKind.ADMIN})
USERS_AND_TENANTS = frozenset({PrincipalKind.USER, PrincipalKind.ADMIN, PrincipalKind.TENANT})
ADMINS = frozenset({PrincipalKind.ADMIN})


def issue_user_token(
    secret: str,
    user_id: UUID,
    *,
    audience: str = "authenticated",
    ttl_s: int = 3600,
    email: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a Supabase-style HS256 access token (CLI, demo and tests; production uses Supabase Auth)."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "aud": audience,
        "role": "authenticated",
        "iat": issued,
        "exp": issued + ttl_s,
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm="HS256")


def issue_service_token(secret: str, *, ttl_s: int = 3600, now: float | None = None) -> str:
    """Sign a service-role (admin) token."""
    issued = int(now if now is not None else time.time())
    return jwt.encode(
        {"role": "service_role", "iss": "tradeengine", "iat": issued, "exp": issued + ttl_s},
        secret,
        algorithm="HS256",
    )
