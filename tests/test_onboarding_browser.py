"""A real browser over the connect → landing → consent → approve → result pages (headless Chromium,
Debian's package driven by Playwright; no browser download).

Skipped with a reason where Debian's ``chromium`` package is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.sandbox import SandboxServer
from tests.console_support import SHOTS
from tests.onboarding_support import running_daemon

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    async with (
        SandboxServer(clock=clock) as sandbox,
        running_daemon(sandbox, clock, tmp_path / "tokens.db", connect_requires_auth=False) as running,
    ):
        yield running


async def test_chromium_completes_connect_approve_and_renders_the_result(daemon: Daemon) -> None:
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})
            await page.goto(f"http://127.0.0.1:{daemon.port}/connect/tiktok")
            await page.click("#continue")  # our landing page
            await page.click("#approve")  # the platform's consent page
            await page.wait_for_selector("[data-outcome=granted]")
            html = await page.content()
            SHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SHOTS / "seller-granted-tiktok.png"), full_page=True)
        finally:
            await browser.close()
    (account,) = await daemon.store.list(app="tiktok")
    assert account.key in html
    assert account.identity.name and account.identity.name in html
    assert account.tokens is not None
    assert account.tokens.access_token not in html and account.tokens.refresh_token not in html
