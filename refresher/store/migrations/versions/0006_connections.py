"""Connections for integrators: an account's end user and tags, what a callback connected, invitations.

``accounts`` gains ``end_user_id`` (indexed: ``/v1/accounts?end_user_id=``), ``end_user`` (the integrator's
``{id, email, display_name}``) and ``tags`` (string to string). ``oauth_states`` gains ``context`` (what a
connect session or invitation hands on to the accounts the flow creates) and ``connected`` (the account keys
a completed callback stored, so a reload of its page can say "already connected"). ``invitations`` holds
the invitations and connect sessions that are single-use or revocable one by one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Written out, not imported from schema.py: a migration creates what it created the day it was written.
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("accounts", sa.Column("end_user_id", sa.String(255)))
    op.add_column("accounts", sa.Column("end_user", _JSON))
    op.add_column("accounts", sa.Column("tags", _JSON))
    op.create_index("ix_accounts_end_user_id", "accounts", ["end_user_id"])
    op.add_column("oauth_states", sa.Column("context", _JSON))
    op.add_column("oauth_states", sa.Column("connected", _JSON))
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("app", sa.String(128), nullable=False),
        sa.Column("account_key", sa.String(255)),
        sa.Column("end_user", _JSON),
        sa.Column("tags", _JSON),
        sa.Column("return_to", sa.Text()),
        sa.Column("single_use", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_invitations"),
    )
    op.create_index("ix_invitations_expires_at", "invitations", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_invitations_expires_at", table_name="invitations")
    op.drop_table("invitations")
    with op.batch_alter_table("oauth_states") as batch:
        batch.drop_column("connected")
        batch.drop_column("context")
    op.drop_index("ix_accounts_end_user_id", table_name="accounts")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("tags")
        batch.drop_column("end_user")
        batch.drop_column("end_user_id")
