"""Lifecycle events delivered at least once across crashes (refresher.alerts.event_delivery over the outbox).

Real parts: `refresher run` as a process killed with SIGKILL while its event is undelivered, a new daemon
process delivering it; two deliverers (two stores, as two replicas would have) on one SQLite file or one
PostgreSQL schema; a webhook receiver on a loopback port that checks every signature.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import signal
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import yaml

from refresher import platforms
from refresher.alerts import build_channels
from refresher.alerts.event_delivery import EventDeliverer
from refresher.config import Settings, parse_config
from refresher.domain import SystemClock
from refresher.store import SqlStore, open_store
from refresher.store.base import OutboxEvent
from tests.test_alerts_e2e import SECRET, Receiver
from tests.test_daemon_process import Run, free_port

pytestmark = pytest.mark.slow


def settings_for(store_url: str, receiver_url: str, attempts: int = 3) -> Settings:
    document = {
        "store": {"url": store_url},
        "alerts": {
            "delivery_attempts": attempts,
            "channels": [{"type": "webhook", "name": "events", "url": receiver_url, "secret": SECRET}],
        },
    }
    return parse_config(yaml.safe_dump(document), credential_models=platforms.credential_models())


def event(n: int) -> OutboxEvent:
    key = f"evt_{n:032x}"
    payload = {"version": 1, "type": "account.disabled", "idempotency_key": key, "account_key": f"shop:{n}"}
    return OutboxEvent(
        idempotency_key=key, kind="account.disabled", app="shopee", account_key=f"shop:{n}", payload=payload
    )


async def test_two_deliverers_on_one_store_send_each_event_once(store_url: str) -> None:
    receiver = Receiver(delay=0.05)  # slow enough that both deliverers are busy at once
    clock = SystemClock()
    try:
        settings = settings_for(store_url, receiver.url)
        stores = [SqlStore(store_url, clock=clock) for _ in range(2)]
        for store in stores:
            await store.open()
        for n in range(30):
            assert await stores[0].add_event(event(n))
        deliverers = [
            EventDeliverer(store, settings, build_channels(settings.alerts), clock=clock, owner=f"replica-{i}")
            for i, store in enumerate(stores)
        ]
        # Both drain the same outbox at once, pass after pass, until nothing is due.
        assert all(await asyncio.gather(*(d.drain(30) for d in deliverers)))
        messages = receiver.messages()  # every signature checked
        counts = Counter(m["idempotency_key"] for m in messages)
        assert counts == Counter({event(n).idempotency_key: 1 for n in range(30)})
        for headers, _body in receiver.bodies:
            assert headers["idempotency-key"] in counts
        rows = await stores[1].events(limit=100)
        assert len(rows) == 30 and all(r.delivered_at is not None and r.attempts == 1 for r in rows)
        assert all(r.last_error is None for r in rows)
    finally:
        for store in stores:
            await store.close()
        receiver.server.shutdown()
        receiver.server.server_close()


class SlowFirst(Receiver):
    """Each request waits less than the one before: sent at once, they would arrive in reverse order."""

    def __init__(self) -> None:
        self._delays = [0.4, 0.3, 0.2, 0.1]
        super().__init__()

    @property
    def delay(self) -> float:
        return self._delays.pop(0) if self._delays else 0.0

    @delay.setter
    def delay(self, _value: float) -> None:
        pass


async def test_one_accounts_events_arrive_in_the_order_they_were_stored(store_url: str) -> None:
    receiver = SlowFirst()
    clock = SystemClock()
    store = SqlStore(store_url, clock=clock)
    await store.open()
    try:
        settings = settings_for(store_url, receiver.url)
        deliverer = EventDeliverer(store, settings, build_channels(settings.alerts), clock=clock, owner="one")
        stored = [dataclasses.replace(event(n), account_key="shop:1") for n in range(4)]
        for one in stored:
            assert await store.add_event(one)
        assert await deliverer.deliver_due() == 4  # one pass: all four leased together
        assert [m["idempotency_key"] for m in receiver.messages()] == [e.idempotency_key for e in stored]
    finally:
        await store.close()
        receiver.server.shutdown()
        receiver.server.server_close()


async def test_a_failing_receiver_is_retried_with_the_same_key_then_given_up(store_url: str) -> None:
    port = free_port()  # nobody listens yet
    clock = SystemClock()
    store = SqlStore(store_url, clock=clock)
    await store.open()
    settings = settings_for(store_url, f"http://127.0.0.1:{port}/events", attempts=3)
    deliverer = EventDeliverer(store, settings, build_channels(settings.alerts), clock=clock, owner="one")
    receiver: Receiver | None = None
    try:
        await store.add_event(event(1))
        await store.add_event(event(2))
        assert await deliverer.deliver_due() == 2
        (first, _second) = await store.events()
        assert first.attempts == 1 and first.delivered_at is None and "webhook events" in (first.last_error or "")
        assert first.next_attempt_at is not None and first.next_attempt_at > clock.now()  # backing off
        assert await deliverer.deliver_due() == 0  # not due yet
        receiver = Receiver(port=port)
        await asyncio.sleep(2.5)  # past the first backoff (1-2 s)
        assert await deliverer.drain(10)
        keys = [m["idempotency_key"] for m in receiver.messages()]
        assert sorted(keys) == sorted([event(1).idempotency_key, event(2).idempotency_key])
        assert all(r.delivered_at is not None and r.last_error is None for r in await store.events())
        # A receiver down for good: three attempts, then given up with the reason kept.
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver = None
        await store.add_event(event(3))
        for _ in range(3):
            await deliverer.deliver_due()
            await _make_due(store)
        (gone, *_rest) = await store.events()
        assert gone.idempotency_key == event(3).idempotency_key
        assert gone.attempts == 3 and gone.delivered_at is not None and gone.last_error
        assert await deliverer.deliver_due() == 0
    finally:
        if receiver is not None:
            receiver.server.shutdown()
            receiver.server.server_close()
        await store.close()


async def _make_due(store: SqlStore) -> None:
    """Move every pending retry to now (instead of sleeping through the backoff)."""
    from sqlalchemy import update

    from refresher.store.schema import event_outbox

    async with store._tx(write=True) as conn:
        await conn.execute(
            update(event_outbox)
            .where(event_outbox.c.delivered_at.is_(None))
            .values(next_attempt_at=dt.datetime.now(dt.UTC))
        )


@pytest.mark.parametrize("when", ["before sending", "while sending"])
async def test_an_event_stored_before_a_kill_9_is_delivered_by_the_next_daemon(tmp_path: Path, when: str) -> None:
    """Killed before sending (the receiver is down: the row waits for its retry) or while sending (the
    receiver holds the POST: the dead daemon's lease is given back by its successor at once, not after
    the lease's 60 s)."""
    run = Run(tmp_path)
    port = free_port()
    run.document["alerts"] = {
        "delivery_attempts": 50,
        "channels": [{"type": "webhook", "name": "events", "url": f"http://127.0.0.1:{port}/events", "secret": SECRET}],
    }
    run.write()
    # Before sending: nobody listens while the first daemon runs. While sending: the receiver holds it.
    receiver: Receiver | None = Receiver(port=port, delay=120) if when == "while sending" else None
    try:
        await run.start_sandbox()
        await run.onboard()
        await run.start()
        await run.wait_event("daemon.started")
        settings = parse_config(run.config.read_text(), credential_models=platforms.credential_models())
        store = open_store(settings.store, SystemClock())
        await store.open()
        try:
            (account, *_) = await store.list(app="shopee")
            url = f"http://127.0.0.1:{run.port}/v1/accounts/shopee/{quote(account.key, safe='')}/disable"
            async with httpx.AsyncClient(trust_env=False) as client:
                answer = await client.post(url, headers={"Authorization": f"Bearer {run.admin_token}"})
            assert answer.status_code == 200, answer.text
            if receiver is None:
                await run.wait_event("event.attempt_failed")
            else:
                for _ in range(200):  # the POST is in, held by the receiver
                    if await store.event_lease_holders():
                        break
                    await asyncio.sleep(0.05)
            assert run.proc is not None
            run.proc.send_signal(signal.SIGKILL)
            await run.proc.wait()
            (stored,) = await store.events()
            assert stored.kind == "account.disabled" and stored.delivered_at is None
            if receiver is None:
                assert stored.attempts >= 1
                receiver = Receiver(port=port)
            else:
                assert stored.attempts == 0 and await store.event_lease_holders()  # leased by the dead daemon
                receiver.delay = 0
            mark = len(run.stderr)
            await run.start()
            await run.wait_event("event.delivered", after=mark)
            (message,) = receiver.messages()  # signed with the channel's secret, checked (the held POST is not in)
            assert message["type"] == "account.disabled" and message["account_key"] == account.key
            assert message["idempotency_key"] == stored.idempotency_key
            assert receiver.bodies[0][0]["idempotency-key"] == stored.idempotency_key
            (settled,) = await store.events()
            assert settled.delivered_at is not None and settled.last_error is None
            run.proc.send_signal(signal.SIGTERM)
            assert await run.proc.wait() == 0
        finally:
            await store.close()
    finally:
        if receiver is not None:
            receiver.server.shutdown()
            receiver.server.server_close()
        for proc in (run.proc, run.sandbox_proc):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
