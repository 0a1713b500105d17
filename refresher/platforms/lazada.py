"""Lazada Open Platform (docs/platforms.md).

Token calls go to ``auth.lazada.com/rest`` for every country and are signed like every Lazada call:
uppercase hex HMAC-SHA256 over the API path (after ``/rest``) and the sorted parameters. Access tokens
live 30 days (``expires_in``, relative seconds); a refresh returns a new refresh token but never moves the
grant's deadline (``refresh_expires_in`` counts down, 180 days from the authorization).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from refresher.domain import (
    AccessTokenInvalid,
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
from refresher.platforms.signing import lazada_base_string, lazada_sign
from refresher.platforms.transport import Answer, retry_after_seconds, safe_excerpt
from refresher.platforms.values import as_seconds, as_token

CREATE_PATH = "/auth/token/create"
REFRESH_PATH = "/auth/token/refresh"

# The regional API gateways; token calls always go to the auth host.
COUNTRY_API_HOSTS: Mapping[str, str] = {
    "sg": "https://api.lazada.sg/rest",
    "my": "https://api.lazada.com.my/rest",
    "th": "https://api.lazada.co.th/rest",
    "vn": "https://api.lazada.vn/rest",
    "ph": "https://api.lazada.com.ph/rest",
    "id": "https://api.lazada.co.id/rest",
}

# System parameters refresher adds itself; a caller's copies are dropped rather than signed twice.
_SYSTEM_PARAMS = frozenset({"app_key", "timestamp", "sign_method", "sign", "access_token"})
# Picks the venture of a cross-border account for one call; refresher's own, never sent to Lazada.
COUNTRY_HEADER = "x-refresher-country"
FORM = "application/x-www-form-urlencoded"

# The error-code table (docs/platforms.md, "Lazada"): every code the docs list and the sandbox emits.
_TRANSIENT_CODES = frozenset(
    {"ApiCallLimit", "OPEN_API_CALL_EXCEED_LIMIT", "TRAFFIC_CONTROL", "SYSTEM_ERROR", "ServiceTimeout", "SYS_ERROR"}
)
_CLOCK_CODES = frozenset({"OPEN_API_TIMESTAMP_INVALID", "InvalidTimestamp"})
_CONFIG_CODES = frozenset(
    {
        "IncompleteSignature",
        "MissingParameter",
        "APP_KEY_INVALID",
        "InvalidAppKey",
        "InvalidApiPath",  # the path names no API: a caller's or a config mistake, never fixed by waiting
        "AUTH_TYPE_UNSUPPORTED",  # a Service Market app cannot refresh: a policy to fix, not a retry
        "InvalidParameter",
    }
)


class LazadaCredentials(BaseModel):
    """``app_key`` and ``app_secret``; ``country`` picks the regional API gateway (default Singapore)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_key: str = Field(min_length=1)
    app_secret: SecretStr
    country: Literal["sg", "my", "th", "vn", "ph", "id"] | None = None


class LazadaPlatform(Platform):
    """Lazada Open Platform: signed token create/refresh, one account per seller."""

    name: ClassVar[str] = "lazada"
    display_name = "Lazada"
    proxy_request_headers = frozenset({COUNTRY_HEADER})  # picks a cross-border seller's venture
    credentials_model: ClassVar[type[BaseModel]] = LazadaCredentials
    default_hosts: ClassVar[Mapping[str, str]] = {
        "auth": "https://auth.lazada.com",
        "api": COUNTRY_API_HOSTS["sg"],
    }
    # Access tokens live 30 days and Lazada recommends refreshing well ahead: an hourly sweep that
    # refreshes in the last 10 days leaves days of retries before anything expires.
    default_schedule: ClassVar[str] = "23 * * * *"
    default_refresh_before: ClassVar[dt.timedelta] = dt.timedelta(days=10)
    access_lifetime: ClassVar[dt.timedelta | None] = dt.timedelta(days=30)  # online apps; 7 d in test
    code_lifetime: ClassVar[dt.timedelta] = dt.timedelta(minutes=30)
    supports_pkce: ClassVar[bool] = False

    credentials: LazadaCredentials

    def host(self, role: str) -> str:
        """``api`` is the gateway of the app's ``country`` (default Singapore); ``api_<country>`` is one
        venture's gateway (``api_my`` …), each overridable in ``hosts``. With a ``base_url`` (a sandbox or
        a test server standing in for the auth host) the APIs live under its ``/rest`` and
        ``/<country>/rest``."""
        if role in self.app.hosts:
            return self.app.hosts[role].rstrip("/")
        if role.startswith("api_") and role[4:] in COUNTRY_API_HOSTS:
            if "api" in self.app.hosts:
                return self.app.hosts["api"].rstrip("/")  # one API host for every venture (a proxy, a test)
            if self.app.base_url:
                return f"{self.app.base_url.rstrip('/')}/{role[4:]}/rest"
            return COUNTRY_API_HOSTS[role[4:]]
        if role == "api":
            if self.credentials.country:
                return self.host(f"api_{self.credentials.country}")
            if self.app.base_url:
                return f"{self.app.base_url.rstrip('/')}/rest"
        return super().host(role)

    def api_host(self, identity: Identity | None, chosen: str | None = None) -> str:
        """The gateway for one call: the account's venture (``chosen`` among a cross-border seller's
        ventures, else its first), else the app's default."""
        countries = account_countries(identity)
        if chosen and chosen.lower() in countries:
            return self.host(f"api_{chosen.lower()}")
        if countries:
            return self.host(f"api_{countries[0]}")
        return self.host("api")

    def _timestamp_ms(self, seconds: int | None = None) -> str:
        if seconds is not None:
            # A caller's timestamp (``refresher sign`` takes it from the URL) may already be milliseconds.
            return str(seconds if seconds > 10**11 else seconds * 1000)
        return str(int(self.now().timestamp() * 1000))

    def _signed(self, api_path: str, params: Mapping[str, str], body: bytes | None = None) -> dict[str, str]:
        try:
            sign = lazada_sign(self.credentials.app_secret.get_secret_value(), api_path, params, body)
        except ValueError as exc:
            raise ConfigError(str(exc), platform=self.name) from None
        return {**params, "sign": sign}

    # -- consent ---------------------------------------------------------------------------------

    def authorize_url(self, state: str, redirect_uri: str | None = None, pkce: PKCE | None = None) -> str:
        target = redirect_uri or self.app.redirect_uri
        if not target:
            raise ConfigError(f"app {self.app.name or '?'}: redirect_uri is not configured", platform=self.name)
        query = {
            "response_type": "code",
            "force_auth": "true",
            "redirect_uri": target,
            "client_id": self.credentials.app_key,
            "state": state,
        }
        return f"{self.host('auth')}/oauth/authorize?{urlencode(query)}"

    # -- tokens ----------------------------------------------------------------------------------

    async def exchange_code(
        self, callback_params: Mapping[str, str], pkce: PKCE | None = None, redirect_uri: str | None = None
    ) -> list[Grant]:
        """Token create: one grant for the seller, keyed by the first ``country_user_info`` seller_id."""
        denied = self.callback_error(callback_params)
        if denied is not None:
            raise denied
        code = callback_params.get("code")
        if not code:
            raise MalformedAnswer("callback carries no code", platform=self.name)
        data = await self._call(CREATE_PATH, {"code": code}, "token exchange", "token")
        tokens = self.token_set(data, self._strict_token_set)
        return [Grant(self._identity(data), tokens)]

    async def refresh(self, identity: Identity, refresh_token: str) -> TokenSet:
        """Token refresh: new access and refresh token; the grant's deadline stays where it was."""
        data = await self._call(REFRESH_PATH, {"refresh_token": refresh_token}, "token refresh", "refresh")
        # The answer's raw part keeps country_user_info_list: updated_identity reads the ventures from it.
        return self.token_set(data, self._strict_token_set)

    async def updated_identity(self, identity: Identity, tokens: TokenSet) -> Identity | None:
        """The ventures of the latest refresh answer, when they differ from the stored ones."""
        infos = _country_infos(tokens.raw)
        if infos is None or infos == identity.extra.get("country_user_info"):
            return None
        countries = [i["country"] for i in infos if isinstance(i.get("country"), str)]
        region = countries[0] if len(countries) == 1 else ("cb" if countries else identity.region)
        return replace(
            identity,
            region=region,
            extra={**identity.extra, "country_user_info": infos, "countries": _by_country(infos)},
        )

    async def _call(self, api_path: str, business: Mapping[str, str], what: str, context: str) -> dict[str, Any]:
        params = self._signed(
            api_path,
            {
                "app_key": self.credentials.app_key,
                "timestamp": self._timestamp_ms(),
                "sign_method": "sha256",
                **business,
            },
        )
        # Form-encoded POST: the code and tokens stay out of URLs (and so out of access logs).
        answer = await self.transport.send("POST", f"{self.host('auth')}/rest{api_path}", data=params, what=what)
        return self._checked(answer, what, context)

    def _checked(self, answer: Answer, what: str, context: str) -> dict[str, Any]:
        return self.transport.checked_json(
            answer, what, lambda data: self._error_of(data, answer, what, context), _request_id
        )

    def _error_of(self, data: Mapping[str, Any], answer: Answer, what: str, context: str) -> RefresherError | None:
        """Classify ``{code, type, message, request_id}``; ``code == "0"`` is success."""
        request_id = _request_id(data)
        code = data.get("code")
        if code is None:
            if "access_token" in data or "data" in data:
                return None  # older gateways omit code on success
            return MalformedAnswer(f"{what}: answer has no code", platform=self.name, request_id=request_id)
        if isinstance(code, bool) or not isinstance(code, str | int):
            return MalformedAnswer(
                f"{what}: code has the wrong type ({type(code).__name__})", platform=self.name, request_id=request_id
            )
        code = str(code)
        if code == "0":
            return None
        raw_message = data.get("message")
        message = safe_excerpt(raw_message.encode(), 100) if isinstance(raw_message, str) else ""
        text = f"{what} refused by Lazada ({message or 'no message'})"
        kwargs: dict[str, Any] = {
            "code": code,
            "request_id": request_id,
            "platform": self.name,
            "http_status": answer.status,
        }
        if code in _TRANSIENT_CODES:
            retry_after = retry_after_seconds(answer.headers)
            if code == "ApiCallLimit" and retry_after is None:
                retry_after = 1.0  # "this ban will last 1 seconds"
            return TransientError(text, retry_after=retry_after, **kwargs)
        if code == "IllegalRefreshToken":
            return RefreshTokenRejected(text, **kwargs)
        if code == "IllegalAccessToken":
            if context == "api":
                return AccessTokenInvalid(text, **kwargs)
            return ReauthRequired(text, **kwargs)
        if code == "InvalidCode":
            return ReauthRequired(text, **kwargs)
        if code in _CLOCK_CODES:
            return ClockSkew(text, **kwargs)
        if code in _CONFIG_CODES:
            return ConfigError(text, **kwargs)
        # An unknown code: retried within the budget; the alarm then names it (error.code is kept).
        return TransientError(
            f"{what}: unknown Lazada error {code[:64]} ({message or 'no message'})",
            retry_after=retry_after_seconds(answer.headers),
            **kwargs,
        )

    def _strict_token_set(self, data: Mapping[str, Any]) -> TokenSet:
        request_id = _request_id(data)
        try:
            access = as_token(data, "access_token", self.name)
            refresh = as_token(data, "refresh_token", self.name)
            # Relative seconds; the docs' samples show strings, live answers numbers: both are read.
            expires_in = as_seconds(data, "expires_in", self.name)
            refresh_expires_in = as_seconds(data, "refresh_expires_in", self.name, required=False)
        except MalformedAnswer as exc:
            exc.request_id = request_id
            raise
        now = self.now()
        raw = {k: v for k, v in data.items() if k not in ("access_token", "refresh_token")}
        return TokenSet(
            access_token=access,
            refresh_token=refresh,
            access_expires_at=now + dt.timedelta(seconds=expires_in or 0),
            refresh_expires_at=(
                now + dt.timedelta(seconds=refresh_expires_in) if refresh_expires_in is not None else None
            ),
            raw=raw,
        )

    def _identity(self, data: Mapping[str, Any]) -> Identity:
        infos = _country_infos(data)
        request_id = _request_id(data)
        if not infos:
            raise MalformedAnswer("answer lacks country_user_info", platform=self.name, request_id=request_id)
        seller_id = infos[0].get("seller_id")
        if isinstance(seller_id, bool) or not isinstance(seller_id, str | int) or str(seller_id) == "":
            raise MalformedAnswer("country_user_info lacks a seller_id", platform=self.name, request_id=request_id)
        country = data.get("country")
        account = data.get("account")
        return Identity(
            key=str(seller_id),
            kind="seller",
            platform_id=str(seller_id),
            name=account if isinstance(account, str) and account else None,
            region=country if isinstance(country, str) and country else None,
            extra={
                "country_user_info": infos,
                # One identity per venture (seller_id and short_code differ per country for a
                # cross-border seller): what a caller needs to address each venture's API.
                "countries": _by_country(infos),
                "account_platform": data.get("account_platform"),
            },
        )

    # -- business API ----------------------------------------------------------------------------

    def sign_call(self, call: ApiCall, access_token: str | None = None, identity: Identity | None = None) -> SignedCall:
        """System parameters and the sign go into the query; ``call.path`` is the path after ``/rest``.

        A form body's parameters are signed as ordinary parameters (as Lazada and lazop-sdk do) and sent
        as the form; any other body (JSON, XML) is appended raw to the signed text, as the official Java
        and C# samples do. The call goes to the gateway of the account's venture.
        """
        api_path = call.path.removeprefix("/rest") or "/"
        params: dict[str, str] = {k: v for k, v in call.query if k not in _SYSTEM_PARAMS}
        body = call.body
        content_type = (call.content_type or "").lower()
        signed_body: bytes | None = body
        if body is not None and content_type.startswith(FORM):
            form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            kept = [(k, v) for k, v in form if k not in _SYSTEM_PARAMS]
            if len(kept) != len(form):
                body = urlencode(kept).encode()  # refresher's own system parameters replace the caller's
            params.update(kept)
            signed_body = None
        elif body is not None and content_type.startswith("multipart/"):
            signed_body = None  # file parameters are never signed
        params.update(
            {
                "app_key": self.credentials.app_key,
                "timestamp": self._timestamp_ms(call.timestamp),
                "sign_method": "sha256",
            }
        )
        if access_token is not None:
            params["access_token"] = access_token
        signed = self._signed(api_path, params, signed_body)
        query = {k: v for k, v in signed.items() if k not in dict(kept_form(body, content_type))}
        headers = {k: v for k, v in call.headers.items() if k.lower() != COUNTRY_HEADER}
        if body is not None:
            headers.setdefault("content-type", call.content_type or "application/json")
        base = self.api_host(identity, call.headers.get(COUNTRY_HEADER))
        shown = {**params, "access_token": "<access_token>"} if access_token is not None else params
        return SignedCall(
            method=call.method.upper(),
            url=f"{base}{api_path}?{urlencode(query)}",
            headers=headers,
            body=body,
            sign=signed["sign"],
            base_url=base,
            base_string=lazada_base_string(api_path, shown, signed_body),
        )

    def classify_api_answer(self, answer: Answer) -> RefresherError | None:
        try:
            self._checked(answer, "API call", "api")
        except RefresherError as exc:
            return exc
        return None


def kept_form(body: bytes | None, content_type: str) -> list[tuple[str, str]]:
    """The parameters a form body carries (they travel in the body, so not again in the query)."""
    if body is None or not content_type.startswith(FORM):
        return []
    return parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)


def account_countries(identity: Identity | None) -> list[str]:
    """The ventures an account is authorized in, in the platform's order (lowercase country codes)."""
    if identity is None:
        return []
    infos = identity.extra.get("country_user_info") or []
    found = [str(i["country"]).lower() for i in infos if isinstance(i, Mapping) and i.get("country")]
    found = [c for c in found if c in COUNTRY_API_HOSTS]
    if not found and identity.region and identity.region.lower() in COUNTRY_API_HOSTS:
        found = [identity.region.lower()]
    return found


def _country_infos(data: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """``country_user_info`` (token/create) or ``country_user_info_list`` (token/refresh), trimmed."""
    infos = data.get("country_user_info")
    if infos is None:
        infos = data.get("country_user_info_list")
    if not isinstance(infos, list) or not infos or not all(isinstance(i, dict) for i in infos):
        return None
    keep = ("seller_id", "user_id", "country", "short_code")
    return [{k: i[k] for k in keep if k in i} for i in infos]


def _by_country(infos: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        str(i["country"]).lower(): {k: v for k, v in i.items() if k != "country"} for i in infos if i.get("country")
    }


def _request_id(data: Mapping[str, Any]) -> str | None:
    value = data.get("request_id")
    return value if isinstance(value, str) and value else None
