"""TikTok Shop's envelope ``{code, message, request_id, data}`` read into refresher's error classes.

The code table (docs/platforms.md, "TikTok Shop"): every code the docs list and the sandbox emits. Codes
are classified on the number, never on the HTTP status alone; 36009004 stands for many failures and
only its message tells them apart. An unknown code is retried and reported with its raw number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from refresher.domain import (
    AccessTokenInvalid,
    ClockSkew,
    ConfigError,
    MalformedAnswer,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TransientError,
)
from refresher.platforms.transport import Answer, http_status_error, safe_excerpt

# Error codes (docs/platforms.md).
CODE_INVALID_AUTH_CODE = 36004004
CODE_NO_AUTH_RECORD = 36004005  # unknown / used / revoked refresh token
CODE_RT_EXPIRED = 36004001
CODE_ACCESS_EXPIRED = 105002
CODE_DEAUTHORIZED = 105001
CODE_SCOPE_DENIED = 105005
CODE_BAD_TOKEN_FOR_SHOP = 101000
CODE_BAD_SIGN = 106001
CODE_CREDENTIALS = 36009004  # many failures share it; the message tells them apart
CODE_BAD_APP_CREDENTIALS = 36004003  # invalid app_key or app_secret on the token endpoint
CODE_IP_NOT_ALLOWED = 36009033
CODE_MISSING_CIPHER = 106013
TRANSIENT_CODES = frozenset({36009002, 36009003, 36009007})
TOKEN_REJECTED_CODES = frozenset({CODE_INVALID_AUTH_CODE, CODE_NO_AUTH_RECORD, CODE_RT_EXPIRED})
CONFIG_CODES = frozenset(
    {CODE_BAD_TOKEN_FOR_SHOP, CODE_BAD_SIGN, CODE_IP_NOT_ALLOWED, CODE_MISSING_CIPHER, CODE_BAD_APP_CREDENTIALS}
)
# Answers that say the shop_cipher sent does not fit: the stored shop list is stale and is read again.
CIPHER_CODES = frozenset({CODE_BAD_TOKEN_FOR_SHOP, CODE_MISSING_CIPHER})


def classify(
    envelope: Mapping[str, Any], answer: Answer, what: str, *, token_call: bool, refresh: bool
) -> RefresherError | None:
    request_id = request_id_of(envelope)
    code = envelope.get("code")
    if isinstance(code, bool) or not isinstance(code, int):
        if answer.status == 429 or answer.status >= 500:
            return http_status_error(answer, "tiktok_shop")
        return MalformedAnswer(
            f"{what}: answer has no numeric code ({safe_excerpt(answer.body, 60)!r})",
            platform="tiktok_shop",
            request_id=request_id,
            http_status=answer.status,
        )
    if code == 0:
        if answer.status >= 400:
            return http_status_error(answer, "tiktok_shop") or MalformedAnswer(
                f"{what}: code 0 with HTTP {answer.status}", platform="tiktok_shop", request_id=request_id
            )
        return None
    message = _message(envelope)
    kwargs: dict[str, Any] = {
        "code": str(code),
        "request_id": request_id,
        "platform": "tiktok_shop",
        "http_status": answer.status,
    }
    lowered = message.lower()
    if code in TOKEN_REJECTED_CODES:
        if refresh:
            return RefreshTokenRejected(f"{what}: refresh token rejected ({message})", **kwargs)
        if token_call:
            return ReauthRequired(f"{what}: authorization code invalid, used or expired ({message})", **kwargs)
        return ReauthRequired(f"{what}: authorization not found ({message})", **kwargs)
    if code in (CODE_ACCESS_EXPIRED, CODE_DEAUTHORIZED):
        # 105001 "deauthorized" deserves one refresh before the account is declared lost.
        return AccessTokenInvalid(f"{what}: access token refused ({message})", **kwargs)
    if code == CODE_SCOPE_DENIED:
        return ReauthRequired(f"{what}: the grant lacks a scope, re-authorize ({message})", **kwargs)
    if code in TRANSIENT_CODES:
        return TransientError(f"{what}: platform busy ({message})", **kwargs)
    if code in CONFIG_CODES:
        return ConfigError(f"{what}: {_config_hint(code)} ({message})", **kwargs)
    if code == CODE_CREDENTIALS:
        # One code, many causes: the message is the only discriminator (docs/platforms.md).
        if "timestamp" in lowered:
            return ClockSkew(f"{what}: timestamp refused, check the clock ({message})", **kwargs)
        if "access-token" in lowered or "access_token" in lowered:
            return AccessTokenInvalid(f"{what}: access token refused ({message})", **kwargs)
        return ConfigError(f"{what}: credentials refused, check app_key/app_secret ({message})", **kwargs)
    if answer.status in (401, 403) and not token_call:
        return AccessTokenInvalid(f"{what}: access refused ({message})", **kwargs)
    # An unknown code in a well-formed envelope: retried within the budget; the alarm then names it.
    return TransientError(f"{what}: unrecognised platform error {code} ({message})", **kwargs)


def _config_hint(code: int) -> str:
    return {
        CODE_BAD_SIGN: "signature refused, check app_secret",
        CODE_IP_NOT_ALLOWED: "this IP is not in the app's allow list",
        CODE_MISSING_CIPHER: "shop_cipher missing",
        CODE_BAD_TOKEN_FOR_SHOP: "token does not match the shop or user type",
        CODE_BAD_APP_CREDENTIALS: "app_key or app_secret invalid, check the app's credentials",
    }.get(code, "configuration error")


def request_id_of(envelope: Mapping[str, Any]) -> str | None:
    value = envelope.get("request_id")
    return str(value)[:128] if isinstance(value, str | int) and not isinstance(value, bool) and value != "" else None


def _message(envelope: Mapping[str, Any]) -> str:
    # Messages are the platform's words: safe_excerpt masks anything token-like they might quote.
    value = envelope.get("message")
    text = value if isinstance(value, str) else ""
    return safe_excerpt(text.encode(), 160) or "no message"
