"""The platforms' signature algorithms as pure functions (no I/O, no clock).

Each is checked against ``tests/vectors/*.json`` (signatures computed by independent implementations).
The plugins build requests with them and the sandbox verifies requests with them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

# ----------------------------------------------------------------------------------------- Shopee


def shopee_base_string(
    partner_id: int | str,
    path: str,
    timestamp: int | str,
    access_token: str | None = None,
    shop_id: int | str | None = None,
    merchant_id: int | str | None = None,
) -> str:
    """``partner_id + api_path + timestamp [+ access_token + shop_id|merchant_id]``.

    The identifier is appended whenever it is given, even ``0``: truthiness must not decide (vector S10).
    """
    if shop_id is not None and merchant_id is not None:
        raise ValueError("a Shopee call is signed for a shop or a merchant, not both")
    base = f"{partner_id}{path}{timestamp}"
    if access_token is not None:
        ident = shop_id if shop_id is not None else merchant_id
        base += access_token + ("" if ident is None else str(ident))
    return base


def shopee_sign(
    partner_key: str,
    partner_id: int | str,
    path: str,
    timestamp: int | str,
    access_token: str | None = None,
    shop_id: int | str | None = None,
    merchant_id: int | str | None = None,
) -> str:
    """Lowercase hex HMAC-SHA256 keyed with the partner key *as text* (never hex-decoded, vector S06)."""
    base = shopee_base_string(partner_id, path, timestamp, access_token, shop_id, merchant_id)
    return hmac.new(partner_key.encode(), base.encode(), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------ TikTok Shop

TIKTOK_SHOP_UNSIGNED_PARAMS = frozenset({"sign", "access_token"})


def tiktok_shop_base_string(
    app_secret: str,
    path: str,
    query: Iterable[tuple[str, str]] | Mapping[str, str],
    body: bytes | str | None = None,
    content_type: str | None = "application/json",
) -> str:
    """``secret + path + sorted(k+v) + body + secret``: the text the HMAC (keyed with the secret) covers.

    Values are the decoded values; keys sort in code-unit order (uppercase first, vector T09); the body
    is signed exactly as sent (T06a) unless the request is multipart (T12).
    """
    pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
    signed = sorted((k, v) for k, v in pairs if k not in TIKTOK_SHOP_UNSIGNED_PARAMS)
    text = path + "".join(f"{k}{v}" for k, v in signed)
    if body and not (content_type or "").lower().startswith("multipart/form-data"):
        text += body.decode("utf-8", "surrogateescape") if isinstance(body, bytes) else body
    return app_secret + text + app_secret


def tiktok_shop_sign(
    app_secret: str,
    path: str,
    query: Iterable[tuple[str, str]] | Mapping[str, str],
    body: bytes | str | None = None,
    content_type: str | None = "application/json",
) -> str:
    """``hex(HMAC(secret, secret + path + sorted(k+v) + body + secret))`` (:func:`tiktok_shop_base_string`)."""
    data = tiktok_shop_base_string(app_secret, path, query, body, content_type).encode("utf-8", "surrogateescape")
    return hmac.new(app_secret.encode(), data, hashlib.sha256).hexdigest()


# ----------------------------------------------------------------------------------------- Lazada


def lazada_value(value: Any) -> str:
    """How a parameter value goes on the wire and into the signature (booleans as ``true``, vector L08)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def lazada_base_string(api_path: str, params: Mapping[str, Any], body: bytes | str | None = None) -> str:
    """``api_path + concat(sorted(k+v))`` (+ the raw body of a JSON/XML-body call, as the official Java and
    C# samples append it). Form parameters belong in ``params``: Lazada and lazop-sdk sign them as ordinary
    parameters. Empty values are refused: the official SDKs disagree on them (vector L07)."""
    parts = []
    for key in sorted(params):
        if key == "sign":
            continue
        value = lazada_value(params[key])
        if value == "":
            raise ValueError(f"Lazada parameter {key!r} is empty: omit it instead (its signature is ambiguous)")
        parts.append(key + value)
    text = api_path + "".join(parts)
    if body:
        text += body.decode("utf-8", "surrogateescape") if isinstance(body, bytes) else body
    return text


def lazada_sign(app_secret: str, api_path: str, params: Mapping[str, Any], body: bytes | str | None = None) -> str:
    """Uppercase hex HMAC-SHA256 over :func:`lazada_base_string`; ``api_path`` is the part after ``/rest``."""
    data = lazada_base_string(api_path, params, body).encode("utf-8", "surrogateescape")
    return hmac.new(app_secret.encode(), data, hashlib.sha256).hexdigest().upper()


# ----------------------------------------------------------------------------------- PKCE (TikTok)


def pkce_verifier() -> str:
    """A fresh RFC 7636 code verifier (43-128 unreserved characters)."""
    return secrets.token_urlsafe(48)[:64]


def pkce_challenge_hex(verifier: str) -> str:
    """TikTok desktop/mobile PKCE: the **hex** SHA-256 of the verifier, not RFC 7636 base64url."""
    return hashlib.sha256(verifier.encode()).hexdigest()


def pkce_challenge_s256(verifier: str) -> str:
    """RFC 7636 S256 challenge (base64url, no padding)."""
    import base64

    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
