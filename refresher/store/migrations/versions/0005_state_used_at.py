"""A used OAuth state is marked in its own column, ``oauth_states.used_at``, never by a row of its own.

Before, a consumed state was deleted and a tombstone row ``used:<sha256>`` put in its place to explain a
replay; the tombstone was itself a consumable state, so a used state could be turned into fresh ones.
Now the row stays and is marked used; only an unused row can be consumed. Old tombstones are removed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written out, not imported from schema.py: a migration creates what it created the day it was written.
    op.add_column("oauth_states", sa.Column("used_at", sa.DateTime(timezone=True)))
    op.execute("DELETE FROM oauth_states WHERE state LIKE 'used:%'")


def downgrade() -> None:
    with op.batch_alter_table("oauth_states") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("used_at")
