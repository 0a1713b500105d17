"""Helpers shared by the benchmark scripts: a sandbox in its own process, throw-away PostgreSQL databases,
onboarding many Shopee shops quickly, and the numbers about the machine and this process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: tests.support

from refresher.sandbox import SandboxServer
from refresher.store.roles import Store
from tests import support


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "?")
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        mem = next((line.split(":", 1)[1].strip() for line in info if line.startswith("MemTotal")), "?")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPU ({cpu}), {mem} RAM, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load} (shared machine)"
    )


def cpu_seconds() -> float:
    """User + system CPU of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SandboxProcess:
    """``python -m refresher sandbox`` as a child process, so its CPU is not counted as ours."""

    def __init__(self, access_ttl: str = "600s") -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "refresher", "sandbox", "--port", str(self.port), "--access-ttl", access_ttl],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"sandbox did not start: {line!r}")
        # Built only for its app_config()/approve(): this object never serves anything itself.
        self.view = SandboxServer(port=self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """The tests' throwaway database (tests/support.py), with a plain error instead of a test skip."""
    reason = support.pg_unreachable()
    if reason:
        raise SystemExit(f"benchmark: {reason}")
    with support.pg_database(prefix) as url:
        yield url


async def onboard_shops(store: Store, plugin: Any, sandbox: SandboxServer, count: int, per_grant: int = 200) -> int:
    """``count`` Shopee shops through the real consent flow, ``per_grant`` shops per main-account grant."""
    stored = 0
    semaphore = asyncio.Semaphore(8)  # a few upserts in flight: PostgreSQL overlaps them, SQLite queues
    while stored < count:
        shops = min(per_grant, count - stored)
        pkce = plugin.pkce_pair()
        params = await sandbox.approve(
            plugin.authorize_url("bench", plugin.app.redirect_uri, pkce), **{"as": "main", "shops": str(shops)}
        )
        grants = [
            g for g in await plugin.exchange_code(params, pkce, plugin.app.redirect_uri) if g.identity.kind == "shop"
        ]
        await asyncio.gather(*(_put(store, plugin.app.name, g, semaphore) for g in grants))
        stored = await store.count(app=plugin.app.name)  # what really is in the store, not what we sent
    return stored


async def _put(store: Store, app: str, grant: Any, semaphore: asyncio.Semaphore) -> None:
    async with semaphore:
        await store.upsert_grant(app, "shopee", grant)


def figures(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n## {title}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
