"""``refresher migrate``, ``rotate-key`` and ``accounts export/import`` on a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
from pathlib import Path

from click.testing import CliRunner

from refresher.cli import main
from refresher.crypto import generate_key
from refresher.domain import SystemClock
from refresher.store import SqlStore
from refresher.store.sql import head_revision
from tests.test_store import grant


def config(tmp_path: Path, *keys: str, name: str = "tokens.db") -> Path:
    lines = ["store:", f'  url: "sqlite:///{tmp_path}/{name}"']
    if keys:
        lines.append("  encryption_keys:")
        lines += [f'    - "{k}"' for k in keys]
    file = tmp_path / f"{name}.yaml"
    file.write_text("\n".join(lines) + "\n")
    return file


def seed(db: Path, *keys: str, n: int = 2) -> None:
    async def run() -> None:
        store = SqlStore(f"sqlite:///{db}", clock=SystemClock(), encryption_keys=keys)
        await store.open()
        for i in range(n):
            await store.upsert_grant("shopee-sg", "shopee", grant(f"shop:{i}"))
        await store.close()

    asyncio.run(run())


def test_migrate_creates_then_reports_current(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    first = CliRunner().invoke(main, ["migrate", "-c", str(cfg)])
    assert first.exit_code == 0, first.output
    assert f"tokens.db: schema migrated from empty to revision {head_revision()}" in first.output
    second = CliRunner().invoke(main, ["migrate", "-c", str(cfg)])
    assert second.exit_code == 0 and f"already at revision {head_revision()}" in second.output

    conn = sqlite3.connect(tmp_path / "tokens.db")
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = 'zzzz'")
    conn.close()
    newer = CliRunner().invoke(main, ["migrate", "-c", str(cfg)])
    assert newer.exit_code == 2
    assert newer.output.count("\n") == 1 and "schema revision zzzz" in newer.output


def test_rotate_key(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    seed(tmp_path / "tokens.db", old)
    no_keys = CliRunner().invoke(main, ["rotate-key", "-c", str(config(tmp_path, name="tokens.db"))])
    assert no_keys.exit_code == 2 and "encryption_keys is empty" in no_keys.output
    result = CliRunner().invoke(main, ["rotate-key", "-c", str(config(tmp_path, new, old))])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 2 " in result.output
    assert old not in result.output and new not in result.output
    # Only the new key is needed from now on.
    export = CliRunner().invoke(main, ["accounts", "export", "-c", str(config(tmp_path, new)), "-o", "-"])
    assert export.exit_code == 0, export.output
    assert "RT-shop:01-secret-refresh" in export.output


def test_export_then_import_into_another_store(tmp_path: Path) -> None:
    key = generate_key()
    seed(tmp_path / "tokens.db", key)
    out = tmp_path / "export.json"
    result = CliRunner().invoke(main, ["accounts", "export", "-c", str(config(tmp_path, key)), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = json.loads(out.read_text())
    assert data["format"] == "refresher.accounts/v1"
    assert [a["refresh_token"] for a in data["accounts"]] == ["RT-shop:01-secret-refresh", "RT-shop:11-secret-refresh"]

    target = config(tmp_path, name="other.db")
    imported = CliRunner().invoke(main, ["accounts", "import", "-c", str(target), str(out)])
    assert imported.exit_code == 0, imported.output
    assert "imported 2 account(s)" in imported.output
    again = CliRunner().invoke(main, ["accounts", "export", "-c", str(target), "-o", "-"])
    assert json.loads(again.output)["accounts"] == data["accounts"]


def test_import_errors_are_one_line_without_the_token(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    bad = tmp_path / "bad.json"
    cases = [
        ("[1, 2", "bad.json:1: invalid JSON"),
        ('{"accounts": 3}', "expected a list of accounts"),
        (
            '[{"app": "a", "platform": "shopee", "key": "shop:1", "access_token": "AT-SECRET", '
            '"refresh_token": "", "access_expires_at": "2026-01-01T00:00:00Z"}]',
            "account 1: 'refresh_token' must be a non-empty string",
        ),
        (
            '[{"app": "a", "key": "shop:1", "access_token": "AT-SECRET", "refresh_token": "RT-SECRET",'
            ' "access_expires_at": "2026-01-01T00:00:00Z"}]',
            "account 1: 'platform' is missing and app 'a' is not in the config",
        ),
        (
            '[{"app": "a", "platform": "shopee", "key": "shop:1", "access_token": "AT-SECRET", '
            '"refresh_token": "RT-SECRET", "access_expires_at": "2026-01-01T00:00:00"}]',
            "account 1: access_expires_at has no time zone",
        ),
    ]
    for text, expected in cases:
        bad.write_text(text)
        result = CliRunner().invoke(main, ["accounts", "import", "-c", str(cfg), str(bad)])
        assert result.exit_code == 2, (text, result.output)
        assert expected in result.output and result.output.count("\n") == 1
        assert "SECRET" not in result.output
    missing = CliRunner().invoke(main, ["accounts", "import", "-c", str(cfg), str(tmp_path / "none.json")])
    assert missing.exit_code == 2 and "no such file" in missing.output
