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


def test_read_commands_refuse_a_mistyped_sqlite_path(tmp_path: Path) -> None:
    cfg = tmp_path / "typo.yaml"
    db = tmp_path / "no" / "such" / "tokens.db"
    cfg.write_text(f'store:\n  url: "sqlite:///{db}"\napps: {{}}\n')
    for command in (["status"], ["accounts", "list"], ["accounts", "export", "-o", "-"]):
        result = CliRunner().invoke(main, [*command, "-c", str(cfg)])
        assert result.exit_code == 2, (command, result.output)
        assert result.output.count("\n") == 1 and f"no database at {db}" in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "no").exists()  # nothing created on the way
    created = CliRunner().invoke(main, ["migrate", "-c", str(cfg)])  # a command that creates the store
    assert created.exit_code == 0, created.output
    assert db.exists()
    assert CliRunner().invoke(main, ["status", "-c", str(cfg)]).exit_code == 0


def test_status_and_accounts_list_work_under_a_wrong_key(tmp_path: Path) -> None:
    right, wrong = generate_key(), generate_key()
    seed(tmp_path / "tokens.db", right)
    cfg = config(tmp_path, wrong)
    status = CliRunner().invoke(main, ["status", "--json", "-c", str(cfg)])
    assert status.exit_code == 0, status.output
    listed = json.loads(status.output)
    assert [row["key"] for row in listed] == ["shop:0", "shop:1"]
    assert all(row["access_expires_at"] is not None for row in listed)  # expiries are shown
    table = CliRunner().invoke(main, ["accounts", "list", "-c", str(cfg)])
    assert table.exit_code == 0, table.output
    assert "shop:0" in table.output and "shop:1" in table.output
    # What shows a token still needs the right key: one line, exit 2, no token and no key.
    export = CliRunner().invoke(main, ["accounts", "export", "-o", "-", "-c", str(cfg)])
    assert export.exit_code == 2 and export.output.count("\n") == 1, export.output
    assert "decrypt" in export.output or "key" in export.output, export.output
    for secret in ("AT-shop:0", "RT-shop:0", right, wrong):
        assert secret not in status.output + table.output + export.output
