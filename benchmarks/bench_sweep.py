"""Sweep throughput: N due Shopee accounts refreshed end to end, on SQLite and on PostgreSQL, next to a bare
httpx loop making the same requests.

    python benchmarks/bench_sweep.py [--accounts 10000] [--concurrency 16] [--engine sqlite|postgresql|both]

How it is measured:
* The sandbox runs in its own process (``python -m refresher sandbox --access-ttl 600s``), so its CPU is not
  counted as the daemon's; it is reported separately.
* The accounts are onboarded through the real consent flow, 200 Shopee shops per main-account grant.
* ``refresh_before`` (1 h) is longer than the tokens' lifetime (10 min), so every account is due at once.
  One ``Daemon.tick`` (the scheduler's own job: claim under lease, sign, HTTP to the sandbox, durable
  commit, audit row, info log line in JSON to a file, listeners) is timed with ``time.perf_counter`` (wall)
  and ``resource.getrusage`` (this process's user + system CPU).
* Then a bare loop with the same ``httpx.AsyncClient`` settings and the same concurrency posts the very
  same signed refresh request for every account (with the tokens the sweep stored) and parses the JSON:
  no claim, no retry logic, no persistence. That is the transport's own limit on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import SandboxProcess, cpu_seconds, figures, machine, onboard_shops, pg_database

from refresher import platforms
from refresher.config import Settings, parse_config
from refresher.daemon import Daemon
from refresher.domain import SystemClock, TokenSet
from refresher.logging import configure_logging
from refresher.platforms.base import make_http_client
from refresher.sandbox.core import SANDBOX_CREDENTIALS
from refresher.store.base import Account

APP = "shopee"
REFRESH_PATH = "/api/v2/auth/access_token/get"


def settings_for(sandbox: SandboxProcess, store_url: str, concurrency: int) -> Settings:
    document = {
        "store": {"url": store_url},
        "server": {"enabled": False},
        "logging": {"level": "info", "format": "json"},
        "apps": {
            APP: {
                **sandbox.view.app_config("shopee"),
                "refresh_before": "1h",
                "timeout": "30s",
                "concurrency": concurrency,
                "rate_limit": 10000,
            }
        },
    }
    return parse_config(yaml.safe_dump(document), file="bench.yaml", credential_models=platforms.credential_models())


async def bare_loop(
    sandbox: SandboxProcess, accounts: list[tuple[int, str]], concurrency: int
) -> tuple[float, float, int]:
    """The same signed POSTs with nothing around them. Returns (wall s, CPU s, successes)."""
    partner_id = SANDBOX_CREDENTIALS["shopee"]["partner_id"]
    key = SANDBOX_CREDENTIALS["shopee"]["partner_key"].encode()
    url = f"{sandbox.url}/shopee{REFRESH_PATH}"
    queue = list(accounts)
    ok = 0
    failed: Counter[str] = Counter()
    async with make_http_client() as client:

        async def worker() -> None:
            nonlocal ok
            while queue:
                shop_id, refresh_token = queue.pop()
                ts = int(time.time())
                sign = hmac.new(key, f"{partner_id}{REFRESH_PATH}{ts}".encode(), hashlib.sha256).hexdigest()
                body = json.dumps({"refresh_token": refresh_token, "partner_id": partner_id, "shop_id": shop_id})
                response = await client.post(
                    url,
                    params={"partner_id": partner_id, "timestamp": ts, "sign": sign},
                    content=body.encode(),
                    headers={"content-type": "application/json"},
                )
                if response.status_code == 200 and response.json().get("access_token"):
                    ok += 1
                else:
                    failed[f"{response.status_code}:{response.json().get('error')}"] += 1

        wall, cpu = time.perf_counter(), cpu_seconds()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if failed:
            print(f"bare loop failures: {dict(failed)}")
        return time.perf_counter() - wall, cpu_seconds() - cpu, ok


async def run(
    engine: str, store_url: str, sandbox: SandboxProcess, count: int, concurrency: int
) -> list[tuple[str, str]]:
    settings = settings_for(sandbox, store_url, concurrency)
    configure_logging(settings.logging)
    daemon = Daemon(settings, clock=SystemClock(), owner="bench")
    await daemon.start(schedule=False)
    done = 0
    outcomes: Counter[str] = Counter()

    async def count_success(event: Any, account: Account, tokens: TokenSet | None) -> None:
        nonlocal done
        done += event.outcome == "success"
        outcomes[event.outcome if event.error is None else f"{event.outcome}:{event.error.code}"] += 1

    daemon.refresher.listeners.append(count_success)
    try:
        began = time.perf_counter()
        onboarded = await onboard_shops(daemon.store, daemon.platforms[APP], sandbox.view, count)
        onboard_s = time.perf_counter() - began

        wall, cpu, sb_cpu = time.perf_counter(), cpu_seconds(), sandbox.cpu_seconds()
        await daemon.tick(APP)
        wall, cpu, sb_cpu = time.perf_counter() - wall, cpu_seconds() - cpu, sandbox.cpu_seconds() - sb_cpu

        stored = await daemon.store.list(app=APP, limit=count + 10)
        pairs = [(int(a.identity.platform_id), a.tokens.refresh_token) for a in stored if a.tokens is not None]
        sb_before = sandbox.cpu_seconds()
        b_wall, b_cpu, b_ok = await bare_loop(sandbox, pairs, concurrency)
        b_sb = sandbox.cpu_seconds() - sb_before
    finally:
        await daemon.stop(grace=5)
    return [
        ("engine", engine),
        ("accounts onboarded", f"{onboarded:,} in {onboard_s:.1f} s"),
        ("sweep: refreshed", f"{done:,} of {onboarded:,} in {wall:.1f} s wall = {done / wall:.0f}/s {dict(outcomes)}"),
        ("sweep: daemon CPU", f"{cpu:.1f} s = {cpu / max(done, 1) * 1000:.2f} ms per refresh"),
        ("sweep: sandbox CPU", f"{sb_cpu:.1f} s = {sb_cpu / max(done, 1) * 1000:.2f} ms per refresh (other process)"),
        ("bare httpx: requests", f"{b_ok:,} ok in {b_wall:.1f} s wall = {b_ok / b_wall:.0f}/s"),
        ("bare httpx: CPU", f"{b_cpu:.1f} s = {b_cpu / max(b_ok, 1) * 1000:.2f} ms per request"),
        ("bare httpx: sandbox CPU", f"{b_sb:.1f} s = {b_sb / max(b_ok, 1) * 1000:.2f} ms per request"),
        ("refresher / bare", f"{(cpu / max(done, 1)) / (b_cpu / max(b_ok, 1)):.1f}x CPU per call, "
         f"{(done / wall) / (b_ok / b_wall):.2f}x throughput"),
    ]  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.accounts:,} accounts, concurrency {args.concurrency}; daemon logs (JSON, info) go to a temp file")
    sandbox = SandboxProcess(access_ttl="600s")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            # The daemon's own log lines are part of its cost; keep them, but out of the figures.
            log = os.open(Path(tmp) / "daemon.log", os.O_WRONLY | os.O_CREAT)
            os.dup2(log, 2)
            if args.engine in ("sqlite", "both"):
                rows = await run(
                    "sqlite", f"sqlite:///{Path(tmp) / 'tokens.db'}", sandbox, args.accounts, args.concurrency
                )
                figures("sweep, SQLite", rows)
            if args.engine in ("postgresql", "both"):
                with pg_database("bench_sweep") as url:
                    figures("sweep, PostgreSQL", await run("postgresql", url, sandbox, args.accounts, args.concurrency))
    finally:
        sandbox.close()


if __name__ == "__main__":
    asyncio.run(main())
