"""Initial schema: accounts, token history, audit log, alarms, OAuth states.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Types are spelled out here rather than imported from schema.py, so this migration keeps creating
# exactly what it created the day it was written, whatever schema.py becomes later.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("app", sa.String(128), nullable=False),
        sa.Column("platform", sa.String(64), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("platform_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(512)),
        sa.Column("region", sa.String(32)),
        sa.Column("extra", Json, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("access_token", sa.Text()),
        sa.Column("refresh_token", sa.Text()),
        sa.Column("access_expires_at", _ts()),
        sa.Column("refresh_expires_at", _ts()),
        sa.Column("scopes", Json, nullable=False),
        sa.Column("raw", Json, nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_success_at", _ts()),
        sa.Column("last_attempt_at", _ts()),
        sa.Column("last_error", Json),
        sa.Column("next_attempt_at", _ts()),
        sa.Column("lease_owner", sa.String(255)),
        sa.Column("lease_expires_at", _ts()),
        sa.Column("refresh_started_at", _ts()),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("previous_refresh_token", sa.Text()),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("app", "key", name="uq_accounts_app_key"),
    )
    op.create_index("ix_accounts_app_status_access_expires_at", "accounts", ["app", "status", "access_expires_at"])
    op.create_table(
        "token_history",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("account_id", Id, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=False),
        sa.Column("access_expires_at", _ts(), nullable=False),
        sa.Column("refresh_expires_at", _ts()),
        sa.Column("scopes", Json, nullable=False),
        sa.Column("raw", Json, nullable=False),
        sa.Column("replaced_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_token_history"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], ondelete="CASCADE", name="fk_token_history_account_id_accounts"
        ),
        sa.UniqueConstraint("account_id", "version", name="uq_token_history_account_id_version"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("app", sa.String(128), nullable=False),
        sa.Column("account_key", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_class", sa.String(64)),
        sa.Column("error_code", sa.String(128)),
        sa.Column("request_id", sa.String(255)),
        sa.Column("message", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_app_account_key", "audit_log", ["app", "account_key"])
    op.create_table(
        "alarms",
        sa.Column("app", sa.String(128), nullable=False),
        sa.Column("account_key", sa.String(255), nullable=False),
        sa.Column("cause", sa.String(64), nullable=False),
        sa.Column("opened_at", _ts(), nullable=False),
        sa.Column("last_sent_at", _ts()),
        sa.Column("resolved_at", _ts()),
        sa.Column("details", Json, nullable=False),
        sa.PrimaryKeyConstraint("app", "account_key", "cause", name="pk_alarms"),
    )
    op.create_table(
        "oauth_states",
        sa.Column("state", sa.String(255), nullable=False),
        sa.Column("app", sa.String(128), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=False),
        sa.Column("return_to", sa.Text()),
        sa.Column("pkce_verifier", sa.Text()),
        sa.Column("redirect_uri", sa.Text()),
        sa.PrimaryKeyConstraint("state", name="pk_oauth_states"),
    )
    op.create_index("ix_oauth_states_expires_at", "oauth_states", ["expires_at"])


def downgrade() -> None:
    op.drop_table("oauth_states")
    op.drop_table("alarms")
    op.drop_table("audit_log")
    op.drop_table("token_history")
    op.drop_table("accounts")
