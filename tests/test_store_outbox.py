"""The lifecycle-event outbox's contract (refresher.store.outbox), on the in-memory stand-in, SQLite and
PostgreSQL alike: one row per idempotency key, leases that keep a second deliverer off a row until they
expire, settling only by the lease's owner, retries, giving up, pruning; and an event stored in the same
transaction as its cause (disable, delete) or not at all."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator

import pytest

from refresher.domain import AccountStatus, FakeClock, Grant, Identity, TokenSet
from refresher.store import SqlStore
from refresher.store.base import OutboxEvent
from refresher.store.memory import MemoryOutbox
from refresher.store.roles import EventOutbox
from tests.support import store_or_fake

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=60)
APP = "shopee-sg"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def outbox(role_url: str | None, clock: FakeClock) -> AsyncIterator[EventOutbox]:
    async with store_or_fake(role_url, clock, lambda: MemoryOutbox(clock)) as found:
        yield found


def event(n: int) -> OutboxEvent:
    key = f"evt_{n:032d}"
    payload = {"version": 1, "type": "account.disabled", "idempotency_key": key, "account_key": f"shop:{n}"}
    return OutboxEvent(idempotency_key=key, kind="account.disabled", app=APP, account_key=f"shop:{n}", payload=payload)


async def test_one_row_per_idempotency_key(outbox: EventOutbox) -> None:
    assert await outbox.add_event(event(1))
    assert not await outbox.add_event(event(1))  # a reminder of the same event is not stored twice
    (claimed,) = await outbox.claim_events("a", LEASE)
    assert claimed.payload == event(1).payload and claimed.attempts == 0 and claimed.id is not None


async def test_a_leased_row_is_not_claimed_again_until_its_lease_expires(outbox: EventOutbox, clock: FakeClock) -> None:
    for n in range(3):
        await outbox.add_event(event(n))
    first = await outbox.claim_events("a", LEASE, limit=2)
    assert [e.idempotency_key for e in first] == [event(0).idempotency_key, event(1).idempotency_key]
    second = await outbox.claim_events("b", LEASE)
    assert [e.idempotency_key for e in second] == [event(2).idempotency_key]
    assert await outbox.claim_events("b", LEASE) == []
    clock.advance(LEASE + dt.timedelta(seconds=1))  # "a" died holding its lease: "b" takes its rows over
    taken = await outbox.claim_events("b", LEASE)
    assert {e.idempotency_key for e in taken} == {e.idempotency_key for e in (*first, *second)}
    # "a" comes back too late: its settling is refused, the new owner's counts.
    assert first[0].id is not None
    assert not await outbox.settle_event(first[0].id, "a")
    assert await outbox.settle_event(first[0].id, "b")
    assert not await outbox.settle_event(first[0].id, "b")  # settled once
    assert await outbox.event_lease_holders() == ["b"]
    assert await outbox.release_event_leases("b") == 2  # a dead owner's leases given back at once
    assert await outbox.event_lease_holders() == []
    assert len(await outbox.claim_events("c", LEASE)) == 2


async def test_retry_then_give_up_then_prune(outbox: EventOutbox, clock: FakeClock) -> None:
    await outbox.add_event(event(7))
    (row,) = await outbox.claim_events("a", LEASE)
    assert row.id is not None
    assert await outbox.settle_event(row.id, "a", error="webhook ops: HTTP 503", retry_at=T0 + dt.timedelta(seconds=30))
    assert await outbox.claim_events("a", LEASE) == []  # not due before its retry time
    clock.advance(dt.timedelta(seconds=30))
    (again,) = await outbox.claim_events("a", LEASE)
    assert again.attempts == 1 and again.last_error == "webhook ops: HTTP 503"
    assert await outbox.settle_event(row.id, "a", error="webhook ops: HTTP 503")  # attempts ran out
    clock.advance(dt.timedelta(days=1))
    assert await outbox.claim_events("a", LEASE) == []
    assert await outbox.prune_events(T0) == 0  # settled after T0: kept
    assert await outbox.prune_events(clock.now()) == 1
    assert await outbox.add_event(event(7))  # pruned: the key is free again


# The SQL store's transactions (tests/conftest.py's ``store``: SQLite and PostgreSQL): an event and its cause.


async def test_disable_and_delete_store_their_event_in_their_own_transaction(store: SqlStore) -> None:
    tokens = TokenSet("at-1", "rt-1", T0 + dt.timedelta(hours=4), T0 + dt.timedelta(days=30))
    account = await store.upsert_grant(APP, "shopee", Grant(Identity("shop:1", "shop", "1"), tokens))
    await store.set_status(APP, account.key, AccountStatus.DISABLED, event=event(1))
    await store.set_status(APP, account.key, AccountStatus.DISABLED, event=event(2))  # no change: no event
    assert [e.idempotency_key for e in await store.events()] == [event(1).idempotency_key]
    assert await store.delete(APP, account.key, event=event(3))
    assert not await store.delete(APP, account.key, event=event(4))  # nothing deleted: no event
    assert [e.idempotency_key for e in await store.events()] == [event(3).idempotency_key, event(1).idempotency_key]


async def test_events_lists_the_newest_first_delivered_or_not(outbox: EventOutbox) -> None:
    for n in range(4):
        await outbox.add_event(event(n))
    await outbox.add_event(dataclasses.replace(event(9), app="other-app"))
    (claimed, *_) = await outbox.claim_events("a", LEASE, limit=1)
    assert claimed.id is not None and await outbox.settle_event(claimed.id, "a")
    listed = await outbox.events(app=APP, limit=3)
    assert [e.idempotency_key for e in listed] == [event(n).idempotency_key for n in (3, 2, 1)]
    assert len(await outbox.events()) == 5  # every app, the delivered one included
