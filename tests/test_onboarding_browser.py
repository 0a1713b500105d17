"""A real browser over the connect → consent → approve → result pages (headless Chromium).

Skipped with a reason where Debian's ``chromium`` package is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.sandbox import SandboxServer
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


async def chromium(*args: str, profile: Path) -> str:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    return out.decode("utf-8", "replace")


async def test_chromium_completes_connect_approve_and_renders_the_result(daemon: Daemon, tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    # 1. The connect link: Chromium follows the 302 to the platform's consent page.
    consent = await chromium("--dump-dom", f"http://127.0.0.1:{daemon.port}/connect/tiktok", profile=profile)
    found = re.search(r'id="approve" href="([^"]+)"', consent)
    assert found, consent[:500]
    # 2. "Click" Approve: the platform redirects the browser to /callback, which renders the result.
    approve = html.unescape(found.group(1))
    result = await chromium("--dump-dom", approve, profile=profile)
    assert 'data-outcome="granted"' in result, result[:500]
    (account,) = await daemon.store.list(app="tiktok")
    assert account.key in result
    assert account.tokens is not None and account.tokens.access_token not in result
    # 3. The result page also renders to pixels (a screenshot of a re-visit: the state is now used).
    shot = tmp_path / "page.png"
    await chromium(f"--screenshot={shot}", "--window-size=800,600", consent_url(daemon), profile=profile)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def consent_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.port}/connect/tiktok"
