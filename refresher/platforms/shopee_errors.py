"""Shopee's error envelope ``{error, message, request_id}`` read into refresher's error classes.

The code table (docs/platforms.md, "Shopee"): every code the token endpoints document and every code the
sandbox emits; an unknown code is retried within the budget and reported with its raw code.
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
from refresher.platforms.transport import Answer, retry_after_seconds, safe_excerpt

_TRANSIENT_CODES = frozenset(
    {"error_server", "error_network", "error_data", "error_inner", "error_system_busy", "error_busy"}
)
_ACCESS_TOKEN_CODES = frozenset({"invalid_acceess_token", "invalid_access_token"})  # sic: both seen live
_REFRESH_TOKEN_CODES = frozenset(
    {
        "refresh_token_expired",
        "error_shop_refresh_token",
        "error_merchant_refresh_token",
        # Not in Shopee's tables: suppliers are refreshed like merchants (docs/platforms.md), so their
        # mismatch answer is read like a merchant's rather than retried as an unknown code.
        "error_supplier_refresh_token",
    }
)
_REAUTH_CODES = frozenset(
    {
        "invalid_code",
        "invalid_shop_id",
        "invalid_main_acount_id",  # sic, as documented
        "invalid_main_account_id",
        "shop_access_expired",
        "merchant_access_expired",
        "supplier_access_expired",
        "shop_no_linked",
        "merchant_no_linked",
        "supplier_no_linked",
        "shop_banned",
    }
)
_CONFIG_CODES = frozenset({"error_sign", "invalid_partner_id", "error_permission"})


def classify(data: Mapping[str, Any], answer: Answer, what: str, context: str) -> RefresherError | None:
    """Classify Shopee's ``{error, message, request_id}`` envelope (``error == ""`` is success)."""
    code = data.get("error")
    if code is None or code == "":
        return None
    request_id = request_id_of(data)
    if not isinstance(code, str):
        return MalformedAnswer(
            f"{what}: error field has the wrong type ({type(code).__name__})",
            platform="shopee",
            request_id=request_id,
            http_status=answer.status,
        )
    raw_message = data.get("message")
    message = safe_excerpt(raw_message.encode(), 100) if isinstance(raw_message, str) else ""
    text = f"{what} refused by Shopee ({message or 'no message'})"
    kwargs: dict[str, Any] = {
        "code": code,
        "request_id": request_id,
        "platform": "shopee",
        "http_status": answer.status,
    }
    lowered = message.lower()
    if code in _TRANSIENT_CODES or "too many" in lowered or "try later" in lowered:
        return TransientError(text, retry_after=retry_after_seconds(answer.headers), **kwargs)
    if code in _ACCESS_TOKEN_CODES:
        return AccessTokenInvalid(text, **kwargs)
    if code in _REFRESH_TOKEN_CODES:
        return RefreshTokenRejected(text, **kwargs)
    if code in _REAUTH_CODES:
        if context == "refresh":
            # On the refresh endpoint an ended or cancelled authorization is a refused refresh token:
            # the same path (re-read the store, then re-authorize) settles it.
            return RefreshTokenRejected(text, **kwargs)
        return ReauthRequired(text, **kwargs)
    if code in _CONFIG_CODES:
        return ConfigError(text, **kwargs)
    if code == "error_param":
        if "timestamp" in lowered:
            return ClockSkew(text, **kwargs)
        return ConfigError(text, **kwargs)
    if code == "error_auth":
        # One code, several meanings: the message and the endpoint tell them apart.
        if "permission" in lowered:
            return ConfigError(text, **kwargs)
        if "access_token" in lowered or context == "api":
            return AccessTokenInvalid(text, **kwargs)
        if context == "refresh":
            return RefreshTokenRejected(text, **kwargs)
        return ReauthRequired(text, **kwargs)
    # A well-formed envelope with a code we do not know: retry, keeping the code for the operator.
    return TransientError(
        f"{what}: unknown Shopee error {code[:64]} ({message or 'no message'})",
        retry_after=retry_after_seconds(answer.headers),
        **kwargs,
    )


def request_id_of(data: Mapping[str, Any]) -> str | None:
    value = data.get("request_id")
    return value if isinstance(value, str) and value else None
