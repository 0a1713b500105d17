"""The store fails at the worst moment: after the platform rotated the refresh token, before our commit.

Real parts throughout: the sandbox over loopback rotates the token for real, the SQLite store is a real
file, and the failure is a real database error (the history table is renamed away by another connection,
so ``save_tokens`` fails inside SQLite), not a stubbed exception.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import yaml

from refresher import platforms
from refresher.config import Settings, parse_config
from refresher.daemon import Daemon
from refresher.domain import AccountStatus, FakeClock
from refresher.refresh_events import Outcome
from refresher.sandbox import SandboxServer
from refresher.store import engine

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def settings_for(sandbox: SandboxServer, db: Path) -> Settings:
    document = {
        "store": {"url": f"sqlite:///{db}"},
        "server": {"enabled": False},
        "logging": {"level": "warning", "format": "json"},
        "apps": {"shopee": {**sandbox.app_config("shopee"), "retry": {"attempts": 2, "initial_delay": "10ms"}}},
    }
    return parse_config(yaml.safe_dump(document), file="outage.yaml", credential_models=platforms.credential_models())


async def onboard(daemon: Daemon, sandbox: SandboxServer) -> str:
    plugin = daemon.platforms["shopee"]
    pkce = plugin.pkce_pair()
    params = await sandbox.approve(plugin.authorize_url("outage", plugin.app.redirect_uri, pkce))
    (grant,) = await plugin.exchange_code(params, pkce, plugin.app.redirect_uri)
    account = await daemon.store.upsert_grant("shopee", "shopee", grant)
    return account.key


def rename(db: Path, old: str, new: str) -> None:
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
        conn.commit()
    finally:
        conn.close()


async def test_rotated_tokens_are_kept_until_a_failing_store_takes_them(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    db = tmp_path / "tokens.db"
    async with SandboxServer(clock=clock, seed=5) as sandbox:
        daemon = Daemon(settings_for(sandbox, db), clock=clock)
        await daemon.start(schedule=False)
        try:
            key = await onboard(daemon, sandbox)
            before = await daemon.store.get("shopee", key)
            assert before is not None and before.tokens is not None

            rename(db, "token_history", "token_history_away")  # every save_tokens now fails in SQLite

            async def store_comes_back() -> None:
                await asyncio.sleep(1.5)
                rename(db, "token_history_away", "token_history")

            with structlog.testing.capture_logs() as logged:
                result, _ = await asyncio.gather(daemon.refresher.refresh_now("shopee", key), store_comes_back())

            assert result.outcome is Outcome.SUCCESS  # the enum, not a string (its value is what JSON shows)
            failed = [e for e in logged if e["event"] == "refresh.save_failed"]
            assert len(failed) >= 2  # it really failed, more than once, and was asked again
            assert "token_history" in failed[0]["error"]
            assert [e["event"] for e in logged if e["event"] == "refresh.save_recovered"] == ["refresh.save_recovered"]
            for secret in (before.tokens.refresh_token, result.account.tokens.refresh_token):  # type: ignore[union-attr]
                assert secret not in repr(logged)

            # What is stored is the chain's current token: the platform would take it.
            after = await daemon.store.get("shopee", key)
            assert after is not None and after.tokens is not None and after.status is AccountStatus.ACTIVE
            assert after.tokens.refresh_token != before.tokens.refresh_token
            assert after.refresh_started_at is None and after.lease_owner is None
            current = {c.refresh_token for c in sandbox.state.chains.values() if c.platform == "shopee"}
            assert after.tokens.refresh_token in current
            assert (await daemon.refresher.refresh_now("shopee", key)).outcome == "success"
            assert not any(k.endswith(".reuse") and v for k, v in sandbox.state.counters.items())
        finally:
            await daemon.stop(grace=5)


def outage_settings(sandbox: SandboxServer, db: Path, **store: str) -> Settings:
    document = {
        "store": {"url": f"sqlite:///{db}", **store},
        "server": {"enabled": False},
        "logging": {"level": "warning", "format": "json"},
        "alerts": {"store_outage": "1s"},
        "apps": {"shopee": {**sandbox.app_config("shopee"), "retry": {"attempts": 2, "initial_delay": "10ms"}}},
    }
    return parse_config(yaml.safe_dump(document), file="outage.yaml", credential_models=platforms.credential_models())


class Locker:
    """Another connection holding SQLite's write lock (BEGIN IMMEDIATE), as a long writer would."""

    def __init__(self, db: Path) -> None:
        self.conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

    def lock(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def unlock(self) -> None:
        self.conn.execute("COMMIT")

    async def hold(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.unlock()


async def test_a_store_locked_past_its_busy_timeout_settles_the_account_and_alarms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write lock is held by another connection from just after the claim, longer than the busy
    timeout (shortened to 0.4 s so the test is quick; the lock and its timeout are SQLite's own): the refresh
    cannot be marked started, so it is not sent; the lease is given back once the store takes writes, the
    outage is alarmed once it lasted past alerts.store_outage, and said resolved when it ends."""
    monkeypatch.setattr(engine, "_SQLITE_BUSY_TIMEOUT_MS", 400)
    clock = FakeClock(T0)
    db = tmp_path / "tokens.db"
    async with SandboxServer(clock=clock, seed=5) as sandbox:
        daemon = Daemon(outage_settings(sandbox, db), clock=clock)
        await daemon.start(schedule=False)
        locker = Locker(db)
        try:
            key = await onboard(daemon, sandbox)
            policy = daemon.refresher.policies["shopee"]
            claimed = await daemon.store.claim("shopee", key, daemon.owner, policy.lease_ttl)
            assert claimed is not None
            refreshes_before = sandbox.state.counters.get("shopee.refresh", 0)

            locker.lock()
            with structlog.testing.capture_logs() as logged:
                result, _ = await asyncio.gather(daemon.refresher.refresh_leased(claimed), locker.hold(3.0))

            assert result.outcome == "failure"
            events = [(e["event"], e.get("kind"), e.get("cause")) for e in logged]
            assert ("refresh.not_started", None, None) in events
            alarms = [e for e in logged if e["event"] == "alert" and e.get("cause") == "store_unavailable"]
            assert [e["kind"] for e in alarms] == ["alarm", "resolved"], events
            # Settled: not leased, not marked as a refresh in flight, nothing sent to the platform.
            after = await daemon.store.get("shopee", key)
            assert after is not None and after.lease_owner is None and after.refresh_started_at is None
            assert after.status is AccountStatus.ACTIVE and after.version == claimed.version
            assert sandbox.state.counters.get("shopee.refresh", 0) == refreshes_before
            assert not daemon.store_health.failing
            # The next sweep refreshes it as usual.
            clock.advance(dt.timedelta(days=1))
            assert (await daemon.refresher.sweep("shopee")).succeeded == 1

            # /readyz says so while another connection holds the lock, and is ready again after.
            locker.lock()
            try:
                problems = await daemon.readiness()
            finally:
                locker.unlock()
            assert problems.get("store", "").startswith("refuses writes"), problems
            assert "store" not in await daemon.readiness()
        finally:
            locker.conn.close()
            await daemon.stop(grace=5)


async def test_a_sweep_whose_store_locks_after_the_claim_settles_every_claimed_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduled sweep claims three due accounts, then another connection holds the write lock past the
    busy timeout: the sweep ends (no crash), sends nothing, gives every lease back once the store takes
    writes, and the outage alarms; the next sweep refreshes all three."""
    monkeypatch.setattr(engine, "_SQLITE_BUSY_TIMEOUT_MS", 400)
    clock = FakeClock(T0)
    db = tmp_path / "tokens.db"
    async with SandboxServer(clock=clock, seed=5) as sandbox:
        daemon = Daemon(outage_settings(sandbox, db), clock=clock)
        await daemon.start(schedule=False)
        locker = Locker(db)
        try:
            keys = {await onboard(daemon, sandbox) for _ in range(3)}
            assert len(keys) == 3
            clock.advance(dt.timedelta(days=1))  # all three due
            refreshes_before = sandbox.state.counters.get("shopee.refresh", 0)
            claim_due = daemon.store.claim_due
            holds: list[asyncio.Task[None]] = []

            async def claim_then_lock(*args: Any, **kwargs: Any) -> Any:
                claimed = await claim_due(*args, **kwargs)
                if claimed and not holds:  # the first claim only: the lock lands between claim and mark
                    locker.lock()
                    holds.append(asyncio.create_task(locker.hold(2.5)))  # past alerts.store_outage (1 s)
                return claimed

            monkeypatch.setattr(daemon.store, "claim_due", claim_then_lock)
            with structlog.testing.capture_logs() as logged:
                await daemon.tick("shopee")
                await asyncio.gather(*holds)
            assert holds, "the lock must have been taken after a claim"
            swept = [e for e in logged if e["event"] == "sweep"]
            assert [(e["claimed"], e["failed"]) for e in swept] == [(3, 3)], logged
            assert sorted(e["account"] for e in logged if e["event"] == "refresh.not_started") == sorted(keys)
            assert sandbox.state.counters.get("shopee.refresh", 0) == refreshes_before  # nothing sent
            for key in keys:
                account = await daemon.store.get("shopee", key)
                assert account is not None and account.lease_owner is None and account.refresh_started_at is None
                assert account.status is AccountStatus.ACTIVE and account.consecutive_failures == 0
            alarms = [e["kind"] for e in logged if e["event"] == "alert" and e.get("cause") == "store_unavailable"]
            assert alarms == ["alarm", "resolved"], logged

            monkeypatch.setattr(daemon.store, "claim_due", claim_due)
            assert (await daemon.refresher.sweep("shopee")).succeeded == 3
        finally:
            locker.conn.close()
            await daemon.stop(grace=5)


async def test_a_token_that_expires_while_another_worker_holds_it_raises_an_alarm(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with SandboxServer(clock=clock, seed=5) as sandbox:
        daemon = Daemon(outage_settings(sandbox, tmp_path / "tokens.db"), clock=clock)
        await daemon.start(schedule=False)
        try:
            key = await onboard(daemon, sandbox)
            # A worker that claimed the account and then hung (its lease outlives the token).
            assert await daemon.store.claim("shopee", key, "stuck-worker", dt.timedelta(days=1)) is not None
            account = await daemon.store.get("shopee", key)
            assert account is not None and account.tokens is not None
            clock.set(account.tokens.access_expires_at + dt.timedelta(seconds=1))
            with structlog.testing.capture_logs() as logged:
                await daemon.tick("shopee")
            alarms = [e for e in logged if e["event"] == "alert" and e.get("cause") == "expired_while_leased"]
            assert [(e["kind"], e["account"]) for e in alarms] == [("alarm", key)], logged
            with structlog.testing.capture_logs() as logged:
                await daemon.tick("shopee")  # deduplicated: once per repeat_every
            assert not [e for e in logged if e["event"] == "alert"], logged
        finally:
            await daemon.stop(grace=5)


async def test_a_lease_the_failing_store_would_not_take_back_is_given_back_by_the_next_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock outlasts every attempt to give the lease back: the account stays leased to this daemon,
    and the first sweep after the store recovers releases and refreshes it (not after the lease's 10 min)."""
    monkeypatch.setattr(engine, "_SQLITE_BUSY_TIMEOUT_MS", 300)
    clock = FakeClock(T0)
    db = tmp_path / "tokens.db"
    async with SandboxServer(clock=clock, seed=5) as sandbox:
        daemon = Daemon(outage_settings(sandbox, db, lease_ttl="2d"), clock=clock)
        await daemon.start(schedule=False)
        locker = Locker(db)
        try:
            key = await onboard(daemon, sandbox)
            claimed = await daemon.store.claim(
                "shopee", key, daemon.owner, daemon.refresher.policies["shopee"].lease_ttl
            )
            assert claimed is not None
            locker.lock()
            with structlog.testing.capture_logs() as logged:
                result = await daemon.refresher.refresh_leased(claimed)
            locker.unlock()
            assert result.outcome == "failure"
            assert "refresh.lease_stranded" in [e["event"] for e in logged]
            stranded = await daemon.store.get("shopee", key)
            assert stranded is not None and stranded.lease_owner == daemon.owner

            clock.advance(dt.timedelta(days=1))  # due, and still inside the lease's lifetime (2 days)
            with structlog.testing.capture_logs() as logged:
                swept = await daemon.refresher.sweep("shopee")
            assert swept.succeeded == 1
            assert "refresh.lease_released_late" in [e["event"] for e in logged]
            after = await daemon.store.get("shopee", key)
            assert after is not None and after.version == claimed.version + 1 and after.lease_owner is None
        finally:
            locker.conn.close()
            await daemon.stop(grace=5)
