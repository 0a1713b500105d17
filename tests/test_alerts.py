"""Alarm policy, channels, signatures and delivery, against a real HTTP receiver on a real port."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from refresher.alerts import (
    AlarmMessage,
    AlertPolicy,
    AppriseChannel,
    Dispatcher,
    RefreshEvent,
    WebhookChannel,
    build_channels,
    verify_signature,
)
from refresher.alerts.policy import REDELIVER_AFTER
from refresher.alerts.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from refresher.config import AlertSettings, StoreSettings
from refresher.config import WebhookChannel as WebhookChannelSettings
from refresher.domain import AccountStatus, ErrorInfo, FakeClock, Identity, TokenSet
from refresher.metrics import Metrics
from refresher.store.base import Account
from refresher.store.memory import MemoryAlertStore
from refresher.store.roles import AlertStore
from refresher.store.sql import open_store
from tests.support import pg_schema

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
CHANNEL_SECRET = "channel-secret-9f8e7d6c5b4a"
LEAKED_TOKEN = "TTP_leakytoken_123456789abcdef"


# ------------------------------------------------------------------------------------- receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server in a thread that records every POST and answers as told."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    fail_first: int = 0  # answer 500 to this many requests first
    arrived: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = holder["r"]
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            if rec.delay:
                time.sleep(rec.delay)
            failing = rec.fail_first > 0
            if failing:
                rec.fail_first -= 1
            rec.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            rec.arrived.set()
            status = 500 if failing else rec.status
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["r"] = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield holder["r"]
    server.shutdown()
    server.server_close()


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------- store


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AlertStore]:
    """The real SQL store on a SQLite file (dedupe state must survive in it, as in production), and the
    in-memory AlertStore the policy's fast unit tests may use: the same cases hold for both."""
    if request.param == "memory":
        yield MemoryAlertStore(FakeClock(T0))
        return
    real = open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'alarms.db'}"), FakeClock(T0))
    await real.open()
    yield real
    await real.close()


# -------------------------------------------------------------------------------------- helpers


def event(
    outcome: str = "failure",
    failures: int = 1,
    error_class: str | None = "transient",
    *,
    key: str = "shop:1001",
    at: dt.datetime = T0,
    status: AccountStatus = AccountStatus.ACTIVE,
    message: str = "token endpoint answered 503",
    refresh_expires_at: dt.datetime | None = None,
) -> RefreshEvent:
    error = (
        ErrorInfo(error_class, "E503", message, request_id="req-77") if outcome == "failure" and error_class else None
    )
    return RefreshEvent(
        app="shopee-sg",
        platform="shopee",
        account_key=key,
        account_name="Demo Shop",
        outcome=outcome,
        error=error,
        consecutive_failures=failures if outcome == "failure" else 0,
        status=status,
        access_expires_at=at + dt.timedelta(hours=2),
        refresh_expires_at=refresh_expires_at or at + dt.timedelta(days=30),
        at=at,
        attempts=3,
        duration_ms=120,
    )


def webhook(receiver: Receiver, name: str = "ops", **kwargs: Any) -> WebhookChannel:
    return WebhookChannel(name, receiver.url + "/alarm", secret=CHANNEL_SECRET, timeout=2.0, **kwargs)


@dataclass
class Harness:
    policy: AlertPolicy
    dispatcher: Dispatcher
    clock: FakeClock
    metrics: Metrics
    store: Any

    async def settle(self) -> None:
        assert await self.dispatcher.drain(10), "deliveries did not finish"


@pytest.fixture
async def make_policy(store: Any) -> AsyncIterator[Any]:
    dispatchers: list[Dispatcher] = []

    async def make(channels: list[Any], **settings: Any) -> Harness:
        clock = FakeClock(T0)
        metrics = Metrics()
        dispatcher = Dispatcher(metrics=metrics, initial_delay=0.01, max_delay=0.05)
        await dispatcher.start()
        dispatchers.append(dispatcher)
        alert_settings = AlertSettings(**{"after_failures": 3, "delivery_attempts": 2, **settings})
        policy = AlertPolicy(
            alert_settings,
            store,
            channels,
            clock,
            reauth_link=lambda app, key: f"https://refresher.example/connect/{app}?account={key}",
            dispatcher=dispatcher,
        )
        return Harness(policy, dispatcher, clock, metrics, store)

    yield make
    for dispatcher in dispatchers:
        await dispatcher.aclose(grace=1)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# ---------------------------------------------------------------------------------------- signing


def test_signature_verifies_and_rejects_tampering_and_replay() -> None:
    body = b'{"kind":"alarm"}'
    now = time.time()
    ts = str(int(now))
    signature = sign(CHANNEL_SECRET, ts, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert verify_signature(CHANNEL_SECRET, ts, body, signature, now)
    assert verify_signature(CHANNEL_SECRET, ts, body, signature, dt.datetime.fromtimestamp(now, dt.UTC))
    assert not verify_signature(CHANNEL_SECRET, ts, body + b" ", signature, now)  # tampered body
    assert not verify_signature("another-secret", ts, body, signature, now)  # wrong key
    assert not verify_signature(CHANNEL_SECRET, ts, body, signature, now + 301)  # replayed later
    assert not verify_signature(CHANNEL_SECRET, ts, body, signature, now - 301)  # from the future
    old = str(int(now) - 3600)
    assert not verify_signature(CHANNEL_SECRET, old, body, sign(CHANNEL_SECRET, old, body), now)
    assert not verify_signature(CHANNEL_SECRET, "soon", body, signature, now)
    assert not verify_signature(CHANNEL_SECRET, ts, body, signature.removeprefix("sha256="), now)


# ----------------------------------------------------------------------------------------- policy


async def test_alarm_after_n_failures_not_before_and_signed(receiver: Receiver, make_policy: Any) -> None:
    h = await make_policy([webhook(receiver)])
    await h.policy.observe(event(failures=1))
    await h.policy.observe(event(failures=2))
    await h.settle()
    assert receiver.requests == []

    await h.policy.observe(event(failures=3))
    await h.settle()
    [request] = receiver.wait_for(1)
    assert request.path == "/alarm"
    payload = request.json()
    assert payload["kind"] == "alarm" and payload["cause"] == "failures"
    assert payload["app"] == "shopee-sg" and payload["account_key"] == "shop:1001"
    assert payload["error_code"] == "E503" and payload["request_id"] == "req-77"
    assert payload["consecutive_failures"] == 3
    # Every alarm carries the account's re-authorization link (issue 13), in case it comes to that.
    assert payload["reauth_url"] == "https://refresher.example/connect/shopee-sg?account=shop:1001"
    ts = request.headers[TIMESTAMP_HEADER.lower()]
    assert verify_signature(CHANNEL_SECRET, ts, request.body, request.headers[SIGNATURE_HEADER.lower()], time.time())
    assert sample(h.metrics, "refresher_alert_deliveries_total", channel="ops", outcome="success") == 1


async def test_reauth_required_alarms_at_once_with_link(receiver: Receiver, make_policy: Any) -> None:
    h = await make_policy([webhook(receiver)])
    await h.policy.observe(event(failures=1, error_class="reauth_required", status=AccountStatus.NEEDS_REAUTH))
    await h.settle()
    [request] = receiver.wait_for(1)
    payload = request.json()
    assert payload["cause"] == "reauth_required"
    assert payload["reauth_url"] == "https://refresher.example/connect/shopee-sg?account=shop:1001"


async def test_config_error_alarms_at_once(receiver: Receiver, make_policy: Any) -> None:
    h = await make_policy([webhook(receiver)])
    await h.policy.observe(event(failures=1, error_class="config_error", message="wrong partner_key sign"))
    await h.settle()
    [request] = receiver.wait_for(1)
    assert request.json()["cause"] == "config_error"
    assert request.json()["reauth_url"] == "https://refresher.example/connect/shopee-sg?account=shop:1001"


async def test_dedupe_repeat_every_and_restart(receiver: Receiver, make_policy: Any) -> None:
    h = await make_policy([webhook(receiver)], repeat_every="6h")
    for n in range(3, 8):
        await h.policy.observe(event(failures=n, at=h.clock.now()))
        h.clock.advance(dt.timedelta(minutes=10))
    await h.settle()
    assert len(receiver.requests) == 1

    # A restarted daemon (new policy object, same store) still knows the alarm was sent.
    again = await make_policy([webhook(receiver)], repeat_every="6h")
    again.clock.set(h.clock.now())
    await again.policy.observe(event(failures=8, at=again.clock.now()))
    await again.settle()
    assert len(receiver.requests) == 1

    again.clock.set(T0 + dt.timedelta(hours=6))
    await again.policy.observe(event(failures=9, at=again.clock.now()))
    await again.settle()
    assert len(receiver.wait_for(2)) == 2
    assert receiver.requests[1].json()["consecutive_failures"] == 9

    # A different cause of the same account is its own alarm.
    await again.policy.observe(event(failures=10, error_class="config_error", at=again.clock.now()))
    await again.settle()
    assert [r.json()["cause"] for r in receiver.wait_for(3)] == ["failures", "failures", "config_error"]


async def test_an_alarm_persisted_but_never_delivered_is_sent_again_soon_not_next_day(
    receiver: Receiver, make_policy: Any, store: Any
) -> None:
    # A daemon stamped the alarm and died before any channel took the message (store written by hand
    # here: that is all such a daemon leaves behind).
    assert await store.note_alarm_sent("shopee-sg", "shop:1001", "failures", T0, T0, {})
    h = await make_policy([webhook(receiver)], repeat_every="24h")
    h.clock.set(T0 + dt.timedelta(minutes=5))  # too soon: its delivery might still be under way elsewhere
    await h.policy.observe(event(failures=4, at=h.clock.now()))
    await h.settle()
    assert receiver.requests == []
    h.clock.set(T0 + REDELIVER_AFTER + dt.timedelta(minutes=1))
    await h.policy.observe(event(failures=5, at=h.clock.now()))
    await h.settle()
    assert [r.json()["consecutive_failures"] for r in receiver.wait_for(1)] == [5]
    alarm = await store.get_alarm("shopee-sg", "shop:1001", "failures")
    assert alarm.delivered_at is not None and alarm.last_sent_at == h.clock.now()
    # Delivered now: the next message waits for repeat_every, however many failures come.
    h.clock.advance(dt.timedelta(hours=2))
    await h.policy.observe(event(failures=6, at=h.clock.now()))
    await h.settle()
    assert len(receiver.requests) == 1


async def test_an_alarm_no_channel_took_is_sent_again_once_its_delivery_gave_up(
    receiver: Receiver, make_policy: Any, store: Any
) -> None:
    receiver.status = 500
    h = await make_policy([webhook(receiver)], delivery_attempts=2, repeat_every="24h")
    await h.policy.observe(event(failures=3))
    h.clock.advance(REDELIVER_AFTER * 2)
    await h.policy.observe(event(failures=4, at=h.clock.now()))  # still being retried: not doubled
    await h.settle()
    assert len(receiver.requests) == 2  # the two attempts of the one message
    assert (await store.get_alarm("shopee-sg", "shop:1001", "failures")).delivered_at is None

    receiver.status = 200
    h.clock.advance(dt.timedelta(minutes=1))  # the delivery gave up: the next look sends it again
    await h.policy.observe(event(failures=5, at=h.clock.now()))
    await h.settle()
    assert [r.json()["consecutive_failures"] for r in receiver.wait_for(3)] == [3, 3, 5]
    assert (await store.get_alarm("shopee-sg", "shop:1001", "failures")).delivered_at is not None


async def test_resolved_once_after_recovery(receiver: Receiver, make_policy: Any, store: Any) -> None:
    h = await make_policy([webhook(receiver)])
    await h.policy.observe(event(failures=3))
    # No settling here: the alarm and its resolution may wait in the queue together; the dispatcher
    # keeps one account's messages to a channel in order (they raced on the in-memory store before).
    await h.policy.observe(event("success"))
    await h.policy.observe(event("success"))
    await h.settle()
    kinds = [r.json()["kind"] for r in receiver.wait_for(2)]
    assert kinds == ["alarm", "resolved"]
    assert await store.open_alarms("shopee-sg") == []
    # After a resolution the same cause alarms again (a new incident), not deduped against the old one.
    await h.policy.observe(event(failures=3))
    await h.settle()
    assert [r.json()["kind"] for r in receiver.wait_for(3)] == ["alarm", "resolved", "alarm"]


async def test_success_without_alarm_sends_nothing(receiver: Receiver, make_policy: Any) -> None:
    h = await make_policy([webhook(receiver)])
    await h.policy.observe(event("success"))
    await h.policy.observe(event("skipped"))
    await h.settle()
    assert receiver.requests == []


def account(key: str, refresh_in: dt.timedelta) -> Account:
    tokens = TokenSet("access-xyz-123456", "refresh-xyz-123456", T0 + dt.timedelta(hours=4), T0 + refresh_in)
    return Account(
        id=1,
        app="shopee-sg",
        platform="shopee",
        key=key,
        identity=Identity(key, "shop", key.split(":")[1], name="Demo Shop"),
        status=AccountStatus.ACTIVE,
        tokens=tokens,
    )


async def test_refresh_expiring_warns_with_link_and_dedupes(receiver: Receiver, make_policy: Any) -> None:
    h = await make_policy([webhook(receiver)], reauth_warning="3d", repeat_every="1d")
    soon, later = account("shop:1", dt.timedelta(days=2)), account("shop:2", dt.timedelta(days=20))
    await h.policy.check_expiring([soon, later])
    await h.policy.check_expiring([soon, later])
    await h.settle()
    [request] = receiver.wait_for(1)
    payload = request.json()
    assert (payload["kind"], payload["cause"], payload["account_key"]) == ("reauth_soon", "refresh_expiring", "shop:1")
    assert payload["reauth_url"].endswith("account=shop:1")
    assert "Re-authorize: https://refresher.example/connect/" in AlarmMessage(**_fields(payload)).text()

    # A plain refresh does not clear the warning (the refresh token still ends soon) ...
    await h.policy.observe(event("success", key="shop:1", refresh_expires_at=T0 + dt.timedelta(days=2)))
    await h.settle()
    assert len(receiver.requests) == 1
    # ... a re-authorization that pushes the end past the window does.
    await h.policy.observe(event("success", key="shop:1", refresh_expires_at=T0 + dt.timedelta(days=365)))
    await h.settle()
    assert [r.json()["kind"] for r in receiver.wait_for(2)] == ["reauth_soon", "resolved"]


def _fields(payload: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(AlarmMessage)}
    data = {k: v for k, v in payload.items() if k in names}
    for key in ("at", "access_expires_at", "refresh_expires_at"):
        if data.get(key):
            data[key] = dt.datetime.fromisoformat(data[key])
    return data


# ---------------------------------------------------------------------------------- dead channels


class HangingServer:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"

    def close(self) -> None:
        self.sock.close()


async def test_dead_channels_never_block_observe_and_are_counted(receiver: Receiver, make_policy: Any) -> None:
    hanging = HangingServer()
    try:
        refused = WebhookChannel("refused", f"http://127.0.0.1:{free_port()}/x?token=abc", timeout=1.0)
        slow = WebhookChannel("hanging", hanging.url, timeout=0.3)
        good = webhook(receiver, name="good")
        h = await make_policy([refused, slow, good])
        started = time.monotonic()
        await h.policy.observe(event(failures=3))
        assert time.monotonic() - started < 0.2, "observe waited for a channel"
        await h.settle()
        assert len(receiver.wait_for(1)) == 1  # the healthy channel still got its alarm
        assert sample(h.metrics, "refresher_alert_deliveries_total", channel="refused", outcome="failure") == 1
        assert sample(h.metrics, "refresher_alert_deliveries_total", channel="hanging", outcome="failure") == 1
        assert sample(h.metrics, "refresher_alert_deliveries_total", channel="good", outcome="success") == 1
    finally:
        hanging.close()


async def test_http_500_is_retried_then_counted(receiver: Receiver, make_policy: Any) -> None:
    receiver.status = 500
    h = await make_policy([webhook(receiver)], delivery_attempts=3)
    await h.policy.observe(event(failures=3))
    await h.settle()
    assert len(receiver.requests) == 3  # every attempt reached the receiver
    assert sample(h.metrics, "refresher_alert_deliveries_total", channel="ops", outcome="failure") == 1


async def test_transient_500_recovers_within_attempts(receiver: Receiver, make_policy: Any) -> None:
    receiver.fail_first = 2
    h = await make_policy([webhook(receiver)], delivery_attempts=3)
    await h.policy.observe(event(failures=3))
    await h.settle()
    assert len(receiver.requests) == 3
    assert sample(h.metrics, "refresher_alert_deliveries_total", channel="ops", outcome="success") == 1


# ------------------------------------------------------------------------------------- dispatcher


async def test_full_queue_drops_oldest_and_counts() -> None:
    metrics = Metrics()
    dispatcher = Dispatcher(metrics=metrics, queue_size=3)  # not started: everything stays queued
    delivered: list[int] = []

    def job(n: int) -> Any:
        async def send() -> None:
            delivered.append(n)

        return send

    for n in range(5):
        dispatcher.submit("alert", "ops", job(n))
    assert dispatcher.dropped == 2
    assert sample(metrics, "refresher_deliveries_dropped_total", kind="alert") == 2
    await dispatcher.start()
    assert await dispatcher.drain(5)
    assert sorted(delivered) == [2, 3, 4]  # the newest survive
    await dispatcher.aclose(grace=1)


async def test_jobs_with_one_order_key_go_one_after_the_other_in_order() -> None:
    dispatcher = Dispatcher(queue_size=10, workers=4)
    await dispatcher.start()
    arrived: list[str] = []
    first_may_finish = asyncio.Event()

    def job(name: str, slow: bool = False) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            if slow:
                await first_may_finish.wait()
            arrived.append(name)

        return send

    dispatcher.submit("alert", "hook", job("alarm", slow=True), order=("hook", "app", "shop:1"))
    dispatcher.submit("alert", "hook", job("resolved"), order=("hook", "app", "shop:1"))
    dispatcher.submit("alert", "hook", job("other account"), order=("hook", "app", "shop:2"))
    await asyncio.sleep(0.1)
    # Another account is not held up; the same account's second message waits for its first.
    assert arrived == ["other account"]
    first_may_finish.set()
    assert await dispatcher.drain(5)
    assert arrived == ["other account", "alarm", "resolved"]
    await dispatcher.aclose(grace=1)


async def test_aclose_drains_then_cancels_what_hangs() -> None:
    dispatcher = Dispatcher(queue_size=10, workers=1)
    await dispatcher.start()
    done: list[str] = []

    async def quick() -> None:
        done.append("quick")

    async def forever() -> None:
        await asyncio.Event().wait()

    dispatcher.submit("hook", "a", quick)
    dispatcher.submit("hook", "b", forever)
    dispatcher.submit("hook", "c", quick)  # stuck behind the hanging one: dropped at close
    started = time.monotonic()
    await dispatcher.aclose(grace=0.3)
    assert time.monotonic() - started < 2
    assert done == ["quick"]
    assert dispatcher.dropped == 1
    dispatcher.submit("hook", "late", quick)  # after close: refused, counted, no exception
    assert dispatcher.dropped == 2


# ---------------------------------------------------------------------------------------- apprise


async def test_apprise_json_url_reaches_receiver(receiver: Receiver, make_policy: Any) -> None:
    port = receiver.server.server_address[1]
    h = await make_policy([AppriseChannel("chat", f"json://127.0.0.1:{port}/chat", timeout=10)])
    await h.policy.observe(event(failures=1, error_class="reauth_required", status=AccountStatus.NEEDS_REAUTH))
    await h.settle()
    [request] = receiver.wait_for(1)
    payload = request.json()
    assert request.path == "/chat"
    assert "shopee-sg" in payload["title"] and "Demo Shop" in payload["title"]
    assert "Re-authorize: https://refresher.example/connect/shopee-sg" in payload["message"]
    assert sample(h.metrics, "refresher_alert_deliveries_total", channel="chat", outcome="success") == 1


async def test_apprise_unreachable_is_counted_not_raised(make_policy: Any) -> None:
    h = await make_policy([AppriseChannel("chat", f"json://127.0.0.1:{free_port()}/", timeout=10)])
    await h.policy.observe(event(failures=3))
    await h.settle()
    assert sample(h.metrics, "refresher_alert_deliveries_total", channel="chat", outcome="failure") == 1


def test_build_channels_from_settings() -> None:
    settings = AlertSettings.model_validate(
        {
            "channels": [
                {"type": "webhook", "name": "ops", "url": "http://127.0.0.1:9/hook", "secret": CHANNEL_SECRET},
                {"type": "apprise", "name": "chat", "url": "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7F"},
            ]
        }
    )
    channels = build_channels(settings)
    assert [(type(c).__name__, c.name) for c in channels] == [("WebhookChannel", "ops"), ("AppriseChannel", "chat")]
    assert "slack" not in repr(channels) and "T1JJ3T3L2" not in repr(channels)
    assert isinstance(settings.channels[0], WebhookChannelSettings)
    assert settings.channels[0].secret == SecretStr(CHANNEL_SECRET)


# ---------------------------------------------------------------------------------------- secrets


async def test_no_secret_in_alarms_or_logs(
    receiver: Receiver, make_policy: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from refresher.config import LoggingSettings
    from refresher.logging import configure_logging, reset_logging
    from refresher.redaction import register_secrets

    configure_logging(LoggingSettings(level="debug"), secrets=[CHANNEL_SECRET])
    try:
        register_secrets([LEAKED_TOKEN])
        port = receiver.server.server_address[1]
        channels = [
            webhook(receiver),
            AppriseChannel("chat", f"json://127.0.0.1:{port}/chat"),
            WebhookChannel("dead", f"http://127.0.0.1:{free_port()}/h?token={CHANNEL_SECRET}", timeout=1),
        ]
        h = await make_policy(channels)
        # A careless platform message quoting the token must not carry it into the alarm.
        bad = f"refresh failed for refresh_token={LEAKED_TOKEN} (raw {LEAKED_TOKEN})"
        await h.policy.observe(event(failures=3, message=bad))
        await h.settle()
        requests = receiver.wait_for(2)
        assert len(requests) == 2
        for request in requests:
            text = request.body.decode()
            assert LEAKED_TOKEN not in text and CHANNEL_SECRET not in text
            assert "***" in text
        output = capsys.readouterr().err
        assert "delivery.failed" in output  # the dead channel was logged ...
        assert CHANNEL_SECRET not in output and LEAKED_TOKEN not in output  # ... without its secret
    finally:
        reset_logging()


def test_alarm_message_text_and_json() -> None:
    message = AlarmMessage(
        kind="alarm",
        cause="failures",
        app="lazada-my",
        platform="lazada",
        account_key="seller:9",
        account_name=None,
        at=T0,
        error_class="transient",
        error_code="ServiceTimeout",
        request_id="r-1",
        consecutive_failures=4,
        access_expires_at=T0 + dt.timedelta(hours=1),
    )
    assert message.title() == "[refresher] ALARM: lazada-my / seller:9"
    text = message.text()
    assert "code=ServiceTimeout" in text and "request_id=r-1" in text and "Consecutive failed sweeps: 4" in text
    assert "(in 1h)" in text
    data = message.as_json()
    assert data["at"] == T0.isoformat() and data["title"] == message.title()
    json.dumps(data)  # plain JSON types only
    resolved = dataclasses.replace(message, kind="resolved")
    assert resolved.title().startswith("[refresher] RESOLVED") and "Error:" not in resolved.text()


# ------------------------------------------------------------------------------------- replicas


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A store URL on the real PostgreSQL, its tables in a throwaway schema."""
    with pg_schema("alerts_test") as url:
        yield url


@pytest.mark.postgres
async def test_two_replicas_share_dedupe_state(receiver: Receiver, pg_url: str) -> None:
    clock = FakeClock(T0)
    stores = [open_store(StoreSettings(url=pg_url), clock) for _ in range(2)]
    dispatcher = Dispatcher(initial_delay=0.01, max_delay=0.05)
    await dispatcher.start()
    try:
        for s in stores:
            await s.open()
        settings = AlertSettings(after_failures=1, delivery_attempts=1)
        a, b = (
            AlertPolicy(settings, s, [webhook(receiver)], clock, reauth_link=lambda *_: None, dispatcher=dispatcher)
            for s in stores
        )
        # Both replicas see the failure at the same moment: the store lets exactly one of them send.
        await asyncio.gather(*(p.observe(event(failures=1)) for p in (a, b, a, b)))
        await b.observe(event(failures=2))  # the other replica sees the open alarm: no second message
        await b.observe(event("success"))  # and it may resolve what replica A opened
        await a.observe(event("success"))
        assert await dispatcher.drain(10)
        assert [r.json()["kind"] for r in receiver.wait_for(2)] == ["alarm", "resolved"]
    finally:
        await dispatcher.aclose(grace=1)
        for s in stores:
            await s.close()


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # writes accounts: the SQL store's roles
async def test_reauth_alarm_is_repeated_and_resolved_by_reauthorization(
    receiver: Receiver, make_policy: Any, store: Any
) -> None:
    from refresher.domain import Grant

    key = "shop:1001"
    tokens = account(key, dt.timedelta(days=30)).tokens
    assert tokens is not None
    grant = Grant(Identity(key, "shop", "1001", name="Demo Shop"), tokens)
    await store.upsert_grant("shopee-sg", "shopee", grant)
    await store.set_status("shopee-sg", key, AccountStatus.NEEDS_REAUTH)
    h = await make_policy([webhook(receiver)], repeat_every="12h")
    await h.policy.observe(event(failures=1, error_class="reauth_required", status=AccountStatus.NEEDS_REAUTH))
    await h.policy.remind("shopee-sg")  # just sent: nothing to repeat yet
    await h.settle()
    assert len(receiver.wait_for(1)) == 1

    h.clock.advance(dt.timedelta(hours=12))  # no refresh event comes for a needs_reauth account ...
    await h.policy.remind("shopee-sg")  # ... so the sweep's follow-up repeats the alarm
    await h.settle()
    second = receiver.wait_for(2)[1].json()
    assert (second["kind"], second["cause"]) == ("alarm", "reauth_required")
    assert second["reauth_url"].endswith("account=shop:1001")

    await store.upsert_grant("shopee-sg", "shopee", grant)  # the seller re-authorized: active again
    await h.policy.remind("shopee-sg")
    await h.policy.remind("shopee-sg")
    await h.settle()
    assert [r.json()["kind"] for r in receiver.wait_for(3)] == ["alarm", "alarm", "resolved"]
    assert await store.open_alarms("shopee-sg") == []


def test_unusable_channels_are_named_without_their_url(capsys: pytest.CaptureFixture[str]) -> None:
    from refresher.alerts import channel_problems
    from refresher.config import LoggingSettings
    from refresher.logging import configure_logging, reset_logging

    settings = AlertSettings.model_validate(
        {
            "channels": [
                {"type": "apprise", "name": "typo", "url": "wecomm://robotkey-0123456789abcdef"},
                {"type": "webhook", "name": "ftp", "url": "ftp://host/x"},
                {"type": "apprise", "name": "ok", "url": "json://127.0.0.1:9/"},
            ]
        }
    )
    problems = channel_problems(settings)
    assert problems == [
        "alerts.channels.0.url: apprise does not understand the URL of channel 'typo' "
        "(unknown service or malformed; WeCom robots are wecombot://, Telegram is tgram://)",
        "alerts.channels.1.url: channel 'ftp' needs an http:// or https:// URL",
    ]
    configure_logging(LoggingSettings())
    try:
        channels = build_channels(settings)
        err = capsys.readouterr().err
    finally:
        reset_logging()
    assert [c.name for c in channels] == ["ok"]
    assert err.count("alert.channel_unusable") == 2
    assert "robotkey-0123456789abcdef" not in err


async def test_alarms_of_deleted_accounts_close_quietly(receiver: Receiver, make_policy: Any, store: Any) -> None:
    h = await make_policy([webhook(receiver)])
    await h.policy.observe(event(failures=3, key="shop:gone"))  # never stored: as if deleted since
    await h.settle()
    assert len(receiver.wait_for(1)) == 1
    assert [a.account_key for a in await store.open_alarms("shopee-sg")] == ["shop:gone"]
    await h.policy.remind("shopee-sg")
    await h.settle()
    assert await store.open_alarms("shopee-sg") == []
    assert len(receiver.requests) == 1  # closed without a message: nobody is left to act
