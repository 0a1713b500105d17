"""TikTok Login Kit, OAuth v2 on ``open.tiktokapis.com`` (docs/platforms.md).

The token endpoint takes a form body with the client secret and answers flat JSON (no envelope) with
*relative* lifetimes; errors are ``{error, error_description, log_id}``. Refresh tokens rotate strictly:
the previous one stops working once a new one is issued. Desktop apps use PKCE with the **hex**
SHA-256 of the verifier as challenge (not RFC 7636 base64url); web apps may send the S256 one.
After the exchange the user's profile is read from ``/v2/user/info/`` (display name, union id).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from refresher.domain import (
    AccessTokenInvalid,
    AuthorizationDenied,
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
from refresher.platforms.signing import pkce_challenge_hex, pkce_challenge_s256, pkce_verifier
from refresher.platforms.transport import (
    Answer,
    http_status_error,
    looks_like_api_answer,
    parse_json_object,
    retry_after_seconds,
    safe_excerpt,
)
from refresher.platforms.values import as_seconds, as_token

log = structlog.get_logger(__name__)

AUTHORIZE_PATH = "/v2/auth/authorize/"
TOKEN_PATH = "/v2/oauth/token/"
REVOKE_PATH = "/v2/oauth/revoke/"
USER_INFO_PATH = "/v2/user/info/"
USER_FIELDS = "open_id,union_id,avatar_url,display_name"
DEFAULT_SCOPES = ("user.info.basic",)

# OAuth error names (docs/platforms.md).
CONFIG_ERRORS = frozenset(
    {
        "invalid_client",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_request",
        "unsupported_response_type",
    }
)
TRANSIENT_ERRORS = frozenset({"server_error", "temporarily_unavailable"})
# API v2 error codes (``error.code`` in the answer body).
API_TRANSIENT = frozenset({"rate_limit_exceeded", "internal_error"})


class TikTokCredentials(BaseModel):
    """A Login Kit app.

    ``desktop``: the app is registered as a desktop app. ``pkce`` is how the PKCE challenge is encoded:
    ``hex`` (hex SHA-256 of the verifier, what TikTok documents for desktop and its Android SDK does),
    ``s256`` (RFC 7636 base64url) or ``none`` (no PKCE). The defaults are the documented flows: ``hex``
    for desktop apps, ``none`` for web apps (the web guide has no PKCE: a confidential client proves
    itself with its secret, and an RFC 7636 challenge has been seen refused as "Code verifier or code
    challenge is invalid").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_key: str = Field(min_length=1)
    client_secret: SecretStr
    desktop: bool = False
    pkce: Literal["hex", "s256", "none"] | None = None

    @property
    def pkce_encoding(self) -> str:
        return self.pkce or ("hex" if self.desktop else "none")


class TikTokPlatform(Platform):
    name = "tiktok"
    display_name = "TikTok"
    grant_subject = "account"  # a TikTok user, not a shop
    credentials_model = TikTokCredentials
    default_hosts: ClassVar[Mapping[str, str]] = {
        "consent": "https://www.tiktok.com",
        "api": "https://open.tiktokapis.com",
    }
    # Access tokens now live 2 hours (older docs: 24 h): sweep often, refresh well ahead.
    default_schedule = "*/10 * * * *"
    default_refresh_before = dt.timedelta(minutes=30)
    access_lifetime = dt.timedelta(hours=24)  # older docs; the Nov-2026 ones say 2 h
    code_lifetime = dt.timedelta(minutes=10)
    supports_pkce = True

    credentials: TikTokCredentials

    @property
    def client_key(self) -> str:
        return self.credentials.client_key

    @property
    def _secret(self) -> str:
        return self.credentials.client_secret.get_secret_value()

    @property
    def desktop(self) -> bool:
        return self.credentials.desktop

    # -- consent -----------------------------------------------------------------------------------

    def pkce_pair(self) -> PKCE | None:
        encoding = self.credentials.pkce_encoding
        if encoding == "none":
            return None
        verifier = pkce_verifier()
        # TikTok's desktop flow wants hex(SHA-256(verifier)); RFC 7636 base64url is refused there.
        challenge = pkce_challenge_hex(verifier) if encoding == "hex" else pkce_challenge_s256(verifier)
        return PKCE(verifier, challenge, "S256")

    def authorize_url(self, state: str, redirect_uri: str | None = None, pkce: PKCE | None = None) -> str:
        redirect = redirect_uri or self.app.redirect_uri
        if not redirect:
            raise ConfigError(f"app {self.app.name}: redirect_uri is required for TikTok Login Kit", platform=self.name)
        params = {
            "client_key": self.client_key,
            "scope": ",".join(self.app.scopes or DEFAULT_SCOPES),  # comma-separated, unlike RFC 6749
            "response_type": "code",
            "redirect_uri": redirect,
            "state": state,
        }
        if pkce is not None:
            params["code_challenge"] = pkce.challenge
            params["code_challenge_method"] = pkce.method
        return f"{self.host('consent')}{AUTHORIZE_PATH}?{urlencode(params)}"

    def callback_error(self, callback_params: Mapping[str, str]) -> RefresherError | None:
        error = callback_params.get("error")
        if error and error != "access_denied":
            # Anything but the user's "no" is a problem with our request (scope, redirect, client).
            return ConfigError(f"authorization failed on the platform ({error[:60]})", code=error, platform=self.name)
        return super().callback_error(callback_params)

    # -- tokens ------------------------------------------------------------------------------------

    async def exchange_code(
        self, callback_params: Mapping[str, str], pkce: PKCE | None = None, redirect_uri: str | None = None
    ) -> list[Grant]:
        denial = self.callback_error(callback_params)
        if denial is not None:
            raise denial
        code = callback_params.get("code")
        if not code:
            raise MalformedAnswer("callback without an authorization code", platform=self.name)
        redirect = redirect_uri or self.app.redirect_uri
        form = {
            "client_key": self.client_key,
            "client_secret": self._secret,
            "code": code,  # already URL-decoded by whoever parsed the callback
            "grant_type": "authorization_code",
            "redirect_uri": redirect or "",
        }
        if pkce is not None:
            form["code_verifier"] = pkce.verifier
        data = await self._token_call(form, "code exchange", refresh=False)
        tokens = self.token_set(data, self._strict_token_set)
        open_id = _required_text(data, "open_id", self.name, _log_id(data))
        granted = callback_params.get("scopes")
        extra: dict[str, Any] = {}
        if granted:
            extra["granted_scopes"] = granted
        name: str | None = None
        try:
            user = await self.user_info(tokens.access_token)
        except RefresherError as exc:
            # The tokens are what matters: a failed profile lookup must not lose the grant.
            extra["user_info_error"] = str(exc)
            log.warning("tiktok.user_info_failed", app=self.app.name, error=str(exc), request_id=exc.request_id)
        else:
            name = user.get("display_name") if isinstance(user.get("display_name"), str) else None
            for key in ("union_id", "avatar_url"):
                if isinstance(user.get(key), str):
                    extra[key] = user[key]
        identity = Identity(key=open_id, kind="user", platform_id=open_id, name=name, extra=extra)
        return [Grant(identity, tokens)]

    async def refresh(self, identity: Identity, refresh_token: str) -> TokenSet:
        form = {
            "client_key": self.client_key,
            "client_secret": self._secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        }
        return self.token_set(await self._token_call(form, "refresh", refresh=True), self._strict_token_set)

    async def revoke(self, access_token: str) -> None:
        """Withdraw the grant: the app leaves the user's connected apps (success answers ``{}``)."""
        form = {"client_key": self.client_key, "client_secret": self._secret, "token": access_token}
        await self._token_call(form, "revoke", refresh=False, path=REVOKE_PATH)

    async def _token_call(
        self, form: Mapping[str, str], what: str, *, refresh: bool, path: str = TOKEN_PATH
    ) -> dict[str, Any]:
        answer = await self.transport.send(
            "POST",
            f"{self.host('api')}{path}",
            data=form,
            headers={"content-type": "application/x-www-form-urlencoded"},
            what=what,
        )
        # The HTTP status of error answers is undocumented: the presence of "error" decides.
        return self.transport.checked_json(
            answer, what, lambda data: self._token_error(data, answer, what, refresh=refresh), _log_id
        )

    def _token_error(
        self, data: Mapping[str, Any], answer: Answer, what: str, *, refresh: bool
    ) -> RefresherError | None:
        error = data.get("error")
        if isinstance(error, str) and error:
            return self._oauth_error(error, data, answer, what, refresh=refresh)
        if error not in (None, "") and not (isinstance(error, dict) and error.get("code") in ("ok", "", None)):
            return MalformedAnswer(f"{what}: unreadable error field", platform=self.name, http_status=answer.status)
        return None

    def _oauth_error(
        self, error: str, data: Mapping[str, Any], answer: Answer, what: str, *, refresh: bool
    ) -> RefresherError:
        description = data.get("error_description")
        detail = safe_excerpt(description.encode(), 120) if isinstance(description, str) else ""
        kwargs: dict[str, Any] = {
            "code": error[:64],
            "request_id": _log_id(data),
            "platform": self.name,
            "http_status": answer.status,
        }
        text = f"{what}: {error[:64]}" + (f" ({detail})" if detail else "")
        if error == "invalid_grant":
            if refresh:
                return RefreshTokenRejected(f"{text}: refresh token invalid, expired, used or revoked", **kwargs)
            return ReauthRequired(f"{text}: authorization code invalid, used or expired", **kwargs)
        if error == "access_denied":
            return AuthorizationDenied(text, **kwargs)
        if error in CONFIG_ERRORS:
            return ConfigError(text, **kwargs)
        if error in TRANSIENT_ERRORS:
            return TransientError(text, retry_after=retry_after_seconds(answer.headers), **kwargs)
        # Unknown: retried within the budget; the alarm then names the raw code (kwargs["code"]).
        return TransientError(f"{text}: unrecognised error", retry_after=retry_after_seconds(answer.headers), **kwargs)

    def _strict_token_set(self, data: Mapping[str, Any]) -> TokenSet:
        request_id = _log_id(data)
        access = as_token(data, "access_token", self.name, request_id)
        refresh = as_token(data, "refresh_token", self.name, request_id)
        try:
            expires_in = as_seconds(data, "expires_in", self.name)
            refresh_in = as_seconds(data, "refresh_expires_in", self.name, required=False)
        except MalformedAnswer as exc:
            exc.request_id = request_id
            raise
        assert expires_in is not None  # required
        scope = data.get("scope", "")
        if not isinstance(scope, str):
            raise MalformedAnswer("scope has the wrong type", platform=self.name, request_id=request_id)
        now = self.now()
        raw = {k: v for k, v in data.items() if k not in ("access_token", "refresh_token")}
        return TokenSet(
            access,
            refresh,
            now + dt.timedelta(seconds=expires_in),
            None if refresh_in is None else now + dt.timedelta(seconds=refresh_in),
            tuple(s for s in scope.split(",") if s),
            raw,
        )

    # -- API ---------------------------------------------------------------------------------------

    async def user_info(self, access_token: str, fields: str = USER_FIELDS) -> dict[str, Any]:
        """``data.user`` of ``/v2/user/info/``."""
        signed = self.sign_call(ApiCall("GET", USER_INFO_PATH, (("fields", fields),)), access_token)
        answer = await self.transport.send("GET", signed.url, headers=signed.headers, what="user info")
        error = self.classify_api_answer(answer)
        if error is not None:
            raise error
        body = answer.json_object(self.name)
        data = body.get("data")
        user = data.get("user") if isinstance(data, dict) else None
        if not isinstance(user, dict):
            raise MalformedAnswer("user info: answer lacks data.user", platform=self.name, request_id=_api_log_id(body))
        return user

    def sign_call(self, call: ApiCall, access_token: str | None = None, identity: Identity | None = None) -> SignedCall:
        """TikTok's v2 API has no request signature: the bearer token is the whole credential."""
        headers = {k: v for k, v in call.headers.items() if k.lower() != "authorization"}
        if access_token is not None:
            headers["authorization"] = f"Bearer {access_token}"
        if call.body is not None and call.content_type:
            headers["content-type"] = call.content_type
        base = self.host("api")
        query = [(k, v) for k, v in call.query if k != "access_token"]
        url = f"{base}{call.path}" + (f"?{urlencode(query)}" if query else "")
        return SignedCall(call.method.upper(), url, headers, call.body, "", base)

    def classify_api_answer(self, answer: Answer) -> RefresherError | None:
        status_error = http_status_error(answer, self.name)
        try:
            body = parse_json_object(answer.body, self.name, answer.status)
        except MalformedAnswer as exc:
            if status_error is not None:
                return status_error
            return exc if answer.status >= 400 or looks_like_api_answer(answer) else None
        error = body.get("error")
        request_id = _api_log_id(body)
        if not isinstance(error, dict):
            if status_error is not None:
                return status_error
            if answer.status >= 400:
                return MalformedAnswer(
                    f"api call: HTTP {answer.status} without an error object",
                    platform=self.name,
                    http_status=answer.status,
                )
            return None
        code = error.get("code")
        if code in ("ok", "", None):
            return status_error
        code_text = str(code)[:64]
        message = error.get("message")
        detail = safe_excerpt(message.encode(), 120) if isinstance(message, str) and message else ""
        text = f"api call: {code_text}" + (f" ({detail})" if detail else "")
        kwargs: dict[str, Any] = {
            "code": code_text,
            "request_id": request_id,
            "platform": self.name,
            "http_status": answer.status,
        }
        if code == "access_token_invalid":
            return AccessTokenInvalid(text, **kwargs)
        if code == "scope_not_authorized":
            return ReauthRequired(f"{text}: the user did not grant this scope", **kwargs)
        if code in ("scope_permission_missed", "invalid_params", "invalid_file_upload"):
            return ConfigError(text, **kwargs)
        retry_after = retry_after_seconds(answer.headers)
        return TransientError(
            text if code in API_TRANSIENT else f"{text}: unrecognised error", retry_after=retry_after, **kwargs
        )


# --------------------------------------------------------------------------------------------- helpers


def _log_id(data: Mapping[str, Any]) -> str | None:
    value = data.get("log_id")
    return value[:128] if isinstance(value, str) and value else None


def _api_log_id(body: Mapping[str, Any]) -> str | None:
    error = body.get("error")
    return _log_id(error) if isinstance(error, dict) else None


def _required_text(data: Mapping[str, Any], key: str, platform: str, request_id: str | None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedAnswer(f"answer lacks {key} or it has the wrong type", platform=platform, request_id=request_id)
    return value
