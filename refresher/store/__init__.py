"""The durable token store: one :class:`Store` contract, one SQL implementation for SQLite and PostgreSQL."""

from refresher.store.base import (
    Account,
    AccountNotFound,
    Alarm,
    AuditEntry,
    HistoryEntry,
    LeaseLost,
    OAuthState,
    Store,
    StoreError,
)
from refresher.store.sql import SqlStore, open_store

__all__ = [
    "Account",
    "AccountNotFound",
    "Alarm",
    "AuditEntry",
    "HistoryEntry",
    "LeaseLost",
    "OAuthState",
    "SqlStore",
    "Store",
    "StoreError",
    "open_store",
]
