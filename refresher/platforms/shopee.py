"""Shopee Open Platform v2 (platforms.md §1).

Every call is signed with HMAC-SHA256 over ``partner_id + path + timestamp`` (public calls, including the
token endpoints) or that plus ``access_token + shop_id|merchant_id`` (shop and merchant calls). Access
tokens live 4 hours (``expire_in`` is relative seconds); refresh tokens are single-use and last 30 days.

A main-account authorization yields one token pair shared by every shop and merchant it lists. Refresher
stores one account per shop and per merchant, each starting with that shared pair; each account's first
refresh uses its own ``shop_id`` / ``merchant_id`` and from then on every account has its own chain
(platforms.md §1.3). The sandbox reproduces exactly that.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from refresher.domain import (
    AccessTokenInvalid,
    AuthorizationDenied,
    ClockSkew,
    ConfigError,
    Grant,
    Identity,
    MalformedAnswer,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TokenSet,
    TransientError,
)
from refresher.platforms.base import PKCE, ApiCall, Platform, SignedCall
from refresher.platforms.signing import shopee_base_string, shopee_sign
from refresher.platforms.transport import Answer, retry_after_seconds, safe_excerpt
from refresher.platforms.values import as_token

AUTH_PARTNER_PATH = "/api/v2/shop/auth_partner"
TOKEN_PATH = "/api/v2/auth/token/get"
REFRESH_PATH = "/api/v2/auth/access_token/get"
RESEND_CODE_PATH = "/api/v2/public/get_token_by_resend_code"
SHOPS_BY_PARTNER_PATH = "/api/v2/public/get_shops_by_partner"
MERCHANTS_BY_PARTNER_PATH = "/api/v2/public/get_merchants_by_partner"
# Public APIs (signed partner_id + path + timestamp): the documented public type of platforms.md §1.5.
PUBLIC_PREFIX = "/api/v2/public/"
PUBLIC_PATHS = frozenset({AUTH_PARTNER_PATH, "/api/v2/shop/cancel_auth_partner", TOKEN_PATH, REFRESH_PATH})

# The refresh token's own lifetime; each refresh returns a new one that lives this long again.
REFRESH_TOKEN_LIFETIME = dt.timedelta(days=30)

# Parameters refresher puts on every call itself: a caller's copies are dropped, never signed twice.
_AUTH_PARAMS = frozenset({"partner_id", "timestamp", "sign", "access_token", "shop_id", "merchant_id"})

_TRANSIENT_CODES = frozenset(
    {"error_server", "error_network", "error_data", "error_inner", "error_system_busy", "error_busy"}
)
_ACCESS_TOKEN_CODES = frozenset({"invalid_acceess_token", "invalid_access_token"})  # sic: both seen live
_REFRESH_TOKEN_CODES = frozenset({"refresh_token_expired", "error_shop_refresh_token", "error_merchant_refresh_token"})
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


class ShopeeCredentials(BaseModel):
    """``partner_id`` (a number) and ``partner_key`` of one Shopee app."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partner_id: int = Field(gt=0)
    partner_key: SecretStr


class ShopeePlatform(Platform):
    """Shopee Open Platform v2: signed auth_partner consent, single-use refresh tokens per shop/merchant."""

    name: ClassVar[str] = "shopee"
    credentials_model: ClassVar[type[BaseModel]] = ShopeeCredentials
    default_hosts: ClassVar[Mapping[str, str]] = {"api": "https://partner.shopeemobile.com"}
    # Access tokens live 4 h: a sweep every 10 minutes refreshing within the last hour leaves room for
    # several retried sweeps before the token expires.
    default_schedule: ClassVar[str] = "*/10 * * * *"
    default_refresh_before: ClassVar[dt.timedelta] = dt.timedelta(hours=1)
    code_lifetime: ClassVar[dt.timedelta] = dt.timedelta(minutes=10)
    supports_pkce: ClassVar[bool] = False
    lost_token_hint: ClassVar[str] = " or recover it with a resend code (refresher shopee-resend-code APP ACCOUNT)"

    credentials: ShopeeCredentials

    @property
    def partner_id(self) -> int:
        return self.credentials.partner_id

    def _sign(
        self, path: str, timestamp: int, access_token: str | None = None, identity: Identity | None = None
    ) -> str:
        shop_id, merchant_id = _ids_of(identity) if access_token is not None else (None, None)
        return shopee_sign(
            self.credentials.partner_key.get_secret_value(),
            self.partner_id,
            path,
            timestamp,
            access_token,
            shop_id,
            merchant_id,
        )

    def _public_query(self, path: str, timestamp: int | None = None) -> list[tuple[str, str]]:
        ts = self.timestamp() if timestamp is None else timestamp
        return [("partner_id", str(self.partner_id)), ("timestamp", str(ts)), ("sign", self._sign(path, ts))]

    # -- consent ---------------------------------------------------------------------------------

    def authorize_url(self, state: str, redirect_uri: str | None = None, pkce: PKCE | None = None) -> str:
        """The signed ``auth_partner`` link (valid 5 minutes).

        Shopee has no ``state`` parameter: the state rides in the redirect URL's own query, which
        Shopee keeps when it appends ``code`` and ``shop_id``/``main_account_id``.
        """
        target = redirect_uri or self.app.redirect_uri
        if not target:
            raise ConfigError(f"app {self.app.name or '?'}: redirect_uri is not configured", platform=self.name)
        redirect = f"{target}{'&' if '?' in target else '?'}{urlencode({'state': state})}"
        query = [*self._public_query(AUTH_PARTNER_PATH), ("redirect", redirect)]
        return f"{self.host('api')}{AUTH_PARTNER_PATH}?{urlencode(query)}"

    def callback_error(self, callback_params: Mapping[str, str]) -> RefresherError | None:
        denied = super().callback_error(callback_params)
        if denied is not None:
            return denied
        # Shopee documents no denial shape: a callback without a code means nothing was granted.
        if not callback_params.get("code"):
            return AuthorizationDenied("callback carries no code: the seller did not authorize", platform=self.name)
        return None

    # -- tokens ----------------------------------------------------------------------------------

    async def exchange_code(
        self, callback_params: Mapping[str, str], pkce: PKCE | None = None, redirect_uri: str | None = None
    ) -> list[Grant]:
        """GetAccessToken: one grant for a shop login, one per shop and per merchant for a main account."""
        denied = self.callback_error(callback_params)
        if denied is not None:
            raise denied
        body: dict[str, Any] = {"code": callback_params["code"], "partner_id": self.partner_id}
        main_account_id: int | None = None
        if callback_params.get("shop_id"):
            body["shop_id"] = _callback_int(callback_params, "shop_id")
        elif callback_params.get("main_account_id"):
            main_account_id = body["main_account_id"] = _callback_int(callback_params, "main_account_id")
        else:
            raise MalformedAnswer("callback carries neither shop_id nor main_account_id", platform=self.name)
        data = await self._post(TOKEN_PATH, body, "token exchange", "token")
        tokens = self.token_set(data, self._strict_token_set)
        if main_account_id is None:
            shop_id = str(body["shop_id"])
            return [Grant(Identity(f"shop:{shop_id}", "shop", shop_id), tokens)]
        extra = {"main_account_id": str(main_account_id)}
        grants = [
            Grant(Identity(f"shop:{i}", "shop", i, extra=extra), tokens) for i in self._id_list(data, "shop_id_list")
        ]
        grants += [
            Grant(Identity(f"merchant:{i}", "merchant", i, extra=extra), tokens)
            for i in self._id_list(data, "merchant_id_list")
        ]
        if not grants:
            raise MalformedAnswer(
                "main-account grant lists no shop and no merchant",
                platform=self.name,
                request_id=_request_id(data),
            )
        return grants

    async def refresh(self, identity: Identity, refresh_token: str) -> TokenSet:
        """RefreshAccessToken for one shop or merchant (the old refresh token is spent on success)."""
        body: dict[str, Any] = {"refresh_token": refresh_token, "partner_id": self.partner_id}
        shop_id, merchant_id = _ids_of(identity)
        if shop_id is not None:
            body["shop_id"] = int(shop_id)
        elif merchant_id is not None:
            body["merchant_id"] = int(merchant_id)
        data = await self._post(REFRESH_PATH, body, "token refresh", "refresh")
        return self.token_set(data, self._strict_token_set)

    async def resend_code_recovery(self, identity: Identity, resend_code: str) -> TokenSet:
        """Recover a grant whose refresh token was lost, with a "resend code" from the Open Platform
        console (get_token_by_resend_code: valid 10 minutes, once, live environment only).

        The code comes from a person (the seller or the console's authorization page), so this is an
        operator action, not something a sweep can do on its own. ``identity`` names the account the
        recovered tokens belong to; the answer is shaped like GetAccessToken.
        """
        data = await self._post(RESEND_CODE_PATH, {"resend_code": resend_code}, "resend-code recovery", "token")
        return self.token_set(data, self._strict_token_set)

    async def _post(self, path: str, body: dict[str, Any], what: str, context: str) -> dict[str, Any]:
        answer = await self.transport.send(
            "POST",
            f"{self.host('api')}{path}",
            params=self._public_query(path),
            content=json.dumps(body, separators=(",", ":")).encode(),
            headers={"content-type": "application/json"},
            what=what,
        )
        return self._checked(answer, what, context)

    def _checked(self, answer: Answer, what: str, context: str) -> dict[str, Any]:
        """The answer's JSON object when it is a success, else the classified error raised."""
        return self.transport.checked_json(
            answer, what, lambda data: self._error_of(data, answer, what, context), _request_id
        )

    def _error_of(self, data: Mapping[str, Any], answer: Answer, what: str, context: str) -> RefresherError | None:
        """Classify Shopee's ``{error, message, request_id}`` envelope (``error == ""`` is success)."""
        code = data.get("error")
        if code is None or code == "":
            return None
        request_id = _request_id(data)
        if not isinstance(code, str):
            return MalformedAnswer(
                f"{what}: error field has the wrong type ({type(code).__name__})",
                platform=self.name,
                request_id=request_id,
                http_status=answer.status,
            )
        raw_message = data.get("message")
        message = safe_excerpt(raw_message.encode(), 100) if isinstance(raw_message, str) else ""
        text = f"{what} refused by Shopee ({message or 'no message'})"
        kwargs: dict[str, Any] = {
            "code": code,
            "request_id": request_id,
            "platform": self.name,
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
            f"{what}: unknown Shopee error ({message or 'no message'})",
            retry_after=retry_after_seconds(answer.headers),
            **kwargs,
        )

    def _strict_token_set(self, data: Mapping[str, Any]) -> TokenSet:
        request_id = _request_id(data)
        try:
            access = as_token(data, "access_token", self.name)
            refresh = as_token(data, "refresh_token", self.name)
            expire_in = _seconds(data, "expire_in", self.name)
        except MalformedAnswer as exc:
            exc.request_id = request_id
            raise
        now = self.now()
        raw = {k: v for k, v in data.items() if k not in ("access_token", "refresh_token")}
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            access_expires_at=now + dt.timedelta(seconds=expire_in),
            refresh_expires_at=now + REFRESH_TOKEN_LIFETIME,
            raw=raw,
        )

    def _id_list(self, data: Mapping[str, Any], key: str) -> list[str]:
        value = data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise MalformedAnswer(f"{key} is not a list of numbers", platform=self.name, request_id=_request_id(data))
        return [str(i) for i in value]

    # -- business API ----------------------------------------------------------------------------

    def sign_call(self, call: ApiCall, access_token: str | None = None, identity: Identity | None = None) -> SignedCall:
        """Add partner_id, timestamp, access_token, shop_id|merchant_id and the sign to the query."""
        ts = call.timestamp if call.timestamp is not None else self.timestamp()
        shop_id, merchant_id = _ids_of(identity) if access_token is not None else (None, None)
        sign = self._sign(call.path, ts, access_token, identity)
        query = [(k, v) for k, v in call.query if k not in _AUTH_PARAMS]
        query += [("partner_id", str(self.partner_id)), ("timestamp", str(ts))]
        if access_token is not None:
            query.append(("access_token", access_token))
            if shop_id is not None:
                query.append(("shop_id", shop_id))
            elif merchant_id is not None:
                query.append(("merchant_id", merchant_id))
        query.append(("sign", sign))
        headers = dict(call.headers)
        if call.body is not None:
            headers.setdefault("content-type", call.content_type or "application/json")
        base = self.host("api")
        shown = shopee_base_string(
            self.partner_id, call.path, ts, None if access_token is None else "<access_token>", shop_id, merchant_id
        )
        return SignedCall(
            method=call.method.upper(),
            url=f"{base}{call.path}?{urlencode(query)}",
            headers=headers,
            body=call.body,
            sign=sign,
            base_url=base,
            base_string=shown,
        )

    def identity_from_query(self, query: Sequence[tuple[str, str]]) -> Identity | None:
        values = dict(query)
        if values.get("shop_id"):
            return Identity(f"shop:{values['shop_id']}", "shop", values["shop_id"])
        if values.get("merchant_id"):
            return Identity(f"merchant:{values['merchant_id']}", "merchant", values["merchant_id"])
        return None

    def sign_warnings(self, call: ApiCall, access_token: str | None, identity: Identity | None) -> list[str]:
        if access_token is not None or _is_public_path(call.path):
            return []
        named = f" for {identity.kind} {identity.platform_id}" if identity is not None else ""
        return [
            f"{call.path} is a shop/merchant-level API but no access_token was given{named}: it was signed as a "
            "public call (partner_id + path + timestamp), which Shopee refuses; name an ACCOUNT or add "
            "access_token and shop_id (or merchant_id) to the URL"
        ]

    def classify_api_answer(self, answer: Answer) -> RefresherError | None:
        try:
            self._checked(answer, "API call", "api")
        except RefresherError as exc:
            return exc
        return None


# ------------------------------------------------------------------------------------------- helpers


def _is_public_path(path: str) -> bool:
    """Public APIs are signed without a token: the auth and token endpoints and everything under public/."""
    return path.startswith(PUBLIC_PREFIX) or path in PUBLIC_PATHS


def _ids_of(identity: Identity | None) -> tuple[str | None, str | None]:
    """(shop_id, merchant_id) of an account; a merchant account signs with its merchant_id."""
    if identity is None:
        return None, None
    if identity.kind == "merchant":
        return None, identity.platform_id
    return identity.platform_id, None


def _request_id(data: Mapping[str, Any]) -> str | None:
    value = data.get("request_id")
    return value if isinstance(value, str) and value else None


def _callback_int(params: Mapping[str, str], key: str) -> int:
    value = params.get(key, "")
    if not value.isdigit():
        raise MalformedAnswer(f"callback parameter {key} is not a number", platform="shopee")
    return int(value)


def _seconds(data: Mapping[str, Any], key: str, platform: str) -> int:
    """Shopee sends ``expire_in`` as a JSON number of seconds; anything else is a broken answer."""
    value = data.get(key)
    if value is None:
        raise MalformedAnswer(f"answer lacks {key}", platform=platform)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedAnswer(f"{key} has the wrong type ({type(value).__name__})", platform=platform)
    if not 0 < value <= 10**8:
        raise MalformedAnswer(f"{key} is out of range", platform=platform)
    return int(value)
