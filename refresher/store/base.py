"""What the token store deals in: its errors and its records (:class:`Account`, :class:`Alarm`,
:class:`OutboxEvent` …). The roles a caller depends on are in :mod:`refresher.store.roles`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from refresher.domain import AccountStatus, ErrorInfo, Identity, RefresherError, TokenSet


class StoreError(RefresherError):
    """The store cannot do what was asked (unreachable, not writable, schema too new …)."""


class LeaseLost(StoreError):
    """The caller no longer holds the lease it acts under (it expired and another worker took it)."""


class AccountNotFound(StoreError):
    pass


@dataclass(frozen=True)
class Account:
    id: int
    app: str
    platform: str
    key: str
    identity: Identity
    status: AccountStatus
    tokens: TokenSet | None
    consecutive_failures: int = 0
    last_success_at: dt.datetime | None = None
    last_attempt_at: dt.datetime | None = None
    last_error: ErrorInfo | None = None
    next_attempt_at: dt.datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    # Set when a refresh call went out under a lease and has not been settled yet: if the process dies
    # in that window the platform may have rotated the token without our commit (see refresh.py).
    refresh_started_at: dt.datetime | None = None
    version: int = 0  # bumps on every saved token set
    previous_refresh_token: str | None = field(default=None, repr=False)
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    # The expiries, also when ``tokens`` was not read (a listing); with ``tokens`` they are always its own.
    access_expires_at: dt.datetime | None = None
    refresh_expires_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None:
            object.__setattr__(self, "access_expires_at", self.tokens.access_expires_at)
            object.__setattr__(self, "refresh_expires_at", self.tokens.refresh_expires_at)


@dataclass(frozen=True)
class HistoryEntry:
    version: int
    tokens: TokenSet
    replaced_at: dt.datetime


@dataclass(frozen=True)
class AuditEntry:
    at: dt.datetime
    app: str
    account_key: str
    outcome: str  # "success" | "transient" | "reauth_required" | "config_error" | "malformed" | …
    duration_ms: int
    attempts: int = 1
    error_class: str | None = None
    error_code: str | None = None
    request_id: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Alarm:
    """One open (or recently resolved) alarm per account and cause, for dedupe across restarts and replicas."""

    app: str
    account_key: str
    cause: str  # "failures" | "reauth_required" | "config_error" | "refresh_expiring"
    opened_at: dt.datetime
    last_sent_at: dt.datetime | None
    resolved_at: dt.datetime | None
    details: dict[str, Any] = field(default_factory=dict)
    delivered_at: dt.datetime | None = None  # when a channel took the message sent at last_sent_at


@dataclass(frozen=True)
class OAuthState:
    """A single-use CSRF ``state`` created by ``/connect/{app}`` (issue 5)."""

    state: str
    app: str
    created_at: dt.datetime
    expires_at: dt.datetime
    return_to: str | None = None
    pkce_verifier: str | None = field(default=None, repr=False)
    redirect_uri: str | None = None
    # Set when a callback took the state: from then on the row only explains a replay ("already used").
    used_at: dt.datetime | None = None


# How long a used state is remembered, so a second use says "already used" rather than "unknown".
USED_STATE_MEMORY = dt.timedelta(days=1)


@dataclass(frozen=True)
class OutboxEvent:
    """A lifecycle event (docs/events.md) from the moment its cause is stored until its receivers took it."""

    idempotency_key: str
    kind: str  # "account.connected" …
    app: str
    account_key: str
    payload: dict[str, Any]
    id: int | None = None
    created_at: dt.datetime | None = None
    attempts: int = 0
    next_attempt_at: dt.datetime | None = None
    delivered_at: dt.datetime | None = None  # every receiver took it, or its attempts ran out
    last_error: str | None = None


@dataclass(frozen=True)
class AlarmDelivery:
    """How the latest message of an alarm went on one channel (the console's alarms page)."""

    app: str
    account_key: str
    cause: str
    channel: str  # the channel's configured name, never its URL
    state: str  # "sending" (attempts left) | "delivered" | "failed" (gave up, or dropped unsent)
    attempts: int
    last_attempt_at: dt.datetime
    delivered_at: dt.datetime | None = None
    last_error: str | None = None  # safe to show: names the channel, never its URL
