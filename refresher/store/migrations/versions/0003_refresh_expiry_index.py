"""Index for the "re-authorize soon" query every tick runs: (app, status, refresh_expires_at).

Without it, ``accounts_refresh_expiring`` read every active account of the app on each tick.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_accounts_app_status_refresh_expires_at", "accounts", ["app", "status", "refresh_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_accounts_app_status_refresh_expires_at", table_name="accounts")
