"""The authorization flow, in one place for the web routes and the desktop/CLI commands.

``begin`` creates a single-use, expiring :class:`~refresher.store.base.OAuthState` (with PKCE where the
platform uses it) and returns the URL the seller opens; ``complete`` checks the callback's ``state``,
turns the platform's own denial into :class:`~refresher.domain.AuthorizationDenied`, exchanges the code
and stores one account per grant (re-authorizing an account updates it in place).

State bookkeeping: a consumed state's row stays in the store for a day, marked ``used_at`` (a column no
caller can set), so a replay is named "already used" rather than "unknown"; the state string carries its
own expiry so an expired state is named as such even once the store has pruned it. Neither is trusted for
anything but choosing the message: only ``consume_state`` on a live, unused row of the same app grants.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import structlog

from refresher.domain import Clock, ConfigError, RefresherError, from_epoch
from refresher.platforms.base import PKCE, Platform
from refresher.store.base import Account, OAuthState
from refresher.store.roles import OnboardingStore, StateStore

log = structlog.get_logger("refresher.onboarding")

DEFAULT_STATE_TTL = dt.timedelta(minutes=15)


class OnboardingError(RefresherError):
    """A callback that cannot complete for a reason on the caller's side (HTTP 400)."""

    error_class = "onboarding"


STATE_REASONS: Mapping[str, str] = {
    "missing": "the callback carries no state parameter",
    "unknown": "the state is not one this server issued (tampered, or from another server)",
    "expired": "the state has expired: the authorization took too long; start again",
    "reused": "the state was already used: this authorization link works once; start again",
    "wrong_app": "the state was issued for another app",
}


class StateError(OnboardingError):
    """The callback's ``state`` is refused. ``kind`` is one of :data:`STATE_REASONS`."""

    def __init__(self, kind: str, *, app: str | None = None) -> None:
        super().__init__(STATE_REASONS[kind], code=f"state_{kind}")
        self.kind = kind
        self.app = app


class MissingCode(OnboardingError):
    """The callback has a valid state but no authorization code (and no error from the platform)."""

    def __init__(self) -> None:
        super().__init__("the callback carries no authorization code", code="missing_code")


class ReturnToRejected(OnboardingError):
    def __init__(self) -> None:
        super().__init__("return_to is not on server.return_to_allowlist", code="return_to")


@dataclass(frozen=True)
class Completed:
    """A finished authorization: the stored accounts and the state it came through."""

    accounts: list[Account]
    state: OAuthState


# ------------------------------------------------------------------------------------------ helpers


def new_state(expires_at: dt.datetime) -> str:
    """A random state that also says when it expires (for the error message only; see module doc)."""
    return f"{secrets.token_urlsafe(24)}.{int(expires_at.timestamp()):x}"


def _embedded_expiry(state: str) -> dt.datetime | None:
    _, _, tail = state.rpartition(".")
    if not tail or len(tail) > 12:
        return None
    try:
        return from_epoch(int(tail, 16))
    except (ValueError, OverflowError, OSError):
        return None


def parse_callback(text: str) -> dict[str, str]:
    """Callback parameters from a full redirect URL, a ``?query`` or a bare ``a=b&c=d`` string."""
    text = text.strip()
    if "://" in text:
        text = urlsplit(text).query
    elif "?" in text:
        text = text.split("?", 1)[1]
    return dict(parse_qsl(text, keep_blank_values=True))


def return_to_allowed(url: str, allowlist: Sequence[str]) -> bool:
    """True when ``url`` is an http(s) URL on an allowlisted origin, under the entry's path.

    Entries are URL prefixes (``https://erp.example.com/oauth/``); scheme and host:port must be equal,
    not merely share a string prefix, so ``https://erp.example.com.evil.test`` never passes.
    """
    if not url or any(c in url for c in "\\\r\n\t ") or len(url) > 2048:
        return False
    try:
        target = urlsplit(url)
    except ValueError:
        return False
    if target.scheme not in ("http", "https") or not target.hostname or "@" in target.netloc:
        return False
    for entry in allowlist:
        try:
            allowed = urlsplit(entry)
        except ValueError:
            continue
        if (allowed.scheme, allowed.netloc.lower()) != (target.scheme, target.netloc.lower()):
            continue
        prefix = allowed.path.rstrip("/")
        if not prefix or target.path == prefix or target.path.startswith(prefix + "/"):
            return True
    return False


def is_loopback_http(url: str) -> bool:
    """True for ``http://127.0.0.1:…``, ``http://localhost:…`` or ``http://[::1]:…`` (desktop flow)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------- flow


async def begin(
    app_name: str,
    platform: Platform,
    store: OnboardingStore,
    clock: Clock,
    *,
    return_to: str | None = None,
    redirect_uri: str | None = None,
    ttl: dt.timedelta = DEFAULT_STATE_TTL,
    state: str | None = None,
) -> tuple[str, OAuthState]:
    """Store a single-use state for ``app_name`` and return the platform's authorization URL with it.

    ``redirect_uri`` defaults to the app's configured one (it must match what the platform has on
    record). ``state`` lets an operator choose the value (``refresher auth-url --state``).
    """
    redirect = redirect_uri or platform.app.redirect_uri
    if not redirect:
        raise ConfigError(f"apps.{app_name}.redirect_uri is not set (it must match the one registered on the platform)")
    now = clock.now()
    expires_at = now + ttl
    pkce: PKCE | None = platform.pkce_pair()
    oauth_state = OAuthState(
        state=state or new_state(expires_at),
        app=app_name,
        created_at=now,
        expires_at=expires_at,
        return_to=return_to,
        pkce_verifier=pkce.verifier if pkce else None,
        redirect_uri=redirect,
    )
    url = platform.authorize_url(oauth_state.state, redirect, pkce)
    await store.put_state(oauth_state)
    log.info("onboarding.started", app=app_name, platform=platform.name, pkce=pkce is not None)
    return url, oauth_state


async def take_state(app_name: str, store: StateStore, clock: Clock, state: str | None) -> OAuthState:
    """Consume the callback's state or raise :class:`StateError` saying exactly why it is refused.

    Only ``consume_state`` grants: it takes a live, unused row of this app and marks it used in one
    statement. Everything after a refusal only chooses the message.
    """
    if not state:
        raise StateError("missing", app=app_name)
    found = await store.consume_state(state, app_name)
    if found is not None:
        return found
    row = await store.find_state(state)
    now = clock.now()
    if row is not None and row.used_at is not None:
        raise StateError("reused", app=app_name)
    if row is not None and row.app != app_name:
        # Left unused: the seller's real callback (for the app that issued it) still works.
        raise StateError("wrong_app", app=app_name)
    embedded = _embedded_expiry(state)
    if (row is not None and row.expires_at <= now) or (embedded is not None and embedded <= now):
        raise StateError("expired", app=app_name)
    raise StateError("unknown", app=app_name)


async def complete_flow(
    app_name: str, platform: Platform, store: OnboardingStore, clock: Clock, callback_params: Mapping[str, str]
) -> Completed:
    """Check the state, honour a denial, exchange the code and store every account of the grant."""
    denial = platform.callback_error(callback_params)
    if denial is not None:
        # The state is spent either way; a denied flow must not be resumable with it.
        state = callback_params.get("state")
        if state:
            await store.consume_state(state, app_name)
        log.warning("onboarding.denied", app=app_name, platform=platform.name, code=denial.code)
        raise denial
    oauth_state = await take_state(app_name, store, clock, callback_params.get("state"))
    if not callback_params.get("code"):
        raise MissingCode()
    pkce = PKCE(verifier=oauth_state.pkce_verifier, challenge="") if oauth_state.pkce_verifier else None
    try:
        grants = await platform.exchange_code(callback_params, pkce=pkce, redirect_uri=oauth_state.redirect_uri)
    except RefresherError as exc:
        log.warning(
            "onboarding.exchange_failed",
            app=app_name,
            platform=platform.name,
            error_class=exc.error_class,
            error_code=exc.code,
            request_id=exc.request_id,
        )
        raise
    accounts = [await store.upsert_grant(app_name, platform.name, grant) for grant in grants]
    log.info(
        "onboarding.granted",
        app=app_name,
        platform=platform.name,
        accounts=[account.key for account in accounts],
    )
    return Completed(accounts=accounts, state=oauth_state)


async def complete(
    app_name: str, platform: Platform, store: OnboardingStore, clock: Clock, callback_params: Mapping[str, str]
) -> list[Account]:
    """:func:`complete_flow` for callers that only need the stored accounts."""
    return (await complete_flow(app_name, platform, store, clock, callback_params)).accounts
