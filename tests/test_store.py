"""The token store against real databases: SQLite files in tmp_path and the real PostgreSQL.

Every test that takes ``db_url`` runs once per backend. On PostgreSQL each test gets its own schema
(``search_path`` in the URL), so parallel test runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
import structlog.testing
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from refresher.config import StoreSettings
from refresher.crypto import generate_key
from refresher.domain import AccountStatus, ErrorInfo, FakeClock, Grant, Identity, TokenSet
from refresher.store import (
    AccountNotFound,
    Alarm,
    AuditEntry,
    LeaseLost,
    OAuthState,
    SqlStore,
    StoreError,
    open_store,
)
from refresher.store.base import AlarmDelivery
from refresher.store.connection_types import Invitation
from refresher.store.schema import metadata
from refresher.store.sql import head_revision
from tests.support import PG_URL, pg_schema

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)
APP = "shopee-sg"


# ------------------------------------------------------------------------------------------ helpers


def raw_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows read straight from the database, around the store (to see what is really on disk)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    schema = url.rsplit("%3D", 1)[1]
    with psycopg.connect(PG_URL, options=f"-csearch_path={schema}") as pg:
        return list(pg.execute(sql.encode()).fetchall())


def raw_exec(url: str, sql: str) -> None:
    """A statement run straight on the database, around the store (to break it on purpose)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
        return
    schema = url.rsplit("%3D", 1)[1]
    with psycopg.connect(PG_URL, options=f"-csearch_path={schema}") as pg:
        pg.execute(sql.encode())


def tokens(n: int, *, access_in: dt.timedelta = HOUR, now: dt.datetime = T0, tag: str = "") -> TokenSet:
    return TokenSet(
        access_token=f"AT-{tag}{n}-secret-access",
        refresh_token=f"RT-{tag}{n}-secret-refresh",
        access_expires_at=now + access_in,
        refresh_expires_at=now + dt.timedelta(days=30),
        scopes=("shop",),
        raw={"expire_in": 14400, "access_token": f"AT-{tag}{n}-secret-access", "note": f"RT-{tag}{n}-secret-refresh"},
    )


def grant(key: str, n: int = 1, **kw: Any) -> Grant:
    return Grant(
        Identity(key=key, kind="shop", platform_id=key.split(":")[-1], name="Shop", region="SG", extra={"c": 1}),
        tokens(n, tag=key, **kw),
    )


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/db/tokens.db"
    else:
        with pg_schema() as url:
            yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


StoreFactory = Callable[..., SqlStore]


@pytest.fixture
async def make_store(db_url: str, clock: FakeClock) -> AsyncIterator[StoreFactory]:
    opened: list[SqlStore] = []

    def factory(**kw: Any) -> SqlStore:
        kw.setdefault("clock", clock)
        store = SqlStore(kw.pop("url", db_url), **kw)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> SqlStore:
    s = make_store()
    await s.open()
    return s


# -------------------------------------------------------------------------------------------- CRUD


async def test_crud(store: SqlStore, clock: FakeClock) -> None:
    a = await store.upsert_grant(APP, "shopee", grant("shop:1"))
    assert a.id > 0 and a.app == APP and a.platform == "shopee" and a.key == "shop:1"
    assert a.identity.region == "SG" and a.identity.extra == {"c": 1} and a.status is AccountStatus.ACTIVE
    assert a.tokens is not None and a.tokens.refresh_token == "RT-shop:11-secret-refresh"
    assert a.tokens.access_expires_at == T0 + HOUR and a.tokens.access_expires_at.tzinfo is not None
    assert a.tokens.scopes == ("shop",)
    # Secrets are removed from the raw answer, by key and by value.
    assert a.tokens.raw == {"expire_in": 14400, "note": "[redacted]"}
    assert a.version == 1 and a.created_at == T0

    await store.upsert_grant(APP, "shopee", grant("shop:2"))
    await store.upsert_grant("other", "lazada", grant("seller:3"))
    assert await store.get(APP, "shop:1") == a
    assert await store.get(APP, "nope") is None
    assert [x.key for x in await store.list(app=APP)] == ["shop:1", "shop:2"]
    assert len(await store.list()) == 3
    assert [x.key for x in await store.list(limit=1, offset=1)] == ["shop:1"]  # "other" sorts first
    assert await store.count() == 3 and await store.count(app=APP) == 2

    disabled = await store.set_status(APP, "shop:2", AccountStatus.DISABLED)
    assert disabled.status is AccountStatus.DISABLED
    assert await store.count(app=APP, status=AccountStatus.ACTIVE) == 1
    assert await store.count_by_status(APP) == {
        AccountStatus.ACTIVE: 1,
        AccountStatus.NEEDS_REAUTH: 0,
        AccountStatus.DISABLED: 1,
    }
    assert await store.count_by_status("no-such-app") == dict.fromkeys(AccountStatus, 0)
    with pytest.raises(AccountNotFound):
        await store.set_status(APP, "nope", AccountStatus.DISABLED)

    assert await store.delete(APP, "shop:2") is True
    assert await store.delete(APP, "shop:2") is False
    assert await store.count(app=APP) == 1
    await store.ping()


async def test_upsert_existing_account_updates_in_place(store: SqlStore, clock: FakeClock) -> None:
    first = await store.upsert_grant(APP, "shopee", grant("shop:1", 1))
    claimed = await store.claim(APP, "shop:1", "w1", 10 * MINUTE)
    assert claimed is not None
    failed = await store.record_failure(
        first.id, "w1", ErrorInfo("reauth_required", "invalid_refresh_token", "gone"), None, AccountStatus.NEEDS_REAUTH
    )
    assert failed.status is AccountStatus.NEEDS_REAUTH and failed.consecutive_failures == 1
    await store.claim(APP, "shop:1", "w1", 10 * MINUTE)

    clock.advance(MINUTE)
    again = await store.upsert_grant(APP, "shopee", grant("shop:1", 2))
    assert again.id == first.id
    assert again.version == 2 and again.status is AccountStatus.ACTIVE
    assert again.consecutive_failures == 0 and again.last_error is None and again.next_attempt_at is None
    assert again.tokens is not None and again.tokens.refresh_token == "RT-shop:12-secret-refresh"
    assert again.previous_refresh_token == "RT-shop:11-secret-refresh"
    # The re-authorization took the account from the worker: its save must not overwrite the new grant.
    assert again.lease_owner is None
    with pytest.raises(LeaseLost):
        await store.save_tokens(first.id, "w1", tokens(9))
    history = await store.history(APP, "shop:1")
    assert [(h.version, h.tokens.refresh_token) for h in history] == [(1, "RT-shop:11-secret-refresh")]
    assert await store.count() == 1


async def test_import_account_keeps_status(store: SqlStore) -> None:
    g = grant("shop:7")
    a = await store.import_account(APP, "shopee", g.identity, g.tokens, AccountStatus.DISABLED)
    assert a.status is AccountStatus.DISABLED and a.tokens is not None
    assert a.tokens.refresh_token == g.tokens.refresh_token and a.identity == g.identity
    # Disabled accounts are never claimed for refresh.
    assert await store.claim_due(APP, dt.timedelta(days=1), 10, "w", MINUTE) == []


# ------------------------------------------------------------------------------------------- leases


async def test_claim_due_takes_only_due_unleased_active_accounts_earliest_first(
    store: SqlStore, clock: FakeClock
) -> None:
    ids = {}
    for key, access_in in [
        ("late", 5 * HOUR),  # not due
        ("soon", 50 * MINUTE),  # due by expiry
        ("sooner", 10 * MINUTE),  # due by expiry, earlier
        ("backoff", 30 * MINUTE),  # would be due by expiry, but its retry (T0+20m) comes before the token dies
        ("backoff-dying", 20 * MINUTE),  # backing off, but the token dies before the retry
        ("retry", 5 * HOUR),  # not expiring, but its retry is due
        ("disabled", 5 * MINUTE),
        ("leased", 5 * MINUTE),
    ]:
        ids[key] = (await store.upsert_grant(APP, "shopee", grant(key, access_in=access_in))).id
    await store.upsert_grant("other-app", "shopee", grant("elsewhere", access_in=MINUTE))
    await store.set_status(APP, "disabled", AccountStatus.DISABLED)
    assert await store.claim(APP, "leased", "someone", 10 * MINUTE) is not None
    err = ErrorInfo("transient", "500", "boom")
    for key, retry_at in [("backoff", T0 + 20 * MINUTE), ("backoff-dying", T0 + 40 * MINUTE), ("retry", T0)]:
        await store.claim(APP, key, "setup", MINUTE)
        await store.record_failure(ids[key], "setup", err, retry_at)

    claimed = await store.claim_due(APP, HOUR, 10, "w1", 10 * MINUTE)
    assert [a.key for a in claimed] == ["sooner", "backoff-dying", "soon", "retry"]
    assert all(a.lease_owner == "w1" and a.lease_expires_at == T0 + 10 * MINUTE for a in claimed)
    assert await store.claim_due(APP, HOUR, 10, "w2", 10 * MINUTE) == []
    assert await store.claim_due(APP, HOUR, 0, "w2", 10 * MINUTE) == []

    # The limit takes the earliest first.
    for a in claimed:
        await store.release(a.id, "w1")
    two = await store.claim_due(APP, HOUR, 2, "w3", 10 * MINUTE)
    assert [a.key for a in two] == ["sooner", "backoff-dying"]


async def test_expired_lease_frees_the_account(store: SqlStore, clock: FakeClock) -> None:
    a = await store.upsert_grant(APP, "shopee", grant("shop:1", access_in=MINUTE))
    assert len(await store.claim_due(APP, HOUR, 10, "crashed", 5 * MINUTE)) == 1
    clock.advance(4 * MINUTE)
    assert await store.claim_due(APP, HOUR, 10, "w2", 5 * MINUTE) == []
    assert await store.claim(APP, "shop:1", "w2", 5 * MINUTE) is None
    clock.advance(MINUTE)  # lease_expires_at <= now: free again
    taken = await store.claim_due(APP, HOUR, 10, "w2", 5 * MINUTE)
    assert [x.lease_owner for x in taken] == ["w2"]
    # The crashed worker lost it for good.
    with pytest.raises(LeaseLost):
        await store.save_tokens(a.id, "crashed", tokens(2))


async def test_only_the_lease_owner_may_act(store: SqlStore, clock: FakeClock) -> None:
    a = await store.upsert_grant(APP, "shopee", grant("shop:1"))
    with pytest.raises(LeaseLost):  # nobody holds it
        await store.save_tokens(a.id, "w1", tokens(2))
    assert await store.claim(APP, "shop:1", "owner", 10 * MINUTE) is not None
    before = await store.get(APP, "shop:1")
    err = ErrorInfo("transient", "500", "boom")
    for call in (
        store.save_tokens(a.id, "intruder", tokens(2)),
        store.record_failure(a.id, "intruder", err, T0 + HOUR),
        store.release(a.id, "intruder"),
        store.mark_refresh_started(a.id, "intruder"),
    ):
        with pytest.raises(LeaseLost, match="shop:1"):
            await call
    assert await store.get(APP, "shop:1") == before
    with pytest.raises(AccountNotFound):
        await store.claim(APP, "nope", "owner", MINUTE)
    with pytest.raises(AccountNotFound):
        await store.save_tokens(999_999, "owner", tokens(2))
    # Re-claiming one's own lease extends it.
    clock.advance(MINUTE)
    again = await store.claim(APP, "shop:1", "owner", 10 * MINUTE)
    assert again is not None and again.lease_expires_at == T0 + 11 * MINUTE
    await store.release(a.id, "owner")
    released = await store.get(APP, "shop:1")
    assert released is not None and released.lease_owner is None


async def test_save_tokens_commits_everything_at_once(store: SqlStore, clock: FakeClock) -> None:
    a = await store.upsert_grant(APP, "shopee", grant("shop:1", 1))
    await store.claim(APP, "shop:1", "w1", 10 * MINUTE)
    await store.record_failure(a.id, "w1", ErrorInfo("transient", "500", "boom", "req-1", 500), T0 + MINUTE)
    await store.claim(APP, "shop:1", "w1", 10 * MINUTE)
    await store.mark_refresh_started(a.id, "w1")
    started = await store.get(APP, "shop:1")
    assert started is not None and started.refresh_started_at == T0 and started.last_attempt_at == T0

    clock.advance(MINUTE)
    new = tokens(2, now=clock.now())
    saved = await store.save_tokens(a.id, "w1", new)
    assert saved.tokens is not None and saved.tokens.refresh_token == new.refresh_token
    assert saved.previous_refresh_token == "RT-shop:11-secret-refresh"
    assert saved.version == 2 and saved.consecutive_failures == 0 and saved.last_error is None
    assert saved.last_success_at == clock.now() and saved.next_attempt_at is None
    assert saved.refresh_started_at is None and saved.lease_owner is None and saved.lease_expires_at is None
    assert await store.get(APP, "shop:1") == saved
    history = await store.history(APP, "shop:1")
    assert [(h.version, h.tokens.access_token, h.replaced_at) for h in history] == [
        (1, "AT-shop:11-secret-access", clock.now())
    ]


async def test_settling_answers_what_was_stored(store: SqlStore, clock: FakeClock) -> None:
    """save_tokens and record_failure build their answer from what they wrote instead of reading the row
    again: it must be exactly what a read finds, and on disk when they return."""
    url = store_url(store)
    for i in range(3):
        await store.upsert_grant(APP, "shopee", grant(f"shop:{i}"))
    claimed = {a.key: a for a in await store.claim_due(APP, 2 * HOUR, 3, "w1", 10 * MINUTE)}
    await store.mark_refresh_started(claimed["shop:0"].id, "w1")
    clock.advance(MINUTE)
    saved = await store.save_tokens(
        claimed["shop:0"].id, "w1", tokens(5, tag="shop:0"), AuditEntry(T0, APP, "shop:0", "success", 9)
    )
    assert saved == await store.get(APP, "shop:0")
    assert saved.version == 2 and saved.lease_owner is None and saved.refresh_started_at is None
    assert saved.previous_refresh_token == "RT-shop:01-secret-refresh"
    assert raw_rows(url, f"SELECT version FROM accounts WHERE id = {saved.id}") == [(2,)]
    failed = await store.record_failure(
        claimed["shop:1"].id, "w1", ErrorInfo("transient", "500", "boom"), T0 + HOUR, AccountStatus.NEEDS_REAUTH
    )
    assert failed == await store.get(APP, "shop:1")
    assert failed.consecutive_failures == 1 and failed.status == AccountStatus.NEEDS_REAUTH
    await store.release(claimed["shop:2"].id, "w1")
    assert raw_rows(url, f"SELECT lease_owner FROM accounts WHERE id = {claimed['shop:2'].id}") == [(None,)]


async def test_save_tokens_failure_leaves_old_tokens_and_lease(
    store: SqlStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a = await store.upsert_grant(APP, "shopee", grant("shop:1", 1))
    await store.claim(APP, "shop:1", "w1", 10 * MINUTE)
    before = await store.get(APP, "shop:1")

    def broken_prune(conn: Any, account_id: int, pushed_version: int) -> None:
        # The last step of the transaction fails after history and account rows were written.
        conn.execute(text("SELECT * FROM no_such_table"))

    monkeypatch.setattr(store, "_prune_history_sync", broken_prune)
    new = tokens(2)
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreError) as info:
        await store.save_tokens(a.id, "w1", new)
    chain = f"{info.value!s} {info.value.__cause__!s} {info.value!r}"
    for secret in (new.access_token, new.refresh_token, "RT-shop:11-secret-refresh"):
        assert secret not in chain
        assert secret not in caplog.text
    monkeypatch.undo()
    after = await store.get(APP, "shop:1")
    assert after == before and after is not None and after.lease_owner == "w1"
    assert await store.history(APP, "shop:1") == []
    saved = await store.save_tokens(a.id, "w1", new)  # still ours: the lease survived
    assert saved.version == 2


async def test_record_failure(store: SqlStore, clock: FakeClock) -> None:
    a = await store.upsert_grant(APP, "shopee", grant("shop:1"))
    for n in (1, 2):
        await store.claim(APP, "shop:1", "w1", 10 * MINUTE)
        await store.mark_refresh_started(a.id, "w1")
        failed = await store.record_failure(
            a.id,
            "w1",
            ErrorInfo("transient", "error_busy", f"busy {a.tokens.refresh_token}", "req-9", 503),  # type: ignore[union-attr]
            T0 + n * MINUTE,
        )
    assert failed.consecutive_failures == 2 and failed.next_attempt_at == T0 + 2 * MINUTE
    assert failed.last_error is not None and failed.last_error.code == "error_busy"
    assert failed.last_error.request_id == "req-9" and failed.last_error.http_status == 503
    assert failed.last_error.message == "busy [redacted]"  # a token in a message is not stored
    assert failed.lease_owner is None and failed.refresh_started_at is None
    assert failed.status is AccountStatus.ACTIVE and failed.version == 1


async def test_history_is_pruned_and_restore_brings_back_an_old_token_set(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    store = make_store(history_versions=3)
    await store.open()
    a = await store.upsert_grant(APP, "shopee", grant("shop:1", 1))
    for n in range(2, 8):
        await store.claim(APP, "shop:1", "w", MINUTE)
        clock.advance(MINUTE)
        await store.save_tokens(a.id, "w", tokens(n))
    history = await store.history(APP, "shop:1")
    assert [h.version for h in history] == [6, 5, 4]
    assert [h.tokens.refresh_token for h in history] == [
        "RT-6-secret-refresh",
        "RT-5-secret-refresh",
        "RT-4-secret-refresh",
    ]
    assert [h.version for h in await store.history(APP, "shop:1", limit=1)] == [6]

    await store.claim(APP, "shop:1", "w", MINUTE)
    restored = await store.restore(APP, "shop:1", 5)
    assert restored.tokens is not None and restored.tokens.refresh_token == "RT-5-secret-refresh"
    assert restored.version == 8 and restored.previous_refresh_token == "RT-7-secret-refresh"
    assert restored.lease_owner is None
    assert [h.version for h in await store.history(APP, "shop:1")] == [7, 6, 5]
    with pytest.raises(StoreError, match="no version 1"):
        await store.restore(APP, "shop:1", 1)


# ------------------------------------------------------------------------------------ audit, alarms


async def test_outcome_and_audit_row_commit_together_and_a_refused_row_never_costs_the_tokens(
    store: SqlStore, clock: FakeClock
) -> None:
    a = await store.upsert_grant(APP, "shopee", grant("shop:1"))
    assert await store.claim(APP, "shop:1", "w1", 10 * MINUTE) is not None
    await store.save_tokens(a.id, "w1", tokens(2), AuditEntry(T0, APP, "shop:1", "success", 80, 1))
    assert await store.claim(APP, "shop:1", "w1", 10 * MINUTE) is not None
    # A platform's overlong error code and request id are cut to their columns, not refused.
    overlong = AuditEntry(T0, APP, "shop:1", "transient", 90, 3, "transient", "E" * 500, "R" * 900, "boom")
    await store.record_failure(a.id, "w1", ErrorInfo("transient", "E" * 500, "boom"), T0 + MINUTE, None, overlong)
    log = await store.audit_log(app=APP)
    assert [(e.outcome, e.duration_ms) for e in log] == [("transient", 90), ("success", 80)]
    assert log[0].error_code == "E" * 128 and log[0].request_id == "R" * 255

    # The audit table refuses every row: the rotated token is saved all the same, and the failure is logged.
    raw_exec(store_url(store), "ALTER TABLE audit_log RENAME TO audit_log_gone")
    assert await store.claim(APP, "shop:1", "w1", 10 * MINUTE) is not None
    with structlog.testing.capture_logs() as logged:
        saved = await store.save_tokens(a.id, "w1", tokens(3), AuditEntry(T0, APP, "shop:1", "success", 70, 1))
    assert [e["event"] for e in logged] == ["store.audit_failed"]
    assert tokens(3).refresh_token not in repr(logged)
    assert saved.tokens is not None and saved.tokens.refresh_token == tokens(3).refresh_token
    again = await store.get(APP, "shop:1")
    assert again is not None and again.tokens == saved.tokens and again.lease_owner is None


async def test_audit_log_never_holds_a_token_and_is_pruned(store: SqlStore, clock: FakeClock) -> None:
    a = await store.upsert_grant(APP, "shopee", grant("shop:1"))
    assert a.tokens is not None
    await store.audit(AuditEntry(T0 - 10 * dt.timedelta(days=1), APP, "shop:1", "success", 120))
    await store.audit(
        AuditEntry(
            T0,
            APP,
            "shop:1",
            "transient",
            3000,
            3,
            "transient",
            "error_busy",
            "req-1",
            f"refresh {a.tokens.refresh_token} failed",
        )
    )
    await store.audit(AuditEntry(T0, "other", "x", "success", 1))
    log = await store.audit_log(app=APP)
    assert [(e.outcome, e.attempts, e.request_id) for e in log] == [("transient", 3, "req-1"), ("success", 1, None)]
    assert log[0].message == "refresh [redacted] failed"
    assert len(await store.audit_log(account_key="x")) == 1 and len(await store.audit_log(limit=1)) == 1
    dump = repr(raw_rows(store_url(store), "SELECT * FROM audit_log"))
    assert a.tokens.refresh_token not in dump and a.tokens.access_token not in dump
    assert await store.prune_audit(T0 - dt.timedelta(days=1)) == 1
    assert len(await store.audit_log()) == 2


def store_url(store: SqlStore) -> str:
    if store.path is not None:
        return f"sqlite:///{store.path}"
    return store._url.render_as_string(hide_password=False).replace("postgresql+psycopg", "postgresql")


async def test_alarms_upsert_by_account_and_cause(store: SqlStore, clock: FakeClock) -> None:
    alarm = Alarm(APP, "shop:1", "failures", T0, None, None, {"failures": 3})
    await store.put_alarm(alarm)
    await store.put_alarm(Alarm(APP, "shop:1", "reauth_required", T0, T0, None))
    await store.put_alarm(Alarm("other", "x", "failures", T0 + MINUTE, None, None))
    assert await store.get_alarm(APP, "shop:1", "failures") == alarm
    sent = Alarm(APP, "shop:1", "failures", T0, T0 + MINUTE, None, {"failures": 4})
    await store.put_alarm(sent)
    assert await store.get_alarm(APP, "shop:1", "failures") == sent
    assert len(await store.open_alarms()) == 3 and len(await store.open_alarms(APP)) == 2
    await store.put_alarm(Alarm(APP, "shop:1", "failures", T0, T0 + MINUTE, T0 + HOUR, {}))
    assert [x.cause for x in await store.open_alarms(APP)] == ["reauth_required"]
    assert await store.get_alarm(APP, "shop:1", "nope") is None


async def test_note_alarm_sent_lets_exactly_one_caller_send(store: SqlStore, make_store: StoreFactory) -> None:
    quiet = T0 - HOUR  # "sent at or before this" may be sent again
    assert await store.note_alarm_sent(APP, "shop:1", "failures", T0, quiet, {"n": 1})
    assert not await store.note_alarm_sent(APP, "shop:1", "failures", T0 + MINUTE, quiet, {"n": 2})
    assert await store.get_alarm(APP, "shop:1", "failures") == Alarm(APP, "shop:1", "failures", T0, T0, None, {"n": 1})
    # The reminder: quiet for long enough, stamped again, still opened at T0.
    later = T0 + 2 * HOUR
    assert await store.note_alarm_sent(APP, "shop:1", "failures", later, later - HOUR, {"n": 3})
    assert await store.get_alarm(APP, "shop:1", "failures") == Alarm(
        APP, "shop:1", "failures", T0, later, None, {"n": 3}
    )
    # A resolved alarm that fires again is a new one: it opens now, whatever its last message.
    await store.put_alarm(Alarm(APP, "shop:1", "failures", T0, later, later + MINUTE, {}))
    again = later + 2 * MINUTE
    assert await store.note_alarm_sent(APP, "shop:1", "failures", again, again - HOUR, {"n": 4})
    assert await store.get_alarm(APP, "shop:1", "failures") == Alarm(
        APP, "shop:1", "failures", again, again, None, {"n": 4}
    )

    # Replicas: several stores (engines) on the one database race for the same alarm; one wins.
    others = [make_store() for _ in range(3)]
    for other in others:
        await other.open()
    try:
        at = T0 + 5 * HOUR
        won = await asyncio.gather(
            *(s.note_alarm_sent(APP, "shop:2", "reauth_required", at, at - HOUR, {}) for s in [store, *others] * 3)
        )
        assert sorted(won) == [False] * 11 + [True]
    finally:
        for other in others:
            await other.close()


async def test_oauth_state_is_single_use_and_expires(store: SqlStore, clock: FakeClock) -> None:
    state = OAuthState("s-1", APP, T0, T0 + 15 * MINUTE, "/done", "verifier-SECRET", "http://127.0.0.1/cb")
    await store.put_state(state)
    await store.put_state(OAuthState("s-2", APP, T0, T0 + MINUTE))
    assert await store.consume_state("s-1", "another-app") is None  # another app's state is left alone
    results = await asyncio.gather(*(store.consume_state("s-1", APP) for _ in range(5)))
    taken = [r for r in results if r is not None]
    assert len(taken) == 1 and taken[0].used_at is not None
    assert dataclasses.replace(taken[0], used_at=None) == state
    assert await store.consume_state("s-1", APP) is None
    found = await store.find_state("s-1")
    assert found is not None and found.used_at == taken[0].used_at  # remembered, only to explain a replay
    assert await store.consume_state("unknown", APP) is None
    clock.advance(2 * MINUTE)
    assert await store.consume_state("s-2", APP) is None  # expired


async def test_expiry_queries(store: SqlStore, clock: FakeClock) -> None:
    assert await store.earliest_expiry(APP) is None
    for key, days in [("a", 40), ("b", 3), ("c", 1)]:
        t = tokens(1, tag=key)
        t = TokenSet(t.access_token, t.refresh_token, T0 + days * HOUR, T0 + dt.timedelta(days=days))
        await store.upsert_grant(APP, "shopee", Grant(Identity(key, "shop", key), t))
    await store.set_status(APP, "c", AccountStatus.NEEDS_REAUTH)
    assert await store.earliest_expiry(APP) == T0 + 3 * HOUR
    expiring = await store.accounts_refresh_expiring(APP, T0 + dt.timedelta(days=7))
    assert [x.key for x in expiring] == ["b"]
    assert len(await store.accounts_refresh_expiring(APP, T0 + dt.timedelta(days=50), limit=5)) == 2


# ------------------------------------------------------------------------------------- concurrency


async def test_two_replicas_never_claim_the_same_account(make_store: StoreFactory, clock: FakeClock) -> None:
    a, b = make_store(), make_store()  # two engines, as two replicas
    await a.open()
    await b.open()
    for i in range(40):
        await a.upsert_grant(APP, "shopee", grant(f"shop:{i}", access_in=MINUTE))
    for round_ in range(15):
        results = await asyncio.gather(
            *(s.claim_due(APP, HOUR, 7, f"{name}-{round_}", 10 * MINUTE) for s in (a, b) for name in ("x", "y"))
        )
        claimed = [acc.id for batch in results for acc in batch]
        assert len(claimed) == len(set(claimed)) == min(28, 40)
        clock.advance(11 * MINUTE)  # every lease lapses before the next round


# ------------------------------------------------------------------------------------------ encryption


async def test_tokens_are_encrypted_at_rest_and_keys_rotate(make_store: StoreFactory, db_url: str) -> None:
    key_a, key_b = generate_key(), generate_key()
    old = make_store(encryption_keys=[key_a])
    await old.open()
    assert old.encrypted
    secrets: list[str] = []
    for i in range(3):
        acc = await old.upsert_grant(APP, "shopee", grant(f"shop:{i}", 1))
        await old.claim(APP, acc.key, "w", MINUTE)
        saved = await old.save_tokens(acc.id, "w", tokens(2, tag=f"shop:{i}"))
        assert saved.tokens is not None
        secrets += [saved.tokens.access_token, saved.tokens.refresh_token, f"RT-shop:{i}1-secret-refresh"]
    await old.put_state(OAuthState("st", APP, T0, T0 + HOUR, pkce_verifier="pkce-SECRET-verifier"))
    secrets.append("pkce-SECRET-verifier")

    dump = repr(raw_rows(db_url, "SELECT * FROM accounts")) + repr(raw_rows(db_url, "SELECT * FROM token_history"))
    dump += repr(raw_rows(db_url, "SELECT * FROM oauth_states"))
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        dump += b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*")).decode("latin-1")
    for secret in secrets:
        assert secret not in dump
    assert "enc:v1:" in dump

    # A store with only a new key cannot read, and says which account without leaking anything.
    stranger = make_store(encryption_keys=[key_b])
    with pytest.raises(StoreError) as info:
        await stranger.get(APP, "shop:0")
    message = str(info.value)
    assert "shop:0" in message and "key id" in message
    for secret in [*secrets, key_a, key_b]:
        assert secret not in message

    both = make_store(encryption_keys=[key_b, key_a])
    rewritten = await both.rotate_keys(batch=2)  # pages of 2 and 1: the batching's edges
    assert rewritten == 3 + 3 + 1  # accounts, history rows, the OAuth state
    assert await both.rotate_keys() == 0
    only_new = make_store(encryption_keys=[key_b])
    for i in range(3):
        got = await only_new.get(APP, f"shop:{i}")
        assert got is not None and got.tokens is not None
        assert got.tokens.refresh_token == f"RT-shop:{i}2-secret-refresh"
        assert got.previous_refresh_token == f"RT-shop:{i}1-secret-refresh"
        assert (await only_new.history(APP, f"shop:{i}"))[0].tokens.refresh_token == f"RT-shop:{i}1-secret-refresh"
    state = await only_new.consume_state("st", APP)
    assert state is not None and state.pkce_verifier == "pkce-SECRET-verifier"
    with pytest.raises(StoreError):
        await make_store(encryption_keys=[key_a]).get(APP, "shop:0")


async def test_clear_store_can_be_encrypted_by_rotation(make_store: StoreFactory, db_url: str) -> None:
    clear = make_store()
    await clear.open()
    assert not clear.encrypted
    await clear.upsert_grant(APP, "shopee", grant("shop:1"))
    assert "RT-shop:11-secret-refresh" in repr(raw_rows(db_url, "SELECT refresh_token FROM accounts"))
    with pytest.raises(StoreError, match="encryption_keys is empty"):
        await clear.rotate_keys()
    key = generate_key()
    assert await make_store(encryption_keys=[key]).rotate_keys() == 1
    assert "RT-shop:11" not in repr(raw_rows(db_url, "SELECT refresh_token FROM accounts"))
    acc = await make_store(encryption_keys=[key]).get(APP, "shop:1")
    assert acc is not None and acc.tokens is not None and acc.tokens.refresh_token == "RT-shop:11-secret-refresh"


async def test_a_ciphertext_moved_to_another_account_does_not_decrypt(make_store: StoreFactory, db_url: str) -> None:
    store = make_store(encryption_keys=["a passphrase"])
    await store.open()
    await store.upsert_grant(APP, "shopee", grant("shop:1"))
    await store.upsert_grant(APP, "shopee", grant("shop:2"))
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(
                "UPDATE accounts SET refresh_token = (SELECT refresh_token FROM accounts WHERE key='shop:1') "
                "WHERE key='shop:2'"
            )
        conn.close()
    else:
        schema = db_url.rsplit("%3D", 1)[1]
        with psycopg.connect(PG_URL, options=f"-csearch_path={schema}", autocommit=True) as pg:
            pg.execute(
                "UPDATE accounts SET refresh_token = (SELECT refresh_token FROM accounts WHERE key='shop:1') "
                "WHERE key='shop:2'"
            )
    with pytest.raises(StoreError, match="refresh_token of account shopee-sg/shop:2"):
        await store.get(APP, "shop:2")


# ------------------------------------------------------------------------------------------ migrations


async def test_migrations_create_exactly_the_schema(store: SqlStore) -> None:
    assert await store.current_revision() == head_revision()
    async with store._tx() as conn:
        diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
    assert diff == []
    before, after = await store.migrate()  # idempotent
    assert before == after == head_revision()


async def test_a_newer_database_is_refused(store: SqlStore, make_store: StoreFactory) -> None:
    async with store._tx(write=True) as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    newer = make_store()
    with pytest.raises(StoreError, match=r"schema revision 9999_from_the_future.*newer"):
        await newer.open()


async def test_open_store_from_settings(db_url: str, clock: FakeClock) -> None:
    store = open_store(
        StoreSettings.model_validate({"url": db_url, "encryption_keys": ["k1"], "history_versions": 2}), clock
    )
    try:
        await store.open()
        assert store.encrypted and store.history_versions == 2
    finally:
        await store.close()


# -------------------------------------------------------------------------------------- SQLite only


async def test_sqlite_file_modes_and_pragmas(tmp_path: Path, clock: FakeClock) -> None:
    old = os.umask(0o022)
    try:
        store = SqlStore(f"sqlite:///{tmp_path}/new/dir/tokens.db", clock=clock)
        await store.open()
        await store.upsert_grant(APP, "shopee", grant("shop:1"))
        async with store._tx() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30_000
            files = sorted(p.name for p in (tmp_path / "new/dir").iterdir())
        assert files == ["tokens.db", "tokens.db-shm", "tokens.db-wal"]
        for name in files:
            assert stat.S_IMODE((tmp_path / "new/dir" / name).stat().st_mode) == 0o600, name
        assert stat.S_IMODE((tmp_path / "new/dir").stat().st_mode) == 0o700
        await store.close()
    finally:
        os.umask(old)


async def test_sqlite_existing_loose_file_is_tightened(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "tokens.db"
    db.touch(mode=0o644)
    db.chmod(0o644)
    store = SqlStore(f"sqlite:///{db}", clock=clock)
    await store.open()
    await store.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


@pytest.mark.parametrize("make_parent", ["file", "proc"])
async def test_sqlite_unwritable_directory_is_one_clear_error(
    tmp_path: Path, clock: FakeClock, make_parent: str
) -> None:
    if make_parent == "file":
        (tmp_path / "not-a-dir").write_text("x")
        directory = tmp_path / "not-a-dir" / "sub"
    else:
        directory = Path("/proc/refresher-cannot-write-here")
    store = SqlStore(f"sqlite:///{directory}/tokens.db", clock=clock)
    with pytest.raises(StoreError) as info:
        await store.open()
    assert str(info.value).startswith(f"store.url: directory {directory} is not writable (")
    assert "\n" not in str(info.value)


def test_bad_urls_are_refused(clock: FakeClock) -> None:
    with pytest.raises(StoreError, match="in-memory"):
        SqlStore("sqlite://", clock=clock)
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        SqlStore("mysql://u@h/db", clock=clock)
    with pytest.raises(StoreError, match="not a database URL"):
        SqlStore("nonsense", clock=clock)
    with pytest.raises(StoreError, match="history_versions"):
        SqlStore("sqlite:///x.db", clock=clock, history_versions=0)


async def test_unreachable_postgres_is_a_store_error_without_password(clock: FakeClock) -> None:
    store = SqlStore("postgresql://postgres:hunter2-SECRET@127.0.0.1:1/none", clock=clock)
    with pytest.raises(StoreError) as info:
        await store.ping()
    assert "hunter2-SECRET" not in str(info.value)
    assert "hunter2-SECRET" not in store.safe_url
    await store.close()


async def test_no_token_reaches_a_log_line(
    make_store: StoreFactory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        store = make_store(encryption_keys=[])  # clear text in the database: the worst case for logs
        await store.open()
        a = await store.upsert_grant(APP, "shopee", grant("shop:1", 1))
        await store.claim_due(APP, 2 * HOUR, 10, "w", MINUTE)
        await store.mark_refresh_started(a.id, "w")
        await store.save_tokens(a.id, "w", tokens(2))
        await store.claim(APP, "shop:1", "w", MINUTE)
        await store.record_failure(a.id, "w", ErrorInfo("transient", None, "x"), None)
        await store.history(APP, "shop:1")
        await store.put_state(OAuthState("s", APP, T0, T0 + HOUR, pkce_verifier="pkce-SECRET"))
        await store.consume_state("s", APP)
        with pytest.raises(LeaseLost):
            await store.release(a.id, "w")
    assert caplog.records, "the test must capture something to be meaningful"
    for secret in (
        "AT-shop:11-secret-access",
        "RT-shop:11-secret-refresh",
        "AT-2-secret",
        "RT-2-secret",
        "pkce-SECRET",
    ):
        assert secret not in caplog.text


async def test_replicas_starting_together_migrate_once(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    assert {await s.current_revision() for s in stores} == {head_revision()}
    # Two replicas onboarding the same new account at once end with one row, updated in place.
    results = await asyncio.gather(*(s.upsert_grant(APP, "shopee", grant("shop:1", n)) for n, s in enumerate(stores)))
    assert len({r.id for r in results}) == 1
    assert await stores[0].count() == 1


async def test_stores_opening_a_new_sqlite_file_together_all_open(tmp_path: Path, clock: FakeClock) -> None:
    # A new file opened by several stores at once: SQLite refused the WAL switch at once ("database is
    # locked", no busy wait) and alembic's module-global context mixed interleaved migrations up. Each
    # round failed about half the time before; eight rounds leave that no chance to hide.
    for round_ in range(8):
        stores = [SqlStore(f"sqlite:///{tmp_path}/{round_}/tokens.db", clock=clock) for _ in range(3)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            assert {await s.current_revision() for s in stores} == {head_revision()}
        finally:
            for s in stores:
                await s.close()
        with sqlite3.connect(tmp_path / str(round_) / "tokens.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_resolved_alarms_and_expired_invitations_are_pruned_in_batches(store: SqlStore) -> None:
    for n in range(5):
        resolved = T0 + dt.timedelta(minutes=n) if n < 4 else None  # the fifth stays open
        await store.put_alarm(Alarm(APP, f"shop:{n}", "failures", T0, T0, resolved))
        await store.record_delivery(AlarmDelivery(APP, f"shop:{n}", "failures", "pager", "delivered", 1, T0, T0))
        await store.put_invitation(Invitation(f"inv_{n}", "invite", APP, T0, T0 + dt.timedelta(minutes=n)))
    later = T0 + dt.timedelta(minutes=3)
    assert await store.prune_resolved_alarms(later, limit=2) == 2  # the oldest first
    assert await store.prune_resolved_alarms(later, limit=2) == 1  # then the one left before `later`
    assert await store.prune_resolved_alarms(later) == 0
    left = [n for n in range(5) if await store.get_alarm(APP, f"shop:{n}", "failures") is not None]
    assert left == [3, 4]  # resolved at `later` itself, and the open one
    keys = [(APP, f"shop:{n}", "failures") for n in range(5)]
    assert sorted(d.account_key for d in await store.alarm_deliveries(keys)) == ["shop:3", "shop:4"]
    assert await store.prune_invitations(later) == 3
    assert sorted(i.id for i in await store.list_invitations()) == ["inv_3", "inv_4"]
