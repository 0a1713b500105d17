"""``refresher demo`` and ``refresher sandbox`` as a newcomer meets them, as real processes."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from refresher import platforms
from refresher.config import parse_config
from refresher.sandbox.apps import SANDBOX_CREDENTIALS


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sandbox_with_a_config_keeps_the_files_redirect_uri(tmp_path: Path) -> None:
    """Issue 12.13: ``sandbox --port P -c FILE`` registered the built-in TikTok Shop app again with an 8765
    redirect, so the consent sent the seller to 8765 instead of the file's redirect_uri."""
    port = free_port()
    redirect = "http://127.0.0.1:9999/callback/tts"
    config = tmp_path / "refresher.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apps": {
                    "tts": {
                        "platform": "tiktok_shop",
                        "base_url": f"http://127.0.0.1:{port}/tiktok-shop",
                        "redirect_uri": redirect,
                        **SANDBOX_CREDENTIALS["tiktok_shop"],
                    }
                }
            }
        ),
        encoding="utf-8",
    )
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "refresher", "sandbox", "--port", str(port), "-c", str(config), "--auto-approve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert sandbox.stdout is not None
        first = sandbox.stdout.readline()  # printed once it listens
        assert "sandbox listening" in first, first + (sandbox.stderr.read() if sandbox.poll() is not None else "")
        assert "serving the apps of" in sandbox.stdout.readline()
        settings = parse_config(config.read_text(), credential_models=platforms.credential_models())
        plugin = platforms.get("tiktok_shop")(settings.apps["tts"])
        answer = httpx.get(plugin.authorize_url("state-1"), follow_redirects=False, timeout=10)
        assert answer.status_code in (302, 303), answer.text[:300]
        assert answer.headers["location"].startswith(redirect + "?"), answer.headers["location"]
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)


LONG_KEY = "tiktok-shop-sandbox-seller:7495123456789012345-cipher-ROW_abcdefghij"


def _rows() -> list[list[str]]:
    import datetime as dt

    from refresher.cli.commands_daemon import status_rows
    from refresher.domain import AccountStatus, Identity
    from refresher.store.base import Account

    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    account = Account(
        id=1,
        app="tiktok-shop-sandbox",
        platform="tiktok_shop",
        key=LONG_KEY,
        identity=Identity(
            key=LONG_KEY, kind="seller", platform_id="7495123456789012345", name="A seller with a rather long shop name"
        ),
        status=AccountStatus.ACTIVE,
        tokens=None,
        access_expires_at=now + dt.timedelta(seconds=45),
        refresh_expires_at=now + dt.timedelta(days=20),
        last_success_at=now - dt.timedelta(seconds=12),
    )
    never = Account(**{**account.__dict__, "id": 2, "key": "other", "last_success_at": None})
    return status_rows([account, never], now)


def test_status_rows_say_when_each_account_was_last_refreshed() -> None:
    rows = _rows()
    assert [row[6] for row in rows] == ["12s ago", "never"]


def test_a_100_column_terminal_shows_account_keys_whole(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12.14: the status table cut keys at 100 columns; the name and last error give way instead."""
    from refresher.cli.commands_daemon import print_status

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    print_status(_rows())
    out = capsys.readouterr().out
    assert any(LONG_KEY in line for line in out.splitlines()), out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    print_status(_rows())  # a log or CI: nothing squeezed
    out = capsys.readouterr().out
    assert "last refreshed" in out and "A seller with a rather long shop name" in out, out


def _demo(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "refresher", "demo", "--dir", str(directory), "--port", "0"),
            *("--access-ttl", "20s", "--duration", "12s", "--every", "6s"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=cli_env(),
        check=False,
    )


def _status(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "refresher", "status", "-c", str(directory / "refresher.yaml"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=True,
    )
    rows = list(json.loads(result.stdout))
    # The machine schema of accounts list --json (snake_case); the older status table keys are read too.
    return [
        {
            **row,
            "consecutive_failures": int(row.get("consecutive_failures", row.get("failures", -1))),
            "last_success_at": row.get("last_success_at", None if row.get("last refreshed") == "never" else True),
        }
        for row in rows
    ]


def test_the_demo_twice_starts_clean_and_its_output_explains_itself(tmp_path: Path) -> None:
    """Issues 12.12 and 12.14: a second demo reused the old store against a fresh sandbox (every old account
    failed and alarmed); the demo's accounts warned "re-authorize soon" within seconds; check-config said
    "worst-case margin NONE" for the demo's own apps; the closing "27 + 14 rotations" said nothing."""
    directory = tmp_path / "demo"
    first = _demo(directory)
    assert first.returncode == 0, first.stderr[-3000:]
    onboarded = _status(directory)
    assert onboarded and all(row["status"] == "active" for row in onboarded)

    second = _demo(directory)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = _status(directory)
    assert len(rows) == len(onboarded), rows  # only this run's accounts
    assert all(row["status"] == "active" and row["consecutive_failures"] == 0 for row in rows), rows
    assert all(row["last_success_at"] is not None for row in rows), rows  # each refreshed at least once
    assert "emptied the previous demo's store" in second.stdout
    for output in (first.stdout + first.stderr, second.stdout + second.stderr):
        assert "RE-AUTHORIZE" not in output and "reauth_soon" not in output, output[-3000:]
        assert "ALARM" not in output, output[-3000:]
    summary = second.stdout.strip().splitlines()[-1]
    assert summary.startswith("demo finished: ") and "each answered with a new refresh token" in summary
    assert "; 0 reuses of an already rotated refresh token" in summary, summary

    check = subprocess.run(
        [sys.executable, "-m", "refresher", "check-config", "-c", str(directory / "refresher.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )
    assert check.returncode == 0, check.stderr
    margins = [line for line in check.stdout.splitlines() if "worst-case margin" in line]
    assert len(margins) == 4 and not any("worst-case margin NONE" in line for line in margins), check.stdout


def test_the_demo_leaves_a_directory_it_did_not_write_alone(tmp_path: Path) -> None:
    (tmp_path / "refresher.yaml").write_text("apps: {}\n", encoding="utf-8")
    (tmp_path / "tokens.db").write_bytes(b"not the demo's")
    result = subprocess.run(
        [sys.executable, "-m", "refresher", "demo", "--dir", str(tmp_path), "--port", "0", "--duration", "1s"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"refresher: --dir {tmp_path}: its refresher.yaml was not written by the demo; choose another --dir"
    ]
    assert (tmp_path / "tokens.db").read_bytes() == b"not the demo's"


def test_check_config_finds_the_demos_own_apps_safe_even_after_a_crash(tmp_path: Path) -> None:
    """Issue 12.14: check-config said "worst-case margin NONE" for the demo's own apps; later, once it also
    counted a crashed worker's lease (10m by default), "after a crash NONE" and four warnings."""
    from click.testing import CliRunner

    from refresher.cli import main
    from refresher.cli.commands_sandbox import demo_config, demo_timing
    from refresher.sandbox import SandboxServer

    config = demo_config(SandboxServer(port=8780), tmp_path, 8765, demo_timing(dt.timedelta(seconds=90)))
    path = tmp_path / "refresher.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["check-config", "--strict", "-c", str(path)])
    assert result.exit_code == 0, result.output  # --strict: exit 1 on any warning
    margins = [line for line in result.output.splitlines() if "worst-case margin" in line]
    assert len(margins) == 4 and not any("NONE" in line for line in margins), result.output
    assert "warning" not in result.output, result.output
