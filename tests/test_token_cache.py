"""The token read's cache never hands out what the store already replaced (issue 16, target 2).

Over real sockets, on SQLite and PostgreSQL: a daemon with the sandbox, reads through the token API; a
refresh by the daemon, a disable or delete through the API and a refresh or disable by *another process*
(the CLI, on the same store) are all seen by the next read (on PostgreSQL the other process's change
arrives by NOTIFY, so the read after it). The cache's own rules on the real store: a change committed
while a miss is read is not cached, the size bound holds, ``token_cache_size: 0`` turns it off, and a
lost LISTEN connection stops caching until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
import yaml

from refresher.daemon import Daemon
from refresher.domain import AccountStatus, FakeClock
from refresher.sandbox import SandboxServer
from refresher.server.token_route import token_cache
from refresher.store import SqlStore
from refresher.store.base import Account
from refresher.token_cache import TokenCache
from tests.support import PG_URL
from tests.test_api import APP, ApiEnv, build_settings, capture_json_logs
from tests.test_store import grant

LONG = dt.timedelta(hours=1)  # max age out of the way: only the change token may invalidate


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store_url: str, **server: Any
) -> AsyncIterator[ApiEnv]:
    with capture_json_logs(capsys) as read_logs:
        clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        async with SandboxServer(clock=clock) as sandbox:
            base = build_settings(sandbox, tmp_path / "tokens.db", apps=("shopee",))
            settings = base.model_copy(
                update={
                    "store": base.store.model_copy(update={"url": store_url}),
                    "server": base.server.model_copy(update={"token_cache_max_age": LONG, **server}),
                }
            )
            daemon = Daemon(settings, clock=clock)
            await daemon.start(schedule=False)
            try:
                async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
                    yield ApiEnv(daemon, sandbox, clock, settings, http, read_logs)
            finally:
                await daemon.stop(grace=5)


@pytest.fixture
async def env(tmp_path: Path, capsys: pytest.CaptureFixture[str], store_url: str) -> AsyncIterator[ApiEnv]:
    async with rig(tmp_path, capsys, store_url) as running:
        yield running


def token_path(key: str) -> str:
    return f"/v1/accounts/{APP}/{quote(key, safe='')}/token?include_refresh=true"


def cache_of(env: ApiEnv) -> TokenCache:
    return token_cache(env.daemon)


async def warm(env: ApiEnv, key: str) -> dict[str, Any]:
    """Read until an answer came from the cache (on PostgreSQL the LISTEN connection starts on first use)."""
    cache = cache_of(env)
    for _ in range(100):
        hits = cache.hits
        answer = await env.call("GET", token_path(key))
        assert answer.status_code == 200, answer.text
        if cache.hits > hits:
            body: dict[str, Any] = answer.json()
            return body
        await asyncio.sleep(0.05)
    raise AssertionError("no token read was ever served from the cache")


async def until(check: Callable[[], Any], what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def stored_tokens(account: Account | None) -> tuple[str, str]:
    assert account is not None and account.tokens is not None
    return account.tokens.access_token, account.tokens.refresh_token


async def test_a_read_from_the_cache_is_the_stored_token(env: ApiEnv) -> None:
    (account,) = await env.onboard()
    body = await warm(env, account.key)
    assert (body["access_token"], body["refresh_token"]) == stored_tokens(account)
    assert body["version"] == account.version


async def test_a_refresh_by_the_daemon_is_seen_by_the_next_read(env: ApiEnv) -> None:
    (account,) = await env.onboard()
    before = await warm(env, account.key)
    result = await env.daemon.refresher.refresh_now(APP, account.key)
    assert result.outcome == "success"
    answer = (await env.call("GET", token_path(account.key))).json()
    assert (answer["access_token"], answer["refresh_token"]) == stored_tokens(result.account)
    assert answer["refresh_token"] != before["refresh_token"]  # the sandbox rotates: the old one is dead
    assert answer["version"] == before["version"] + 1


async def test_disable_and_delete_through_the_api_are_seen_by_the_next_read(env: ApiEnv) -> None:
    (account,) = await env.onboard()
    await warm(env, account.key)
    assert (await env.call("POST", f"/v1/accounts/{APP}/{quote(account.key, safe='')}/disable")).status_code == 200
    refused = await env.call("GET", token_path(account.key))
    assert refused.status_code == 409 and refused.json()["reason"] == "disabled"
    assert (await env.call("POST", f"/v1/accounts/{APP}/{quote(account.key, safe='')}/enable")).status_code == 200
    assert (await env.call("GET", token_path(account.key))).status_code == 200
    await warm(env, account.key)
    assert (await env.call("DELETE", f"/v1/accounts/{APP}/{quote(account.key, safe='')}")).status_code in (200, 204)
    assert (await env.call("GET", token_path(account.key))).status_code == 404


async def _cli(env: ApiEnv, tmp_path: Path, *args: str) -> None:
    """A refresher command in a process of its own, on the daemon's store and sandbox."""
    config = tmp_path / "other-process.yaml"
    document = {"store": {"url": env.settings.store.url}, "apps": {APP: env.sandbox.app_config("shopee")}}
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "refresher", *args, "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()  # awaited: the sandbox in this loop must answer the other process
    assert proc.returncode == 0, (out + err).decode()


async def test_a_refresh_by_another_process_is_seen(env: ApiEnv, tmp_path: Path) -> None:
    (account,) = await env.onboard()
    before = await warm(env, account.key)
    await _cli(env, tmp_path, "refresh", APP, account.key)
    now = stored_tokens(await env.daemon.store.get(APP, account.key))
    assert now[1] != before["refresh_token"]

    async def current() -> bool:
        body = (await env.call("GET", token_path(account.key))).json()
        return bool((body["access_token"], body["refresh_token"]) == now)

    if env.settings.store.url.startswith("sqlite"):
        assert await current()  # PRAGMA data_version: the very next read
    else:
        await until(current, "the other process's refresh reached the cache by NOTIFY")


async def test_a_disable_by_another_process_is_seen(env: ApiEnv, tmp_path: Path) -> None:
    (account,) = await env.onboard()
    await warm(env, account.key)
    await _cli(env, tmp_path, "disable", APP, account.key)

    async def refused() -> bool:
        return (await env.call("GET", token_path(account.key))).status_code == 409

    if env.settings.store.url.startswith("sqlite"):
        assert await refused()
    else:
        await until(refused, "the other process's disable reached the cache by NOTIFY")


async def test_size_zero_turns_the_cache_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with rig(tmp_path, capsys, f"sqlite:///{tmp_path}/tokens.db", token_cache_size=0) as env:
        (account,) = await env.onboard()
        for _ in range(3):
            assert (await env.call("GET", token_path(account.key))).status_code == 200
        assert (cache_of(env).hits, cache_of(env).misses) == (0, 0)


# ------------------------------------------------------------------------ the cache on the real store


class ChangingStore:
    """The real store, but a write of another transaction commits while a read is under way."""

    def __init__(self, store: SqlStore, other: SqlStore) -> None:
        self.store, self.other = store, other
        self.change_during_read = False

    def change_token(self) -> tuple[int, int] | None:
        return self.store.change_token()

    async def get(self, app: str, key: str) -> Account | None:
        account = await self.store.get(app, key)
        if self.change_during_read:
            self.change_during_read = False
            await self.other.set_status(app, key, AccountStatus.DISABLED)  # after our read, before we return
        return account


async def tracking(store: SqlStore) -> None:
    async def known() -> bool:
        return store.change_token() is not None

    await until(known, "the store's change token is known (LISTEN connected)")


@pytest.fixture
async def other(store_url: str, clock: FakeClock) -> AsyncIterator[SqlStore]:
    """A second store on the same database: another process or replica, as far as ``store`` can tell."""
    opened = SqlStore(store_url, clock=clock)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def _seed(store: SqlStore, count: int = 1) -> list[Account]:
    return [await store.upsert_grant(APP, "shopee", grant(f"shop:{100 + n}")) for n in range(count)]


async def test_a_change_committed_during_a_miss_is_not_cached(store: SqlStore, other: SqlStore) -> None:
    (account,) = await _seed(store)
    await tracking(store)
    await tracking(other)
    changing = ChangingStore(store, other)
    cache = TokenCache(changing)
    changing.change_during_read = True
    first = await cache.get(APP, account.key)
    assert first is not None and first.status == AccountStatus.ACTIVE  # what was read before the change

    async def disabled() -> bool:
        seen = await cache.get(APP, account.key)
        return seen is not None and seen.status == AccountStatus.DISABLED

    if store.backend == "sqlite":
        assert await disabled()
    else:
        await until(disabled, "the other store's disable reached the cache by NOTIFY")


async def test_hits_are_bounded_by_size(store: SqlStore) -> None:
    accounts = await _seed(store, 3)
    await tracking(store)
    cache = TokenCache(store, size=2)
    for account in accounts:
        assert await cache.get(APP, account.key) is not None
    assert len(cache._entries) == 2
    hits = cache.hits
    assert await cache.get(APP, accounts[-1].key) is not None
    assert cache.hits == hits + 1
    assert await cache.get(APP, accounts[0].key) is not None  # pushed out: read again
    assert cache.hits == hits + 1


@pytest.mark.postgres
async def test_a_lost_listen_connection_stops_caching_until_it_is_back(tmp_path: Path, clock: FakeClock) -> None:
    from tests.support import pg_schema

    with pg_schema() as url:
        store = SqlStore(url, clock=clock)
        await store.open()
        try:
            await tracking(store)
            before = store.change_token()
            assert store.changes.listener_pid is not None
            with psycopg.connect(PG_URL, autocommit=True) as admin:  # only ours: others test here too
                row = admin.execute("SELECT pg_terminate_backend(%s)", (store.changes.listener_pid,)).fetchone()
            assert row is not None and row[0]

            async def changed() -> bool:
                return store.change_token() != before

            await until(changed, "a lost LISTEN connection changed the token")
            await tracking(store)
            assert store.change_token() != before  # entries read before the loss are stale for good
        finally:
            await store.close()


async def test_this_process_commits_are_seen_at_once(store: SqlStore) -> None:
    """Without waiting for anything: on PostgreSQL not for our own NOTIFY either."""
    (account,) = await _seed(store)
    await tracking(store)
    cache = TokenCache(store)
    for _ in range(2):
        assert await cache.get(APP, account.key) is not None
    assert cache.hits == 1
    await store.set_status(APP, account.key, AccountStatus.DISABLED)
    seen = await cache.get(APP, account.key)
    assert seen is not None and seen.status == AccountStatus.DISABLED
    renewed = await store.upsert_grant(APP, "shopee", grant(account.key, 2))
    assert stored_tokens(await cache.get(APP, account.key)) == stored_tokens(renewed)
    assert await store.delete(APP, account.key)
    assert await cache.get(APP, account.key) is None


async def test_a_lease_alone_keeps_the_cache_and_a_save_under_it_does_not(store: SqlStore) -> None:
    """Claim, mark and release touch only lease columns (no NOTIFY, no miss); the save replaces tokens."""
    (account,) = await _seed(store)
    cache = TokenCache(store)
    await tracking(store)
    assert await cache.get(APP, account.key) is not None
    claimed = await store.claim(APP, account.key, "owner-1", dt.timedelta(minutes=1))
    assert claimed is not None
    await store.mark_refresh_started(claimed.id, "owner-1")
    await store.release(claimed.id, "owner-1")
    hits = cache.hits
    assert await cache.get(APP, account.key) is not None
    if store.backend == "postgresql":  # SQLite's data_version moves with any commit: a miss is right there
        assert cache.hits == hits + 1
    claimed = await store.claim(APP, account.key, "owner-1", dt.timedelta(minutes=1))
    assert claimed is not None
    saved = await store.save_tokens(claimed.id, "owner-1", grant(account.key, 3).tokens)
    assert stored_tokens(await cache.get(APP, account.key)) == stored_tokens(saved)
