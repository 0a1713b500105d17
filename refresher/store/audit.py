"""The audit log: one row per settled refresh (written in the settling transaction) or operator action."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import delete, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from refresher.domain import as_utc
from refresher.store import hot
from refresher.store.base import AuditEntry
from refresher.store.codec import MESSAGE_LIMIT, scrub
from refresher.store.core import StoreCore
from refresher.store.schema import accounts, audit_log

_log = structlog.get_logger("refresher.store")


class SqlAudit(StoreCore):
    async def audit(self, entry: AuditEntry) -> None:
        async with self._tx(write=True) as conn:
            row = None
            if entry.message:  # only a message can carry a token to scrub
                query = select(accounts).where(accounts.c.app == entry.app, accounts.c.key == entry.account_key)
                row = (await conn.execute(query)).first()
            await self._insert_audit(conn, entry, self._codec.row_secrets(row) if row is not None else frozenset())

    async def _insert_audit(self, conn: AsyncConnection, entry: AuditEntry, secrets: frozenset[str]) -> None:
        """Add an audit row under a savepoint: a row the database refuses is logged and skipped, and the
        transaction around it (which may hold a rotated token) goes on."""
        try:
            async with conn.begin_nested():
                await conn.execute(hot.INSERT_AUDIT, _audit_values(entry, secrets))
        except DBAPIError as exc:
            _log.error("store.audit_failed", app=entry.app, account=entry.account_key, error=type(exc.orig).__name__)

    def _insert_audit_sync(self, conn: Connection, entry: AuditEntry, secrets: frozenset[str]) -> None:
        try:
            with conn.begin_nested():
                hot.Run.INSERT_AUDIT.run(conn, _audit_values(entry, secrets))
        except DBAPIError as exc:
            _log.error("store.audit_failed", app=entry.app, account=entry.account_key, error=type(exc.orig).__name__)

    async def audit_log(
        self, app: str | None = None, account_key: str | None = None, limit: int = 100
    ) -> Sequence[AuditEntry]:
        stmt = select(audit_log)
        if app is not None:
            stmt = stmt.where(audit_log.c.app == app)
        if account_key is not None:
            stmt = stmt.where(audit_log.c.account_key == account_key)
        stmt = stmt.order_by(audit_log.c.at.desc(), audit_log.c.id.desc()).limit(limit)
        async with self._tx() as conn:
            return [
                AuditEntry(
                    at=row.at,
                    app=row.app,
                    account_key=row.account_key,
                    outcome=row.outcome,
                    duration_ms=row.duration_ms,
                    attempts=row.attempts,
                    error_class=row.error_class,
                    error_code=row.error_code,
                    request_id=row.request_id,
                    message=row.message,
                )
                for row in await conn.execute(stmt)
            ]

    async def prune_audit(self, older_than: dt.datetime, limit: int | None = None) -> int:
        stmt = delete(audit_log).where(audit_log.c.at < as_utc(older_than))
        if limit is not None:
            # The oldest ``limit`` rows (index on ``at``), so each call is a short write transaction.
            oldest = select(audit_log.c.id).where(audit_log.c.at < as_utc(older_than))
            oldest = oldest.order_by(audit_log.c.at, audit_log.c.id).limit(limit)
            stmt = delete(audit_log).where(audit_log.c.id.in_(oldest.scalar_subquery()))
        async with self._tx(write=True) as conn:
            result = await conn.execute(stmt)
            return int(result.rowcount or 0)


def _audit_values(entry: AuditEntry, secrets: frozenset[str]) -> dict[str, Any]:
    """The audit row's columns: the message scrubbed of the account's tokens, every field cut to its column."""
    message = entry.message[:MESSAGE_LIMIT] if entry.message else entry.message
    if message and secrets:
        message = scrub(message, secrets)  # never a token in the audit table, whatever the caller wrote
    values = {
        "at": as_utc(entry.at),
        "app": entry.app,
        "account_key": entry.account_key,
        "outcome": entry.outcome[:32],
        "duration_ms": entry.duration_ms,
        "attempts": entry.attempts,
        # Cut to the columns' sizes: a platform's overlong error code must not fail the insert.
        "error_class": entry.error_class[:64] if entry.error_class else None,
        "error_code": entry.error_code[:128] if entry.error_code else None,
        "request_id": entry.request_id[:255] if entry.request_id else None,
        "message": message,
    }
    return values
