"""Lease owner ids a restarted daemon can judge, and the crash margin check-config reports."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from refresher import platforms
from refresher.config import parse_config
from refresher.domain import FakeClock, Grant, Identity, TokenSet
from refresher.owners import OwnerId, is_dead_predecessor, new_owner
from refresher.sandbox import SandboxServer
from refresher.scheduler import schedule_margins
from refresher.store import SqlStore, StoreError
from tests.support import pg_schema

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_an_owner_id_names_host_boot_namespace_and_pid() -> None:
    me = OwnerId.parse(new_owner())
    assert me is not None and me.pid == os.getpid() and me.boot != "-" and me.pidns != "-"
    assert OwnerId.parse("vm:1234:abcdef") is None  # the older host:pid:nonce form is never judged


def test_only_a_dead_process_of_this_host_boot_and_namespace_is_a_dead_predecessor() -> None:
    me = new_owner()
    mine = OwnerId.parse(me)
    assert mine is not None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited: its pid is free (or reused, then judged alive)

    def like(**change: object) -> str:
        return str(OwnerId(**{**mine.__dict__, **change}))  # type: ignore[arg-type]

    assert is_dead_predecessor(like(pid=dead_pid, nonce="aaaaaa"), me) is (not _alive(dead_pid))
    assert is_dead_predecessor(like(nonce="bbbbbb"), me)  # our own pid under another nonce
    assert not is_dead_predecessor(me, me)
    assert not is_dead_predecessor(like(pid=1, nonce="cccccc"), me)  # alive: pid 1 always is
    assert not is_dead_predecessor(like(host="other", pid=dead_pid), me)  # another host: cannot tell
    assert not is_dead_predecessor(like(boot="0" * 12, pid=dead_pid), me)  # another boot: cannot tell
    assert not is_dead_predecessor(like(pidns="1", pid=dead_pid), me)  # another container: cannot tell
    assert not is_dead_predecessor(f"{mine.host}:{dead_pid}:abcdef", me)  # an old-format id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_crash_margin_counts_the_lease(tmp_path: Path) -> None:
    sandbox = SandboxServer()
    document = {
        "store": {"url": f"sqlite:///{tmp_path / 't.db'}", "lease_ttl": "20m"},
        "apps": {"shopee": {**sandbox.app_config("shopee"), "interval": "1m", "refresh_before": "30m"}},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(document))
    settings = parse_config(config.read_text(), file=str(config), credential_models=platforms.credential_models())
    (margin,) = schedule_margins(settings, platforms.available(), dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert margin.lease_ttl == dt.timedelta(minutes=20)
    assert margin.crash_margin == margin.margin - dt.timedelta(minutes=20) - margin.max_gap
    assert margin.safe and margin.crash_safe

    document["store"]["lease_ttl"] = "40m"  # type: ignore[index]
    config.write_text(yaml.safe_dump(document))
    shown = subprocess.run(
        [sys.executable, "-m", "refresher", "check-config", "-c", str(config)], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert "after a crash NONE (lease 40m)" in shown.stdout
    assert "apps.shopee: a worker that dies holding a lease" in shown.stderr


# ------------------------------------------------------------------ the store side, on both backends


@pytest.fixture(params=["sqlite", "postgresql"])
async def lease_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[SqlStore, FakeClock, str]]:
    clock = FakeClock(T0)
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path}/t.db" if request.param == "sqlite" else stack.enter_context(pg_schema())
        store = SqlStore(url, clock=clock)
        await store.open()
        try:
            yield store, clock, url
        finally:
            await store.close()


def _grant(n: int) -> Grant:
    return Grant(
        Identity(key=f"shop:{n}", kind="shop", platform_id=str(n), name="Shop", region="SG"),
        TokenSet(f"AT-{n}-access", f"RT-{n}-refresh", T0 + dt.timedelta(hours=1), T0 + dt.timedelta(days=30)),
    )


async def test_lease_holders_release_owner_and_expired_while_leased(
    lease_store: tuple[SqlStore, FakeClock, str],
) -> None:
    store, clock, _ = lease_store
    accounts = [await store.upsert_grant("app", "shopee", _grant(n)) for n in range(3)]
    assert await store.lease_holders() == []
    ttl = dt.timedelta(days=1)
    assert await store.claim("app", accounts[0].key, "dead", ttl) and await store.claim(
        "app", accounts[1].key, "dead", ttl
    )
    assert await store.claim("app", accounts[2].key, "alive", ttl)
    await store.mark_refresh_started(accounts[0].id, "dead")
    assert sorted(await store.lease_holders()) == ["alive", "dead"]

    clock.advance(dt.timedelta(hours=2))  # every access token has expired under its lease
    assert sorted(a.key for a in await store.expired_while_leased("app")) == sorted(a.key for a in accounts)
    assert await store.release_owner("dead") == 2
    assert await store.lease_holders() == ["alive"]
    released = await store.get("app", accounts[0].key)
    # The interrupted refresh stays recognisable: the next refresh probes it.
    assert released is not None and released.lease_owner is None and released.refresh_started_at is not None
    assert [a.key for a in await store.expired_while_leased("app")] == [accounts[2].key]
    assert await store.release_owner("nobody") == 0


async def test_a_write_probe_fails_on_a_store_that_refuses_writes(
    lease_store: tuple[SqlStore, FakeClock, str],
) -> None:
    store, _, url = lease_store
    await store.ping(write=True)
    if url.startswith("sqlite"):
        return  # the locked SQLite case runs in tests/test_store_outage.py
    # Sessions that may not write, as on a standby after a failover (set for this connection only).
    read_only = SqlStore(
        url.replace("options=", "options=-cdefault_transaction_read_only%3Don%20"), clock=FakeClock(T0)
    )
    try:
        await read_only.ping()  # reads still work
        with pytest.raises(StoreError, match="read-only"):
            await read_only.ping(write=True)
    finally:
        await read_only.close()
