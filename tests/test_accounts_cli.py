"""CLI parity with the API (issue 13, point 6): history, events, disable/enable/delete/restore of one
account, machine-readable status/accounts list, and account keys that begin with "-"; on a real SQLite
store written through the real store code."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

from click.testing import CliRunner

from refresher.cli import main
from refresher.config import StoreSettings
from refresher.domain import AccountStatus, Grant, Identity, SystemClock, TokenSet
from refresher.store.base import AuditEntry
from refresher.store.sql import open_store

APP = "tiktok-login"
KEY = "-Xb3kq_open_id"  # a TikTok open_id may begin with "-"


def _tokens(n: int) -> TokenSet:
    now = dt.datetime.now(dt.UTC)
    return TokenSet(
        f"cli-access-{n}-abcdef0123",
        f"cli-refresh-{n}-9876543210",
        now + dt.timedelta(hours=24),
        now + dt.timedelta(days=365),
    )


def seeded(tmp_path: Path) -> Path:
    db = tmp_path / "tokens.db"
    config = tmp_path / "refresher.yaml"
    config.write_text(
        f'store:\n  url: "sqlite:///{db}"\n'
        f"apps:\n  {APP}:\n    platform: tiktok\n    client_key: awcli0123456789\n"
        '    client_secret: "cli-client-secret-0123456789"\n',
        encoding="utf-8",
    )

    async def seed() -> None:
        store = open_store(StoreSettings(url=f"sqlite:///{db}"), SystemClock())
        await store.open()
        try:
            identity = Identity(KEY, "user", KEY, name="Dash User")
            await store.upsert_grant(APP, "tiktok", Grant(identity, _tokens(1)))
            await store.upsert_grant(APP, "tiktok", Grant(identity, _tokens(2)))  # a re-authorization: v2
            now = dt.datetime.now(dt.UTC)
            await store.audit(AuditEntry(now - dt.timedelta(minutes=5), APP, KEY, "success", 120, 1))
            await store.audit(
                AuditEntry(now, APP, KEY, "transient", 900, 3, "transient", "E503", "req-9", "platform busy")
            )
        finally:
            await store.close()

    asyncio.run(seed())
    return config


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_history_events_and_status_changes_of_a_dash_key(tmp_path: Path) -> None:
    config = str(seeded(tmp_path))

    code, out, err = run("history", APP, KEY, "-c", config, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["current_version"] == 2 and [i["version"] for i in data["items"]] == [1]
    assert "cli-access" not in out and "cli-refresh" not in out

    code, out, err = run("events", APP, KEY, "-c", config, "--json")
    assert code == 0, err
    items = json.loads(out)["items"]
    assert [i["outcome"] for i in items] == ["transient", "success"]
    assert items[0]["attempts"] == 3 and items[0]["duration_ms"] == 900 and items[0]["error_code"] == "E503"
    code, out, _ = run("events", APP, KEY, "-c", config)
    assert code == 0 and "transient" in out and "platform busy" in out

    code, out, _ = run("disable", APP, KEY, "-c", config)
    assert (code, out) == (0, f"{APP} {KEY}: disabled\n")
    code, out, err = run("token", APP, KEY, "-c", config)
    assert code == 1 and out == "" and "[disabled]" in err
    code, out, _ = run("enable", APP, KEY, "-c", config)
    assert (code, out) == (0, f"{APP} {KEY}: active\n")
    code, out, _ = run("token", APP, KEY, "-c", config)
    assert (code, out) == (0, "cli-access-2-abcdef0123\n")

    code, out, err = run("restore", APP, KEY, "-c", config)
    assert code == 0, err
    code, out, _ = run("token", APP, KEY, "-c", config)
    assert (code, out) == (0, "cli-access-1-abcdef0123\n")

    code, _, err = run("delete", APP, KEY, "-c", config, "--yes")
    assert code == 0, err
    code, _, err = run("history", APP, KEY, "-c", config)
    assert code == 1 and "unknown account" in err
    code, _, err = run("disable", APP, "shop:nope", "-c", config)
    assert code == 2 and "shop:nope" in err  # AccountNotFound: one line


def test_status_and_accounts_list_json_have_a_stable_typed_schema(tmp_path: Path) -> None:
    config = str(seeded(tmp_path))
    for command in (["status"], ["accounts", "list"]):
        code, out, err = run(*command, "-c", config, "--json")
        assert code == 0, err
        (row,) = json.loads(out)
        assert set(row) == {
            "app", "platform", "key", "name", "kind", "platform_id", "region", "status", "access_expires_at",
            "refresh_expires_at", "consecutive_failures", "last_success_at", "last_attempt_at", "next_attempt_at",
            "last_error", "version", "created_at", "updated_at",
        }  # fmt: skip
        assert row["key"] == KEY and row["status"] == AccountStatus.ACTIVE
        assert isinstance(row["consecutive_failures"], int) and isinstance(row["version"], int)
        assert dt.datetime.fromisoformat(row["access_expires_at"]).tzinfo is not None
        assert "cli-access" not in out and "cli-refresh" not in out
