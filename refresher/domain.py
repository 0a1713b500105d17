"""Value types and the error taxonomy shared by every layer.

This module imports nothing of the project. Everything here is plain data: no I/O, no globals.
All times are timezone-aware UTC; a :class:`Clock` is passed in wherever "now" matters, so tests and
soak runs can drive simulated time.

Errors
------
Every error refresher raises on purpose derives from :class:`RefresherError`, so a library user catches
that one class (or a branch of it). No message carries a secret. The tree, with the module of each class:

    RefresherError                  domain             root: .message, .code, .request_id, .http_status
    ├── TransientError              domain             try again later: timeouts, 5xx, 429, "system busy"
    │   ├── PlatformTimeout         domain             no answer in time (the proxy says 504, not 502)
    │   └── MalformedAnswer         domain             an answer that cannot be read (HTML, truncated, types)
    ├── ReauthRequired              domain             only the seller can fix it: authorize again
    │   ├── RefreshTokenRejected    domain             refresh token invalid or used (a race is ruled out first)
    │   └── AuthorizationDenied     domain             the seller declined on the consent page
    ├── ConfigError                 domain             our side is wrong: keys, signature, names, settings
    │   ├── ClockSkew               domain             the platform refused our timestamp
    │   ├── UnknownApp              domain             no app of that name in the settings
    │   ├── UnknownPlatform         platforms          no plugin of that name installed, or it failed to load
    │   ├── ConfigFileError         config.errors      a settings file that cannot be used (.problems)
    │   ├── FaultSpecError          sandbox.faults     a sandbox fault spec that cannot be read
    │   └── PortUnavailable         daemon             server.host:port cannot be bound
    ├── AccessTokenInvalid          domain             an API call said the access token is invalid
    ├── StoreError                  store.base         the store cannot do what was asked
    │   ├── LeaseLost               store.base         another worker took over the lease this one acted under
    │   └── AccountNotFound         store.base         no such account
    ├── CryptoError                 crypto             a value cannot be decrypted, or a key is unusable
    ├── OnboardingError             onboarding         a callback that cannot complete (the caller's side)
    │   ├── StateError              onboarding         the state is missing, unknown, expired, used or foreign
    │   ├── MissingCode             onboarding         the callback carries no code
    │   └── ReturnToRejected        onboarding         a return_to outside the allowed places
    ├── InviteError                 invites            an invitation that does not open the door
    ├── TokenUnavailable            client.source      the token client could not get a usable token
    │   └── TokenRefused            client.source      the account's token would not work (the API's 409)
    └── DeliveryError               alerts.dispatcher  an alarm or hook could not be delivered

Not in the tree: the sandbox's ``SandboxRejection``, ``ShopeeError`` and ``LazadaError`` are raised and
caught inside its request handlers to render a platform's error answer; they never reach a caller.
``tests/test_errors.py`` checks this drawing against the classes.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

UTC = dt.UTC


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """Return ``value`` as an aware UTC datetime (naive values are taken to be UTC already)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, UTC)


# --------------------------------------------------------------------------------------------- clock


class Clock(Protocol):
    """Where "now" comes from. Never read the wall clock directly in refresh or store logic."""

    def now(self) -> dt.datetime: ...


class SystemClock:
    """The real clock."""

    def now(self) -> dt.datetime:
        return utcnow()


class FakeClock:
    """A clock that only moves when told to (tests, soak runs in simulated time). Thread-safe."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._now = as_utc(start) if start is not None else utcnow()
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return self._now

    def advance(self, delta: dt.timedelta | float) -> dt.datetime:
        step = delta if isinstance(delta, dt.timedelta) else dt.timedelta(seconds=delta)
        with self._lock:
            self._now += step
            return self._now

    def set(self, value: dt.datetime) -> None:
        with self._lock:
            self._now = as_utc(value)


# ------------------------------------------------------------------------------------------- values


class AccountStatus(enum.StrEnum):
    ACTIVE = "active"
    NEEDS_REAUTH = "needs_reauth"
    DISABLED = "disabled"


@dataclass(frozen=True)
class Identity:
    """Who an account is on its platform.

    ``key`` is the account's name inside its app (unique per app, stable across re-authorizations):
    ``shop:14701711`` / ``merchant:1000000`` on Shopee, the seller ``open_id`` on TikTok Shop, the
    seller id on Lazada, the user ``open_id`` on TikTok Login Kit. ``extra`` holds whatever else the
    platform told us that later calls need (shop cipher, shops list, country_user_info, union_id …);
    it must never hold a secret.
    """

    key: str
    kind: str  # "shop" | "merchant" | "seller" | "user" | …
    platform_id: str  # the id as the platform spells it
    name: str | None = None
    region: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenSet:
    """One normalized token set with absolute UTC expiries.

    Tokens are excluded from ``repr`` so that a stray ``print`` or exception cannot leak them.
    ``raw`` is the platform's answer with every secret removed (kept for audit).
    """

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    access_expires_at: dt.datetime
    refresh_expires_at: dt.datetime | None = None  # None: the platform gives no end
    scopes: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grant:
    """What one authorization yields for one account: who it is and its first tokens."""

    identity: Identity
    tokens: TokenSet


@dataclass(frozen=True)
class ErrorInfo:
    """The safe, storable summary of a failure (no secret ever)."""

    error_class: str  # "transient" | "reauth_required" | "config_error" | "malformed"
    code: str | None
    message: str
    request_id: str | None = None
    http_status: int | None = None


# ----------------------------------------------------------------------------------------- errors


class RefresherError(Exception):
    """Base of every error refresher raises on purpose.

    The message must never carry a secret: callers build it from codes and safe excerpts only.
    """

    error_class = "error"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        request_id: str | None = None,
        platform: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.request_id = request_id
        self.platform = platform
        self.http_status = http_status
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [self.message]
        if self.code:
            parts.append(f"code={self.code}")
        if self.http_status is not None:
            parts.append(f"http={self.http_status}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)

    def info(self) -> ErrorInfo:
        return ErrorInfo(
            error_class=self.error_class,
            code=self.code,
            message=self.message,
            request_id=self.request_id,
            http_status=self.http_status,
        )


class TransientError(RefresherError):
    """Try again later: timeouts, 5xx, 429, "system busy". Retried with backoff."""

    error_class = "transient"


class PlatformTimeout(TransientError):
    """The platform did not answer in time (the signing proxy says 504 for it, not 502)."""


class MalformedAnswer(TransientError):
    """The platform answered something we cannot read (HTML, truncated JSON, wrong types).

    ``salvaged``: when the answer did carry a new access and refresh token but something else in it was
    wrong (an expiry of the wrong type, say), the tokens with a deliberately short expiry. The platform
    has most likely rotated already, so these tokens are kept — never dropped, never retried over.
    """

    error_class = "malformed"
    salvaged: TokenSet | None = None


class ReauthRequired(RefresherError):
    """Only the seller can fix this: the grant is revoked, expired or cancelled. Never retried."""

    error_class = "reauth_required"


class RefreshTokenRejected(ReauthRequired):
    """The platform rejected the refresh token as invalid or already used.

    Right after a rotation this may be a race with another worker or a lost commit rather than a
    revoked grant: the refresh logic re-reads the store before declaring the account lost.
    """


class ConfigError(RefresherError):
    """Our side is wrong: bad key or secret, wrong sign, unknown app, clock skew. Never retried."""

    error_class = "config_error"


class ClockSkew(ConfigError):
    """The platform refused our timestamp. Worth one immediate re-sign; then it is a config error."""


class UnknownApp(ConfigError):
    """No app of that name is configured (or it has no refresh policy: disabled, plugin not loaded)."""


class AccessTokenInvalid(RefresherError):
    """An API call said the access token is invalid or expired: refresh once, then retry once."""

    error_class = "access_token_invalid"


class AuthorizationDenied(ReauthRequired):
    """The seller declined the authorization on the platform's consent page."""
