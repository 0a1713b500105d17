"""In-memory stand-ins for some store roles, for fast unit tests of the code that uses them.

They keep the same rules as the SQL store (the contract tests in ``tests/test_store_roles.py`` run the
same cases against both), but nothing survives the process and nothing is shared between replicas: never
use them to hold real tokens.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from refresher.domain import Clock, as_utc
from refresher.store.base import USED_STATE_MEMORY, Account, Alarm, AlarmDelivery, OAuthState, OutboxEvent, StoreError


class MemoryAccounts:
    """:class:`~refresher.store.roles.AccountLookup` over accounts put in with :meth:`add`."""

    def __init__(self) -> None:
        self._accounts: dict[tuple[str, str], Account] = {}

    def add(self, account: Account) -> None:
        self._accounts[(account.app, account.key)] = account

    async def get(self, app: str, key: str) -> Account | None:
        return self._accounts.get((app, key))


class MemoryAlarms:
    """:class:`~refresher.store.roles.AlarmStore` in a dict (one process, no replicas)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._alarms: dict[tuple[str, str, str], Alarm] = {}

    async def prune_resolved_alarms(self, older_than: dt.datetime, limit: int = 500) -> int:
        old = [k for k, a in self._alarms.items() if a.resolved_at is not None and a.resolved_at < as_utc(older_than)]
        old.sort(key=lambda k: self._alarms[k].resolved_at or older_than)
        for key in old[:limit]:
            del self._alarms[key]
        return len(old[:limit])

    async def open_alarms(self, app: str | None = None, account_key: str | None = None) -> Sequence[Alarm]:
        found = [
            a
            for a in self._alarms.values()
            if a.resolved_at is None
            and (app is None or a.app == app)
            and (account_key is None or a.account_key == account_key)
        ]
        return sorted(found, key=lambda a: (a.opened_at, a.app, a.account_key))

    async def get_alarm(self, app: str, account_key: str, cause: str) -> Alarm | None:
        return self._alarms.get((app, account_key, cause))

    async def put_alarm(self, alarm: Alarm) -> None:
        self._alarms[(alarm.app, alarm.account_key, alarm.cause)] = dataclasses.replace(
            alarm, details=dict(alarm.details)
        )

    async def note_alarm_sent(
        self,
        app: str,
        account_key: str,
        cause: str,
        now: dt.datetime,
        quiet_since: dt.datetime,
        details: Mapping[str, Any],
        undelivered_since: dt.datetime | None = None,
    ) -> bool:
        now = as_utc(now)
        old = self._alarms.get((app, account_key, cause))
        if old is not None and old.resolved_at is None and old.last_sent_at is not None:
            sent = as_utc(old.last_sent_at)
            undelivered = (
                undelivered_since is not None and old.delivered_at is None and sent <= as_utc(undelivered_since)
            )
            if sent > as_utc(quiet_since) and not undelivered:
                return False  # sent recently: someone else's message stands
        # A resolved alarm that fires again is a new alarm: it opens now.
        opened = now if old is None or old.resolved_at is not None else old.opened_at
        self._alarms[(app, account_key, cause)] = Alarm(
            app=app,
            account_key=account_key,
            cause=cause,
            opened_at=opened,
            last_sent_at=now,
            resolved_at=None,
            details=dict(details),
            delivered_at=None,
        )
        return True

    async def mark_alarm_delivered(self, app: str, account_key: str, cause: str, sent_at: dt.datetime) -> None:
        alarm = self._alarms.get((app, account_key, cause))
        if alarm is None or alarm.delivered_at is not None or alarm.last_sent_at is None:
            return
        if as_utc(alarm.last_sent_at) == as_utc(sent_at):
            self._alarms[(app, account_key, cause)] = dataclasses.replace(alarm, delivered_at=self.clock.now())


class MemoryDeliveries:
    """:class:`~refresher.store.roles.DeliveryStore` in a dict."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str, str], AlarmDelivery] = {}

    async def record_delivery(self, delivery: AlarmDelivery) -> None:
        error = delivery.last_error[:512] if delivery.last_error else None  # the SQL column's width
        key = (delivery.app, delivery.account_key, delivery.cause, delivery.channel)
        self._rows[key] = dataclasses.replace(delivery, last_error=error)

    async def alarm_deliveries(self, alarms: Sequence[tuple[str, str, str]]) -> Sequence[AlarmDelivery]:
        wanted = set(alarms)
        return [row for key, row in sorted(self._rows.items()) if key[:3] in wanted]


class MemoryLogouts:
    """:class:`~refresher.store.roles.LogoutStore` in a dict (one process: no other replica learns of it)."""

    def __init__(self) -> None:
        self._logouts: dict[str, dt.datetime] = {}

    async def add_logout(self, sid: str, expires_at: dt.datetime, now: dt.datetime) -> None:
        for old in [s for s, until in self._logouts.items() if until < as_utc(now)]:
            del self._logouts[old]
        self._logouts[sid] = as_utc(expires_at)

    async def logged_out(self, sid: str) -> bool:
        return sid in self._logouts


class MemoryStates:
    """:class:`~refresher.store.roles.StateStore` in a dict: single use, expiring, remembered after use."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._states: dict[str, OAuthState] = {}

    async def put_state(self, state: OAuthState) -> None:
        now = self.clock.now()
        for key, old in list(self._states.items()):
            spent = old.used_at is not None and as_utc(old.used_at) <= now - USED_STATE_MEMORY
            if spent or (old.used_at is None and as_utc(old.expires_at) <= now):
                del self._states[key]
        if state.state in self._states:
            raise StoreError("store: that OAuth state exists already")
        self._states[state.state] = dataclasses.replace(state, used_at=None)

    async def consume_state(self, state: str, app: str) -> OAuthState | None:
        now = self.clock.now()
        found = self._states.get(state)
        if found is None or found.app != app or found.used_at is not None or as_utc(found.expires_at) <= now:
            return None
        used = dataclasses.replace(found, used_at=now)
        self._states[state] = used
        return used

    async def find_state(self, state: str) -> OAuthState | None:
        return self._states.get(state)


class MemoryOutbox:
    """:class:`~refresher.store.roles.EventOutbox` in a dict (leases between tasks of one process)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._events: dict[int, OutboxEvent] = {}
        self._leases: dict[int, tuple[str, dt.datetime]] = {}

    async def add_event(self, event: OutboxEvent) -> bool:
        if any(e.idempotency_key == event.idempotency_key for e in self._events.values()):
            return False
        now = self.clock.now()
        new_id = max(self._events, default=0) + 1
        self._events[new_id] = dataclasses.replace(
            event, id=new_id, created_at=now, attempts=0, next_attempt_at=now, delivered_at=None, last_error=None
        )
        return True

    async def events(self, app: str | None = None, limit: int = 100) -> Sequence[OutboxEvent]:
        newest = sorted(self._events.items(), key=lambda item: -item[0])
        return [e for _, e in newest if app is None or e.app == app][:limit]

    async def claim_events(self, owner: str, lease_ttl: dt.timedelta, limit: int = 50) -> Sequence[OutboxEvent]:
        now = self.clock.now()
        due = [
            e
            for i, e in self._events.items()
            if e.delivered_at is None
            and e.next_attempt_at is not None
            and as_utc(e.next_attempt_at) <= now
            and (i not in self._leases or self._leases[i][1] <= now)
        ]
        due.sort(key=lambda e: (e.next_attempt_at or now, e.id or 0))
        for event in due[:limit]:
            assert event.id is not None
            self._leases[event.id] = (owner, now + lease_ttl)
        return due[:limit]

    async def settle_event(
        self, event_id: int, owner: str, *, error: str | None = None, retry_at: dt.datetime | None = None
    ) -> bool:
        event = self._events.get(event_id)
        if event is None or event.delivered_at is not None or self._leases.get(event_id, ("",))[0] != owner:
            return False
        del self._leases[event_id]
        retry = error is not None and retry_at is not None
        self._events[event_id] = dataclasses.replace(
            event,
            attempts=event.attempts + 1,
            last_error=error[:512] if error else None,
            next_attempt_at=as_utc(retry_at) if retry and retry_at else event.next_attempt_at,
            delivered_at=None if retry else self.clock.now(),
        )
        return True

    async def prune_events(self, older_than: dt.datetime, limit: int = 500) -> int:
        old = [i for i, e in self._events.items() if e.delivered_at is not None and e.delivered_at < as_utc(older_than)]
        for event_id in old[:limit]:
            del self._events[event_id]
        return len(old[:limit])

    async def event_lease_holders(self) -> Sequence[str]:
        live = {i for i, e in self._events.items() if e.delivered_at is None}
        return sorted({owner for i, (owner, _) in self._leases.items() if i in live})

    async def release_event_leases(self, owner: str) -> int:
        mine = [i for i, (o, _) in self._leases.items() if o == owner and self._events[i].delivered_at is None]
        for event_id in mine:
            del self._leases[event_id]
        return len(mine)


class MemoryAlertStore(MemoryAccounts, MemoryAlarms):
    """:class:`~refresher.store.roles.AlertStore`: what the alert policy needs, in memory."""

    def __init__(self, clock: Clock) -> None:
        MemoryAccounts.__init__(self)
        MemoryAlarms.__init__(self, clock)
