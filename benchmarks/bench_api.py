"""Token API and signing proxy throughput against a loopback sandbox (issue 6).

    python benchmarks/bench_api.py [--requests 2000] [--concurrency 16]

Starts the sandbox and a daemon (SQLite in a temp dir) in this process, onboards one Shopee shop, then
sends a bounded number of requests to ``GET /v1/accounts/{app}/{key}/token`` and to the proxy
(``/proxy/{app}/{key}/api/v2/shop/get_shop_info`` → sandbox) and prints requests per second and latency
percentiles. Everything stays on 127.0.0.1; the run stops by itself after ``--requests`` per target or
``--max-seconds``, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from refresher import platforms
from refresher.config import LoggingSettings, parse_config
from refresher.daemon import Daemon
from refresher.domain import SystemClock
from refresher.logging import configure_logging
from refresher.sandbox import SandboxServer

SECRET = "bench-admin-token-0123456789"
APP = "shopee-bench"


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def hammer(client: httpx.AsyncClient, url: str, total: int, concurrency: int, deadline: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            started = time.perf_counter()
            response = await client.get(url)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50": percentile(latencies, 0.50),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "mean": statistics.fmean(latencies) if latencies else float("nan"),
        "statuses": statuses,
    }


async def run(requests: int, concurrency: int, max_seconds: float) -> int:
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        async with SandboxServer(clock=clock) as sandbox:
            config = {
                "store": {"url": f"sqlite:///{Path(tmp) / 'tokens.db'}"},
                "server": {"host": "127.0.0.1", "port": 0, "admin_token": SECRET},
                "logging": {"level": "warning"},
                "apps": {APP: sandbox.app_config("shopee")},
            }
            settings = parse_config(yaml.safe_dump(config), credential_models=platforms.credential_models())
            daemon = Daemon(settings, clock=clock)
            await daemon.start()
            try:
                platform = daemon.platforms[APP]
                params = await sandbox.approve(platform.authorize_url("bench", platform.app.redirect_uri))
                (grant,) = await platform.exchange_code(params, redirect_uri=platform.app.redirect_uri)
                account = await daemon.store.upsert_grant(APP, platform.name, grant)
                base = f"http://127.0.0.1:{daemon.port}"
                limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
                headers = {"Authorization": f"Bearer {SECRET}"}
                targets = {
                    "token API": f"{base}/v1/accounts/{APP}/{account.key}/token",
                    "proxy": f"{base}/proxy/{APP}/{account.key}/api/v2/shop/get_shop_info",
                }
                failed = False
                async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30, trust_env=False) as client:
                    for name, url in targets.items():
                        await client.get(url)  # warm-up: connections, caches
                        stats = await hammer(client, url, requests, concurrency, time.monotonic() + max_seconds)
                        print(
                            f"{name:10s} {stats['requests']:6d} req  {stats['rps']:8.1f} req/s  "
                            f"p50 {stats['p50']:6.2f} ms  p95 {stats['p95']:6.2f} ms  p99 {stats['p99']:6.2f} ms  "
                            f"status {stats['statuses']}"
                        )
                        failed |= any(code != 200 for code in stats["statuses"])
                return 1 if failed else 0
            finally:
                await daemon.stop(grace=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="requests per target (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time cap per target (default 60)")
    args = parser.parse_args(argv)
    # One log line per call would measure the terminal, not the server.
    configure_logging(LoggingSettings(level="warning"))
    return asyncio.run(run(args.requests, args.concurrency, args.max_seconds))


if __name__ == "__main__":
    sys.exit(main())
