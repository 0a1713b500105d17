"""The refresh path's statements, built once at import and executed with a parameter dict.

Why: building ``update(accounts).where(...).values(...)`` for every refresh coerced each column and
clause again (~100 ``coercions.expect`` calls per refresh) and then computed the statement's cache key
from scratch, only to find the compiled form SQLAlchemy already had. A statement built once keeps its
memoized cache key, so each execution is a lookup in the compiled cache plus the parameters.

Rules for the statements here:
* Values a call chooses are ``bindparam`` named after their column; the WHERE clause's parameters have
  other names (``account_id``, ``owner``), which SQLAlchemy requires.
* An UPDATE of ``accounts`` names its columns in ``.values()``: :func:`~refresher.store.changes.mark_account_writes`
  reads them to tell bookkeeping (a lease, the mark) from a change that a token read could see.
* What a statement always writes (the status after a success, a cleared lease) is a constant in it.
* Every parameter is given on every execution: a call that keeps a column as it is passes its current value.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, select, update

from refresher.domain import AccountStatus
from refresher.store.prepared import Prepared
from refresher.store.schema import accounts, alarms, audit_log, token_history

_a = accounts.c


def _set(*columns: str) -> dict[str, object]:
    """``.values()`` arguments binding each column to a parameter of its own name."""
    return {name: bindparam(name) for name in columns}


# The account row, for a write transaction that checks the lease; PostgreSQL locks it (SQLite's
# BEGIN IMMEDIATE already holds the write lock).
ACCOUNT_ROW = select(accounts).where(_a.id == bindparam("account_id"))
ACCOUNT_ROW_FOR_UPDATE = ACCOUNT_ROW.with_for_update()

_LEASED = (_a.id == bindparam("account_id"), _a.lease_owner == bindparam("owner"))

# Bookkeeping only (see store/changes.py: no cache invalidation, no NOTIFY): the lease is checked in the
# UPDATE itself.
MARK_STARTED = update(accounts).where(*_LEASED).values(**_set("refresh_started_at", "last_attempt_at"))
RELEASE = update(accounts).where(*_LEASED).values(lease_owner=None, lease_expires_at=None)

# What a settling write always writes: the store answers with these without reading the row again.
RELEASED: dict[str, object] = {"refresh_started_at": None, "lease_owner": None, "lease_expires_at": None}
SAVED: dict[str, object] = {
    **RELEASED,
    "status": str(AccountStatus.ACTIVE),
    "consecutive_failures": 0,
    "last_error": None,
    "next_attempt_at": None,
}

# A successful refresh: the new token set in, failures cleared, the lease given back.
SAVE_TOKENS = (
    update(accounts)
    .where(_a.id == bindparam("account_id"))
    .values(
        **_set(
            "access_token",
            "refresh_token",
            "access_expires_at",
            "refresh_expires_at",
            "scopes",
            "raw",
            "previous_refresh_token",
            "last_success_at",
            "last_attempt_at",
            "version",
            "updated_at",
        ),
        **SAVED,
    )
)

RECORD_FAILURE = (
    update(accounts)
    .where(_a.id == bindparam("account_id"))
    .values(
        **_set("consecutive_failures", "last_error", "last_attempt_at", "next_attempt_at", "status", "updated_at"),
        **RELEASED,
    )
)

_h = token_history.c
PUSH_HISTORY = insert(token_history).values(
    **_set(
        "account_id",
        "version",
        "access_token",
        "refresh_token",
        "access_expires_at",
        "refresh_expires_at",
        "scopes",
        "raw",
        "replaced_at",
    )
)
# Everything but the newest ``keep`` versions of one account.
PRUNE_HISTORY = delete(token_history).where(
    _h.account_id == bindparam("account_id"),
    _h.id.not_in(
        select(_h.id)
        .where(_h.account_id == bindparam("account_id"))
        .order_by(_h.version.desc())
        .limit(bindparam("keep"))
        .scalar_subquery()
    ),
)

INSERT_AUDIT = insert(audit_log).values(
    **_set(
        "at",
        "app",
        "account_key",
        "outcome",
        "duration_ms",
        "attempts",
        "error_class",
        "error_code",
        "request_id",
        "message",
    )
)

# Read by the alert policy after every settled refresh.
_al = alarms.c
OPEN_ALARMS_OF_ACCOUNT = (
    select(alarms)
    .where(_al.resolved_at.is_(None), _al.app == bindparam("app"), _al.account_key == bindparam("account_key"))
    .order_by(_al.opened_at, _al.app, _al.account_key)
)


# The writes of the refresh path's one-hop transactions (store/sync_tx.py), run on the driver's cursor
# (store/prepared.py); the statements above stay for the asynchronous paths (restore, an operator's audit).
class Run:
    MARK_STARTED = Prepared(MARK_STARTED)
    RELEASE = Prepared(RELEASE)
    SAVE_TOKENS = Prepared(SAVE_TOKENS)
    RECORD_FAILURE = Prepared(RECORD_FAILURE)
    PUSH_HISTORY = Prepared(PUSH_HISTORY)
    PRUNE_HISTORY = Prepared(PRUNE_HISTORY)
    INSERT_AUDIT = Prepared(INSERT_AUDIT)
