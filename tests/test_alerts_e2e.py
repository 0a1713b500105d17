"""Alarms end to end: the daemon's own tick against the sandbox on a real port, a real SQLite store and a
real webhook receiver. Only time is simulated (a FakeClock shared by the daemon and the sandbox)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from refresher import platforms
from refresher.alerts import verify_signature
from refresher.config import LoggingSettings, parse_config
from refresher.daemon import Daemon
from refresher.domain import AccountStatus, ErrorInfo, FakeClock
from refresher.invites import check_invite
from refresher.logging import configure_logging, reset_logging
from refresher.redaction import forget_secrets
from refresher.sandbox import SandboxServer

SECRET = "e2e-webhook-secret-0123456789"
PUBLIC = "https://tokens.example.com"
INVITE_SECRET = "invite-secret-for-e2e-0123456789"


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the event deliverer sends a batch of events at once


class Receiver:
    def __init__(self, port: int = 0, delay: float = 0.0) -> None:
        self.bodies: list[tuple[dict[str, str], bytes]] = []
        self.delay = delay
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                time.sleep(outer.delay)  # a slow receiver keeps a delivery in flight
                outer.bodies.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alarms"

    def messages(self) -> list[dict[str, Any]]:
        """Every message received so far, each checked for a valid, fresh signature."""
        out = []
        for headers, body in self.bodies:
            assert verify_signature(
                SECRET, headers["x-refresher-timestamp"], body, headers["x-refresher-signature"], time.time()
            )
            out.append(json.loads(body))
        return out


@dataclass
class World:
    daemon: Daemon
    sandbox: SandboxServer
    clock: FakeClock
    receiver: Receiver
    key: str

    async def sweep(self, minutes: float = 10) -> str:
        """Move time on, run one tick of the app, let deliveries finish; the account's status after."""
        self.clock.advance(dt.timedelta(minutes=minutes))
        await self.daemon.tick("shopee")
        assert await self.daemon.dispatcher.drain(10)
        assert await self.daemon.deliverer.drain(10)
        account = await self.daemon.store.get("shopee", self.key)
        assert account is not None
        return str(account.status)

    def kinds(self) -> list[tuple[str, str]]:
        return [(m["kind"], m["cause"]) for m in self.receiver.messages() if "kind" in m]  # alarms, not events

    def alarms(self) -> list[dict[str, Any]]:
        return [m for m in self.receiver.messages() if "kind" in m]

    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.receiver.messages() if "type" in m]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.fixture
async def world(tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[World]:
    clock = FakeClock(dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
    async with SandboxServer(clock=clock, seed=3) as sandbox:
        document = {
            "store": {"url": f"sqlite:///{tmp_path / 'tokens.db'}"},
            "server": {"enabled": False, "public_url": PUBLIC, "invite_secret": INVITE_SECRET},
            "logging": {"level": "info"},
            "alerts": {
                "after_failures": 2,
                "delivery_attempts": 2,
                "channels": [
                    {"type": "webhook", "name": "ops", "url": receiver.url, "secret": SECRET},
                    # A dead channel next to the live one, all along: it must cost the refreshes nothing.
                    {"type": "webhook", "name": "dead", "url": dead_url(), "timeout": "1s"},
                ],
            },
            "apps": {
                "shopee": {
                    **sandbox.app_config("shopee"),
                    "refresh_before": "5h",  # longer than Shopee's 4 h: every tick finds the account due
                    "timeout": "2s",
                    "retry": {"attempts": 3, "initial_delay": "10ms", "max_delay": "50ms"},
                }
            },
        }
        settings = parse_config(
            yaml.safe_dump(document), file="e2e.yaml", credential_models=platforms.credential_models()
        )
        configure_logging(LoggingSettings(level="info"), secrets=settings.secrets())
        daemon = Daemon(settings, clock=clock)
        await daemon.start(schedule=False)
        try:
            plugin = daemon.platforms["shopee"]
            pkce = plugin.pkce_pair()
            params = await sandbox.approve(plugin.authorize_url("e2e", plugin.app.redirect_uri, pkce))
            [grant] = await plugin.exchange_code(params, pkce, plugin.app.redirect_uri)
            account = await daemon.store.upsert_grant("shopee", "shopee", grant)
            yield World(daemon, sandbox, clock, receiver, account.key)
        finally:
            await daemon.stop(grace=5)
            output = capsys.readouterr().err
            reset_logging()
            forget_secrets()
    # Whatever happened above, no token or secret reached the log.
    for secret in (*settings.secrets(), SECRET, params.get("code", "no-code-given")):
        assert secret not in output


async def test_transient_faults_recover_without_an_alarm(world: World) -> None:
    world.sandbox.set_faults("shopee:refresh:503|x2")  # two failures, inside one refresh's retries
    assert await world.sweep() == "active"
    assert await world.sweep() == "active"
    assert world.kinds() == []
    assert world.sandbox.state.counters.get("shopee.fault.503") == 2


async def test_permanent_fault_alarms_once_then_resolves(world: World) -> None:
    world.sandbox.set_faults("shopee:refresh:503")
    assert await world.sweep() == "active"  # failed sweep 1: below after_failures
    assert world.kinds() == []
    await world.sweep()  # failed sweep 2: the alarm
    await world.sweep()  # failed sweep 3: deduplicated
    assert world.kinds() == [("alarm", "failures")]
    [alarm] = world.alarms()
    assert alarm["consecutive_failures"] == 2 and alarm["app"] == "shopee" and alarm["account_key"] == world.key
    assert alarm["error_class"] == "transient"
    assert alarm["reauth_url"]  # every alarm carries the account's link (issue 13)
    # The lifecycle event of the same alarm, once (after_failures reached), signed like the alarm.
    [failed] = world.events()
    assert (failed["type"], failed["account_key"], failed["consecutive_failures"]) == (
        "account.refresh_failed",
        world.key,
        2,
    )
    assert failed["error"]["class"] == "transient" and failed["tags"] == {} and failed["end_user"] is None

    world.sandbox.set_faults(None)
    assert await world.sweep() == "active"
    await world.sweep()
    assert world.kinds() == [("alarm", "failures"), ("resolved", "failures")]
    assert [e["type"] for e in world.events()] == ["account.refresh_failed", "account.resolved"]
    metrics = world.daemon.metrics.registry
    # Two alarms and their two lifecycle events (refresh_failed, resolved) through each channel.
    assert metrics.get_sample_value("refresher_alert_deliveries_total", {"channel": "ops", "outcome": "success"}) == 4
    assert metrics.get_sample_value("refresher_alert_deliveries_total", {"channel": "dead", "outcome": "failure"}) == 4


async def test_revoked_grant_alarms_at_once_with_an_authorization_link(world: World) -> None:
    assert await world.sweep() == "active"
    world.sandbox.state.revoke("shopee")
    assert await world.sweep() == AccountStatus.NEEDS_REAUTH
    [alarm] = world.alarms()
    assert (alarm["kind"], alarm["cause"]) == ("alarm", "reauth_required")
    # A signed invitation bound to this account (an unsigned connect link would answer 401).
    url = httpx.URL(alarm["reauth_url"])
    assert str(url).startswith(f"{PUBLIC}/connect/shopee?invite=")
    assert url.params["account"] == world.key
    check_invite(url.params["invite"], "shopee", secret=INVITE_SECRET, clock=world.daemon.clock, account=world.key)
    assert alarm["consecutive_failures"] == 1
    [event] = world.events()
    assert event["type"] == "account.needs_reauth" and event["status"] == "needs_reauth"
    assert httpx.URL(event["reauth_url"]).params["account"] == world.key


async def test_a_needs_reauth_account_whose_alarm_was_lost_is_alarmed_by_the_next_sweep(world: World) -> None:
    assert await world.sweep() == "active"
    # What a kill in the instant after record_failure committed leaves behind: the account needs the
    # seller, and no alarm row, message or event says so (the listener that raises them never ran).
    store = world.daemon.store
    [claimed] = await store.claim_due("shopee", dt.timedelta(days=1), 1, "dead-worker", dt.timedelta(minutes=1))
    rejected = ErrorInfo("reauth_required", "error_auth", "Invalid refresh_token.")
    await store.record_failure(claimed.id, "dead-worker", rejected, None, AccountStatus.NEEDS_REAUTH)
    assert world.alarms() == [] and await store.open_alarms("shopee") == []
    assert await world.sweep() == AccountStatus.NEEDS_REAUTH
    [alarm] = world.alarms()
    assert (alarm["kind"], alarm["cause"]) == ("alarm", "reauth_required")
    assert alarm["account_key"] == world.key and alarm["reauth_url"]
    [event] = world.events()
    assert event["type"] == "account.needs_reauth"
    # Raised once: the next sweep finds it open and leaves it to the reminders.
    await world.sweep()
    assert len(world.alarms()) == 1


async def test_an_unlisted_code_is_retried_through_the_budget_and_the_alarm_names_it(world: World) -> None:
    """A code no document lists is transient: every attempt of every sweep is made (3 retries x 2 sweeps),
    and the alarm that follows carries the platform's raw code, so the operator can look it up."""
    from refresher.sandbox.shopee import UNLISTED_CODE

    world.sandbox.set_faults("shopee:refresh:unlisted")
    assert await world.sweep() == "active"
    assert world.kinds() == []
    await world.sweep()
    assert world.sandbox.state.counters.get("shopee.fault.unlisted") == 6  # the whole retry budget, twice
    [alarm] = world.alarms()
    assert (alarm["kind"], alarm["cause"], alarm["error_class"]) == ("alarm", "failures", "transient")
    assert alarm["error_code"] == UNLISTED_CODE and UNLISTED_CODE in alarm["error_message"]
