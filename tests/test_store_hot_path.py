"""The refresh path's store calls: one thread hand-off per transaction, and only the mark before
a platform call commits without waiting for the disk (issue 16)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

from refresher.domain import ErrorInfo, FakeClock, Grant, Identity, TokenSet
from refresher.store.base import AuditEntry, LeaseLost
from refresher.store.sql import SqlStore

OWNER = "worker-1"
APP = "shopee"


def _tokens(clock: FakeClock, n: int) -> TokenSet:
    now = clock.now()
    return TokenSet(f"AT-{n}", f"RT-{n}", now + dt.timedelta(hours=4), now + dt.timedelta(days=30))


async def _claimed(store: SqlStore, clock: FakeClock, count: int = 3) -> list[Any]:
    for i in range(count):
        identity = Identity(key=f"shop:{i}", kind="shop", platform_id=str(i), name=f"Shop {i}")
        await store.upsert_grant(APP, "shopee", Grant(identity, _tokens(clock, i)))
    claimed = await store.claim_due(APP, dt.timedelta(days=1), count, OWNER, dt.timedelta(minutes=10))
    assert len(claimed) == count
    return list(claimed)


class _CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def _watched(store: SqlStore) -> tuple[_CountingExecutor, list[str]]:
    """The store's thread hand-offs counted, and every statement that goes through the async driver."""
    assert store._sync_tx is not None and store._engine is not None
    counting = _CountingExecutor()
    store._sync_tx._executor = counting
    async_statements: list[str] = []

    def through_async_driver(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        async_statements.append(statement)

    event.listen(store._engine.sync_engine, "after_cursor_execute", through_async_driver)
    return counting, async_statements


async def test_settling_is_one_thread_hand_off_per_transaction(store: SqlStore, clock: FakeClock) -> None:
    account = (await _claimed(store, clock, 1))[0]
    counting, async_statements = _watched(store)
    audit = AuditEntry(at=clock.now(), app=APP, account_key=account.key, outcome="success", duration_ms=1)
    await store.mark_refresh_started(account.id, OWNER)
    saved = await store.save_tokens(account.id, OWNER, _tokens(clock, 99), audit)
    await store.open_alarms(APP, account.key)
    assert saved.tokens is not None and saved.tokens.access_token == "AT-99"
    # mark, save (with its audit row and history), the alarms read: three transactions, three hand-offs,
    # and not one statement through the async driver (on SQLite it hands off per DBAPI call: ~40 per
    # refresh; on PostgreSQL a greenlet switch and an await per statement).
    assert counting.submitted == 3
    assert async_statements == []
    counting.shutdown()


async def test_a_refusal_in_a_one_hop_transaction_is_the_callers_and_leaves_nothing(
    store: SqlStore, clock: FakeClock
) -> None:
    account = (await _claimed(store, clock, 1))[0]
    with pytest.raises(LeaseLost):
        await store.save_tokens(account.id, "intruder", _tokens(clock, 7))
    current = await store.get(APP, account.key)
    assert current is not None and current.tokens is not None and current.tokens.access_token == "AT-0"
    assert current.lease_owner == OWNER
    # The transaction ended (on SQLite, the write lock was given back): another write goes through at once.
    await asyncio.wait_for(store.release(account.id, OWNER), 5)


def _synchronous(conn: Connection) -> Any:
    return conn.exec_driver_sql("PRAGMA synchronous").scalar()


def _synchronous_commit(conn: Connection) -> Any:
    return conn.exec_driver_sql("SHOW synchronous_commit").scalar()


async def test_only_bookkeeping_commits_without_waiting_for_the_disk(store: SqlStore) -> None:
    probe = _synchronous if store.backend == "sqlite" else _synchronous_commit
    durable, relaxed = (2, 1) if store.backend == "sqlite" else ("on", "off")  # FULL, NORMAL
    assert await store._run_tx(probe, write=True) == durable
    assert await store._run_tx(probe, write=True, durable=False) == relaxed
    # The relaxed setting ends with its transaction: every connection of the pool is durable again.
    results = await asyncio.gather(*(store._run_tx(probe, write=write) for write in (True, False) * 4))
    assert set(results) == {durable}


async def test_the_mark_before_a_call_is_the_only_relaxed_commit_of_a_refresh(
    store: SqlStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = (await _claimed(store, clock, 1))[0]
    relaxed: list[str] = []
    run_tx = store._run_tx

    async def watched(work: Callable[[Connection], Any], **options: Any) -> Any:
        if options.get("durable") is False:
            relaxed.append(work.__name__)
        return await run_tx(work, **options)

    monkeypatch.setattr(store, "_run_tx", watched)
    await store.mark_refresh_started(account.id, OWNER)
    await store.save_tokens(account.id, OWNER, _tokens(clock, 5))
    claimed = await store.claim(APP, account.key, OWNER, dt.timedelta(minutes=10))
    assert claimed is not None
    await store.record_failure(account.id, OWNER, error=_error(), next_attempt_at=clock.now() + dt.timedelta(minutes=1))
    assert relaxed == ["mark"]


def _error() -> ErrorInfo:
    return ErrorInfo(error_class="transient", code="x", message="boom")


async def test_settling_statements_are_built_once(
    store: SqlStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh path executes statements built at import (store/hot.py) with new parameters: building
    them per call coerced every column and clause again, ~100 ``coercions.expect`` per refresh."""
    from sqlalchemy.sql import coercions

    first, second = await _claimed(store, clock, 2)
    audit = AuditEntry(at=clock.now(), app=APP, account_key=first.key, outcome="success", duration_ms=1)
    await store.mark_refresh_started(first.id, OWNER)  # compiled and cached once
    await store.save_tokens(first.id, OWNER, _tokens(clock, 10), audit)
    await store.open_alarms(APP, first.key)
    await store.claim(APP, first.key, OWNER, dt.timedelta(minutes=10))
    await store.record_failure(first.id, OWNER, error=_error(), next_attempt_at=None)
    coerced = 0
    expect = coercions.expect

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal coerced
        coerced += 1
        return expect(*args, **kwargs)

    monkeypatch.setattr(coercions, "expect", counted)
    await store.mark_refresh_started(second.id, OWNER)
    await store.save_tokens(second.id, OWNER, _tokens(clock, 11), audit)
    await store.open_alarms(APP, second.key)
    monkeypatch.setattr(coercions, "expect", expect)  # store.claim (refresh now) is no sweep statement
    await store.claim(APP, second.key, OWNER, dt.timedelta(minutes=10))
    monkeypatch.setattr(coercions, "expect", counted)
    await store.record_failure(second.id, OWNER, error=_error(), next_attempt_at=None)
    assert coerced <= 5, coerced


async def test_a_save_that_does_not_rotate_keeps_the_previous_refresh_token(store: SqlStore, clock: FakeClock) -> None:
    account = (await _claimed(store, clock, 1))[0]
    rotated = await store.save_tokens(account.id, OWNER, _tokens(clock, 1))
    assert rotated.previous_refresh_token == "RT-0"
    await store.claim(APP, account.key, OWNER, dt.timedelta(minutes=10))
    same = TokenSet("AT-2", "RT-1", clock.now() + dt.timedelta(hours=4))  # the platform kept the refresh token
    kept = await store.save_tokens(account.id, OWNER, same)
    assert kept.previous_refresh_token == "RT-0" and kept.version == 3
    assert kept == await store.get(APP, account.key)


async def test_the_identity_update_after_a_refresh_is_one_hand_off(store: SqlStore, clock: FakeClock) -> None:
    """Platform.updated_identity runs after a refresh (TikTok Shop whenever the shops changed): its write is
    one transaction in one thread hand-off, like the refresh's own, never through the async driver."""
    account = (await _claimed(store, clock, 1))[0]
    counting, async_statements = _watched(store)
    renamed = Identity(key=account.key, kind="shop", platform_id=account.identity.platform_id, name="Renamed")
    updated = await store.update_identity(APP, account.key, renamed)
    assert updated is not None and updated.identity.name == "Renamed"
    assert updated == await store.get(APP, account.key)
    assert updated.lease_owner == OWNER  # only the identity columns: the worker's lease is untouched
    assert await store.update_identity(APP, "no-such-shop", renamed) is None
    assert counting.submitted == 2
    assert [s for s in async_statements if "accounts" in s and "UPDATE" in s] == []
    counting.shutdown()
