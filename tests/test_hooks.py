"""on_success / on_failure hooks: the new token goes to the hook URL, signed, and nowhere else."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from refresher.alerts import AlertPolicy, Dispatcher, HookDispatcher, build_channels, verify_signature
from refresher.alerts.events import RefreshEvent
from refresher.config import LoggingSettings, Settings, StoreSettings
from refresher.domain import AccountStatus, ErrorInfo, FakeClock, Identity, TokenSet
from refresher.logging import configure_logging, reset_logging
from refresher.metrics import Metrics
from refresher.redaction import forget_secrets, register_secrets
from refresher.store.base import Account
from refresher.store.sql import open_store

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
NEW_ACCESS = "ROW_newAccess_5f4e3d2c1b0a9f8e"
NEW_REFRESH = "ROW_newRefresh_0a1b2c3d4e5f6a7b"
HOOK_SECRET = "hook-secret-1234567890abcdef"
ALARM_SECRET = "alarm-secret-abcdef1234567890"


class Recorder:
    """A real HTTP server in a thread recording (path, headers, body) of every POST."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                recorder.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.close()


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/gone"


def settings_for(recorder: Recorder, *, success_url: str | None = None) -> Settings:
    return Settings.model_validate(
        {
            "alerts": {
                "after_failures": 1,
                "delivery_attempts": 2,
                "channels": [
                    {"type": "webhook", "name": "ops", "url": recorder.url + "/alarm", "secret": ALARM_SECRET}
                ],
            },
            "apps": {
                "shopee-sg": {
                    "platform": "shopee",
                    "on_success": {"url": success_url or recorder.url + "/hook/ok", "secret": HOOK_SECRET},
                    "on_failure": {"url": recorder.url + "/hook/fail"},
                },
                "lazada-my": {"platform": "lazada"},  # no hooks at all
            },
        }
    )


def account(app: str = "shopee-sg") -> Account:
    return Account(
        id=7,
        app=app,
        platform="shopee",
        key="shop:1001",
        identity=Identity("shop:1001", "shop", "1001", name="Demo Shop", region="SG"),
        status=AccountStatus.ACTIVE,
        tokens=None,
        version=4,
    )


def event(outcome: str, app: str = "shopee-sg") -> RefreshEvent:
    return RefreshEvent(
        app=app,
        platform="shopee",
        account_key="shop:1001",
        account_name="Demo Shop",
        outcome=outcome,
        error=ErrorInfo("reauth_required", "invalid_refresh_token", "refresh token expired", "req-9")
        if outcome == "failure"
        else None,
        consecutive_failures=1 if outcome == "failure" else 0,
        status=AccountStatus.NEEDS_REAUTH if outcome == "failure" else AccountStatus.ACTIVE,
        access_expires_at=T0 + dt.timedelta(hours=4),
        refresh_expires_at=T0 + dt.timedelta(days=30),
        at=T0,
        attempts=1,
        duration_ms=80,
    )


EVENTS_DOC = Path(__file__).resolve().parent.parent / "docs" / "events.md"


def documented_fields(heading: str, table: int) -> set[str]:
    """The field names of the ``table``-th table under the docs/events.md section starting ``heading``."""
    section = EVENTS_DOC.read_text().split("\n" + heading, 1)[1].split("\n## ", 1)[0]
    tables: list[set[str]] = []
    in_table = False
    for line in section.splitlines():
        if line.startswith("| field |"):
            tables.append(set())
            in_table = True
        elif in_table and line.startswith("| `"):
            tables[-1].update(name.strip(" `") for name in line.split("|")[1].split(","))
        elif not line.startswith("|"):
            in_table = False
    return tables[table]


TOKENS = TokenSet(NEW_ACCESS, NEW_REFRESH, T0 + dt.timedelta(hours=4), T0 + dt.timedelta(days=30), ("shop",))


@pytest.fixture
async def dispatcher() -> AsyncIterator[Dispatcher]:
    d = Dispatcher(metrics=Metrics(), initial_delay=0.01, max_delay=0.05)
    await d.start()
    yield d
    await d.aclose(grace=1)


async def test_token_goes_only_to_the_success_hook(
    recorder: Recorder, dispatcher: Dispatcher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(LoggingSettings(level="debug"))
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path / 't.db'}"), FakeClock(T0))
    await store.open()
    try:
        register_secrets([NEW_ACCESS, NEW_REFRESH])  # as refresh.py does for every token it sees
        settings = settings_for(recorder)
        hooks = HookDispatcher(settings, dispatcher=dispatcher)
        policy = AlertPolicy(
            settings.alerts,
            store,
            build_channels(settings.alerts),
            FakeClock(T0),
            reauth_link=lambda app, key: f"https://r.example/connect/{app}",
            dispatcher=dispatcher,
        )
        app = settings.apps["shopee-sg"]
        # A full cycle as the daemon runs it: failure (alarm + failure hook), then success (resolved + token hook).
        for outcome, tokens in (("failure", None), ("success", TOKENS)):
            ev = event(outcome)
            await policy.observe(ev)
            await hooks.refreshed(app, ev, account(), tokens)
        assert await dispatcher.drain(10)
        output = capsys.readouterr().err
    finally:
        await store.close()
        reset_logging()
        forget_secrets()

    assert sorted(recorder.paths()) == ["/alarm", "/alarm", "/hook/fail", "/hook/ok"]
    for path, _headers, body in recorder.requests:
        carries_token = NEW_ACCESS.encode() in body or NEW_REFRESH.encode() in body
        assert carries_token == (path == "/hook/ok"), path
        assert HOOK_SECRET.encode() not in body and ALARM_SECRET.encode() not in body
    assert NEW_ACCESS not in output and NEW_REFRESH not in output and HOOK_SECRET not in output

    [(_, headers, body)] = [r for r in recorder.requests if r[0] == "/hook/ok"]
    assert verify_signature(
        HOOK_SECRET, headers["x-refresher-timestamp"], body, headers["x-refresher-signature"], time.time()
    )
    payload = json.loads(body)
    assert payload["event"] == "refreshed"
    assert (payload["access_token"], payload["refresh_token"]) == (NEW_ACCESS, NEW_REFRESH)
    assert payload["access_expires_at"] == TOKENS.access_expires_at.isoformat()
    assert payload["identity"]["platform_id"] == "1001" and payload["identity"]["region"] == "SG"
    assert payload["account_key"] == "shop:1001" and payload["version"] == 4

    [(_, headers, body)] = [r for r in recorder.requests if r[0] == "/hook/fail"]
    failure = json.loads(body)
    assert failure["event"] == "refresh_failed" and "access_token" not in failure
    assert failure["error"]["code"] == "invalid_refresh_token" and failure["status"] == "needs_reauth"
    assert "x-refresher-signature" not in headers  # that hook has no secret: timestamp only
    assert "x-refresher-timestamp" in headers

    # What went over the wire is what docs/events.md documents, field for field (alarm, success, failure).
    bodies = {path: json.loads(body) for path, _headers, body in recorder.requests}
    assert set(bodies["/hook/ok"]) == documented_fields("## Refresh hooks", table=0)
    assert set(bodies["/hook/fail"]) == documented_fields("## Refresh hooks", table=1)
    assert set(payload["identity"]) == {"key", "kind", "platform_id", "name", "region", "extra"}
    assert set(failure["error"]) == {"class", "code", "message", "request_id", "http_status"}
    alarm_bodies = [json.loads(body) for path, _headers, body in recorder.requests if path == "/alarm"]
    assert {b["kind"] for b in alarm_bodies} == {"alarm", "resolved"}
    for alarm_body in alarm_bodies:
        assert set(alarm_body) == documented_fields("## Alarm messages", table=0)


async def test_no_hook_configured_sends_nothing(recorder: Recorder, dispatcher: Dispatcher) -> None:
    settings = settings_for(recorder)
    hooks = HookDispatcher(settings, dispatcher=dispatcher)
    await hooks.refreshed(settings.apps["lazada-my"], event("success", "lazada-my"), account("lazada-my"), TOKENS)
    await hooks.refreshed(settings.apps["lazada-my"], event("failure", "lazada-my"), account("lazada-my"), None)
    await hooks.refreshed(settings.apps["shopee-sg"], event("skipped"), account(), None)
    assert await dispatcher.drain(5)
    assert recorder.requests == []


async def test_dead_hook_is_counted_and_reload_applies(recorder: Recorder, dispatcher: Dispatcher) -> None:
    settings = settings_for(recorder, success_url=dead_url())
    hooks = HookDispatcher(settings, dispatcher=dispatcher)
    started = time.monotonic()
    await hooks.refreshed(settings.apps["shopee-sg"], event("success"), account(), TOKENS)
    assert time.monotonic() - started < 0.1  # queued, not sent inline
    assert await dispatcher.drain(10)
    metrics = dispatcher.metrics
    assert metrics is not None
    value = metrics.registry.get_sample_value(
        "refresher_hook_deliveries_total", {"app": "shopee-sg", "outcome": "failure"}
    )
    assert value == 1

    fixed = settings_for(recorder)
    hooks.apply_settings(fixed)
    await hooks.refreshed(fixed.apps["shopee-sg"], event("success"), account(), TOKENS)
    assert await dispatcher.drain(10)
    assert recorder.paths() == ["/hook/ok"]


def test_cleartext_and_unusable_hook_urls_are_named(
    recorder: Recorder, dispatcher: Dispatcher, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.model_validate(
        {
            "apps": {
                "a": {"platform": "shopee", "on_success": {"url": "http://10.0.0.5/hook?key=" + HOOK_SECRET}},
                "b": {"platform": "shopee", "on_success": {"url": "https://erp.example/hook"}},
                "c": {"platform": "shopee", "on_success": {"url": "http://127.0.0.1:9/hook"}},
                "d": {"platform": "shopee", "on_failure": {"url": "ftp://erp.example/x"}},
            }
        }
    )
    configure_logging(LoggingSettings())
    try:
        HookDispatcher(settings, dispatcher=dispatcher)
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        reset_logging()
        forget_secrets()
    found = {(line["event"], line["where"]) for line in lines}
    assert found == {("hook.cleartext", "apps.a.on_success.url"), ("hook.unusable", "apps.d.on_failure.url")}
    assert HOOK_SECRET not in json.dumps(lines)
