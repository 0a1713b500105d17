"""Lease owner ids a restarted daemon can judge, and the crash margin check-config reports."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import yaml

from refresher import platforms
from refresher.config import parse_config
from refresher.owners import OwnerId, is_dead_predecessor, new_owner
from refresher.sandbox import SandboxServer
from refresher.scheduler import schedule_margins


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
