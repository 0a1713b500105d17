"""The token store contract, as small role protocols (:class:`LeaseStore`, :class:`AlarmStore`, …) that
each caller depends on, and :class:`Store`, all of them. The store knows nothing of HTTP or platforms.

Rules every implementation keeps (ARCHITECTURE.md, "The store"):
* ``claim_due`` / ``claim`` take a lease (owner, expiry) atomically and return the account *as read
  under that lease*, so a worker always sees what another replica committed a moment ago.
* ``save_tokens`` writes the new token set, moves the previous one to history, clears failures and
  releases the lease in **one** transaction, and returns only after it committed.
* Only the lease owner may save, record a failure or release; otherwise :class:`LeaseLost`.
* Tokens are encrypted at rest when keys are configured.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from refresher.domain import AccountStatus, ErrorInfo, Grant, Identity, TokenSet
from refresher.store.base import (
    Account,
    Alarm,
    AlarmDelivery,
    AuditEntry,
    HistoryEntry,
    OAuthState,
    OutboxEvent,
)
from refresher.store.connection_types import ConnectionStore

# Every method is a coroutine and one transaction. :class:`Store` is all of them (the SQL store);
# in-memory stand-ins for some roles are in :mod:`refresher.store.memory`.


class Lifecycle(Protocol):
    @property
    def encrypted(self) -> bool:
        """Whether tokens are encrypted at rest (``store.encryption_keys`` is set)."""

    async def open(self) -> None:
        """Connect and apply pending migrations (refuses a database newer than the code)."""

    async def close(self) -> None: ...

    async def ping(self, *, write: bool = False) -> None:
        """Raise :class:`StoreError` when the database cannot be reached, or with ``write`` when it would
        not take a write now (locked past its busy timeout, read-only) (for ``/readyz``)."""


class SchemaAdmin(Protocol):
    @property
    def safe_url(self) -> str:
        """The store's URL without its password, for messages."""

    async def migrate(self) -> tuple[str | None, str]:
        """Connect and apply pending migrations; returns the revisions before and after."""


class AccountLookup(Protocol):
    async def get(self, app: str, key: str) -> Account | None: ...


@runtime_checkable
class ChangeTracking(Protocol):
    def change_token(self) -> tuple[int, int] | None:
        """A value that changes whenever a committed transaction (of any process) may have changed an
        account, or ``None`` when that cannot be known now: what a cache of accounts checks before each
        hit (:mod:`refresher.token_cache`). A store without it is never cached."""


class AccountReader(AccountLookup, Protocol):
    async def list(
        self,
        app: str | None = None,
        status: AccountStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        secrets: bool = True,
        end_user_id: str | None = None,
        tag: tuple[str, str] | None = None,
    ) -> Sequence[Account]:
        """Accounts by app and key; ``secrets=False`` reads no token (``tokens`` None), only what a listing
        shows, so it works whatever ``store.encryption_keys`` says. ``end_user_id`` and ``tag`` (name,
        value) filter in the database, so a page of matches is a full page."""

    async def count(self, app: str | None = None, status: AccountStatus | None = None) -> int: ...

    async def count_by_status(self, app: str) -> dict[AccountStatus, int]:
        """Accounts of ``app`` per status, every status present (zero included)."""

    async def accounts_refresh_expiring(self, app: str, before: dt.datetime, limit: int = 1000) -> Sequence[Account]:
        """Active accounts of ``app`` whose refresh token expires before ``before``, soonest first
        (for "re-authorize soon" alarms)."""

    async def earliest_expiry(self, app: str) -> dt.datetime | None:
        """Earliest access-token expiry among the app's active accounts (for metrics)."""

    async def earliest_urgent_retry(self, app: str, expiring_before: dt.datetime) -> dt.datetime | None:
        """The earliest next attempt among the app's active accounts that are backing off after a failed
        refresh and whose access token expires by ``expiring_before`` (for the scheduler's urgent
        retries: a retry the regular ticks would leave too late)."""


class AccountWriter(Protocol):
    async def upsert_grant(self, app: str, platform: str, grant: Grant) -> Account:
        """Store an authorization: insert a new account, or update the existing one *in place* (same id,
        new tokens, status active, failures and next attempt cleared, previous tokens to history)."""

    async def set_status(
        self, app: str, key: str, status: AccountStatus, *, event: OutboxEvent | None = None
    ) -> Account:
        """With ``event``: stored in the same transaction when the status changes (the lifecycle outbox)."""

    async def delete(self, app: str, key: str, *, event: OutboxEvent | None = None) -> bool:
        """With ``event``: stored in the same transaction when the account existed."""

    async def import_account(
        self, app: str, platform: str, identity: Identity, tokens: TokenSet, status: AccountStatus
    ) -> Account:
        """Bring an account in from another tool (same as ``upsert_grant`` but keeps the given status)."""


class LeaseStore(Protocol):
    """Claims and settling. Only the lease owner may save, record a failure or release."""

    async def claim_due(
        self, app: str, horizon: dt.timedelta, limit: int, owner: str, lease_ttl: dt.timedelta
    ) -> Sequence[Account]:
        """Lease up to ``limit`` active accounts of ``app`` that no live lease holds and whose access
        token expires before ``now + horizon`` or whose retry (``next_attempt_at``) is due.

        An account with a future ``next_attempt_at`` (backing off after a failure) is not claimed for
        expiry alone unless its access token would otherwise expire before that retry."""

    async def claim(self, app: str, key: str, owner: str, lease_ttl: dt.timedelta) -> Account | None:
        """Lease one account now whatever its expiry (forced refresh); ``None`` if another holds it."""

    async def mark_refresh_started(self, account_id: int, owner: str) -> None:
        """Record that a refresh call is about to go out under this lease (commits)."""

    async def save_tokens(
        self, account_id: int, owner: str, tokens: TokenSet, audit: AuditEntry | None = None
    ) -> Account:
        """One transaction: previous tokens → history (pruned to ``history_versions``), new tokens
        stored, status active, failures cleared, ``last_success_at`` set, lease released, and the
        ``audit`` row if given (a row that cannot be written is skipped, never the tokens)."""

    async def record_failure(
        self,
        account_id: int,
        owner: str,
        error: ErrorInfo,
        next_attempt_at: dt.datetime | None,
        status: AccountStatus | None = None,
        audit: AuditEntry | None = None,
    ) -> Account:
        """Count a failed sweep: failures + 1, last error, next attempt, optional status, lease released,
        and the ``audit`` row if given, in one transaction."""

    async def release(self, account_id: int, owner: str) -> None:
        """Give a lease back without changing anything else (shutdown, nothing to do)."""

    async def lease_holders(self) -> Sequence[str]:
        """The distinct owners holding a lease on any account (expired leases included)."""

    async def release_owner(self, owner: str) -> int:
        """Give back every lease ``owner`` holds (a dead process's), keeping ``refresh_started_at`` so an
        interrupted refresh is still recognised; returns how many."""

    async def expired_while_leased(self, app: str, limit: int = 100) -> Sequence[Account]:
        """Active accounts of ``app`` that are leased although their access token has expired."""


class HistoryStore(Protocol):
    async def history(self, app: str, key: str, limit: int = 20) -> Sequence[HistoryEntry]: ...

    async def restore(self, app: str, key: str, version: int) -> Account:
        """Make an older token set from history current again (operator's choice)."""


class AuditLog(Protocol):
    async def audit(self, entry: AuditEntry) -> None: ...

    async def audit_log(
        self, app: str | None = None, account_key: str | None = None, limit: int = 100
    ) -> Sequence[AuditEntry]: ...

    async def prune_audit(self, older_than: dt.datetime, limit: int | None = None) -> int:
        """Delete audit rows older than ``older_than`` (at most ``limit``, oldest first); returns how many."""


class AlarmStore(Protocol):
    """Alarm dedupe state, shared by replicas."""

    async def open_alarms(self, app: str | None = None, account_key: str | None = None) -> Sequence[Alarm]: ...

    async def get_alarm(self, app: str, account_key: str, cause: str) -> Alarm | None: ...

    async def put_alarm(self, alarm: Alarm) -> None:
        """Insert or replace the alarm of (app, account_key, cause)."""

    async def note_alarm_sent(
        self,
        app: str,
        account_key: str,
        cause: str,
        now: dt.datetime,
        quiet_since: dt.datetime,
        details: Mapping[str, Any],
        undelivered_since: dt.datetime | None = None,
    ) -> bool:
        """Atomically decide who sends an alarm message: open the alarm (or reopen a resolved one), or
        stamp ``last_sent_at = now`` on an open one last sent at or before ``quiet_since`` (or, not
        delivered, at or before ``undelivered_since``), and say True; say False if it is open and was
        sent more recently (by this process or another replica). The new message is not delivered yet."""

    async def mark_alarm_delivered(self, app: str, account_key: str, cause: str, sent_at: dt.datetime) -> None:
        """A channel took the message stamped ``sent_at``; a later message of the alarm stays undelivered."""

    async def prune_resolved_alarms(self, older_than: dt.datetime, limit: int = 500) -> int:
        """Forget up to ``limit`` alarms resolved before ``older_than``, with their per-channel delivery
        rows; returns how many alarms went. Open alarms are never pruned."""


class StateStore(Protocol):
    """Single-use OAuth ``state`` values of onboarding flows (issue 5)."""

    async def put_state(self, state: OAuthState) -> None: ...

    async def consume_state(self, state: str, app: str) -> OAuthState | None:
        """Mark a live, unused state of ``app`` used and return it, atomically (single use); ``None``
        if there is no such state (unknown, used, expired, or another app's: that one stays usable)."""

    async def find_state(self, state: str) -> OAuthState | None:
        """The stored state row, used or not, only to explain a refusal; it never grants a flow."""


class EventOutbox(Protocol):
    """Durable lifecycle events, delivered at least once by whichever replica leases them."""

    async def add_event(self, event: OutboxEvent) -> bool:
        """Store an event to deliver now (one transaction); False if its idempotency key is stored already
        (a reminder of the same event: it is not sent again)."""

    async def claim_events(self, owner: str, lease_ttl: dt.timedelta, limit: int = 50) -> Sequence[OutboxEvent]:
        """Lease up to ``limit`` undelivered events whose next attempt is due and that no live lease holds
        (an expired lease is taken over), oldest first."""

    async def settle_event(
        self, event_id: int, owner: str, *, error: str | None = None, retry_at: dt.datetime | None = None
    ) -> bool:
        """After one delivery attempt under the lease: attempts + 1 and the lease released; delivered (no
        ``error``), retried at ``retry_at``, or given up (``error`` without ``retry_at``: delivered_at set,
        ``last_error`` kept). False, and nothing changed, when ``owner`` no longer holds the lease."""

    async def prune_events(self, older_than: dt.datetime, limit: int = 500) -> int:
        """Delete events settled before ``older_than`` (at most ``limit``); returns how many."""

    async def event_lease_holders(self) -> Sequence[str]:
        """The distinct owners leasing an undelivered event (expired leases included)."""

    async def release_event_leases(self, owner: str) -> int:
        """Give back the leases ``owner`` (a dead process) holds on events; returns how many."""

    async def events(self, app: str | None = None, limit: int = 100) -> Sequence[OutboxEvent]:
        """The newest events, delivered or not, newest first (operators' inspection, tests)."""


class KeyAdmin(Protocol):
    async def rotate_keys(self) -> int:
        """Re-encrypt every token (current and history) under the first key; returns rows rewritten."""


class IdentityWriter(Protocol):
    async def update_identity(self, app: str, key: str, identity: Identity) -> Account | None:
        """Store what the platform now says about an account (kind, id, name, region and ``extra``, the
        JSON identity columns; never its tokens or status); ``None`` if the account is gone. Used after a
        refresh has committed: a refresh never waits on it."""


class DeliveryStore(Protocol):
    async def record_delivery(self, delivery: AlarmDelivery) -> None:
        """Insert or replace the row of (app, account_key, cause, channel)."""

    async def alarm_deliveries(self, alarms: Sequence[tuple[str, str, str]]) -> Sequence[AlarmDelivery]:
        """The rows of these (app, account_key, cause) alarms, by alarm and channel name."""


class LogoutStore(Protocol):
    """Logged-out console sessions, so every replica refuses a copied cookie."""

    async def add_logout(self, sid: str, expires_at: dt.datetime, now: dt.datetime) -> None:
        """Remember ``sid`` until ``expires_at`` (when its cookie expires anyway), and forget sessions
        whose cookie expired before ``now``. Times are the cookie's own (wall clock), not the store's."""

    async def logged_out(self, sid: str) -> bool:
        """Whether ``sid`` was logged out (a remembered row; its cookie may have expired since)."""


class RefreshStore(AccountLookup, LeaseStore, IdentityWriter, Protocol):
    """What :class:`refresher.refresh.Refresher` uses: look an account up, claim it, settle it, and keep
    its identity current."""


class AlertStore(AccountLookup, AlarmStore, Protocol):
    """What the alert policy uses: alarm dedupe state, and the account an alarm is about."""


class OnboardingStore(AccountWriter, StateStore, Protocol):
    """What an onboarding flow uses: its single-use states, and the account a grant creates or updates."""


class Store(
    Lifecycle,
    SchemaAdmin,
    AccountReader,
    AccountWriter,
    IdentityWriter,
    LeaseStore,
    HistoryStore,
    AuditLog,
    AlarmStore,
    StateStore,
    KeyAdmin,
    ConnectionStore,
    EventOutbox,
    DeliveryStore,
    LogoutStore,
    Protocol,
):
    """The whole store (what the daemon and the CLI open)."""
