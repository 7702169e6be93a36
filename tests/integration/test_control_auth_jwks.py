"""JWKS (ES256/RS256) user tokens, keys fetched over HTTP from a local server."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tradeengine.api.auth import JwksKeySource, PrincipalKind, TokenVerifier
from tradeengine.api.errors import UnauthorizedError


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[str, dict[str, object], list[int]]]:
    keys: dict[str, object] = {"keys": []}
    hits: list[int] = []

    async def handler(_: web.Request) -> web.Response:
        hits.append(1)
        return web.json_response(keys)

    app = web.Application()
    app.router.add_get("/auth/v1/.well-known/jwks.json", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json", keys, hits
    await runner.cleanup()


def _jwk(private_key: object, kid: str, alg: str) -> dict[str, object]:
    algo = jwt.algorithms.ECAlgorithm if alg == "ES256" else jwt.algorithms.RSAAlgorithm
    public = json.loads(algo.to_jwk(private_key.public_key()))  # type: ignore[attr-defined]
    return {**public, "kid": kid, "alg": alg, "use": "sig"}


async def test_es256_and_rs256_tokens_verify_against_jwks(
    jwks_server: tuple[str, dict[str, object], list[int]],
) -> None:
    url, keys, hits = jwks_server
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys["keys"] = [_jwk(ec_key, "ec-1", "ES256"), _jwk(rsa_key, "rsa-1", "RS256")]
    verifier = TokenVerifier(jwt_secret=None, jwks=JwksKeySource(url))
    user = uuid.uuid4()
    claims = {"sub": str(user), "aud": "authenticated", "role": "authenticated", "exp": int(time.time()) + 60}
    for key, kid, alg in ((ec_key, "ec-1", "ES256"), (rsa_key, "rsa-1", "RS256")):
        token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
        principal = await verifier.verify(token)
        assert (principal.kind, principal.user_id) == (PrincipalKind.USER, user)
    assert len(hits) == 1  # cached

    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": "ec-1"})
    with pytest.raises(UnauthorizedError, match="invalid token signature"):
        await verifier.verify(forged)
    unknown = jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": "ec-2"})
    with pytest.raises(UnauthorizedError, match="unknown key"):
        await verifier.verify(unknown)


async def test_jwks_outage_keeps_known_keys(jwks_server: tuple[str, dict[str, object], list[int]]) -> None:
    url, keys, _ = jwks_server
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys["keys"] = [_jwk(ec_key, "k", "ES256")]
    source = JwksKeySource(url, ttl_s=0.0, min_refresh_s=0.0)
    verifier = TokenVerifier(jwt_secret=None, jwks=source)
    claims = {"sub": str(uuid.uuid4()), "aud": "authenticated", "exp": int(time.time()) + 60}
    token = jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "k"})
    await verifier.verify(token)
    keys["keys"] = "broken"  # the server now serves an invalid document
    assert (await verifier.verify(token)).user_id is not None
