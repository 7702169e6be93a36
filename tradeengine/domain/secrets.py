"""Encryption of users' exchange keys at rest (AES-256-GCM under a key derived from the master key).

Ciphertexts look like ``v1:<base64url(nonce || ciphertext+tag)>``. The associated data binds each
ciphertext to its user and field, so a value copied into another user's row (or from the secret
column into the key column) fails to decrypt instead of leaking a key to the wrong tenant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TENANT_TOKEN_PREFIX = "tet_"  # noqa: S105 - a prefix, not a secret
_VERSION = "v1"
_NONCE_BYTES = 12


class SecretDecryptionError(Exception):
    """The ciphertext is corrupt, was made under another master key, or belongs to another row."""


class SecretBox:
    """Encrypt and decrypt small secrets with a key derived from ``master_key``."""

    def __init__(self, master_key: str) -> None:
        if len(master_key) < 16:
            raise ValueError("master_key must be at least 16 characters")
        material = master_key.encode()
        self._aead = AESGCM(self._derive(material, b"tradeengine exchange keys v1"))
        self._token_key = self._derive(material, b"tradeengine tenant tokens v1")

    @staticmethod
    def _derive(material: bytes, info: bytes) -> bytes:
        # HKDF lets an operator use any high-entropy string (e.g. `openssl rand -hex 32`).
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)

    def encrypt(self, plaintext: str, *, user_id: UUID, field: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), _aad(user_id, field))
        return f"{_VERSION}:" + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, ciphertext: str, *, user_id: UUID, field: str) -> str:
        version, _, body = ciphertext.partition(":")
        if version != _VERSION or not body:
            raise SecretDecryptionError(f"{field}: unknown ciphertext format")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(user_id, field))
        except (InvalidTag, ValueError) as exc:
            raise SecretDecryptionError(f"{field}: cannot decrypt (wrong master key or row)") from exc
        return plain.decode()

    def derive_token(self, purpose: str) -> str:
        """A deterministic secret for ``purpose``: recomputable from the master key, never stored."""
        digest = hmac.new(self._token_key, purpose.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _aad(user_id: UUID, field: str) -> bytes:
    return f"{user_id}:{field}".encode()


def tenant_token_hash(token: str) -> str:
    """The only form of a tenant token that is stored (hex SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()
