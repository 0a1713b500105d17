"""Alarms remember whether a message reached a channel: ``alarms.delivered_at``.

An alarm is stamped ``last_sent_at`` before its message goes out (so a crash never causes a storm of
repeats); without knowing whether it arrived, a crash between the two, or every channel being down,
silenced it until the next reminder a day later. Now an undelivered alarm is sent again after a few
minutes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written out, not imported from schema.py: a migration creates what it created the day it was written.
    op.add_column("alarms", sa.Column("delivered_at", sa.DateTime(timezone=True)))
    # Alarms open before this migration were delivered as far as anyone can tell: do not resend them.
    op.execute("UPDATE alarms SET delivered_at = last_sent_at")


def downgrade() -> None:
    with op.batch_alter_table("alarms") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("delivered_at")
