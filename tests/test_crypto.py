"""Token encryption: AES-256-GCM, key ids for rotation, the row as associated data, no leaks."""

from __future__ import annotations

import base64
import os

import pytest

from refresher.crypto import PREFIX, CryptoError, TokenCipher, derive_key, generate_key, key_id

TOKEN = "tok-SECRET-0123456789abcdef"
ROW = {"app": "shopee-sg", "account": "shop:14701711", "field": "refresh_token"}


def test_roundtrip_and_format() -> None:
    cipher = TokenCipher(["correct horse battery staple"])
    sealed = cipher.encrypt(TOKEN, **ROW)
    assert sealed.startswith(f"{PREFIX}{cipher.primary_kid}:")
    assert TOKEN not in sealed
    assert cipher.decrypt(sealed, **ROW) == TOKEN
    # A fresh nonce each time: equal tokens do not give equal ciphertexts.
    assert cipher.encrypt(TOKEN, **ROW) != sealed


def test_base64_key_is_used_as_is_and_passphrase_is_stretched() -> None:
    raw = os.urandom(32)
    assert derive_key(base64.b64encode(raw).decode()) == raw
    assert derive_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    phrase = derive_key("a passphrase")
    assert len(phrase) == 32 and phrase != b"a passphrase".ljust(32, b"\0")
    assert derive_key("a passphrase") == phrase  # deterministic, so every replica derives the same key
    assert len(base64.b64decode(generate_key())) == 32
    with pytest.raises(CryptoError, match="empty"):
        TokenCipher(["  "])


def test_without_keys_values_stay_clear() -> None:
    cipher = TokenCipher()
    assert not cipher.enabled
    assert cipher.encrypt(TOKEN, **ROW) == TOKEN
    assert cipher.decrypt(TOKEN, **ROW) == TOKEN


@pytest.mark.parametrize(
    "other",
    [
        {"app": "shopee-my", "account": "shop:14701711", "field": "refresh_token"},
        {"app": "shopee-sg", "account": "shop:99", "field": "refresh_token"},
        {"app": "shopee-sg", "account": "shop:14701711", "field": "access_token"},
    ],
)
def test_ciphertext_is_bound_to_its_row(other: dict[str, str]) -> None:
    cipher = TokenCipher([generate_key()])
    sealed = cipher.encrypt(TOKEN, **ROW)
    with pytest.raises(CryptoError) as info:
        cipher.decrypt(sealed, **other)
    message = str(info.value)
    assert other["account"] in message and TOKEN not in message and sealed not in message


def test_tampered_ciphertext_fails() -> None:
    cipher = TokenCipher([generate_key()])
    sealed = cipher.encrypt(TOKEN, **ROW)
    body = bytearray(base64.urlsafe_b64decode(sealed.rsplit(":", 1)[1]))
    body[-1] ^= 1
    tampered = sealed.rsplit(":", 1)[0] + ":" + base64.urlsafe_b64encode(bytes(body)).decode()
    with pytest.raises(CryptoError, match="does not decrypt"):
        cipher.decrypt(tampered, **ROW)
    with pytest.raises(CryptoError, match="not a valid encrypted value"):
        cipher.decrypt(PREFIX + "nocolon", **ROW)


def test_rotation_first_key_encrypts_every_key_decrypts() -> None:
    old, new = generate_key(), generate_key()
    before = TokenCipher([old]).encrypt(TOKEN, **ROW)
    both = TokenCipher([new, old])
    assert both.decrypt(before, **ROW) == TOKEN
    assert both.needs_rewrite(before)
    after = both.encrypt(TOKEN, **ROW)
    assert not both.needs_rewrite(after)
    assert after.split(":")[2] == key_id(derive_key(new))
    assert TokenCipher([new]).decrypt(after, **ROW) == TOKEN
    assert TokenCipher([generate_key()]).needs_rewrite(TOKEN)  # clear values get encrypted on rotation


def test_unknown_key_error_names_the_row_and_key_id_but_no_secret() -> None:
    key_a, key_b = generate_key(), generate_key()
    sealed = TokenCipher([key_a]).encrypt(TOKEN, **ROW)
    with pytest.raises(CryptoError) as info:
        TokenCipher([key_b]).decrypt(sealed, **ROW)
    message = str(info.value)
    assert "refresh_token of account shopee-sg/shop:14701711" in message
    assert key_id(derive_key(key_a)) in message
    for secret in (TOKEN, key_a, key_b, sealed):
        assert secret not in message
    with pytest.raises(CryptoError, match="encryption_keys is empty"):
        TokenCipher().decrypt(sealed, **ROW)
