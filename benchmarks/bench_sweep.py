"""Sweep throughput: N due Shopee accounts refreshed end to end, on SQLite and on PostgreSQL, next to a bare
httpx loop and the Node package ecommerce-auth making the same requests against the same sandbox.

    python benchmarks/bench_sweep.py [--accounts 10000] [--concurrency 16] [--engine sqlite|postgresql|both]
                                     [--profile FILE]

``--profile FILE`` runs the sweep (only the sweep) under cProfile and writes the stats to FILE.ENGINE
(read them with ``python -m pstats``); the figures of that run include the profiler's overhead.

How it is measured:
* The sandbox runs in its own process (``python -m refresher sandbox --access-ttl 600s``), so its CPU is not
  counted as the daemon's; it is reported separately.
* The accounts are onboarded through the real consent flow, 200 Shopee shops per main-account grant.
* ``refresh_before`` (1 h) is longer than the tokens' lifetime (10 min), so every account is due at once.
  One ``Daemon.tick`` (the scheduler's own job: claim under lease, sign, HTTP to the sandbox, durable
  commit, audit row, info log line in JSON to a file, listeners) is timed with ``time.perf_counter`` (wall)
  and ``resource.getrusage`` (this process's user + system CPU).
* Then a bare loop, a plain ``httpx.AsyncClient`` (httpx's own transport, the same pool size and the same
  concurrency), posts the very same signed refresh request (with the tokens the sweep stored) and parses
  the JSON: no claim, no retry logic, no persistence. That is what a plain Python client costs here.
* The same bare loop again on refresher's own client (``make_http_client``: httpx's API over aiohttp's
  wire), which shows what of the refresher's cost is the wire and what is everything around it.
* And the Node peer: ``ecommerce-auth`` (superagent), installed with npm into a temp folder for this run,
  its Shopee host pointed at the sandbox by a copy of its constants file written into that install; it
  refreshes its third of the accounts with the same concurrency (its process CPU by
  ``process.cpuUsage``). Skipped, saying so, where ``node``/``npm`` are missing or the install fails.
  The two bare loops and the Node peer each take a third of the shops, with the tokens the sweep stored.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import hmac
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import SandboxProcess, cpu_seconds, figures, machine, onboard_shops, pg_database

from refresher import platforms
from refresher.config import Settings, parse_config
from refresher.daemon import Daemon
from refresher.domain import SystemClock, TokenSet
from refresher.logging import configure_logging
from refresher.platforms.base import make_http_client
from refresher.sandbox.apps import SANDBOX_CREDENTIALS
from refresher.store.base import Account

APP = "shopee"
REFRESH_PATH = "/api/v2/auth/access_token/get"
NODE_PACKAGE = "ecommerce-auth@1.0.6"
# The peer's worker loop: the package's own refreshAccessToken, `concurrency` at a time, over the pairs.
NODE_SCRIPT = """
import { readFileSync } from 'node:fs'
import { ShopeeAuth } from 'ecommerce-auth'
const [pairsFile, partnerId, partnerKey, concurrency] = process.argv.slice(2)
const queue = JSON.parse(readFileSync(pairsFile, 'utf8'))
let ok = 0, failed = 0
async function worker() {
  while (queue.length) {
    const [shopId, refreshToken] = queue.pop()
    try {
      const answer = await ShopeeAuth.refreshAccessToken({
        partner_id: Number(partnerId), partner_key: partnerKey, refresh_token: refreshToken, shop_id: shopId,
      })
      if (answer.access_token) ok++; else failed++
    } catch (e) { failed++ }
  }
}
const cpu0 = process.cpuUsage(), t0 = performance.now()
await Promise.all(Array.from({ length: Number(concurrency) }, worker))
const wall = (performance.now() - t0) / 1000, cpu = process.cpuUsage(cpu0)
console.log(JSON.stringify({ wall, cpu: (cpu.user + cpu.system) / 1e6, ok, failed }))
"""


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


def plain_httpx_client() -> httpx.AsyncClient:
    """A plain httpx client as a user would write it: httpx's own transport, the same pool size."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(20.0, connect=10.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        trust_env=False,
    )


async def bare_loop(
    sandbox: SandboxProcess,
    accounts: list[tuple[int, str]],
    concurrency: int,
    make_client: Callable[[], httpx.AsyncClient] = plain_httpx_client,
) -> tuple[float, float, int]:
    """The same signed POSTs with nothing around them. Returns (wall s, CPU s, successes)."""
    partner_id = SANDBOX_CREDENTIALS["shopee"]["partner_id"]
    key = SANDBOX_CREDENTIALS["shopee"]["partner_key"].encode()
    url = f"{sandbox.url}/shopee{REFRESH_PATH}"
    queue = list(accounts)
    ok = 0
    failed: Counter[str] = Counter()
    async with make_client() as client:

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


def install_node_peer(folder: Path, sandbox: SandboxProcess) -> str | None:
    """Install ecommerce-auth into ``folder`` and point its Shopee host at the sandbox; None, or why not."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not found on PATH"
    try:
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(folder), NODE_PACKAGE],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"npm install {NODE_PACKAGE} failed ({type(exc).__name__})"
    constants = folder / "node_modules" / "ecommerce-auth" / "constants" / "index.js"
    text = constants.read_text(encoding="utf-8")
    if "export const DOMAIN_SHOPEE = " not in text:
        return f"{constants}: no DOMAIN_SHOPEE constant to point at the sandbox (package changed?)"
    lines = [
        f"export const DOMAIN_SHOPEE = '{sandbox.url}/shopee'"
        if line.startswith("export const DOMAIN_SHOPEE")
        else line
        for line in text.splitlines()
    ]
    constants.write_text("\n".join(lines) + "\n", encoding="utf-8")  # this install's copy, for this run only
    (folder / "peer.mjs").write_text(NODE_SCRIPT, encoding="utf-8")
    return None


def node_peer(folder: Path, pairs: list[tuple[int, str]], concurrency: int) -> tuple[float, float, int] | str:
    """The Node package refreshing ``pairs``: (wall s, CPU s of the node process, successes), or why not."""
    pairs_file = folder / "pairs.json"
    pairs_file.write_text(json.dumps(pairs), encoding="utf-8")
    credentials = SANDBOX_CREDENTIALS["shopee"]
    try:
        done = subprocess.run(
            ["node", str(folder / "peer.mjs"), str(pairs_file), str(credentials["partner_id"]),
             str(credentials["partner_key"]), str(concurrency)],
            check=True, capture_output=True, text=True, timeout=1800, cwd=folder,
        )  # fmt: skip
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return f"node peer failed ({type(exc).__name__})"
    if result["failed"]:
        print(f"node peer failures: {result['failed']}")
    return float(result["wall"]), float(result["cpu"]), int(result["ok"])


def side_by_side(
    refresher: tuple[float, float, int],
    bare: tuple[float, float, int],
    ours: tuple[float, float, int],
    node: tuple[float, float, int] | str,
) -> list[tuple[str, str]]:
    """Four rows, CPU per call and calls/s, each with its ratio to the refresher's."""

    def row(name: str, wall: float, cpu: float, ok: int) -> tuple[str, str]:
        per, rate = cpu / max(ok, 1) * 1000, ok / wall
        ref_per = refresher[1] / max(refresher[2], 1) * 1000
        ref_rate = refresher[2] / refresher[0]
        return name, (
            f"{per:6.2f} ms CPU per call   {rate:7.0f} calls/s   "
            f"refresher = {ref_per / per:4.1f}x its CPU per call, {ref_rate / rate:4.2f}x its throughput"
        )

    rows = [
        row("refresher sweep", *refresher),
        row("bare httpx loop", *bare),
        row("bare loop, refresher's client", *ours),
    ]
    rows.append(
        row("ecommerce-auth (Node)", *node)
        if not isinstance(node, str)
        else ("ecommerce-auth (Node)", f"skipped: {node}")
    )
    return rows


async def run(
    engine: str,
    store_url: str,
    sandbox: SandboxProcess,
    count: int,
    concurrency: int,
    node: Path | None,
    profile: str | None = None,
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

        profiler = cProfile.Profile() if profile else None
        wall, cpu, sb_cpu = time.perf_counter(), cpu_seconds(), sandbox.cpu_seconds()
        user_sys = resource.getrusage(resource.RUSAGE_SELF)
        if profiler is not None:
            profiler.enable()
        await daemon.tick(APP)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile}.{engine}")
        wall, cpu, sb_cpu = time.perf_counter() - wall, cpu_seconds() - cpu, sandbox.cpu_seconds() - sb_cpu
        after = resource.getrusage(resource.RUSAGE_SELF)
        user, system = after.ru_utime - user_sys.ru_utime, after.ru_stime - user_sys.ru_stime

        stored = await daemon.store.list(app=APP, limit=count + 10)
        pairs = [(int(a.identity.platform_id), a.tokens.refresh_token) for a in stored if a.tokens is not None]
        third = len(pairs) // 3
        sb_before = sandbox.cpu_seconds()
        b_wall, b_cpu, b_ok = await bare_loop(sandbox, pairs[:third], concurrency)
        b_sb = sandbox.cpu_seconds() - sb_before
        ours = await bare_loop(sandbox, pairs[third : 2 * third], concurrency, make_http_client)
        peer = node_peer(node, pairs[2 * third :], concurrency) if node is not None else "see above"
    finally:
        await daemon.stop(grace=5)
    return [
        ("engine", engine),
        ("accounts onboarded", f"{onboarded:,} in {onboard_s:.1f} s"),
        ("sweep: refreshed", f"{done:,} of {onboarded:,} in {wall:.1f} s wall = {done / wall:.0f}/s {dict(outcomes)}"),
        ("sweep: daemon CPU", f"{cpu:.1f} s = {cpu / max(done, 1) * 1000:.2f} ms per refresh"
         f" (user {user / max(done, 1) * 1000:.2f}, system {system / max(done, 1) * 1000:.2f})"),
        ("sweep: sandbox CPU", f"{sb_cpu:.1f} s = {sb_cpu / max(done, 1) * 1000:.2f} ms per refresh (other process)"),
        ("bare httpx: requests", f"{b_ok:,} ok in {b_wall:.1f} s wall = {b_ok / b_wall:.0f}/s"),
        ("bare httpx: CPU", f"{b_cpu:.1f} s = {b_cpu / max(b_ok, 1) * 1000:.2f} ms per request"),
        ("bare httpx: sandbox CPU", f"{b_sb:.1f} s = {b_sb / max(b_ok, 1) * 1000:.2f} ms per request"),
        *side_by_side((wall, cpu, done), (b_wall, b_cpu, b_ok), ours, peer),
    ]  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--profile", metavar="FILE", help="write the sweep's cProfile stats to FILE.ENGINE")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.accounts:,} accounts, concurrency {args.concurrency}; daemon logs (JSON, info) go to a temp file")
    sandbox = SandboxProcess(access_ttl="600s")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            node_folder: Path | None = Path(tmp) / "node-peer"
            why_not = install_node_peer(Path(tmp) / "node-peer", sandbox)
            if why_not:
                print(f"ecommerce-auth (Node) row skipped: {why_not}")
                node_folder = None
            # The daemon's own log lines are part of its cost; keep them, but out of the figures.
            log = os.open(Path(tmp) / "daemon.log", os.O_WRONLY | os.O_CREAT)
            os.dup2(log, 2)
            if args.engine in ("sqlite", "both"):
                rows = await run(
                    "sqlite", f"sqlite:///{Path(tmp) / 'tokens.db'}", sandbox, args.accounts, args.concurrency,
                    node_folder, args.profile,
                )  # fmt: skip
                figures("sweep, SQLite", rows)
            if args.engine in ("postgresql", "both"):
                with pg_database("bench_sweep") as url:
                    rows = await run(
                        "postgresql", url, sandbox, args.accounts, args.concurrency, node_folder, args.profile
                    )
                    figures("sweep, PostgreSQL", rows)
    finally:
        sandbox.close()


if __name__ == "__main__":
    asyncio.run(main())
