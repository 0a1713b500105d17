"""The refresh path's PostgreSQL pool pings a connection only after it sat idle (store/idle_ping.py):
a connection that died while idle is replaced before use, and one that died a moment after its last
use fails one transaction, after which the pool is fresh again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from refresher.domain import FakeClock
from refresher.store import idle_ping
from refresher.store.base import StoreError
from refresher.store.sql import SqlStore
from tests.support import pg_database

pytestmark = pytest.mark.slow


@pytest.fixture
async def pg_store(clock: FakeClock) -> AsyncIterator[tuple[SqlStore, str]]:
    with pg_database() as url:
        store = SqlStore(url, clock=clock)
        await store.open()
        try:
            yield store, url.rsplit("/", 1)[1].split("?")[0]
        finally:
            await store.close()


def _kill_connections(database: str) -> int:
    """Terminate every other session of ``database`` (what a server restart or a failover does)."""
    from tests.support import PG_URL

    with psycopg.connect(PG_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


async def test_a_connection_that_died_idle_is_replaced_before_use(
    pg_store: tuple[SqlStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, database = pg_store
    monkeypatch.setattr(idle_ping, "IDLE_BEFORE_PING", 0.2)
    assert await store.open_alarms("app", "shop:1") == []  # the refresh path's pool has a connection now
    assert _kill_connections(database) >= 1
    await asyncio.sleep(0.3)
    assert await store.open_alarms("app", "shop:1") == []  # pinged, found dead, replaced: no error


async def test_without_the_ping_a_dead_connection_fails_once_then_the_pool_recovers(
    pg_store: tuple[SqlStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The negative control of the test above, and what a death within the idle threshold costs.
    store, database = pg_store
    monkeypatch.setattr(idle_ping, "IDLE_BEFORE_PING", 3600.0)
    assert await store.open_alarms("app", "shop:1") == []
    assert _kill_connections(database) >= 1
    await asyncio.sleep(0.3)
    with pytest.raises(StoreError):
        await store.open_alarms("app", "shop:1")
    assert await store.open_alarms("app", "shop:1") == []


async def test_a_write_on_the_drivers_cursor_over_a_dead_connection_fails_once_then_the_pool_recovers(
    pg_store: tuple[SqlStore, str], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh path's writes bypass ``Connection.execute`` (store/prepared.py): a disconnect there
    must still leave the pool without the dead connection, as SQLAlchemy's own statements do."""
    import datetime as dt

    from refresher.domain import Grant, Identity, TokenSet

    store, database = pg_store
    monkeypatch.setattr(idle_ping, "IDLE_BEFORE_PING", 3600.0)
    tokens = TokenSet("AT", "RT", clock.now() + dt.timedelta(minutes=5), clock.now() + dt.timedelta(days=30))
    await store.upsert_grant("app", "shopee", Grant(Identity(key="shop:1", kind="shop", platform_id="1"), tokens))
    (account,) = await store.claim_due("app", dt.timedelta(hours=1), 1, "w1", dt.timedelta(minutes=10))
    await store.mark_refresh_started(account.id, "w1")  # the refresh path's pool has a connection now
    assert _kill_connections(database) >= 1
    await asyncio.sleep(0.3)
    # The release is the one transaction whose first statement is such a write: the driver meets the dead
    # connection there, not in a statement of SQLAlchemy's.
    with pytest.raises(StoreError):
        await store.release(account.id, "w1")
    await store.release(account.id, "w1")  # the pool dropped the dead connection: this one is fresh
    (account,) = await store.claim_due("app", dt.timedelta(hours=1), 1, "w1", dt.timedelta(minutes=10))
    saved = await store.save_tokens(account.id, "w1", TokenSet("AT2", "RT2", clock.now() + dt.timedelta(hours=4)))
    assert saved.tokens is not None and saved.tokens.refresh_token == "RT2"
