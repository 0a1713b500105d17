"""Several processes sweep the same 1,000 due accounts against the sandbox (a separate process too), on
SQLite and on PostgreSQL: every account is refreshed exactly once, and no old refresh token is reused."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from refresher import platforms
from refresher.config import load_config
from refresher.domain import SystemClock
from refresher.platforms.base import make_http_client
from refresher.sandbox.apps import SANDBOX_CREDENTIALS
from refresher.sandbox.runner import answer_consent
from refresher.store import open_store
from refresher.store.schema import accounts as accounts_table
from tests.support import pg_database

pytestmark = pytest.mark.slow

ACCOUNTS = int(os.environ.get("REFRESHER_MP_ACCOUNTS", "1000"))
SHOPS_PER_GRANT = 200
WORKERS = 3
WORKER = Path(__file__).with_name("mp_refresh_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tokens.db'}"
    else:
        with pg_database("refresher_mp") as url:
            yield url


async def test_processes_refresh_every_due_account_exactly_once(tmp_path: Path, store_url: str) -> None:
    sandbox_url = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "refresher.yaml"
    document: dict[str, Any] = {
        "store": {"url": store_url, "lease_ttl": "10m"},
        "server": {"enabled": False},
        "logging": {"level": "warning"},
        "apps": {
            "shopee": {
                "platform": "shopee",
                "base_url": f"{sandbox_url}/shopee",
                "redirect_uri": "http://127.0.0.1:3017/callback",
                **SANDBOX_CREDENTIALS["shopee"],
                "refresh_before": "1h",
                "concurrency": 8,
                "rate_limit": 10000,
            }
        },
    }
    config.write_text(yaml.safe_dump(document))
    port = sandbox_url.rsplit(":", 1)[1]
    sandbox = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "refresher", "sandbox", "--port", port, "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=sandbox_url) as admin:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await admin.get("/_sandbox/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            await onboard(config, ACCOUNTS)
            await make_everything_due(config)
            before = (await admin.get("/_sandbox/counters")).json()

            workers = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(WORKER),
                    str(config),
                    "shopee",
                    f"worker-{i}",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                for i in range(WORKERS)
            ]
            outputs = await asyncio.gather(*(w.communicate() for w in workers))
            for worker, (_out, err) in zip(workers, outputs, strict=True):
                assert worker.returncode == 0, err.decode()[-2000:]
            after = (await admin.get("/_sandbox/counters")).json()
    finally:
        sandbox.terminate()
        await sandbox.wait()

    refreshed = after.get("shopee.rotated", 0) - before.get("shopee.rotated", 0)
    claimed = [
        int(line.split("claimed=")[1].split()[0])
        for out, _ in outputs
        for line in out.decode().splitlines()
        if "claimed=" in line
    ]
    assert refreshed == ACCOUNTS, (refreshed, after)
    assert sum(claimed) == ACCOUNTS
    assert sum(1 for n in claimed if n > 0) >= 2, f"the work was not shared: {claimed}"
    assert after.get("shopee.reuse", 0) == 0, after
    await check_store(config)


async def onboard(config: Path, count: int) -> None:
    """Shopee main-account grants, ``SHOPS_PER_GRANT`` shops each, through the sandbox's consent page."""
    settings = load_config(config, credential_models=platforms.credential_models())
    store = open_store(settings.store, SystemClock())
    await store.open()
    http = make_http_client()
    try:
        app = settings.apps["shopee"]
        plugin = platforms.get("shopee")(app, http=http)
        made = 0
        while made < count:
            shops = min(SHOPS_PER_GRANT, count - made)
            params = await answer_consent(
                plugin.authorize_url("mp", app.redirect_uri),
                "approve",
                {"as": "main", "shops": str(shops), "merchants": "0"},
            )
            for grant in await plugin.exchange_code(params, None, app.redirect_uri):
                await store.upsert_grant("shopee", "shopee", grant)
                made += 1
        assert await store.count(app="shopee") == count
    finally:
        await http.aclose()
        await store.close()


async def make_everything_due(config: Path) -> None:
    """The tokens are fresh (4 h); pretend they expire now, in the store only, so the sweep claims them
    all while the new tokens it stores (4 h) are outside the 1 h window: due exactly once."""
    settings = load_config(config, credential_models=platforms.credential_models())
    store = open_store(settings.store, SystemClock())
    await store.open()
    try:
        engine = store._engine
        assert engine is not None
        async with engine.begin() as conn:
            await conn.execute(sa.update(accounts_table).values(access_expires_at=dt.datetime.now(dt.UTC)))
    finally:
        await store.close()


async def check_store(config: Path) -> None:
    settings = load_config(config, credential_models=platforms.credential_models())
    store = open_store(settings.store, SystemClock())
    await store.open()
    try:
        rows = await store.list(app="shopee", limit=10 * ACCOUNTS)
        assert len(rows) == ACCOUNTS
        horizon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
        assert all(r.tokens is not None and r.tokens.access_expires_at > horizon for r in rows)
        assert all(r.lease_owner is None and r.consecutive_failures == 0 for r in rows)
        assert all(r.version >= 2 for r in rows)
    finally:
        await store.close()
