"""The refresh path's writes on the driver's cursor (store/prepared.py) store exactly what
``Connection.execute`` stores, are found by the other queries, and tell the change feed the same."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.engine import Connection

from refresher.domain import FakeClock, Grant, Identity, TokenSet
from refresher.store import hot
from refresher.store.base import Account
from refresher.store.sql import SqlStore

APP = "shopee"
OWNER = "worker-1"


async def _accounts(store: SqlStore, clock: FakeClock, count: int) -> list[Account]:
    found = []
    for i in range(count):
        identity = Identity(key=f"shop:{i}", kind="shop", platform_id=str(i), name="Shop")
        tokens = TokenSet("AT", "RT", clock.now() + dt.timedelta(hours=1), clock.now() + dt.timedelta(days=30))
        found.append(await store.upsert_grant(APP, "shopee", Grant(identity, tokens)))
    return found


def _raw(conn: Connection, table: str, where: str) -> list[tuple[Any, ...]]:
    """Rows as the driver hands them over (no SQLAlchemy type processing): what is really stored."""
    return [tuple(row) for row in conn.exec_driver_sql(f"SELECT * FROM {table} WHERE {where} ORDER BY id").all()]


async def test_a_prepared_write_stores_exactly_what_connection_execute_stores(
    store: SqlStore, clock: FakeClock
) -> None:
    a, b = await _accounts(store, clock, 2)
    await store.claim_due(APP, dt.timedelta(days=1), 2, OWNER, dt.timedelta(minutes=10))
    now = clock.now().replace(microsecond=123456)
    later = now + dt.timedelta(hours=4, microseconds=7)
    local = dt.timezone(dt.timedelta(hours=8))  # an aware value in another zone is stored as UTC either way
    cases: list[tuple[str, dict[str, Any]]] = [
        ("MARK_STARTED", {"owner": OWNER, "refresh_started_at": now, "last_attempt_at": now.astimezone(local)}),
        ("RELEASE", {"owner": OWNER}),
        (
            "SAVE_TOKENS",
            {
                "access_token": "AT-new",
                "refresh_token": "RT-new",
                "access_expires_at": later,
                "refresh_expires_at": None,
                "scopes": ["a", "b"],
                "raw": {"expire_in": 14400, "nested": {"ü": [1, 2.5, None, True]}},
                "previous_refresh_token": "RT",
                "last_success_at": now,
                "last_attempt_at": now,
                "version": 2,
                "updated_at": now,
            },
        ),
        (
            "RECORD_FAILURE",
            {
                "consecutive_failures": 3,
                "last_error": {"error_class": "transient", "code": "x", "message": "boom"},
                "last_attempt_at": now,
                "next_attempt_at": later,
                "status": "needs_reauth",
                "updated_at": now,
            },
        ),
    ]

    def write(conn: Connection) -> None:
        for name, params in cases:
            conn.execute(getattr(hot, name), {**params, "account_id": a.id})
            assert getattr(hot.Run, name).run(conn, {**params, "account_id": b.id}) == 1
        for account, run in ((a, False), (b, True)):
            audit = {
                "at": now,
                "app": APP,
                "account_key": "k",
                "outcome": "success",
                "duration_ms": 3,
                "attempts": 1,
                "error_class": None,
                "error_code": None,
                "request_id": "r-1",
                "message": "ünïcode",
            }
            history = {
                "account_id": account.id,
                "version": 1,
                "access_token": "AT",
                "refresh_token": "RT",
                "access_expires_at": later,
                "refresh_expires_at": None,
                "scopes": [],
                "raw": {"k": "v"},
                "replaced_at": now,
            }
            if run:
                hot.Run.INSERT_AUDIT.run(conn, audit)
                hot.Run.PUSH_HISTORY.run(conn, history)
            else:
                conn.execute(hot.INSERT_AUDIT, audit)
                conn.execute(hot.PUSH_HISTORY, history)

    await store._run_tx(write, write=True)

    def read(conn: Connection) -> tuple[list[Any], ...]:
        return (
            _raw(conn, "accounts", f"id IN ({a.id}, {b.id})"),
            _raw(conn, "audit_log", "1 = 1"),
            _raw(conn, "token_history", "1 = 1"),
        )

    accounts, audits, histories = await store._run_tx(read)
    identity = {"id", "key", "platform_id", "created_at"}  # the two accounts' own
    columns = [c for c in store_columns(store, "accounts") if c not in identity]
    by_name = [dict(zip(store_columns(store, "accounts"), row, strict=True)) for row in accounts]
    assert [by_name[0][c] for c in columns] == [by_name[1][c] for c in columns]
    assert by_name[1]["refresh_started_at"] is None and by_name[1]["lease_owner"] is None
    assert audits[0][1:] == audits[1][1:]
    assert histories[0][2:] == histories[1][2:]  # (id, account_id) aside

    # Read back through the store as SQLAlchemy wrote them: the same Account.
    got_a, got_b = await store.get(APP, a.key), await store.get(APP, b.key)
    assert got_a is not None and got_b is not None and got_b.tokens is not None
    assert got_b.tokens.raw == {"expire_in": 14400, "nested": {"ü": [1, 2.5, None, True]}}
    assert got_b.tokens.access_expires_at == later and got_b.last_attempt_at == now
    assert (got_a.tokens, got_a.last_error, got_a.status) == (got_b.tokens, got_b.last_error, got_b.status)


def store_columns(store: SqlStore, table: str) -> list[str]:
    from refresher.store.schema import metadata

    return [c.name for c in metadata.tables[table].columns]


async def test_tokens_saved_on_the_cursor_are_claimed_in_expiry_order(store: SqlStore, clock: FakeClock) -> None:
    accounts = await _accounts(store, clock, 4)
    claimed = await store.claim_due(APP, dt.timedelta(days=1), 4, OWNER, dt.timedelta(minutes=10))
    assert len(claimed) == 4
    hours = [3.0, 1.0, 2.0, 1.5]
    for account, h in zip(accounts[:3], hours, strict=False):
        expires = clock.now() + dt.timedelta(hours=h, microseconds=1)
        await store.save_tokens(account.id, OWNER, TokenSet(f"AT-{h}", f"RT-{h}", expires))  # on the cursor
    late = accounts[3]

    def through_sqlalchemy(conn: Connection) -> None:
        conn.execute(
            hot.SAVE_TOKENS,
            {
                "account_id": late.id,
                "access_token": "AT-1.5",
                "refresh_token": "RT-1.5",
                "access_expires_at": clock.now() + dt.timedelta(hours=1.5),
                "refresh_expires_at": None,
                "scopes": [],
                "raw": {},
                "previous_refresh_token": None,
                "last_success_at": clock.now(),
                "last_attempt_at": clock.now(),
                "version": 2,
                "updated_at": clock.now(),
            },
        )

    await store._run_tx(through_sqlalchemy, write=True)
    again = await store.claim_due(APP, dt.timedelta(hours=2.5), 10, OWNER, dt.timedelta(minutes=10))
    assert [a.tokens.access_token for a in again if a.tokens] == ["AT-1.0", "AT-1.5", "AT-2.0"]
    saved = await store.get(APP, accounts[1].key)
    assert saved is not None and saved.tokens is not None
    assert saved.tokens.access_expires_at == clock.now() + dt.timedelta(hours=1, microseconds=1)
    clock.advance(dt.timedelta(hours=1, seconds=1))
    assert [a.key for a in await store.expired_while_leased(APP)] == [accounts[1].key]


async def test_a_prepared_write_tells_the_change_feed_as_the_engine_event_does(
    store: SqlStore, clock: FakeClock
) -> None:
    (account,) = await _accounts(store, clock, 1)
    await store.claim_due(APP, dt.timedelta(days=1), 1, OWNER, dt.timedelta(minutes=10))
    before = store.changes.generation
    await store.mark_refresh_started(account.id, OWNER)  # bookkeeping: nothing a token read sees
    assert store.changes.generation == before
    await store.save_tokens(account.id, OWNER, TokenSet("AT-2", "RT-2", clock.now() + dt.timedelta(hours=2)))
    assert store.changes.generation == before + 1
    assert hot.Run.SAVE_TOKENS.writes_accounts and hot.Run.RECORD_FAILURE.writes_accounts
    assert not any(
        getattr(hot.Run, name).writes_accounts
        for name in ("MARK_STARTED", "RELEASE", "PUSH_HISTORY", "PRUNE_HISTORY", "INSERT_AUDIT")
    )
