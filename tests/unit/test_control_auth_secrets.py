"""Token verification (HS256 user/admin tokens), secret encryption and the per-user rate limiter."""

from __future__ import annotations

import uuid

import jwt
import pytest

from tradeengine.api.auth import PrincipalKind, TokenVerifier, issue_service_token, issue_user_token
from tradeengine.api.errors import RateLimitedError, UnauthorizedError
from tradeengine.api.ratelimit import UserRateLimiter
from tradeengine.domain.secrets import SecretBox, SecretDecryptionError, tenant_token_hash

SECRET = "unit-test-secret-0123456789abcdef012345"


class _Tokens:
    def __init__(self, mapping: dict[str, uuid.UUID]) -> None:
        self.mapping = mapping

    async def user_for_tenant_token(self, token_hash: str) -> uuid.UUID | None:
        return self.mapping.get(token_hash)


async def test_user_admin_and_tenant_tokens() -> None:
    user = uuid.uuid4()
    tenant_user = uuid.uuid4()
    verifier = TokenVerifier(jwt_secret=SECRET, tenant_tokens=_Tokens({tenant_token_hash("tet_abc"): tenant_user}))
    p = await verifier.verify(issue_user_token(SECRET, user, email="u@example.com"))
    assert (p.kind, p.user_id, p.email) == (PrincipalKind.USER, user, "u@example.com")
    admin = await verifier.verify(issue_service_token(SECRET))
    assert (admin.kind, admin.user_id) == (PrincipalKind.ADMIN, None)
    # A Supabase service key has neither sub nor aud: still an admin.
    supabase_service = jwt.encode({"role": "service_role", "iss": "supabase", "exp": 4102444800}, SECRET)
    assert (await verifier.verify(supabase_service)).is_admin
    tenant = await verifier.verify("tet_abc")
    assert (tenant.kind, tenant.user_id) == (PrincipalKind.TENANT, tenant_user)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        (
            {"sub": "not-a-uuid", "aud": "authenticated", "exp": 4102444800},
            "token subject (sub) must be a user UUID",
        ),
        (
            {"sub": str(uuid.uuid4()), "aud": "anon", "exp": 4102444800},
            "token audience must be 'authenticated'",
        ),
        ({"sub": str(uuid.uuid4()), "aud": "authenticated"}, "invalid token signature or claims"),  # no exp
        ({"sub": str(uuid.uuid4()), "aud": "authenticated", "exp": 1}, "token has expired"),
    ],
)
async def test_bad_claims_are_rejected(claims: dict[str, object], message: str) -> None:
    verifier = TokenVerifier(jwt_secret=SECRET)
    with pytest.raises(UnauthorizedError) as info:
        await verifier.verify(jwt.encode(claims, SECRET, algorithm="HS256"))
    assert info.value.message == message


async def test_algorithm_confusion_and_garbage_are_rejected() -> None:
    verifier = TokenVerifier(jwt_secret=SECRET)
    unsigned = jwt.encode({"sub": str(uuid.uuid4()), "aud": "authenticated", "exp": 4102444800}, None, algorithm="none")
    for token, message in [
        (unsigned, "unsupported token algorithm: none"),
        ("garbage", "malformed bearer token"),
        (
            issue_user_token("other-secret-0123456789abcdef0123456", uuid.uuid4()),
            "invalid token signature or claims",
        ),
        (
            jwt.encode({"sub": "x", "exp": 4102444800}, SECRET, algorithm="HS512"),
            "unsupported token algorithm: HS512",
        ),
    ]:
        with pytest.raises(UnauthorizedError) as info:
            await verifier.verify(token)
        assert info.value.message == message
    with pytest.raises(UnauthorizedError, match="not accepted here"):
        await verifier.verify("tet_x")
    with pytest.raises(UnauthorizedError, match="no JWT secret"):
        await TokenVerifier(jwt_secret=None).verify(issue_user_token(SECRET, uuid.uuid4()))


def test_secret_box_round_trip_and_binding() -> None:
    box = SecretBox("master-key-0123456789abcdef")
    user, other = uuid.uuid4(), uuid.uuid4()
    sealed = box.encrypt("my-binance-key", user_id=user, field="binance_api_key")
    assert sealed.startswith("v1:")
    assert "my-binance-key" not in sealed
    assert sealed != box.encrypt("my-binance-key", user_id=user, field="binance_api_key")  # fresh nonce
    assert box.decrypt(sealed, user_id=user, field="binance_api_key") == "my-binance-key"
    with pytest.raises(SecretDecryptionError):
        box.decrypt(sealed, user_id=other, field="binance_api_key")  # copied to another user's row
    with pytest.raises(SecretDecryptionError):
        box.decrypt(sealed, user_id=user, field="binance_secret_key")  # swapped columns
    with pytest.raises(SecretDecryptionError):
        SecretBox("another-master-key-0123456789").decrypt(sealed, user_id=user, field="binance_api_key")
    with pytest.raises(SecretDecryptionError, match="unknown ciphertext format"):
        box.decrypt("plaintext", user_id=user, field="binance_api_key")
    with pytest.raises(ValueError, match="at least 16"):
        SecretBox("short")
    assert box.derive_token("a") == box.derive_token("a") != box.derive_token("b")


def test_rate_limiter_refills_per_user() -> None:
    now = [0.0]
    limiter = UserRateLimiter("generate", 2, monotonic=lambda: now[0])
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimitedError) as info:
        limiter.check("a")
    assert info.value.headers["Retry-After"] == "30"
    limiter.check("b")  # other users have their own bucket
    now[0] = 30.0
    limiter.check("a")  # one token back after 30 s at 2/min
    with pytest.raises(RateLimitedError):
        limiter.check("a")
    assert limiter.rejected == 2
