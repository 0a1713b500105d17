"""``refresher run`` and ``refresher sandbox`` as real processes: accounts on all four platforms rotate
several times with no access token ever expired, every refresh recorded and zero reuses; sd_notify,
SIGHUP reload (good and bad), graceful SIGTERM, and a log in which none of the secrets, tokens or codes
of the run appear."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import yaml

from refresher import platforms
from refresher.config import parse_config
from refresher.domain import SystemClock
from refresher.platforms.base import make_http_client
from refresher.sandbox.apps import SANDBOX_CREDENTIALS, secret_of
from refresher.store import open_store
from tests.support import assert_no_secret

pytestmark = pytest.mark.slow

APPS = ("shopee", "tiktok_shop", "lazada", "tiktok")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SANDBOX_PREFIX = {"shopee": "/shopee", "tiktok_shop": "/tiktok-shop", "lazada": "/lazada", "tiktok": "/tiktok"}


class Run:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sandbox_url = f"http://127.0.0.1:{free_port()}"
        self.port = free_port()
        self.config = tmp / "refresher.yaml"
        self.secrets: set[str] = {secret_of(SANDBOX_CREDENTIALS[p]) for p in APPS}
        self.admin_token = "admin-token-" + os.urandom(8).hex()
        self.secrets.add(self.admin_token)
        self.document: dict[str, Any] = {
            "store": {"url": f"sqlite:///{tmp / 'tokens.db'}"},
            "server": {"port": self.port, "admin_token": self.admin_token},
            "logging": {"level": "info", "format": "json"},
            "apps": {
                p: {
                    "platform": p,
                    "base_url": self.sandbox_url + SANDBOX_PREFIX[p],
                    "redirect_uri": "http://127.0.0.1:3017/callback",
                    **SANDBOX_CREDENTIALS[p],
                    "interval": "1s",
                    "refresh_before": "15s",
                    "timeout": "3s",
                }
                for p in APPS
            },
        }
        self.write()
        self.notify_path = str(tmp / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.setblocking(False)
        self.proc: asyncio.subprocess.Process | None = None
        self.sandbox_proc: asyncio.subprocess.Process | None = None
        self.stderr: list[str] = []

    def write(self, text: str | None = None) -> None:
        self.config.write_text(text if text is not None else yaml.safe_dump(self.document))

    async def onboard(self) -> None:
        settings = parse_config(
            self.config.read_text(), file=str(self.config), credential_models=platforms.credential_models()
        )
        store = open_store(settings.store, SystemClock())
        await store.open()
        http = make_http_client()
        try:
            for name, app in settings.apps.items():
                plugin = platforms.get(app.platform)(app, http=http)
                pkce = plugin.pkce_pair()
                consent = await http.get(plugin.authorize_url("s", app.redirect_uri, pkce))  # --auto-approve
                assert consent.status_code == 302, consent.text[:300]
                params = dict(parse_qsl(urlsplit(consent.headers["location"]).query))
                self.secrets.add(params["code"])
                for grant in await plugin.exchange_code(params, pkce, app.redirect_uri):
                    self.secrets.update({grant.tokens.access_token, grant.tokens.refresh_token})
                    await store.upsert_grant(name, app.platform, grant)
        finally:
            await http.aclose()
            await store.close()

    async def start_sandbox(self) -> None:
        port = self.sandbox_url.rsplit(":", 1)[1]
        self.sandbox_proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "refresher",
            "sandbox",
            "--port",
            port,
            "--access-ttl",
            "20s",
            "--auto-approve",
            "-c",
            str(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.sandbox_url}/_sandbox/health")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        pytest.fail("the sandbox process never answered")

    async def counters(self) -> dict[str, int]:
        async with httpx.AsyncClient() as client:
            return dict((await client.get(f"{self.sandbox_url}/_sandbox/counters")).json())

    async def start(self) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": self.notify_path, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "refresher",
            "run",
            "-c",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode("utf-8", "replace").rstrip("\n"))

    def events(self) -> list[dict[str, Any]]:
        parsed = []
        for line in self.stderr:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pytest.fail(f"a log line that is not JSON: {line[:300]}")
        return parsed

    async def wait_event(self, name: str, timeout: float = 20, after: int = 0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for event in self.events()[after:]:
                if event.get("event") == name:
                    return event
            assert self.proc is not None
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        pytest.fail(f"no {name!r} log event; last lines: {self.stderr[-15:]}")

    async def notifications(self, wanted: str, timeout: float = 20) -> list[str]:
        seen: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                seen.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                if any(wanted in s for s in seen):
                    return seen
                await asyncio.sleep(0.05)
        pytest.fail(f"no {wanted} notification; got {seen}")


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Run]:
    r = Run(tmp_path)
    await r.start_sandbox()
    try:
        yield r
    finally:
        for proc in (r.proc, r.sandbox_proc):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        r.notify.close()


async def test_daemon_lifecycle_reload_and_clean_logs(run: Run) -> None:
    await run.onboard()
    await run.start()
    await run.notifications("READY=1")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.port}") as client:
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("daemon never became ready")

        # Tokens live 20 s and are refreshed 15 s before expiry: each account rotates every ~5 s. Watch
        # the store for 25 s: every account rotates several times and no access token is ever expired.
        watcher = asyncio.create_task(watch_expiries(run, seconds=25))
        for platform in APPS:
            await wait_for_refresh(run, platform)
        expired, rotations = await watcher
        assert not expired, expired[:5]
        assert all(n >= 3 for n in rotations.values()), rotations

        # A good reload: a changed interval is applied without a restart.
        mark = len(run.stderr)
        run.document["apps"]["tiktok"]["interval"] = "2s"
        run.write()
        assert run.proc is not None
        run.proc.send_signal(signal.SIGHUP)
        await run.wait_event("config.reloaded", after=mark)
        await run.notifications("READY=1")

        # A bad reload is refused with one clear reason, and the daemon keeps running on the old config.
        mark = len(run.stderr)
        run.write("apps:\n  broken:\n    platform: shopee\n    partner_id: not-a-number\n")
        run.proc.send_signal(signal.SIGHUP)
        refused = await run.wait_event("config.reload_refused", after=mark)
        assert "partner_id" in refused["reason"]
        assert (await client.get("/readyz")).status_code == 200
        mark = len(run.stderr)
        await wait_for_refresh(run, "shopee", after=mark)

    # Graceful stop: exit 0, in-flight work drained, STOPPING announced.
    run.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(run.proc.wait(), 30)
    await run._reader
    assert code == 0, run.stderr[-20:]
    assert any(e.get("event") == "daemon.stopped" for e in run.events())

    # The whole log, every line JSON, carries none of the secrets, tokens or codes the run used.
    recorded = await collect_current_tokens(run)
    counters = await run.counters()
    assert sum(v for k, v in counters.items() if k.endswith(".reuse")) == 0, counters
    # Every refresh the platforms performed was recorded by refresher (audit log of successes).
    for platform in APPS:
        assert recorded[platform] == counters.get(f"{platform}.rotated", 0), (platform, recorded, counters)
    log_text = "\n".join(run.stderr)
    assert_no_secret([log_text], run.secrets, "the log")
    assert len(run.secrets) > 10


async def wait_for_refresh(run: Run, app: str, after: int = 0, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for event in run.events()[after:]:
            if event.get("event") == "refresh" and event.get("app") == app and event.get("outcome") == "success":
                return
        await asyncio.sleep(0.2)
    pytest.fail(f"{app} was never refreshed; last lines: {run.stderr[-10:]}")


async def watch_expiries(run: Run, seconds: float) -> tuple[list[str], dict[str, int]]:
    """Poll the store: any active account whose access token is past its expiry is a failure."""
    settings = parse_config(
        yaml.safe_dump(run.document), file=str(run.config), credential_models=platforms.credential_models()
    )
    store = open_store(settings.store, SystemClock())
    await store.open()
    expired: list[str] = []
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            now = SystemClock().now()
            for account in await store.list(limit=1000):
                assert account.tokens is not None
                if account.tokens.access_expires_at <= now:
                    expired.append(f"{account.app}/{account.key} expired at {account.tokens.access_expires_at}")
                first.setdefault(f"{account.app}/{account.key}", account.version)
                last[f"{account.app}/{account.key}"] = account.version
            await asyncio.sleep(0.5)
    finally:
        await store.close()
    return expired, {key: last[key] - first[key] for key in last}


async def collect_current_tokens(run: Run) -> dict[str, int]:
    """Every token the daemon issued during the run is in the store (current); returns, per app, how many
    successful refreshes the audit log recorded."""
    settings = parse_config(
        yaml.safe_dump(run.document), file=str(run.config), credential_models=platforms.credential_models()
    )
    store = open_store(settings.store, SystemClock())
    await store.open()
    try:
        for account in await store.list(limit=1000):
            assert account.tokens is not None
            run.secrets.update({account.tokens.access_token, account.tokens.refresh_token})
        recorded = {}
        for app in APPS:
            entries = await store.audit_log(app=app, limit=100_000)
            recorded[app] = sum(1 for e in entries if e.outcome == "success")
        return recorded
    finally:
        await store.close()


async def test_reload_keeps_the_access_log_off_and_refuses_files_that_would_stop_the_work(run: Run) -> None:
    """A real daemon and real SIGHUPs: after a good reload no request target reaches the log; an operator
    who turns the access log on gets one line per request with the state, invitation and code replaced;
    a reload without apps, without the admin token, or on another store is refused with one line."""
    state, code, invite = "state-" + os.urandom(8).hex(), "code-" + os.urandom(8).hex(), "1a2b." + "Q" * 43
    run.secrets.update({state, code, invite})
    await run.start()
    await run.notifications("READY=1")
    assert run.proc is not None
    admin = {"authorization": f"Bearer {run.admin_token}"}

    async def requests(_: httpx.AsyncClient) -> None:
        # A new connection each time: uvicorn decides whether to log a connection's requests when it opens.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.port}") as client:
            await requests_on(client)

    async def requests_on(client: httpx.AsyncClient) -> None:
        await client.get("/connect/shopee", params={"invite": invite, "page": "2"})
        await client.get("/callback/shopee", params={"state": state, "code": code, "shop_id": "77"})
        await client.get("/readyz", params={"partner_key": "pk-" + "z" * 12, "x_api_key": "k" * 16})
        run.secrets.add("pk-" + "z" * 12)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.port}") as client:
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    break
            await asyncio.sleep(0.1)

        # A good reload that changes nothing about logging: the access log stays off.
        mark = len(run.stderr)
        run.document["apps"]["tiktok"]["interval"] = "2s"
        run.write()
        run.proc.send_signal(signal.SIGHUP)
        await run.wait_event("config.reloaded", after=mark)
        await requests(client)
        await asyncio.sleep(0.5)
        assert not [e for e in run.events()[mark:] if e.get("logger") == "uvicorn.access"], run.stderr[mark:]

        # The operator turns it on: one line per request, secret values replaced, the rest kept.
        mark = len(run.stderr)
        run.document["logging"]["access_log"] = True
        run.write()
        run.proc.send_signal(signal.SIGHUP)
        await run.wait_event("config.reloaded", after=mark)
        await requests(client)
        await asyncio.sleep(0.5)
        access = [e["event"] for e in run.events()[mark:] if e.get("logger") == "uvicorn.access"]
        assert len(access) == 3, run.stderr[mark:]
        assert "invite=***" in access[0] and "page=2" in access[0]
        assert "state=***" in access[1] and "code=***" in access[1] and "shop_id=77" in access[1]
        assert "partner_key=***" in access[2] and "x_api_key=***" in access[2]

        # Files that would quietly stop the daemon's work are refused, one line each. (Nobody reads the
        # notify socket from here on: its queue fills, and the daemon must keep answering all the same.)
        without_apps = {k: v for k, v in run.document.items() if k != "apps"}
        truncated = {
            "no apps key": (yaml.safe_dump(without_apps), "no apps"),
            "empty apps": (yaml.safe_dump({**without_apps, "apps": {}}), "no apps"),
            "apps an empty string": (yaml.safe_dump({**without_apps, "apps": ""}), "apps"),
            "no admin token": (yaml.safe_dump({**run.document, "server": {"port": run.port}}), "admin_token"),
            "another store": (
                yaml.safe_dump({**run.document, "store": {"url": f"sqlite:///{run.tmp / 'other.db'}"}}),
                "store.url",
            ),
        }
        for what, (text, fragment) in truncated.items():
            mark = len(run.stderr)
            run.write(text)
            run.proc.send_signal(signal.SIGHUP)
            refused = await run.wait_event("config.reload_refused", after=mark)
            assert fragment in refused["reason"] and str(run.config) in refused["reason"], (what, refused)
            assert "\n" not in refused["reason"]
            assert not [e for e in run.events()[mark:] if e.get("event") == "config.reloaded"], what
            # Still running on the previous file: the admin token still opens the admin API.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{run.port}", timeout=15) as fresh:
                answer = await fresh.get("/v1/accounts", headers=admin)
            assert answer.status_code == 200, (what, answer.text, run.stderr[mark:])
        assert not (run.tmp / "other.db").exists()

    run.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(run.proc.wait(), 30) == 0
    await run._reader
    assert_no_secret(["\n".join(run.stderr)], run.secrets, "the log")
