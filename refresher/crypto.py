"""Token encryption at rest: AES-256-GCM with a key id per ciphertext and the row as associated data.

Format of a stored value: ``enc:v1:<key id>:<base64url(nonce || ciphertext+tag)>``. The key id (first 8
hex digits of the SHA-256 of the key) lets any configured key decrypt while the first one encrypts, so
keys rotate without downtime. The associated data binds the ciphertext to (app, account key, field):
a ciphertext pasted onto another account or column no longer decrypts.

Values without the prefix are clear text (stores written before keys were configured). Nothing here
ever puts a token or a key into an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from refresher.domain import RefresherError

PREFIX = "enc:v1:"
_NONCE_BYTES = 12
# A fixed salt is fine here: the salt's job (defeating precomputed tables across installations) matters
# little next to the passphrase's own strength, and a random salt would have to be stored beside the key.
_SCRYPT_SALT = b"refresher/token-key/v1"


class CryptoError(RefresherError):
    """A value cannot be decrypted or a key is unusable. Messages never carry a token or a key."""


@dataclass(frozen=True)
class _Key:
    kid: str
    aead: AESGCM


def derive_key(material: str) -> bytes:
    """32 key bytes from a configured key string.

    The base64 (standard or url-safe) encoding of exactly 32 bytes is used as is; any other string is a
    passphrase stretched with scrypt, so a memorable phrase does not become a weak AES key.
    """
    text = material.strip()
    if not text:
        raise CryptoError("an encryption key is empty")
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    return Scrypt(salt=_SCRYPT_SALT, length=32, n=2**14, r=8, p=1).derive(text.encode("utf-8"))


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def generate_key() -> str:
    """A fresh random key, as the base64 text that goes into ``store.encryption_keys``."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def _aad(app: str, account: str, field: str) -> bytes:
    # Length-prefixed parts so ("a:b", "c") and ("a", "b:c") cannot produce the same associated data.
    parts = [p.encode("utf-8") for p in (app, account, field)]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def is_encrypted(value: str) -> bool:
    return value.startswith(PREFIX)


class TokenCipher:
    """Encrypts with the first key and decrypts with any; with no keys it stores and reads clear text."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        self._keys: list[_Key] = []
        seen: set[str] = set()
        for material in keys:
            raw = derive_key(material)
            kid = key_id(raw)
            if kid not in seen:
                seen.add(kid)
                self._keys.append(_Key(kid, AESGCM(raw)))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def primary_kid(self) -> str | None:
        return self._keys[0].kid if self._keys else None

    def key_ids(self) -> list[str]:
        return [k.kid for k in self._keys]

    def encrypt(self, plaintext: str, *, app: str, account: str, field: str) -> str:
        if not self._keys:
            return plaintext
        key = self._keys[0]
        nonce = os.urandom(_NONCE_BYTES)
        sealed = key.aead.encrypt(nonce, plaintext.encode("utf-8"), _aad(app, account, field))
        return f"{PREFIX}{key.kid}:{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"

    def decrypt(self, value: str, *, app: str, account: str, field: str) -> str:
        """Clear text of ``value``; :class:`CryptoError` naming the row (never the value) on failure."""
        if not is_encrypted(value):
            return value
        where = f"{field} of account {app}/{account}"
        try:
            kid, body = value[len(PREFIX) :].split(":", 1)
            blob = base64.urlsafe_b64decode(body.encode("ascii"))
        except (ValueError, binascii.Error):
            raise CryptoError(f"{where} is not a valid encrypted value") from None
        if not self._keys:
            raise CryptoError(f"{where} is encrypted (key id {kid}) but store.encryption_keys is empty")
        key = next((k for k in self._keys if k.kid == kid), None)
        if key is None:
            raise CryptoError(
                f"{where} is encrypted with key id {kid}, which is not among the configured keys "
                f"({', '.join(self.key_ids())})"
            )
        try:
            clear = key.aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _aad(app, account, field))
        except InvalidTag:
            raise CryptoError(
                f"{where} does not decrypt with key id {kid}: the value was altered or belongs to "
                "another account or field"
            ) from None
        return clear.decode("utf-8")

    def needs_rewrite(self, value: str) -> bool:
        """True when ``value`` is not already encrypted under the first key (for key rotation)."""
        if not self._keys:
            return is_encrypted(value)
        return not value.startswith(f"{PREFIX}{self._keys[0].kid}:")
