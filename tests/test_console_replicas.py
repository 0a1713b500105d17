"""A console logout is honoured by every replica: two real ``refresher run`` processes on one store (a
SQLite file, and a PostgreSQL database), a session cookie that works on both, a logout on one; the other
refuses the copied cookie within ``LOGOUT_CHECK_CACHE`` (plus a request's time), not when it expires."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from refresher.sandbox.apps import SANDBOX_CREDENTIALS
from refresher.server.ui.session import LOGOUT_CHECK_CACHE
from tests.support import pg_database

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "admin-token-for-replica-tests-0001"
COOKIE = "refresher_console"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tokens.db'}"
    else:
        with pg_database() as url:
            yield url


def config(tmp: Path, store_url: str, port: int) -> Path:
    # One app so the config is complete; it has no account, so nothing calls its (dead) platform URL.
    document = {
        "store": {"url": store_url},
        "server": {"port": port, "admin_token": ADMIN_TOKEN},
        "logging": {"level": "info", "format": "json"},
        "apps": {
            "tiktok": {
                "platform": "tiktok",
                "base_url": f"http://127.0.0.1:{free_port()}/tiktok",
                "redirect_uri": "http://127.0.0.1:3017/callback",
                **SANDBOX_CREDENTIALS["tiktok"],
            }
        },
    }
    path = tmp / f"replica-{port}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@contextlib.asynccontextmanager
async def replica(tmp: Path, store_url: str) -> AsyncIterator[str]:
    """A ``refresher run`` process on ``store_url``; yields its base URL once it answers."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "refresher",
        "run",
        "-c",
        str(config(tmp, store_url, port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        break
                assert proc.returncode is None, "the replica exited"
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the replica never answered")
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:300]
    return found.group(1)


async def log_in(client: httpx.AsyncClient, url: str) -> str:
    """Log in on ``url`` like the browser does; the session cookie's value."""
    form = await client.get(f"{url}/ui/login")
    answer = await client.post(
        f"{url}/ui/login", data={"csrf": csrf_of(form.text), "token": ADMIN_TOKEN, "next": "/ui"}
    )
    assert answer.status_code == 303, answer.text[:300]
    return answer.cookies[COOKIE]


async def opens(url: str, cookie: str) -> bool:
    """Whether a fresh client presenting only ``cookie`` gets the overview (not the login redirect)."""
    async with httpx.AsyncClient(cookies={COOKIE: cookie}) as client:
        answer = await client.get(f"{url}/ui")
    assert answer.status_code in (200, 303), answer.status_code
    return answer.status_code == 200


async def test_a_logout_on_one_replica_is_refused_by_the_other(tmp_path: Path, store_url: str) -> None:
    async with replica(tmp_path, store_url) as a, replica(tmp_path, store_url) as b:
        async with httpx.AsyncClient() as browser:
            cookie = await log_in(browser, a)
            assert await opens(a, cookie) and await opens(b, cookie)  # one session, both replicas
            overview = await browser.get(f"{a}/ui")
            logout = await browser.post(f"{a}/ui/logout", data={"csrf": csrf_of(overview.text)})
            assert logout.status_code == 303 and logout.headers["location"] == "/ui/login"
        logged_out_at = time.monotonic()
        assert not await opens(a, cookie)
        # B said "not logged out" a moment ago and may reuse that answer for LOGOUT_CHECK_CACHE seconds.
        while await opens(b, cookie):
            assert time.monotonic() - logged_out_at < LOGOUT_CHECK_CACHE + 1.0, "B still accepts the cookie"
            await asyncio.sleep(0.1)
        # And it keeps refusing it; a new login on B works as ever.
        await asyncio.sleep(LOGOUT_CHECK_CACHE + 0.2)
        assert not await opens(b, cookie)
        async with httpx.AsyncClient() as other:
            assert await opens(b, await log_in(other, b))
