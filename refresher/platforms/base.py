"""The platform plugin contract.

A plugin is a :class:`Platform` subclass registered under the entry-point group
``refresher.platforms``. One instance serves one configured app: it holds the app's credentials (typed
by the plugin's own pydantic model), a :class:`~refresher.platforms.transport.Transport` over the shared
``httpx.AsyncClient``, and the clock. A plugin knows nothing of the store or the scheduler: it turns
credentials and tokens into HTTP calls and the answers back into domain values or classified errors.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel

from refresher.config import AppSettings
from refresher.domain import Clock, Grant, Identity, MalformedAnswer, RefresherError, SystemClock, TokenSet
from refresher.platforms.transport import (
    MAX_ANSWER_BYTES,
    MAX_API_ANSWER_BYTES,
    Answer,
    Transport,
    make_http_client,
)
from refresher.platforms.values import salvage

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_API_ANSWER_BYTES",
    "PKCE",
    "Answer",
    "ApiCall",
    "Platform",
    "SignedCall",
    "make_http_client",
]


@dataclass(frozen=True)
class PKCE:
    verifier: str = field(repr=False)
    challenge: str
    method: str = "S256"


@dataclass(frozen=True)
class ApiCall:
    """An API call as a caller describes it, before the platform's auth is added."""

    method: str
    path: str  # platform path, e.g. /api/v2/shop/get_shop_info or /order/202309/orders/search
    query: Sequence[tuple[str, str]] = ()
    body: bytes | None = None
    content_type: str | None = None
    timestamp: int | None = None  # use this timestamp instead of the clock (debugging a sign)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SignedCall:
    """The call as it goes on the wire.

    ``base_string`` is the text the signature was computed over, with the access token and any secret
    replaced by placeholders: what ``refresher sign`` shows a user comparing signatures. Unsigned
    platforms leave ``sign`` and ``base_string`` empty.
    """

    method: str
    url: str = field(repr=False)  # may carry an access token in its query
    headers: Mapping[str, str] = field(repr=False)
    body: bytes | None
    sign: str
    base_url: str
    base_string: str = field(default="", repr=False)


class Platform(ABC):
    """One platform's protocol, bound to one app's credentials."""

    #: entry-point name (``shopee``, ``tiktok_shop`` …)
    name: ClassVar[str]
    #: how a person calls the platform (seller pages, console); a plugin without one is shown by its
    #: name, title-cased
    display_name: ClassVar[str] = ""
    #: what a seller grants access to, as the seller pages say it ("Connect your Shopee shop")
    grant_subject: ClassVar[str] = "shop"
    #: request headers the signing proxy hands to the plugin beyond the common ones (the plugin reads and
    #: removes them before the call leaves)
    proxy_request_headers: ClassVar[frozenset[str]] = frozenset()
    #: pydantic model of the app's credential keys (``extra="forbid"`` so typos are errors)
    credentials_model: ClassVar[type[BaseModel]]
    #: role → production URL; ``base_url`` of the app replaces them all, ``hosts`` one by one
    default_hosts: ClassVar[Mapping[str, str]]
    #: default cron schedule and refresh window, from the platform's lifetimes (docs/platforms.md)
    default_schedule: ClassVar[str] = "*/10 * * * *"
    default_refresh_before: ClassVar[dt.timedelta] = dt.timedelta(hours=1)
    #: the access token's documented lifetime (the longest of live/test apps): check-config refuses a
    #: refresh_before that is not shorter; None when the platform states none
    access_lifetime: ClassVar[dt.timedelta | None] = None
    #: how long the code in a callback stays usable, for messages and the sandbox
    code_lifetime: ClassVar[dt.timedelta] = dt.timedelta(minutes=10)
    supports_pkce: ClassVar[bool] = False
    #: appended to "the seller must re-authorize" when a refresh token is lost: the platform's own way
    #: back without the seller, if it has one
    lost_token_hint: ClassVar[str] = ""
    #: the platform can re-issue a grant's tokens from a one-time code a person fetches (Shopee's console
    #: "resend code"): ``refresher recover APP ACCOUNT`` then calls :meth:`recover_with_code`
    supports_recovery_code: ClassVar[bool] = False

    #: the app's credentials as the plugin's ``credentials_model`` (subclasses narrow the type)
    credentials: BaseModel

    def __init__(
        self,
        app: AppSettings,
        http: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._app = app
        self.clock: Clock = clock or SystemClock()
        given = app.credentials
        # load_config has validated them already; an AppSettings built in code may carry a plain dict.
        self.credentials = (
            given if isinstance(given, self.credentials_model) else self.credentials_model.model_validate(given or {})
        )
        self.transport = Transport(self.name, app.timeout, http)

    @property
    def app(self) -> AppSettings:
        return self._app

    @app.setter
    def app(self, app: AppSettings) -> None:
        # Settings replaced at run time (a reload, a test) carry their timeout to the transport too.
        self._app = app
        self.transport.timeout = app.timeout

    @property
    def http(self) -> httpx.AsyncClient:
        return self.transport.http

    def host(self, role: str) -> str:
        """The URL for a host role: the app's per-role override, else its ``base_url``, else production."""
        if role in self.app.hosts:
            return self.app.hosts[role].rstrip("/")
        if self.app.base_url:
            return self.app.base_url.rstrip("/")
        return self.default_hosts[role].rstrip("/")

    def now(self) -> dt.datetime:
        return self.clock.now()

    def timestamp(self) -> int:
        return int(self.now().timestamp())

    # -- the contract ------------------------------------------------------------------------------

    @abstractmethod
    def authorize_url(self, state: str, redirect_uri: str | None = None, pkce: PKCE | None = None) -> str:
        """The URL a seller opens to grant access."""

    @abstractmethod
    async def exchange_code(
        self, callback_params: Mapping[str, str], pkce: PKCE | None = None, redirect_uri: str | None = None
    ) -> list[Grant]:
        """Turn the callback's parameters (``code`` and friends) into one grant per account."""

    @abstractmethod
    async def refresh(self, identity: Identity, refresh_token: str) -> TokenSet:
        """Exchange a refresh token for a new token set (the new refresh token replaces the old)."""

    @abstractmethod
    def sign_call(self, call: ApiCall, access_token: str | None = None, identity: Identity | None = None) -> SignedCall:
        """Add the app's credentials, the access token and the signature to an API call."""

    @abstractmethod
    def classify_api_answer(self, answer: Answer) -> RefresherError | None:
        """Classify a business API answer: ``None`` when it is a success (or not an auth matter).

        Returns :class:`~refresher.domain.AccessTokenInvalid` when the access token was refused, so the
        proxy can refresh once and retry once.
        """

    # -- optional parts, with neutral defaults ---------------------------------------------------

    async def updated_identity(self, identity: Identity, tokens: TokenSet) -> Identity | None:
        """The account's identity as the platform describes it after a refresh, or ``None`` if unchanged.

        Called after every successful refresh with the new tokens (TikTok Shop re-reads the seller's
        shops, Lazada keeps the countries the refresh answer lists). A failure here never costs the
        tokens: implementations record it in the identity instead of raising.
        """
        return None

    async def recover_with_code(self, identity: Identity, code: str) -> TokenSet:
        """New tokens for an account whose refresh token was lost, from a one-time recovery code."""
        from refresher.domain import ConfigError

        raise ConfigError(f"{self.name} has no recovery code: the seller must re-authorize", platform=self.name)

    def identity_is_stale(self, verdict: RefresherError) -> bool:
        """Whether an API answer says the stored identity is out of date (TikTok Shop: a refused
        ``shop_cipher``), so the proxy re-reads it with :meth:`updated_identity` and retries once."""
        return False

    def identity_from_query(self, query: Sequence[tuple[str, str]]) -> Identity | None:
        """The account a debugged URL names by its own parameters (Shopee's ``shop_id``), for ``refresher sign``."""
        return None

    def sign_warnings(self, call: ApiCall, access_token: str | None, identity: Identity | None) -> list[str]:
        """What looks wrong with a call about to be signed (a shop-level path without a token …)."""
        return []

    def callback_error(self, callback_params: Mapping[str, str]) -> RefresherError | None:
        """The platform's own denial in a callback (``error=access_denied`` and variants), if any."""
        from refresher.domain import AuthorizationDenied

        error = callback_params.get("error")
        if error:
            description = callback_params.get("error_description", "")
            return AuthorizationDenied(
                f"authorization declined on the platform ({error}{': ' + description[:120] if description else ''})",
                code=error,
                platform=self.name,
            )
        return None

    def pkce_pair(self) -> PKCE | None:
        """A fresh PKCE pair when the platform uses PKCE for this app, else ``None``."""
        return None

    def token_set(self, data: Mapping[str, Any], parse: Callable[[Mapping[str, Any]], TokenSet]) -> TokenSet:
        """``parse(data)``; when it finds the answer flawed, the error carries any new pair (see :func:`salvage`)."""
        try:
            return parse(data)
        except MalformedAnswer as exc:
            raise salvage(exc, data, self.now()) from None  # keep a new pair the platform already issued
