"""The role contracts, run against every implementation: the in-memory stand-ins, SQLite and PostgreSQL.

The same cases pass on all three, so a fast unit test that uses a stand-in (the last tests here) tests
the behaviour the real store has.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Protocol

import pytest

from refresher.domain import FakeClock
from refresher.onboarding import StateError, new_state, take_state
from refresher.store import Alarm, AlarmStore, OAuthState, StateStore, StoreError
from refresher.store.base import AlarmDelivery
from refresher.store.memory import MemoryAlarms, MemoryDeliveries, MemoryLogouts, MemoryStates
from refresher.store.roles import DeliveryStore, LogoutStore
from tests.support import store_or_fake

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)
APP = "shopee-sg"


class Roles(AlarmStore, StateStore, DeliveryStore, LogoutStore, Protocol):
    pass


class MemoryRoles(MemoryAlarms, MemoryStates, MemoryDeliveries, MemoryLogouts):
    def __init__(self, clock: FakeClock) -> None:
        MemoryAlarms.__init__(self, clock)
        MemoryStates.__init__(self, clock)
        MemoryDeliveries.__init__(self)
        MemoryLogouts.__init__(self)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def roles(role_url: str | None, clock: FakeClock) -> AsyncIterator[Roles]:
    async with store_or_fake(role_url, clock, lambda: MemoryRoles(clock)) as found:
        yield found


# ------------------------------------------------------------------------------------------- alarms


async def test_alarms_upsert_by_account_and_cause(roles: Roles) -> None:
    alarm = Alarm(APP, "shop:1", "failures", T0, None, None, {"failures": 3})
    await roles.put_alarm(alarm)
    await roles.put_alarm(Alarm(APP, "shop:1", "reauth_required", T0 + MINUTE, T0, None))
    await roles.put_alarm(Alarm("other", "x", "failures", T0 + 2 * MINUTE, None, None))
    assert await roles.get_alarm(APP, "shop:1", "failures") == alarm
    assert [(a.app, a.cause) for a in await roles.open_alarms()] == [
        (APP, "failures"),
        (APP, "reauth_required"),
        ("other", "failures"),
    ]
    await roles.put_alarm(dataclasses.replace(alarm, resolved_at=T0 + HOUR))
    assert [a.cause for a in await roles.open_alarms(APP, "shop:1")] == ["reauth_required"]
    assert await roles.get_alarm(APP, "shop:1", "nope") is None


async def test_note_alarm_sent_quiet_time_reopening_and_delivery(roles: Roles, clock: FakeClock) -> None:
    quiet = T0 - HOUR
    assert await roles.note_alarm_sent(APP, "shop:1", "failures", T0, quiet, {"n": 1})
    assert not await roles.note_alarm_sent(APP, "shop:1", "failures", T0 + MINUTE, quiet, {"n": 2})
    assert await roles.get_alarm(APP, "shop:1", "failures") == Alarm(APP, "shop:1", "failures", T0, T0, None, {"n": 1})
    # Not delivered: may be sent again once it is older than undelivered_since, though not yet quiet.
    soon = T0 + 10 * MINUTE
    assert not await roles.note_alarm_sent(APP, "shop:1", "failures", soon, quiet, {"n": 3}, T0 - MINUTE)
    assert await roles.note_alarm_sent(APP, "shop:1", "failures", soon, quiet, {"n": 3}, T0)
    # Delivered: only the message stamped at that time counts.
    await roles.mark_alarm_delivered(APP, "shop:1", "failures", T0)
    assert (await roles.get_alarm(APP, "shop:1", "failures")).delivered_at is None  # type: ignore[union-attr]
    await roles.mark_alarm_delivered(APP, "shop:1", "failures", soon)
    delivered = await roles.get_alarm(APP, "shop:1", "failures")
    assert delivered is not None and delivered.delivered_at == clock.now() and delivered.opened_at == T0
    later = soon + MINUTE
    assert not await roles.note_alarm_sent(APP, "shop:1", "failures", later, quiet, {"n": 4}, later)
    # A resolved alarm that fires again opens now.
    await roles.put_alarm(dataclasses.replace(delivered, resolved_at=later))
    assert await roles.note_alarm_sent(APP, "shop:1", "failures", later, later, {"n": 5})
    assert await roles.get_alarm(APP, "shop:1", "failures") == Alarm(
        APP, "shop:1", "failures", later, later, None, {"n": 5}
    )


async def test_alarm_deliveries_one_row_per_alarm_and_channel(roles: Roles) -> None:
    failing = AlarmDelivery(APP, "shop:1", "failures", "pager", "sending", 1, T0, None, "webhook pager: HTTP 500")
    await roles.record_delivery(failing)
    await roles.record_delivery(AlarmDelivery(APP, "shop:1", "failures", "chat", "delivered", 1, T0, T0))
    await roles.record_delivery(AlarmDelivery(APP, "shop:2", "failures", "chat", "delivered", 1, T0, T0))
    # The next attempt replaces the channel's row; an over-long error is cut to the column's width.
    gave_up = dataclasses.replace(
        failing, state="failed", attempts=2, last_attempt_at=T0 + MINUTE, last_error="x" * 600
    )
    await roles.record_delivery(gave_up)
    found = await roles.alarm_deliveries([(APP, "shop:1", "failures"), (APP, "shop:9", "failures")])
    assert [(d.channel, d.state, d.attempts) for d in found] == [("chat", "delivered", 1), ("pager", "failed", 2)]
    assert found[1].last_attempt_at == T0 + MINUTE and found[1].last_error == "x" * 512
    assert found[0].delivered_at == T0 and found[0].last_error is None
    assert await roles.alarm_deliveries([]) == []
    assert [d.account_key for d in await roles.alarm_deliveries([(APP, "shop:2", "failures")])] == ["shop:2"]


async def test_logouts_are_remembered_until_their_cookie_expires(roles: Roles) -> None:
    assert not await roles.logged_out("sid-a")
    await roles.add_logout("sid-a", T0 + HOUR, T0)
    await roles.add_logout("sid-b", T0 + 2 * HOUR, T0)
    await roles.add_logout("sid-a", T0 + HOUR, T0)  # twice (two tabs) is not an error
    assert await roles.logged_out("sid-a") and await roles.logged_out("sid-b") and not await roles.logged_out("x")
    # A later logout forgets the sessions whose cookie has expired since; the others stay.
    await roles.add_logout("sid-c", T0 + 3 * HOUR, T0 + HOUR + MINUTE)
    assert not await roles.logged_out("sid-a")
    assert await roles.logged_out("sid-b") and await roles.logged_out("sid-c")


# ------------------------------------------------------------------------------------------- states


async def test_state_is_single_use_per_app_and_expires(roles: Roles, clock: FakeClock) -> None:
    state = OAuthState("s-1", APP, T0, T0 + 15 * MINUTE, "/done", "verifier-SECRET", "http://127.0.0.1/cb")
    await roles.put_state(state)
    await roles.put_state(OAuthState("s-2", APP, T0, T0 + MINUTE))
    with pytest.raises(StoreError):
        await roles.put_state(OAuthState("s-2", APP, T0, T0 + MINUTE))
    assert await roles.consume_state("s-1", "another-app") is None
    taken = await roles.consume_state("s-1", APP)
    assert taken is not None and taken.used_at == T0 and dataclasses.replace(taken, used_at=None) == state
    assert await roles.consume_state("s-1", APP) is None
    assert await roles.find_state("s-1") == taken
    clock.advance(2 * MINUTE)
    assert await roles.consume_state("s-2", APP) is None
    # Putting a new state clears expired unused ones and used ones older than a day.
    clock.advance(dt.timedelta(days=1))
    await roles.put_state(OAuthState("s-3", APP, clock.now(), clock.now() + MINUTE))
    assert await roles.find_state("s-2") is None and await roles.find_state("s-1") is None


# ------------------------------------------------- a fast unit test of a caller, on the stand-in


async def test_take_state_names_each_refusal(clock: FakeClock) -> None:
    states = MemoryStates(clock)
    live = OAuthState(new_state(T0 + MINUTE), APP, T0, T0 + MINUTE)
    await states.put_state(live)
    await states.put_state(OAuthState("other-app-state", "tiktok-shop", T0, T0 + MINUTE))
    kinds = []
    for app, value in [
        (APP, None),
        (APP, "other-app-state"),
        (APP, "never-issued"),
    ]:
        with pytest.raises(StateError) as refused:
            await take_state(app, states, clock, value)
        kinds.append(refused.value.kind)
    assert kinds == ["missing", "wrong_app", "unknown"]
    assert await take_state(APP, states, clock, live.state) == dataclasses.replace(live, used_at=T0)
    with pytest.raises(StateError) as reused:
        await take_state(APP, states, clock, live.state)
    assert reused.value.kind == "reused"
    # The other app's state was left usable for its own callback.
    assert await take_state("tiktok-shop", states, clock, "other-app-state") is not None
    clock.advance(2 * MINUTE)
    late = new_state(T0 + MINUTE)  # never stored, but its embedded expiry has passed
    with pytest.raises(StateError) as expired:
        await take_state(APP, states, clock, late)
    assert expired.value.kind == "expired"
