"""Shopee Open Platform v2 (docs/platforms.md).

Every call is signed with HMAC-SHA256 over ``partner_id + path + timestamp`` (public calls, including the
token endpoints) or that plus ``access_token + shop_id|merchant_id`` (shop and merchant calls). Access
tokens live 4 hours (``expire_in`` is relative seconds); refresh tokens are single-use and last 30 days.

A main-account authorization yields one token pair shared by every shop and merchant it lists. Refresher
stores one account per shop and per merchant, each starting with that shared pair; each account's first
refresh uses its own ``shop_id`` / ``merchant_id`` and from then on every account has its own chain
(docs/platforms.md). The sandbox reproduces exactly that.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import urlencode

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from refresher.domain import (
    AuthorizationDenied,
    ConfigError,
    Grant,
    Identity,
    MalformedAnswer,
    RefresherError,
    TokenSet,
    from_epoch,
)
from refresher.platforms.base import PKCE, ApiCall, Platform, SignedCall
from refresher.platforms.shopee_authorization import AUTHORIZATION_CHECK_EVERY, AuthorizationEnds
from refresher.platforms.shopee_errors import classify, request_id_of
from refresher.platforms.shopee_shop_info import with_shop_info, with_shop_names
from refresher.platforms.signing import shopee_base_string, shopee_sign
from refresher.platforms.transport import Answer
from refresher.platforms.values import as_token, json_seconds

log = structlog.get_logger(__name__)

AUTH_PARTNER_PATH = "/api/v2/shop/auth_partner"
TOKEN_PATH = "/api/v2/auth/token/get"
REFRESH_PATH = "/api/v2/auth/access_token/get"
RESEND_CODE_PATH = "/api/v2/public/get_token_by_resend_code"
# Public APIs (signed partner_id + path + timestamp): the documented public type of docs/platforms.md.
PUBLIC_PREFIX = "/api/v2/public/"
PUBLIC_PATHS = frozenset({AUTH_PARTNER_PATH, "/api/v2/shop/cancel_auth_partner", TOKEN_PATH, REFRESH_PATH})

# The refresh token's own lifetime; each refresh returns a new one that lives this long again.
REFRESH_TOKEN_LIFETIME = dt.timedelta(days=30)

# Parameters refresher puts on every call itself: a caller's copies are dropped, never signed twice.
_AUTH_PARAMS = frozenset({"partner_id", "timestamp", "sign", "access_token", "shop_id", "merchant_id", "supplier_id"})


class ShopeeCredentials(BaseModel):
    """``partner_id`` (a number) and ``partner_key`` of one Shopee app."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partner_id: int = Field(gt=0)
    partner_key: SecretStr


class ShopeePlatform(Platform):
    """Shopee Open Platform v2: signed auth_partner consent, single-use refresh tokens per shop/merchant."""

    name: ClassVar[str] = "shopee"
    display_name = "Shopee"
    credentials_model: ClassVar[type[BaseModel]] = ShopeeCredentials
    default_hosts: ClassVar[Mapping[str, str]] = {"api": "https://partner.shopeemobile.com"}
    # Access tokens live 4 h: a sweep every 10 minutes refreshing within the last hour leaves room for
    # several retried sweeps before the token expires.
    default_schedule: ClassVar[str] = "*/10 * * * *"
    default_refresh_before: ClassVar[dt.timedelta] = dt.timedelta(hours=1)
    access_lifetime: ClassVar[dt.timedelta | None] = dt.timedelta(hours=4)
    code_lifetime: ClassVar[dt.timedelta] = dt.timedelta(minutes=10)
    supports_pkce: ClassVar[bool] = False
    lost_token_hint: ClassVar[str] = (
        " or recover it with a resend code from the Open Platform console (refresher recover APP ACCOUNT)"
    )
    supports_recovery_code: ClassVar[bool] = True

    credentials: ShopeeCredentials

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The partner's authorized shops / merchants with their authorization ends, read once for all
        # accounts of the app.
        self._authorizations = AuthorizationEnds(self._list_page, self.now)

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
            return await self._with_authorization_ends([Grant(Identity(f"shop:{shop_id}", "shop", shop_id), tokens)])
        extra = {"main_account_id": str(main_account_id)}
        grants = [
            Grant(Identity(f"shop:{i}", "shop", i, extra=extra), tokens) for i in self._id_list(data, "shop_id_list")
        ]
        grants += [
            Grant(Identity(f"merchant:{i}", "merchant", i, extra=extra), tokens)
            for i in self._id_list(data, "merchant_id_list")
        ]
        # Supplier accounts (supplier_id_list, documented since 2024-11): refreshed with supplier_id, like
        # merchants with merchant_id (UNCERTAIN: Shopee documents no supplier refresh example).
        grants += [
            Grant(Identity(f"supplier:{i}", "supplier", i, extra=extra), tokens)
            for i in self._id_list(data, "supplier_id_list")
        ]
        if not grants:
            raise MalformedAnswer(
                "main-account grant lists no shop, merchant or supplier",
                platform=self.name,
                request_id=request_id_of(data),
            )
        return await self._with_authorization_ends(grants)

    async def _with_authorization_ends(self, grants: list[Grant]) -> list[Grant]:
        """The grants with the authorization's end read at once (one listing per kind for all of them), so
        "re-authorize soon" can fire early, and shops with their names (shopee_shop_info)."""
        out = []
        ends: dict[str, dict[str, int] | None] = {}
        for kind in {g.identity.kind for g in grants}:
            ends[kind] = await self._authorization_ends(
                kind, {g.identity.platform_id for g in grants if g.identity.kind == kind}
            )
        for grant in grants:
            known = ends.get(grant.identity.kind)
            identity = grant.identity if known is None else self._with_end(grant.identity, known)
            out.append(Grant(identity, self._capped(grant.tokens, identity)))
        return await with_shop_names(self, out)  # and each shop's name and region, when Shopee tells

    async def refresh(self, identity: Identity, refresh_token: str) -> TokenSet:
        """RefreshAccessToken for one shop or merchant (the old refresh token is spent on success)."""
        body: dict[str, Any] = {"refresh_token": refresh_token, "partner_id": self.partner_id}
        param = _id_param(identity)
        if param is not None:
            body[param[0]] = int(param[1])
        data = await self._post(REFRESH_PATH, body, "token refresh", "refresh")
        return self._capped(self.token_set(data, self._strict_token_set), identity)

    def _capped(self, tokens: TokenSet, identity: Identity) -> TokenSet:
        """A refresh token lives 30 days, but never past the authorization period the seller chose
        (``expire_time``): the chain ends there, so that is when "re-authorize soon" must point."""
        end = identity.extra.get("authorization_expires_at")
        if not isinstance(end, int) or tokens.refresh_expires_at is None:
            return tokens
        return replace(tokens, refresh_expires_at=min(tokens.refresh_expires_at, from_epoch(end)))

    async def updated_identity(self, identity: Identity, tokens: TokenSet) -> Identity | None:
        """The authorization's end and a shop's name, read again once a day (GetShopsByPartner /
        GetMerchantsByPartner, get_shop_info)."""
        checked = identity.extra.get("authorization_checked_at")
        if isinstance(checked, int) and self.now() - from_epoch(checked) < AUTHORIZATION_CHECK_EVERY:
            return None
        found = await self._authorization_checked(identity)
        named = await with_shop_info(self, found or identity, tokens.access_token)
        return named if found is not None or named is not identity else None

    async def _authorization_checked(self, identity: Identity) -> Identity | None:
        """``identity`` with ``authorization_expires_at`` from the partner's authorized list, or ``None``
        when it cannot be read (suppliers have no list; a failure is logged and retried the next day)."""
        ends = await self._authorization_ends(identity.kind, {identity.platform_id})
        return None if ends is None else self._with_end(identity, ends)

    def _with_end(self, identity: Identity, ends: Mapping[str, int]) -> Identity:
        extra = {**identity.extra, "authorization_checked_at": self.timestamp()}
        if identity.platform_id in ends:
            extra["authorization_expires_at"] = ends[identity.platform_id]
        return replace(identity, extra=extra)

    async def _authorization_ends(self, kind: str, wanted: set[str]) -> dict[str, int] | None:
        try:
            return await self._authorizations.ends(kind, wanted)
        except RefresherError as exc:
            log.warning("shopee.authorization_unread", app=self.app.name, kind=kind, error=str(exc))
            return None

    async def _list_page(self, path: str, page: int) -> dict[str, Any]:
        query = [*self._public_query(path), ("page_size", "100"), ("page_no", str(page))]
        answer = await self.transport.send("GET", f"{self.host('api')}{path}", params=query, what="authorized list")
        return self._checked(answer, "authorized list", "api")

    async def recover_with_code(self, identity: Identity, code: str) -> TokenSet:
        """Recover a grant whose refresh token was lost, with a "resend code" from the Open Platform
        console (get_token_by_resend_code: valid 10 minutes, once, live environment only).

        The code comes from a person (the seller or the console's authorization page), so this is an
        operator action (``refresher recover APP ACCOUNT``), not something a sweep can do on its own.
        ``identity`` names the account the recovered tokens belong to; the answer is shaped like
        GetAccessToken.
        """
        data = await self._post(RESEND_CODE_PATH, {"resend_code": code}, "resend-code recovery", "token")
        return self._capped(self.token_set(data, self._strict_token_set), identity)

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
            answer, what, lambda data: classify(data, answer, what, context), request_id_of
        )

    def _strict_token_set(self, data: Mapping[str, Any]) -> TokenSet:
        request_id = request_id_of(data)
        try:
            access = as_token(data, "access_token", self.name)
            refresh = as_token(data, "refresh_token", self.name)
            expire_in = json_seconds(data, "expire_in", self.name)
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
            raise MalformedAnswer(f"{key} is not a list of numbers", platform=self.name, request_id=request_id_of(data))
        return [str(i) for i in value]

    # -- business API ----------------------------------------------------------------------------

    def sign_call(self, call: ApiCall, access_token: str | None = None, identity: Identity | None = None) -> SignedCall:
        """Add partner_id, timestamp, access_token, shop_id|merchant_id and the sign to the query."""
        ts = call.timestamp if call.timestamp is not None else self.timestamp()
        shop_id, merchant_id = _ids_of(identity) if access_token is not None else (None, None)
        sign = self._sign(call.path, ts, access_token, identity)
        query = [(k, v) for k, v in call.query if k not in _AUTH_PARAMS]
        query += [("partner_id", str(self.partner_id)), ("timestamp", str(ts))]
        param = _id_param(identity)
        if access_token is not None:
            query.append(("access_token", access_token))
            if param is not None:
                query.append(param)
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
        for kind in ("shop", "merchant", "supplier"):
            if values.get(f"{kind}_id"):
                return Identity(f"{kind}:{values[f'{kind}_id']}", kind, values[f"{kind}_id"])
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
    """(shop_id, merchant_id) for the signature: a merchant (and a supplier) account signs with its own
    id in the merchant place, a shop with its shop_id."""
    if identity is None:
        return None, None
    if identity.kind in ("merchant", "supplier"):
        return None, identity.platform_id
    return identity.platform_id, None


def _id_param(identity: Identity | None) -> tuple[str, str] | None:
    """The id parameter an account's calls and refreshes carry: shop_id, merchant_id or supplier_id."""
    if identity is None:
        return None
    kind = identity.kind if identity.kind in ("merchant", "supplier") else "shop"
    return f"{kind}_id", identity.platform_id


def _callback_int(params: Mapping[str, str], key: str) -> int:
    value = params.get(key, "")
    if not value.isdigit():
        raise MalformedAnswer(f"callback parameter {key} is not a number", platform="shopee")
    return int(value)
