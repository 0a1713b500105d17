"""The error-code tables of docs/platforms.md, the plugins and the sandbox say the same thing.

Three checks per platform: each table lists exactly the codes of :data:`TABLE` below (a code added to the
docs or here alone fails); each of those codes is classified by its plugin into the class written here,
not left to the unknown-code fallback; and every code the sandbox can answer with (read from its source)
is one of them. The sandbox's ``unlisted`` fault answers with a code no document lists: that one must
fall to the fallback, transient with its raw code kept for the alarm.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from refresher import platforms
from refresher.config import AppSettings
from refresher.domain import (
    AccessTokenInvalid,
    AuthorizationDenied,
    ClockSkew,
    ConfigError,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TransientError,
)
from refresher.platforms import shopee_errors, tiktok_shop_errors
from refresher.platforms.base import Answer, Platform
from refresher.sandbox import lazada as lazada_sandbox
from refresher.sandbox import shopee as shopee_sandbox
from refresher.sandbox import tiktok as tiktok_sandbox
from refresher.sandbox import tiktok_shop as tiktok_shop_sandbox

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "platforms.md"
SANDBOX = ROOT / "refresher" / "sandbox"

# (code, context, message, class). Context: "token" (code exchange), "refresh", "api". TikTok Login Kit's
# API codes are written "api:CODE" (its OAuth and API errors are two vocabularies).
Row = tuple[str, str, str, type[RefresherError]]
TABLE: dict[str, list[Row]] = {
    "shopee": [
        *[
            (c, "refresh", "Something wrong. Please try later.", TransientError)
            for c in ("error_server", "error_network", "error_data", "error_inner", "error_system_busy", "error_busy")
        ],
        ("invalid_acceess_token", "api", "Invalid access_token.", AccessTokenInvalid),
        ("invalid_access_token", "api", "Invalid access_token.", AccessTokenInvalid),
        ("error_auth", "api", "Invalid access_token.", AccessTokenInvalid),
        ("error_auth", "refresh", "Invalid refresh_token.", RefreshTokenRejected),
        ("error_auth", "token", "Invalid code", ReauthRequired),
        ("error_auth", "api", "No permission to current api.", ConfigError),
        *[
            (c, "refresh", "Your refresh token is error", RefreshTokenRejected)
            for c in (
                "refresh_token_expired",
                "error_shop_refresh_token",
                "error_merchant_refresh_token",
                "error_supplier_refresh_token",
            )
        ],
        *[
            (c, context, "The code or shop_id is wrong", expected)
            for c in (
                "invalid_code",
                "invalid_shop_id",
                "invalid_main_acount_id",
                "shop_access_expired",
                "merchant_access_expired",
                "supplier_access_expired",
                "shop_no_linked",
                "merchant_no_linked",
                "supplier_no_linked",
                "shop_banned",
            )
            for context, expected in (("token", ReauthRequired), ("refresh", RefreshTokenRejected))
        ],
        *[(c, "api", "Wrong sign.", ConfigError) for c in ("error_sign", "invalid_partner_id", "error_permission")],
        ("error_param", "refresh", "Invalid partner_id.", ConfigError),
        ("error_param", "refresh", "Invalid timestamp", ClockSkew),
    ],
    "tiktok_shop": [
        ("36004004", "token", "invalid auth code", ReauthRequired),
        ("36004005", "refresh", "can not find related auth record", RefreshTokenRejected),
        ("36004001", "refresh", "rt has expired", RefreshTokenRejected),
        ("36004003", "refresh", "invalid app_key or app_secret", ConfigError),
        ("36004003", "token", "invalid app_key or app_secret", ConfigError),
        ("105002", "api", "Expired credentials.", AccessTokenInvalid),
        ("105001", "api", "your token has been deauthorized", AccessTokenInvalid),
        ("105005", "api", "Access denied.", ReauthRequired),
        ("101000", "api", "token does not match the shop", ConfigError),
        ("106001", "api", "The 'sign' query parameter is invalid.", ConfigError),
        ("106013", "api", "shop_cipher is required", ConfigError),
        ("36009033", "token", "Your IP address is not in the IP allow list", ConfigError),
        ("36009004", "api", "Invalid timestamp. The timestamp is outside the allowed window.", ClockSkew),
        ("36009004", "api", "Invalid credentials. The x-tts-access-token header is invalid.", AccessTokenInvalid),
        ("36009004", "token", "Invalid credentials. Invalid app_key.", ConfigError),
        ("36009002", "api", "Too many requests", TransientError),
        ("36009003", "refresh", "Internal error. Please try again", TransientError),
        ("36009007", "api", "request timeout", TransientError),
    ],
    "lazada": [
        *[
            (c, "refresh", "busy", TransientError)
            for c in (
                "ApiCallLimit",
                "OPEN_API_CALL_EXCEED_LIMIT",
                "TRAFFIC_CONTROL",
                "SYSTEM_ERROR",
                "ServiceTimeout",
                "SYS_ERROR",
            )
        ],
        ("IllegalAccessToken", "api", "The specified access token is invalid or expired", AccessTokenInvalid),
        ("IllegalAccessToken", "refresh", "The specified access token is invalid or expired", ReauthRequired),
        ("IllegalRefreshToken", "refresh", "The specified refresh token is invalid or expired", RefreshTokenRejected),
        ("InvalidCode", "token", "Invalid authorization code", ReauthRequired),
        ("OPEN_API_TIMESTAMP_INVALID", "refresh", "The input timestamp is invalid", ClockSkew),
        ("InvalidTimestamp", "api", "The input timestamp is invalid", ClockSkew),
        *[
            (c, "api", "refused", ConfigError)
            for c in (
                "IncompleteSignature",
                "MissingParameter",
                "APP_KEY_INVALID",
                "InvalidAppKey",
                "InvalidApiPath",
                "InvalidParameter",
                "AUTH_TYPE_UNSUPPORTED",
            )
        ],
    ],
    "tiktok": [
        ("invalid_grant", "refresh", "Refresh token is invalid or expired.", RefreshTokenRejected),
        ("invalid_grant", "token", "Authorization code is expired or invalid.", ReauthRequired),
        ("access_denied", "token", "The user denied the request", AuthorizationDenied),
        *[
            (c, "token", "refused", ConfigError)
            for c in (
                "invalid_client",
                "unauthorized_client",
                "unsupported_grant_type",
                "invalid_scope",
                "invalid_request",
                "unsupported_response_type",
            )
        ],
        ("server_error", "refresh", "Internal server error, please retry.", TransientError),
        ("temporarily_unavailable", "refresh", "later", TransientError),
        ("api:access_token_invalid", "api", "The access token is invalid or not found.", AccessTokenInvalid),
        ("api:scope_not_authorized", "api", "The user did not authorize user.info.basic.", ReauthRequired),
        ("api:scope_permission_missed", "api", "fields need additional scopes", ConfigError),
        ("api:invalid_params", "api", "The fields parameter is missing or invalid.", ConfigError),
        ("api:invalid_file_upload", "api", "The uploaded file does not meet API specifications.", ConfigError),
        ("api:rate_limit_exceeded", "api", "The API rate limit was exceeded.", TransientError),
        ("api:internal_error", "api", "Something went wrong.", TransientError),
    ],
}
SECTIONS = {
    "shopee": "## Shopee Open Platform",
    "tiktok_shop": "## TikTok Shop Partner API",
    "lazada": "## Lazada Open Platform",
    "tiktok": "## TikTok Login Kit",
}
UNLISTED = {
    "shopee": shopee_sandbox.UNLISTED_CODE,
    "tiktok_shop": str(tiktok_shop_sandbox.UNLISTED_CODE),
    "lazada": lazada_sandbox.UNLISTED_CODE,
    "tiktok": tiktok_sandbox.UNLISTED_CODE,
}


# ------------------------------------------------------------------------------------ the docs' tables


def documented_codes(platform: str) -> set[str]:
    """The codes in the first column of the platform section's error table (``error``/``code`` header)."""
    text = DOC.read_text()
    start = text.index(SECTIONS[platform])
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else len(text)]
    codes: set[str] = set()
    in_table = False
    for line in section.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        first = line.split("|")[1].strip()
        if first in ("error", "code"):
            in_table = True
            continue
        if not in_table or set(first) <= set("-: "):
            continue
        prefix = "api:" if platform == "tiktok" and first.startswith("API ") else ""
        found = re.findall(r"`([^`]+)`", first) or re.findall(r"\b\d{6,}\b", first)
        codes.update(prefix + code for code in found)
    return codes


@pytest.mark.parametrize("platform", sorted(TABLE))
def test_each_docs_table_lists_exactly_the_codes_refresher_classifies(platform: str) -> None:
    documented = documented_codes(platform)
    known = {code for code, *_ in TABLE[platform]}
    assert documented == known, f"only in docs: {documented - known}; only here: {known - documented}"


# ---------------------------------------------------------------------------- the plugins' verdicts


def _plugin(platform: str) -> Platform:
    every: dict[str, dict[str, Any]] = {
        "shopee": {"partner_id": 1, "partner_key": "k"},
        "tiktok_shop": {"app_key": "k", "app_secret": "s"},
        "lazada": {"app_key": "1", "app_secret": "s"},
        "tiktok": {"client_key": "k", "client_secret": "s"},
    }
    credentials = every[platform]
    cls = platforms.get(platform)
    app = AppSettings.model_validate({"name": "a", "platform": platform, **credentials})
    app = app.model_copy(update={"credentials": cls.credentials_model.model_validate(app.credentials)})
    return cls(app)


def _answer(body: dict[str, Any], status: int = 200) -> Answer:
    return Answer(status, httpx.Headers({"content-type": "application/json"}), json.dumps(body).encode())


def classify(platform: str, code: str, context: str, message: str) -> RefresherError | None:
    """The plugin's verdict on an answer carrying ``code`` in its platform's envelope."""
    plugin: Any = _plugin(platform)
    body: dict[str, Any]
    if platform == "shopee":
        body = {"error": code, "message": message, "request_id": "r1"}
        if context == "api":
            return plugin.classify_api_answer(_answer(body))  # type: ignore[no-any-return]
        return shopee_errors.classify(body, _answer(body), "call", context)
    if platform == "tiktok_shop":
        envelope = {"code": int(code), "message": message, "request_id": "r1", "data": {}}
        if context == "api":
            return plugin.classify_api_answer(_answer(envelope))  # type: ignore[no-any-return]
        refresh = context == "refresh"
        return tiktok_shop_errors.classify(envelope, _answer(envelope), "call", token_call=True, refresh=refresh)
    if platform == "lazada":
        body = {"type": "ISV", "code": code, "message": message, "request_id": "r1"}
        if context == "api":
            return plugin.classify_api_answer(_answer(body))  # type: ignore[no-any-return]
        return plugin._error_of(body, _answer(body), "call", context)  # type: ignore[no-any-return]
    if code.startswith("api:"):
        body = {"data": {}, "error": {"code": code[4:], "message": message, "log_id": "l1"}}
        return plugin.classify_api_answer(_answer(body, 400))  # type: ignore[no-any-return]
    body = {"error": code, "error_description": message, "log_id": "l1"}
    return plugin._token_error(body, _answer(body, 400), "call", refresh=context == "refresh")  # type: ignore[no-any-return]


def _rows() -> Iterator[Any]:
    for platform, rows in TABLE.items():
        for code, context, message, expected in rows:
            yield pytest.param(platform, code, context, message, expected, id=f"{platform}-{code}-{context}")


@pytest.mark.parametrize(("platform", "code", "context", "message", "expected"), list(_rows()))
def test_every_documented_code_is_classified_as_the_table_says(
    platform: str, code: str, context: str, message: str, expected: type[RefresherError]
) -> None:
    error = classify(platform, code, context, message)
    assert type(error) is expected, f"{platform} {code} ({context}): {error!r}"
    assert error.code == code.removeprefix("api:")
    if expected is TransientError:
        assert not re.search(r"unknown|unrecognised", error.message), error.message  # not the fallback


@pytest.mark.parametrize("platform", sorted(TABLE))
def test_an_unlisted_code_is_transient_and_keeps_its_raw_code(platform: str) -> None:
    code = UNLISTED[platform]
    assert code not in {c.removeprefix("api:") for c, *_ in TABLE[platform]}
    for context in ("refresh", "api"):
        shown = f"api:{code}" if platform == "tiktok" and context == "api" else code
        error = classify(platform, shown, context, "A new kind of failure.")
        assert type(error) is TransientError and error.code == code
        assert code in error.info().message  # what the alarm says once the retry budget is spent


# ------------------------------------------------------------------------------ the sandbox's answers


def _literal(node: ast.expr, variables: dict[str, tuple[str, ...]]) -> list[str] | None:
    """The code(s) an argument spells out: a constant, or an f-string over a known variable."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int) and not isinstance(node.value, bool):
        return [str(node.value)]
    if isinstance(node, ast.JoinedStr):
        names = {v.value.id for v in node.values if isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name)}
        assert len(names) == 1 and next(iter(names)) in variables, f"a code built from {ast.unparse(node)}"
        name = next(iter(names))
        out = []
        for value in variables[name]:
            parts = [
                value if isinstance(part, ast.FormattedValue) else str(part.value)  # type: ignore[attr-defined]
                for part in node.values
            ]
            out.append("".join(parts))
        return out
    return None  # a variable (the unlisted code, a caught error's code): not a new code


# Where each sandbox module spells its error codes: the callee, the argument that is the code, and the
# prefix its vocabulary has in TABLE.
EMITTERS: dict[str, tuple[dict[str, tuple[int, str]], tuple[str, ...]]] = {
    "shopee": ({"ShopeeError": (0, ""), "error_answer": (0, "")}, ("shopee.py", "shopee_api.py", "shopee_wire.py")),
    "tiktok_shop": ({"envelope": (0, "")}, ("tiktok_shop.py",)),
    "lazada": ({"LazadaError": (0, ""), "error_answer": (0, "")}, ("lazada.py",)),
    "tiktok": ({"oauth_error": (0, ""), "api_answer": (1, "api:")}, ("tiktok.py",)),
}
# The f-string variables the Shopee sandbox builds codes from: the kinds of account it serves.
VARIABLES: dict[str, tuple[str, ...]] = {"kind": ("shop", "merchant", "supplier")}


def sandbox_codes(platform: str) -> set[str]:
    callees, files = EMITTERS[platform]
    codes: set[str] = set()
    for name in files:
        for node in ast.walk(ast.parse((SANDBOX / name).read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            callee = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if callee not in callees:
                continue
            position, prefix = callees[callee]
            arg = node.args[position] if len(node.args) > position else None
            if arg is None:
                arg = next((k.value for k in node.keywords if k.arg == "code"), None)
            found = _literal(arg, VARIABLES) if arg is not None else None
            codes.update(prefix + c for c in found or () if c not in ("0", "ok"))
    return codes


@pytest.mark.parametrize("platform", sorted(TABLE))
def test_every_code_the_sandbox_answers_with_is_in_the_table(platform: str) -> None:
    emitted = sandbox_codes(platform)
    assert len(emitted) >= 5  # the scan sees the sandbox's codes at all
    unlisted = emitted - {code for code, *_ in TABLE[platform]}
    assert not unlisted, f"the {platform} sandbox answers with codes no table lists: {sorted(unlisted)}"
