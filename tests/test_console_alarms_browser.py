"""The alarms page in a real headless Chromium shows, per alarm, how each channel's delivery went: a real
webhook receiver that refuses (HTTP 500) and one that accepts, a real daemon and sandbox, a real SQLite
store. The alarm comes from a real refresh the sandbox refuses (the seller withdrew the grant)."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from playwright.async_api import Page, async_playwright

from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.sandbox import SandboxServer
from tests.console_support import AUTH, SHOTS, assert_clean, base, secrets_of
from tests.onboarding_support import ADMIN_TOKEN, browse, config_text, free_port, settings_from
from tests.support import Answering

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)"),
]
URL_TOKEN = "hookT0KEN9f8e7d6c5b4a3210"  # in both webhooks' URLs, as chat services put it
HOOK = f"/hooks/{URL_TOKEN}?token={URL_TOKEN}"


@pytest.fixture
def receivers() -> Iterator[tuple[Answering, Answering]]:
    pair = (Answering(500), Answering(200))
    yield pair
    for server in pair:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
async def daemon(tmp_path: Path, receivers: tuple[Answering, Answering]) -> AsyncIterator[Daemon]:
    refusing, accepting = receivers
    clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
    async with SandboxServer(clock=clock) as sandbox:
        port = free_port()
        document = yaml.safe_load(config_text(sandbox, port, tmp_path / "tokens.db"))
        document["alerts"] = {
            "delivery_attempts": 2,
            "channels": [
                {"type": "webhook", "name": "pager", "url": refusing.url(HOOK), "timeout": "2s"},
                {"type": "webhook", "name": "team-chat", "url": accepting.url(HOOK), "timeout": "2s"},
            ],
        }
        running = Daemon(settings_from(yaml.safe_dump(document)), clock=clock)
        await running.start()
        running.sandbox_for_test = sandbox  # type: ignore[attr-defined]
        try:
            yield running
        finally:
            await running.stop(grace=1)


async def log_in(page: Page, daemon: Daemon, target: str) -> None:
    await page.goto(f"{base(daemon)}{target}")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base(daemon)}{target}")


async def test_alarms_page_shows_failed_and_delivered_per_channel(
    daemon: Daemon, receivers: tuple[Answering, Answering]
) -> None:
    refusing, accepting = receivers
    async with httpx.AsyncClient(timeout=10) as client:
        visit = await browse(client, f"{base(daemon)}/connect/tiktok", headers=AUTH)
        assert visit.outcome == "granted"
    (account,) = await daemon.store.list(app="tiktok")
    sandbox: SandboxServer = daemon.sandbox_for_test  # type: ignore[attr-defined]
    sandbox.state.revoke("tiktok")  # the seller withdrew consent: the next refresh needs a human

    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            account_path = f"/ui/accounts/tiktok/{account.key}"
            await log_in(page, daemon, account_path)
            await page.click("#refresh-now")
            await page.wait_for_selector("#notice")
            assert await daemon.dispatcher.drain(15)
            assert refusing.hits >= 2 and accepting.hits >= 1  # (lifecycle events go to them too)

            await page.goto(f"{base(daemon)}/ui/alarms")
            row = page.locator("#open tr[data-cause=reauth_required]")
            assert await row.count() == 1
            pager = row.locator("li[data-channel=pager]")
            chat = row.locator("li[data-channel=team-chat]")
            assert await pager.get_attribute("data-state") == "failed"
            assert await chat.get_attribute("data-state") == "delivered"
            assert "2 attempts" in await pager.inner_text() and "HTTP 500" in await pager.inner_text()
            assert "1 attempt," in await chat.inner_text()
            alarms_html = await page.content()
            SHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SHOTS / "alarms-deliveries.png"), full_page=True)

            # The account's own alarms say the same.
            await page.goto(f"{base(daemon)}{account_path}")
            mine = page.locator("#account-alarms tr[data-cause=reauth_required]")
            assert await mine.locator("li[data-channel=pager]").get_attribute("data-state") == "failed"
            assert await mine.locator("li[data-channel=team-chat]").get_attribute("data-state") == "delivered"
            account_html = await page.content()
            await page.screenshot(path=str(SHOTS / "account-alarm-deliveries.png"), full_page=True)
        finally:
            await browser.close()

    # A channel is named, never shown by its URL (which carries the hook's token).
    secrets = [*await secrets_of(daemon), URL_TOKEN, refusing.url(HOOK), accepting.url(HOOK)]
    assert_clean(alarms_html, secrets, "alarms")
    assert_clean(account_html, secrets, "account")
