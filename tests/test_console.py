"""The console's protections over real HTTP: login, session cookie, CSRF, redirects, no secret in a page."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from refresher.daemon import Daemon
from refresher.domain import AccountStatus, FakeClock
from refresher.sandbox import SandboxServer
from tests.console_support import assert_clean, base, csrf_of, onboard, secrets_of
from tests.onboarding_support import ADMIN_TOKEN, running_daemon


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    async with SandboxServer(clock=clock) as sandbox, running_daemon(sandbox, clock, tmp_path / "t.db") as running:
        await onboard(running)
        yield running


@asynccontextmanager
async def logged_in(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base(daemon), timeout=10) as client:
        form = await client.get("/ui/login")
        data = {"csrf": csrf_of(form.text), "token": ADMIN_TOKEN, "next": "/ui"}
        answer = await client.post("/ui/login", data=data)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui"
        yield client


async def test_unauthenticated_visits_go_to_the_login_and_come_back(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=base(daemon), timeout=10) as client:
        assert (await client.get("/")).headers["location"] == "/ui"
        for path in ("/ui", "/ui/accounts?app=shopee", "/ui/alarms", "/ui/accounts/shopee/shop%3A1"):
            answer = await client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/ui/login?next=%2Fui")
        # An outside "next" is never followed.
        form = await client.get("/ui/login")
        answer = await client.post(
            "/ui/login", data={"csrf": csrf_of(form.text), "token": ADMIN_TOKEN, "next": "https://evil.example/"}
        )
        assert answer.headers["location"] == "/ui"


async def test_the_session_cookie_is_httponly_strict_and_expires(daemon: Daemon) -> None:
    async with logged_in(daemon) as client:
        cookie = next(c for c in client.cookies.jar if c.name == "refresher_console")
        assert cookie.expires is not None and cookie.has_nonstandard_attr("HttpOnly")
        assert cookie.value is not None and ADMIN_TOKEN not in cookie.value
        raw = (await client.get("/ui/login")).headers  # already logged in: redirect, no new cookie
        assert "set-cookie" not in raw
    async with httpx.AsyncClient(base_url=base(daemon), timeout=10) as fresh:
        form = await fresh.get("/ui/login")
        answer = await fresh.post("/ui/login", data={"csrf": csrf_of(form.text), "token": ADMIN_TOKEN})
        header = answer.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=strict" in header and "max-age=28800" in header
        assert "secure" not in header  # http public_url: a Secure cookie would never come back


async def test_posts_without_the_csrf_token_are_refused(daemon: Daemon) -> None:
    (account, *_) = await daemon.store.list(app="lazada")
    async with logged_in(daemon) as client:
        url = f"/ui/accounts/lazada/{account.key}"
        for form in ({"action": "disable"}, {"action": "disable", "csrf": "forged"}):
            refused = await client.post(url, data=form)
            assert refused.status_code == 403
        assert (await daemon.store.get("lazada", account.key)).status is AccountStatus.ACTIVE  # type: ignore[union-attr]
        # A login without the form's token is refused too (login CSRF).
        async with httpx.AsyncClient(base_url=base(daemon), timeout=10) as other:
            assert (await other.post("/ui/login", data={"token": ADMIN_TOKEN})).status_code == 403
        # With it, the same POST works.
        csrf = csrf_of((await client.get(url)).text)
        done = await client.post(url, data={"action": "disable", "csrf": csrf})
        assert done.status_code == 303
        assert (await daemon.store.get("lazada", account.key)).status is AccountStatus.DISABLED  # type: ignore[union-attr]


async def test_a_forged_or_foreign_cookie_opens_nothing(daemon: Daemon) -> None:
    async with httpx.AsyncClient(base_url=base(daemon), timeout=10) as client:
        for value in ("x", "eyJzaWQiOiJhIiwiY3NyZiI6ImIifQ.AAAAAA.forged"):
            client.cookies.set("refresher_console", value)
            assert (await client.get("/ui")).status_code == 303


async def test_no_page_shows_a_token_or_secret(daemon: Daemon) -> None:
    secrets = await secrets_of(daemon)
    async with logged_in(daemon) as client:
        paths = ["/ui", "/ui?range=7d", "/ui/accounts", "/ui/accounts?q=shop", "/ui/alarms", "/docs", "/ui/login"]
        for app in daemon.settings.apps:
            for account in await daemon.store.list(app=app):
                paths.append(f"/ui/accounts/{app}/{account.key}")
        for path in paths:
            answer = await client.get(path, follow_redirects=True)
            assert answer.status_code == 200, path
            assert_clean(answer.text, secrets, path)


async def test_https_public_url_makes_the_cookie_secure(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    async with (
        SandboxServer(clock=clock) as sandbox,
        running_daemon(sandbox, clock, tmp_path / "s.db", public_url="https://refresher.example.com") as daemon,
        httpx.AsyncClient(base_url=base(daemon), timeout=10) as client,
    ):
        form = await client.get("/ui/login")
        assert "__Host-refresher_login" in form.headers["set-cookie"] and "Secure" in form.headers["set-cookie"]
        client.cookies.set("__Host-refresher_login", form.cookies["__Host-refresher_login"])
        answer = await client.post("/ui/login", data={"csrf": csrf_of(form.text), "token": ADMIN_TOKEN})
        assert answer.status_code == 303
        header = answer.headers["set-cookie"]
        assert header.startswith("__Host-refresher_console=") and "Secure" in header and "Path=/" in header


async def test_console_disable_and_delete_store_their_lifecycle_events(daemon: Daemon) -> None:
    # The console acts like the API: account.disabled / account.deleted commit with the change (the outbox).
    (account, *_) = await daemon.store.list(app="lazada")
    async with logged_in(daemon) as client:
        url = f"/ui/accounts/lazada/{account.key}"
        for action in ("disable", "delete"):
            csrf = csrf_of((await client.get(url)).text)
            assert (await client.post(url, data={"action": action, "csrf": csrf})).status_code == 303
    kinds = [(e.kind, e.account_key) for e in await daemon.store.events(app="lazada")]
    assert ("account.disabled", account.key) in kinds
    assert ("account.deleted", account.key) in kinds
    assert await daemon.store.get("lazada", account.key) is None
