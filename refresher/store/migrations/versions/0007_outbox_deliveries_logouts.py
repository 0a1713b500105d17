"""Durable delivery: the lifecycle-event outbox, per-channel alarm delivery, console logouts.

``event_outbox`` holds every lifecycle event (docs/events.md) from the moment its cause is stored until
each of its receivers took it, so a crash or a restart between the two sends it again instead of losing
it (at least once; receivers deduplicate on ``idempotency_key``). A replica delivering a row leases it
(``lease_owner`` / ``lease_expires_at``) so two replicas do not both send it at once.

``alarm_deliveries`` says, per alarm and per channel, how the last message went (the console's alarms
page). ``console_logouts`` remembers a logged-out console session until its cookie would have expired
anyway, so every replica refuses a copied cookie, not only the one that saw the logout.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Written out, not imported from schema.py: a migration creates what it created the day it was written.
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("app", sa.String(128), nullable=False),
        sa.Column("account_key", sa.String(255), nullable=False),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(255)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.String(512)),
        sa.PrimaryKeyConstraint("id", name="pk_event_outbox"),
        sa.UniqueConstraint("idempotency_key", name="uq_event_outbox_idempotency_key"),
    )
    op.create_index("ix_event_outbox_delivered_at_next_attempt_at", "event_outbox", ["delivered_at", "next_attempt_at"])
    op.create_table(
        "alarm_deliveries",
        sa.Column("app", sa.String(128), nullable=False),
        sa.Column("account_key", sa.String(255), nullable=False),
        sa.Column("cause", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.String(512)),
        sa.PrimaryKeyConstraint("app", "account_key", "cause", "channel", name="pk_alarm_deliveries"),
    )
    op.create_table(
        "console_logouts",
        sa.Column("sid", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sid", name="pk_console_logouts"),
    )
    op.create_index("ix_console_logouts_expires_at", "console_logouts", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_console_logouts_expires_at", table_name="console_logouts")
    op.drop_table("console_logouts")
    op.drop_table("alarm_deliveries")
    op.drop_index("ix_event_outbox_delivered_at_next_attempt_at", table_name="event_outbox")
    op.drop_table("event_outbox")
