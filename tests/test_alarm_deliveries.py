"""Per alarm and channel delivery state (``alarm_deliveries``): the alert policy records how each channel's
delivery of each message ended, through real webhook receivers on real ports into a real SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from refresher.alerts import AlarmMessage, AlertPolicy, Dispatcher, RefreshEvent, WebhookChannel
from refresher.alerts.alarm_deliveries import DROPPED, DeliveryRecorder
from refresher.config import AlertSettings, StoreSettings
from refresher.domain import AccountStatus, ErrorInfo, FakeClock
from refresher.server.runtime import Runtime
from refresher.server.ui.common import deliveries_of
from refresher.store.base import Alarm, AlarmDelivery
from refresher.store.memory import MemoryDeliveries
from refresher.store.sql import SqlStore, open_store
from tests.support import Answering, assert_no_secret

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
APP, KEY = "shopee-sg", "shop:1001"
# Chat and incident webhooks carry their credential in the URL: it must never reach the table.
URL_TOKEN = "T0KENinPATH8d7f6e5d4c3b2a1"


@pytest.fixture
def refusing() -> Iterator[Answering]:
    server = Answering(500)
    yield server
    server.close()


@pytest.fixture
def accepting() -> Iterator[Answering]:
    server = Answering(204)
    yield server
    server.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    real = open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'alarms.db'}"), FakeClock(T0))
    await real.open()
    yield real
    await real.close()


def failure(failures: int = 3) -> RefreshEvent:
    return RefreshEvent(
        app=APP,
        platform="shopee",
        account_key=KEY,
        account_name="Demo Shop",
        outcome="failure",
        error=ErrorInfo("transient", "E503", "token endpoint answered 503"),
        consecutive_failures=failures,
        status=AccountStatus.ACTIVE,
        access_expires_at=T0 + dt.timedelta(hours=2),
        refresh_expires_at=T0 + dt.timedelta(days=30),
        at=T0,
        attempts=3,
        duration_ms=120,
    )


def success() -> RefreshEvent:
    return RefreshEvent(
        app=APP,
        platform="shopee",
        account_key=KEY,
        account_name="Demo Shop",
        outcome="success",
        error=None,
        consecutive_failures=0,
        status=AccountStatus.ACTIVE,
        access_expires_at=T0 + dt.timedelta(hours=6),
        refresh_expires_at=T0 + dt.timedelta(days=30),
        at=T0,
        attempts=1,
        duration_ms=80,
    )


def policy_of(store: SqlStore, channels: list[Any], dispatcher: Dispatcher, clock: FakeClock) -> AlertPolicy:
    settings = AlertSettings(after_failures=3, delivery_attempts=2)
    policy = AlertPolicy(settings, store, channels, clock, reauth_link=lambda *_: None, dispatcher=dispatcher)
    policy.deliveries = DeliveryRecorder(store, clock)
    return policy


async def test_each_channel_of_an_alarm_says_how_its_message_went(
    store: SqlStore, refusing: Answering, accepting: Answering
) -> None:
    clock = FakeClock(T0)
    dispatcher = Dispatcher(initial_delay=0.01, max_delay=0.05)
    await dispatcher.start()
    channels = [
        WebhookChannel("pager", refusing.url(f"/hooks/{URL_TOKEN}?key={URL_TOKEN}"), timeout=2.0),
        WebhookChannel("chat", accepting.url(f"/services/{URL_TOKEN}"), timeout=2.0),
    ]
    policy = policy_of(store, channels, dispatcher, clock)
    try:
        await policy.observe(failure())
        assert await dispatcher.drain(10)
        pager, chat = sorted(await store.alarm_deliveries([(APP, KEY, "failures")]), key=lambda d: d.channel != "pager")
        assert (pager.channel, pager.state, pager.attempts) == ("pager", "failed", 2)
        assert pager.last_error == "webhook pager: HTTP 500" and pager.delivered_at is None
        assert (chat.channel, chat.state, chat.attempts, chat.delivered_at) == ("chat", "delivered", 1, T0)
        assert chat.last_error is None
        assert refusing.hits == 2 and accepting.hits == 1

        # The all-clear is the alarm's latest message now: its outcome replaces the alarm's.
        accepting_later = dt.timedelta(minutes=5)
        clock.advance(accepting_later)
        await policy.observe(success())
        assert await dispatcher.drain(10)
        rows = {d.channel: d for d in await store.alarm_deliveries([(APP, KEY, "failures")])}
        assert rows["chat"].delivered_at == T0 + accepting_later and rows["pager"].attempts == 2
        assert rows["pager"].last_attempt_at == T0 + accepting_later
        texts = [str(d) for d in rows.values()]
        assert_no_secret(texts, [URL_TOKEN, "127.0.0.1"], "alarm_deliveries")
    finally:
        await dispatcher.aclose(grace=1)


class Leaky:
    """A channel whose error quotes its URL (as httpx's do): only its class name may be recorded."""

    name = "leaky"

    async def send(self, message: AlarmMessage) -> None:
        raise RuntimeError(f"POST https://hooks.example.com/{URL_TOKEN} failed")


async def test_a_foreign_error_is_recorded_by_its_class_name_only(store: SqlStore) -> None:
    clock = FakeClock(T0)
    dispatcher = Dispatcher(initial_delay=0.01, max_delay=0.05)
    await dispatcher.start()
    policy = policy_of(store, [Leaky()], dispatcher, clock)
    try:
        await policy.observe(failure())
        assert await dispatcher.drain(10)
        [row] = await store.alarm_deliveries([(APP, KEY, "failures")])
        assert (row.state, row.attempts, row.last_error) == ("failed", 2, "leaky: RuntimeError")
    finally:
        await dispatcher.aclose(grace=1)


async def test_a_message_dropped_from_the_queue_is_recorded_failed(store: SqlStore, accepting: Answering) -> None:
    clock = FakeClock(T0)
    dispatcher = Dispatcher(queue_size=1)  # not started: the second alarm pushes the first out unsent
    policy = policy_of(store, [WebhookChannel("chat", accepting.url("/x"), timeout=2.0)], dispatcher, clock)
    await policy.observe(failure())
    await policy.observe(dataclasses.replace(failure(), account_key="shop:2002"))  # another account's alarm
    assert dispatcher.dropped == 1
    recorder = policy.deliveries
    assert recorder is not None
    await asyncio.gather(*recorder._writes)
    [dropped] = await store.alarm_deliveries([(APP, KEY, "failures")])
    assert (dropped.state, dropped.attempts, dropped.last_error) == ("failed", 0, DROPPED)
    await dispatcher.start()
    assert await dispatcher.drain(10)
    [sent] = await store.alarm_deliveries([(APP, "shop:2002", "failures")])
    assert sent.state == "delivered"
    await dispatcher.aclose(grace=1)


async def test_a_row_older_than_the_alarms_newest_message_is_shown_queued() -> None:
    store = MemoryDeliveries()
    minute = dt.timedelta(minutes=1)
    await store.record_delivery(AlarmDelivery(APP, KEY, "failures", "chat", "delivered", 1, T0, T0))
    await store.record_delivery(AlarmDelivery(APP, KEY, "failures", "pager", "failed", 2, T0 + 2 * minute, None, "e"))
    # The reminder stamped T0 + 1 min: chat has not tried it yet, pager has (its row is newer).
    alarm = Alarm(APP, KEY, "failures", T0, T0 + minute, None)
    runtime = cast(Runtime, SimpleNamespace(store=store))
    rows = (await deliveries_of(runtime, [alarm]))[(APP, KEY, "failures")]
    assert [(d.channel, d.state, d.last_error) for d in rows] == [("chat", "queued", None), ("pager", "failed", "e")]
    resolved = dataclasses.replace(alarm, resolved_at=T0 + 3 * minute)  # its rows are its last message's
    rows = (await deliveries_of(runtime, [resolved]))[(APP, KEY, "failures")]
    assert [d.state for d in rows] == ["delivered", "failed"]
