"""The token store on SQLAlchemy Core (async): SQLite by default, PostgreSQL for several replicas.

:class:`SqlStore` is the concerns of the store put together, each in its own module: the database and
its transactions (:mod:`~refresher.store.engine`), the row codec (:mod:`~refresher.store.codec`),
accounts, leases and settling, history, audit, alarms, OAuth states, key rotation and connections
(end users, tags, invitations). Open one with
:func:`open_store`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refresher.domain import Clock
from refresher.store.accounts import SqlAccounts
from refresher.store.alarms import SqlAlarms
from refresher.store.browse import SqlBrowse
from refresher.store.connections import SqlConnections
from refresher.store.deliveries import SqlDeliveries
from refresher.store.engine import alembic_config, head_revision
from refresher.store.keys import SqlKeys
from refresher.store.leases import SqlLeases
from refresher.store.logouts import SqlLogouts
from refresher.store.states import SqlStates

if TYPE_CHECKING:
    from refresher.config import StoreSettings

__all__ = ["SqlStore", "alembic_config", "head_revision", "open_store"]


class SqlStore(
    SqlAccounts, SqlLeases, SqlAlarms, SqlStates, SqlKeys, SqlBrowse, SqlConnections, SqlDeliveries, SqlLogouts
):
    """Every role of :mod:`refresher.store.roles` on SQLite (aiosqlite) or PostgreSQL (psycopg 3), and the
    console's read-only queries (:mod:`~refresher.store.browse`)."""


def open_store(settings: StoreSettings, clock: Clock, *, create: bool = True) -> SqlStore:
    """The one way to build the store of a config (not yet connected: call :meth:`SqlStore.open`).

    ``create=False`` (commands that only read) refuses a SQLite file that does not exist instead of
    creating it and its directories.
    """
    return SqlStore(
        settings.url,
        clock=clock,
        encryption_keys=[key.get_secret_value() for key in settings.encryption_keys],
        history_versions=settings.history_versions,
        pool_size=settings.pool_size,
        create=create,
    )
