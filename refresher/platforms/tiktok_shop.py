"""TikTok Shop Partner API, Open API 202309+ (docs/platforms.md).

The token calls are *unsigned* GETs on ``auth.tiktok-shops.com`` that carry the app secret in the query,
so no URL of theirs ever reaches a message. Both expiries in the token answer are **absolute** Unix
times. One token chain belongs to one seller (``open_id``); the seller's shops (with the ``cipher``
that shop-scoped calls need) come from Get Authorized Shops, called right after the exchange.

Business calls are signed ``hex(HMAC(secret, secret + path + sorted(k+v) + body + secret))`` with the
access token in the ``x-tts-access-token`` header. The official samples disagree on how a literal ``{}``
body is signed (vector T11), so refresher never sends one: an empty body is dropped.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import urlencode

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from refresher.domain import (
    ConfigError,
    Grant,
    Identity,
    MalformedAnswer,
    RefresherError,
    TokenSet,
    TransientError,
    from_epoch,
)
from refresher.platforms.base import PKCE, ApiCall, Platform, SignedCall
from refresher.platforms.signing import tiktok_shop_base_string, tiktok_shop_sign
from refresher.platforms.tiktok_shop_errors import CIPHER_CODES, classify, request_id_of
from refresher.platforms.transport import (
    Answer,
    http_status_error,
    looks_like_api_answer,
    parse_json_object,
)
from refresher.platforms.values import as_seconds, as_token

log = structlog.get_logger(__name__)

AUTHORIZE_PATH = "/open/authorize"
LEGACY_AUTHORIZE_PATH = "/oauth/authorize"
TOKEN_GET_PATH = "/api/v2/token/get"
TOKEN_REFRESH_PATH = "/api/v2/token/refresh"
SHOPS_PATH = "/authorization/202309/shops"

# 202309+ APIs are versioned (/order/202309/...) and take shop_cipher, never shop_id: a caller's
# shop_id there names the shop whose cipher refresher fills in.
_VERSIONED_PATH = re.compile(r"^/[a-z_]+/\d{6}/")

# Values below this are no plausible "absolute Unix time" (it is 2001-09-09): see _absolute.
_EPOCH_FLOOR = 1_000_000_000


class TikTokShopCredentials(BaseModel):
    """The app's keys from Partner Center. ``service_id`` selects the current consent URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_key: str = Field(min_length=1)
    app_secret: SecretStr
    service_id: str | None = None


class TikTokShopPlatform(Platform):
    name = "tiktok_shop"
    display_name = "TikTok Shop"
    credentials_model = TikTokShopCredentials
    default_hosts: ClassVar[Mapping[str, str]] = {
        "consent": "https://services.tiktokshop.com",
        "auth": "https://auth.tiktok-shops.com",
        "api": "https://open-api.tiktokglobalshop.com",
    }
    # Access tokens live 7 days; refreshing a day ahead leaves room for a long outage.
    default_schedule = "17 * * * *"
    default_refresh_before = dt.timedelta(days=1)
    access_lifetime = dt.timedelta(days=7)
    code_lifetime = dt.timedelta(minutes=30)
    supports_pkce = False

    credentials: TikTokShopCredentials

    # -- credentials -------------------------------------------------------------------------------

    @property
    def app_key(self) -> str:
        return self.credentials.app_key

    @property
    def _secret(self) -> str:
        return self.credentials.app_secret.get_secret_value()

    # -- consent -----------------------------------------------------------------------------------

    def authorize_url(self, state: str, redirect_uri: str | None = None, pkce: PKCE | None = None) -> str:
        """The consent link. The redirect URI is registered in Partner Center, never sent."""
        service_id = self.credentials.service_id
        if service_id:
            return f"{self.host('consent')}{AUTHORIZE_PATH}?{urlencode({'service_id': service_id, 'state': state})}"
        # Apps without a service id use the legacy page, which takes the app key (docs/platforms.md).
        return f"{self.host('auth')}{LEGACY_AUTHORIZE_PATH}?{urlencode({'app_key': self.app_key, 'state': state})}"

    # -- tokens ------------------------------------------------------------------------------------

    async def exchange_code(
        self, callback_params: Mapping[str, str], pkce: PKCE | None = None, redirect_uri: str | None = None
    ) -> list[Grant]:
        # A denial arrives as error=auth_denied (or access_denied) with code=null (docs/platforms.md).
        denial = self.callback_error(callback_params)
        if denial is not None:
            raise denial
        if callback_params.get("code") in (None, "", "null"):
            raise MalformedAnswer("callback without an authorization code", platform=self.name)
        params = {
            "app_key": self.app_key,
            "app_secret": self._secret,
            "auth_code": callback_params["code"],
            "grant_type": "authorized_code",
        }
        data, request_id = await self._token_call(TOKEN_GET_PATH, params, "code exchange", refresh=False)
        tokens = self.token_set(data, lambda d: self._strict_token_set(d, request_id))
        open_id = _text(data, "open_id", self.name, request_id)
        extra: dict[str, Any] = {"user_type": data.get("user_type"), "shops": []}
        extra.update(await self._shops_extra(tokens.access_token, extra))
        identity = Identity(
            key=open_id,
            kind="seller",
            platform_id=open_id,
            name=_optional_text(data, "seller_name"),
            region=_optional_text(data, "seller_base_region"),
            extra=extra,
        )
        return [Grant(identity, tokens)]

    async def refresh(self, identity: Identity, refresh_token: str) -> TokenSet:
        params = {
            "app_key": self.app_key,
            "app_secret": self._secret,
            "refresh_token": refresh_token,
            # The docs say refresh_token; the official Node SDK sends authorized_code (a quirk).
            "grant_type": "refresh_token",
        }
        data, request_id = await self._token_call(TOKEN_REFRESH_PATH, params, "refresh", refresh=True)
        return self.token_set(data, lambda d: self._strict_token_set(d, request_id))

    async def _token_call(
        self, path: str, params: Mapping[str, str], what: str, *, refresh: bool
    ) -> tuple[dict[str, Any], str | None]:
        # GET only: a POST with a JSON body answers 404 (docs/platforms.md).
        answer = await self.transport.send("GET", f"{self.host('auth')}{path}", params=params, what=what)
        envelope = self.transport.envelope(answer, what)
        request_id = request_id_of(envelope)
        error = self._judge(envelope, answer, what, token_call=True, refresh=refresh)
        if error is not None:
            raise error
        data = envelope.get("data")
        if not isinstance(data, dict):
            raise MalformedAnswer(f"{what}: answer lacks data", platform=self.name, request_id=request_id)
        return data, request_id

    def _strict_token_set(self, data: Mapping[str, Any], request_id: str | None) -> TokenSet:
        access = as_token(data, "access_token", self.name, request_id)
        refresh = as_token(data, "refresh_token", self.name, request_id)
        access_at = self._absolute(data, "access_token_expire_in", request_id, required=True)
        if access_at is None:
            # 0 means "no end" only for refresh tokens; an access token always expires. (An assert here
            # escaped the taxonomy and broke the whole sweep's gather.)
            raise MalformedAnswer("access_token_expire_in is 0", platform=self.name, request_id=request_id)
        refresh_at = self._absolute(data, "refresh_token_expire_in", request_id, required=False)
        scopes = data.get("granted_scopes") or []
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise MalformedAnswer("granted_scopes is not a list of names", platform=self.name, request_id=request_id)
        raw = {k: v for k, v in data.items() if k not in ("access_token", "refresh_token")}
        if request_id:
            raw["request_id"] = request_id
        return TokenSet(access, refresh, access_at, refresh_at, tuple(scopes), raw)

    def _absolute(
        self, data: Mapping[str, Any], key: str, request_id: str | None, *, required: bool
    ) -> dt.datetime | None:
        try:
            value = as_seconds(data, key, self.name, required=required)
        except MalformedAnswer as exc:
            exc.request_id = request_id
            raise
        if value is None or value == 0:
            return None  # creator authorizations have no end
        if value < _EPOCH_FLOOR:
            # The field is documented as an absolute time; a small number can only be a duration. Reading
            # it as 1970 would refresh in a loop, rejecting it would lose a token the platform already rotated.
            return self.now() + dt.timedelta(seconds=value)
        return from_epoch(value)

    # -- shops -------------------------------------------------------------------------------------

    async def updated_identity(self, identity: Identity, tokens: TokenSet) -> Identity | None:
        """The seller's shops read again with the new token: new shops and changed ciphers are picked up
        with every refresh, and a listing that failed at the exchange is retried."""
        extra = {k: v for k, v in identity.extra.items() if k != "shops_error"}
        extra.update(await self._shops_extra(tokens.access_token, identity.extra))
        if extra == identity.extra:
            return None
        return replace(identity, extra=extra)

    async def _shops_extra(self, access_token: str, previous: Mapping[str, Any]) -> dict[str, Any]:
        """``{"shops": [...], "shops_read_at": ...}``, or the previous shops and ``shops_error``: the
        tokens are what matters, a failed listing must not lose them (it is repeated at the next refresh)."""
        try:
            shops = await self.authorized_shops(access_token)
        except RefresherError as exc:
            log.warning("tiktok_shop.shops_failed", app=self.app.name, error=str(exc), request_id=exc.request_id)
            return {"shops": previous.get("shops") or [], "shops_error": str(exc)}
        return {"shops": shops}

    def identity_is_stale(self, verdict: RefresherError) -> bool:
        """A refused ``shop_cipher``: the shops are read again before the caller is answered."""
        return verdict.code is not None and verdict.code.isdigit() and int(verdict.code) in CIPHER_CODES

    async def authorized_shops(self, access_token: str) -> list[dict[str, Any]]:
        """Get Authorized Shops: the seller's shops with the cipher shop-scoped calls need."""
        signed = self.sign_call(ApiCall("GET", SHOPS_PATH), access_token)
        answer = await self.transport.send("GET", signed.url, headers=signed.headers, what="get authorized shops")
        envelope = self.transport.envelope(answer, "get authorized shops")
        request_id = request_id_of(envelope)
        error = self._judge(envelope, answer, "get authorized shops", token_call=False, refresh=False)
        if error is not None:
            raise error
        data = envelope.get("data")
        shops = data.get("shops") if isinstance(data, dict) else None
        if not isinstance(shops, list) or not all(isinstance(s, dict) for s in shops):
            raise MalformedAnswer("shops: answer lacks data.shops", platform=self.name, request_id=request_id)
        keep = ("id", "name", "region", "seller_type", "cipher", "code")
        return [{k: shop.get(k) for k in keep if k in shop} for shop in shops]

    # -- business API ------------------------------------------------------------------------------

    def sign_call(self, call: ApiCall, access_token: str | None = None, identity: Identity | None = None) -> SignedCall:
        query = [(k, v) for k, v in call.query if k not in ("sign", "access_token", "app_key")]
        stamp = call.timestamp
        if stamp is None:
            given = [v for k, v in query if k == "timestamp"]
            stamp = int(given[0]) if given and given[0].isdigit() else self.timestamp()
        query = [(k, v) for k, v in query if k != "timestamp"]
        query += [("app_key", self.app_key), ("timestamp", str(stamp))]
        query = self._with_cipher(call.path, query, identity)
        body = call.body
        if body is not None and body.strip() in (b"", b"{}"):
            body = None  # never send an empty object: its signature is ambiguous (vector T11)
        content_type = call.content_type or "application/json"
        sign = tiktok_shop_sign(self._secret, call.path, query, body, content_type)
        headers = {k: v for k, v in call.headers.items() if k.lower() not in ("x-tts-access-token", "content-type")}
        # The gateway wants a content type even on GET (get-authorized-shops spec).
        headers["content-type"] = content_type
        if access_token is not None:
            headers["x-tts-access-token"] = access_token
        base = self.host("api")
        url = f"{base}{call.path}?{urlencode([*query, ('sign', sign)])}"
        shown = tiktok_shop_base_string("<app_secret>", call.path, query, body, content_type)
        return SignedCall(call.method.upper(), url, headers, body, sign, base, shown)

    def _with_cipher(self, path: str, query: list[tuple[str, str]], identity: Identity | None) -> list[tuple[str, str]]:
        """Fill ``shop_cipher``: from a ``shop_id`` the caller names on a 202309+ path, else the seller's
        only shop. /authorization and /seller calls must not carry one."""
        if identity is None or path.startswith(("/authorization/", "/seller/")):
            return query
        shops = [s for s in identity.extra.get("shops") or () if isinstance(s, Mapping)]
        if _VERSIONED_PATH.match(path):
            wanted = [v for k, v in query if k == "shop_id"]
            if wanted:
                query = [(k, v) for k, v in query if k != "shop_id"]
                ciphers = [s.get("cipher") for s in shops if str(s.get("id")) == wanted[0] and s.get("cipher")]
                if not ciphers:
                    raise ConfigError(
                        f"shop {wanted[0][:40]} is not among the seller's authorized shops", platform=self.name
                    )
                return [(k, v) for k, v in query if k != "shop_cipher"] + [("shop_cipher", str(ciphers[0]))]
        if not any(k == "shop_cipher" for k, _ in query):
            ciphers = [s.get("cipher") for s in shops if s.get("cipher")]
            if len(ciphers) == 1:
                query.append(("shop_cipher", str(ciphers[0])))
        return query

    def classify_api_answer(self, answer: Answer) -> RefresherError | None:
        transient = http_status_error(answer, self.name)
        try:
            envelope = parse_json_object(answer.body, self.name, answer.status)
        except MalformedAnswer as exc:
            if transient is not None:
                return transient
            # A non-JSON success (a file) is not ours to judge.
            return exc if answer.status >= 400 or looks_like_api_answer(answer) else None
        return self._judge(envelope, answer, "api call", token_call=False, refresh=False)

    # -- errors ------------------------------------------------------------------------------------

    def _judge(
        self, envelope: Mapping[str, Any], answer: Answer, what: str, *, token_call: bool, refresh: bool
    ) -> RefresherError | None:
        """The envelope's verdict, with the HTTP status's ``Retry-After`` kept on transient ones."""
        error = classify(envelope, answer, what, token_call=token_call, refresh=refresh)
        status_error = http_status_error(answer, self.name)
        if status_error is not None and (error is None or type(error) is TransientError):
            if error is None:
                status_error.request_id = request_id_of(envelope)
                return status_error
            error.retry_after = status_error.retry_after
        return error


# --------------------------------------------------------------------------------------------- helpers


def _text(data: Mapping[str, Any], key: str, platform: str, request_id: str | None) -> str:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise MalformedAnswer(f"answer lacks {key} or it has the wrong type", platform=platform, request_id=request_id)
    return str(value)


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None
