"""The durable token store: role protocols and :class:`Store` (all of them), one SQL implementation for
SQLite and PostgreSQL (:class:`SqlStore`, opened through :func:`open_store`)."""

from refresher.store.base import (
    Account,
    AccountNotFound,
    Alarm,
    AuditEntry,
    HistoryEntry,
    LeaseLost,
    OAuthState,
    StoreError,
)
from refresher.store.roles import (
    AccountLookup,
    AccountReader,
    AccountWriter,
    AlarmStore,
    AlertStore,
    AuditLog,
    HistoryStore,
    KeyAdmin,
    LeaseStore,
    Lifecycle,
    OnboardingStore,
    RefreshStore,
    SchemaAdmin,
    StateStore,
    Store,
)
from refresher.store.sql import SqlStore, open_store

__all__ = [
    "Account",
    "AccountLookup",
    "AccountNotFound",
    "AccountReader",
    "AccountWriter",
    "Alarm",
    "AlarmStore",
    "AlertStore",
    "AuditEntry",
    "AuditLog",
    "HistoryEntry",
    "HistoryStore",
    "KeyAdmin",
    "LeaseLost",
    "LeaseStore",
    "Lifecycle",
    "OAuthState",
    "OnboardingStore",
    "RefreshStore",
    "SchemaAdmin",
    "SqlStore",
    "StateStore",
    "Store",
    "StoreError",
    "open_store",
]
