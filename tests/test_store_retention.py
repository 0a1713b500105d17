"""store.audit_retention: the daemon cuts the audit table after its sweeps, in small batches.

Real parts: the daemon with the sandbox's Shopee app, a SQLite file, simulated time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, insert, select

from refresher import platforms, pruning
from refresher.config import Settings, parse_config
from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.sandbox import SandboxServer
from refresher.store import AuditEntry, SqlStore
from refresher.store.base import Alarm, AlarmDelivery, OutboxEvent
from refresher.store.connection_types import Invitation
from refresher.store.schema import audit_log

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def settings_for(sandbox: SandboxServer, db: Path) -> Settings:
    document = {
        "store": {"url": f"sqlite:///{db}", "audit_retention": "7d"},
        "server": {"enabled": False},
        "logging": {"level": "warning", "format": "json"},
        "apps": {"shopee": sandbox.app_config("shopee")},
    }
    return parse_config(
        yaml.safe_dump(document), file="retention.yaml", credential_models=platforms.credential_models()
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def daemon(clock: FakeClock, tmp_path: Path) -> AsyncIterator[Daemon]:
    """The daemon with the sandbox's Shopee app and a 7-day retention, started without its schedule: the
    tests run its sweeps by hand (``daemon.tick``) on simulated time."""
    async with SandboxServer(clock=clock, seed=3) as sandbox:
        running = Daemon(settings_for(sandbox, tmp_path / "tokens.db"), clock=clock)
        await running.start(schedule=False)
        try:
            yield running
        finally:
            await running.stop()


def sql_store(daemon: Daemon) -> SqlStore:
    assert isinstance(daemon.store, SqlStore)
    return daemon.store


async def add_rows(store: SqlStore, count: int, at: dt.datetime) -> None:
    rows = [
        {
            "at": at + dt.timedelta(seconds=i),
            "app": "shopee",
            "account_key": f"shop:{i}",
            "outcome": "success",
            "duration_ms": 1,
            "attempts": 1,
        }
        for i in range(count)
    ]
    async with store._tx(write=True) as conn:  # one statement: thousands of single commits would be slow
        await conn.execute(insert(audit_log), rows)


async def rows(store: SqlStore) -> int:
    async with store._tx() as conn:
        return int((await conn.execute(select(func.count()).select_from(audit_log))).scalar_one())


async def test_sweeps_prune_the_audit_table_in_batches(
    daemon: Daemon, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pruning, "AUDIT_PRUNE_BATCH", 100)
    monkeypatch.setattr(pruning, "AUDIT_PRUNE_BATCHES_PER_PASS", 4)
    store = sql_store(daemon)
    await add_rows(store, 1_000, T0 - 30 * DAY)  # older than the 7 days kept
    await store.audit(AuditEntry(T0 - 6 * DAY, "shopee", "shop:recent", "success", 5))

    await daemon.tick("shopee")  # one pass: 4 batches of 100, the oldest first
    assert await rows(store) == 1_000 - 400 + 1
    async with store._tx() as conn:
        oldest = (await conn.execute(select(func.min(audit_log.c.at)))).scalar_one()
    assert oldest == T0 - 30 * DAY + dt.timedelta(seconds=400)

    await daemon.tick("shopee")  # not caught up yet, so the next sweep goes on
    await daemon.tick("shopee")  # 200 left: this pass catches up
    assert [e.account_key for e in await store.audit_log(limit=10_000)] == ["shop:recent"]

    # Caught up: no more passes within the hour, then the row that aged past 7 days goes.
    clock.advance(2 * DAY)
    await daemon.tick("shopee")
    assert await rows(store) == 0
    await store.audit(AuditEntry(T0 - 10 * DAY, "shopee", "shop:late", "success", 5))
    clock.advance(dt.timedelta(minutes=30))
    await daemon.tick("shopee")
    assert await rows(store) == 1
    clock.advance(dt.timedelta(minutes=31))
    await daemon.tick("shopee")
    assert await rows(store) == 0


async def test_sweeps_prune_delivered_lifecycle_events_after_the_audit_retention(
    daemon: Daemon, clock: FakeClock
) -> None:
    store = sql_store(daemon)

    def event(key: str) -> OutboxEvent:
        return OutboxEvent(key, "account.disabled", "shopee", "shop:1", {"idempotency_key": key})

    await store.add_event(event("evt_sent"))
    assert await daemon.deliverer.drain(10)  # no receiver configured: delivered at once
    await store.add_event(event("evt_pending"))
    (pending,) = await store.claim_events("another-replica", 30 * DAY)  # still being sent elsewhere
    clock.advance(8 * DAY)  # past the 7 days kept
    await daemon.tick("shopee")
    assert [e.idempotency_key for e in await store.events()] == [pending.idempotency_key]


async def test_sweeps_prune_resolved_alarms_and_expired_invitations_after_the_audit_retention(
    daemon: Daemon, clock: FakeClock
) -> None:
    store = daemon.store
    for key, resolved in (("shop:old", T0), ("shop:open", None)):
        await store.put_alarm(Alarm("shopee", key, "failures", T0 - DAY, T0 - DAY, resolved))
        await store.record_delivery(
            AlarmDelivery("shopee", key, "failures", "pager", "delivered", 1, T0 - DAY, T0 - DAY)
        )
    for link, ttl in (("inv_expired", DAY), ("inv_live", 30 * DAY)):
        await store.put_invitation(Invitation(link, "invite", "shopee", T0, T0 + ttl))
    clock.advance(8 * DAY + dt.timedelta(hours=1))  # past the 7 days kept: the resolved alarm, the expired link go
    await daemon.tick("shopee")
    assert await store.get_alarm("shopee", "shop:old", "failures") is None
    assert await store.get_alarm("shopee", "shop:open", "failures") is not None  # open: kept
    kept = await store.alarm_deliveries([("shopee", k, "failures") for k in ("shop:old", "shop:open")])
    assert [d.account_key for d in kept] == ["shop:open"]
    assert [i.id for i in await store.list_invitations()] == ["inv_live"]
