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

import structlog.testing
import yaml

from refresher import platforms
from refresher.config import Settings, parse_config
from refresher.daemon import Daemon
from refresher.domain import AccountStatus, FakeClock
from refresher.sandbox import SandboxServer

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

            assert result.outcome == "success"
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
