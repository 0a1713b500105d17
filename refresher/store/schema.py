"""The store's tables (SQLAlchemy Core). Alembic migrations in ``migrations/versions`` create them;
a test checks that the migrations and these definitions agree."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from refresher.domain import as_utc

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zones: values are stored as naive UTC text in one fixed format, so comparing
    and ordering them as strings in SQL is comparing them as times.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else as_utc(value)


Json = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit id.
Id = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("app", String(128), nullable=False),
    Column("platform", String(64), nullable=False),
    Column("key", String(255), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("platform_id", String(255), nullable=False),
    Column("name", String(512)),
    Column("region", String(32)),
    Column("extra", Json, nullable=False),
    Column("status", String(32), nullable=False),
    # Tokens: clear text, or "enc:v1:<kid>:…" when encryption keys are configured.
    Column("access_token", Text),
    Column("refresh_token", Text),
    Column("access_expires_at", UTCDateTime()),
    Column("refresh_expires_at", UTCDateTime()),
    Column("scopes", Json, nullable=False),
    Column("raw", Json, nullable=False),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("last_success_at", UTCDateTime()),
    Column("last_attempt_at", UTCDateTime()),
    Column("last_error", Json),
    Column("next_attempt_at", UTCDateTime()),
    Column("lease_owner", String(255)),
    Column("lease_expires_at", UTCDateTime()),
    Column("refresh_started_at", UTCDateTime()),
    Column("version", Integer, nullable=False, default=0),
    Column("previous_refresh_token", Text),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The integrator's end user and tags (connect sessions, invitations; migration 0006).
    Column("end_user_id", String(255), index=True),
    Column("end_user", Json),
    Column("tags", Json),
    UniqueConstraint("app", "key"),
    Index(None, "app", "status", "access_expires_at"),
    Index(None, "app", "status", "next_attempt_at"),  # claim_due's retry scan (migration 0002)
    Index(None, "app", "status", "refresh_expires_at"),  # re-authorize-soon query per tick (migration 0003)
)

token_history = Table(
    "token_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("account_id", Id, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("access_token", Text, nullable=False),
    Column("refresh_token", Text, nullable=False),
    Column("access_expires_at", UTCDateTime(), nullable=False),
    Column("refresh_expires_at", UTCDateTime()),
    Column("scopes", Json, nullable=False),
    Column("raw", Json, nullable=False),
    Column("replaced_at", UTCDateTime(), nullable=False),
    UniqueConstraint("account_id", "version"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("app", String(128), nullable=False),
    Column("account_key", String(255), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("error_class", String(64)),
    Column("error_code", String(128)),
    Column("request_id", String(255)),
    Column("message", Text),
    Index(None, "at"),
    Index(None, "app", "account_key"),
)

alarms = Table(
    "alarms",
    metadata,
    Column("app", String(128), primary_key=True),
    Column("account_key", String(255), primary_key=True),
    Column("cause", String(64), primary_key=True),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("last_sent_at", UTCDateTime()),
    Column("resolved_at", UTCDateTime()),
    Column("details", Json, nullable=False),
    Column("delivered_at", UTCDateTime()),  # a channel took the message of last_sent_at (0004)
)

oauth_states = Table(
    "oauth_states",
    metadata,
    Column("state", String(255), primary_key=True),
    Column("app", String(128), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("return_to", Text),
    Column("pkce_verifier", Text),  # encrypted like the tokens
    Column("redirect_uri", Text),
    Column("used_at", UTCDateTime()),  # set once, by the callback that took it; a used row never grants
    Column("context", Json),  # end_user, tags, session id, invitation of the flow (0006)
    Column("connected", Json),  # the account keys the callback stored, for a reload's page (0006)
    Index(None, "expires_at"),
)

# Invitations and connect sessions that are single-use or revocable one by one (0006). Plain signed
# invitations (``refresher invite`` without --single-use) need no row.
invitations = Table(
    "invitations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # "invite" | "reauth" | "session"
    Column("app", String(128), nullable=False),
    Column("account_key", String(255)),
    Column("end_user", Json),
    Column("tags", Json),
    Column("return_to", Text),
    Column("single_use", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
    Index(None, "expires_at"),
)

# Lifecycle events from the moment their cause is stored until every receiver took them (0007).
event_outbox = Table(
    "event_outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(64), nullable=False, unique=True),
    Column("kind", String(64), nullable=False),
    Column("app", String(128), nullable=False),
    Column("account_key", String(255), nullable=False),
    Column("payload", Json, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("lease_owner", String(255)),  # the replica delivering it now
    Column("lease_expires_at", UTCDateTime()),
    Column("delivered_at", UTCDateTime()),  # every receiver took it, or its attempts ran out
    Column("last_error", String(512)),
    Index(None, "delivered_at", "next_attempt_at"),
)

# How the last message of each alarm went, per channel: the console's alarms page (0007).
alarm_deliveries = Table(
    "alarm_deliveries",
    metadata,
    Column("app", String(128), primary_key=True),
    Column("account_key", String(255), primary_key=True),
    Column("cause", String(64), primary_key=True),
    Column("channel", String(128), primary_key=True),
    Column("state", String(16), nullable=False),  # "sending" | "delivered" | "failed"
    Column("attempts", Integer, nullable=False),
    Column("last_attempt_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
    Column("last_error", String(512)),
)

# Logged-out console sessions until their cookie would have expired anyway: every replica refuses them (0007).
console_logouts = Table(
    "console_logouts",
    metadata,
    Column("sid", String(64), primary_key=True),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index(None, "expires_at"),
)
