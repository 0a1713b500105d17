"""Token API and signing proxy against `/healthz` on the same daemon, from an external load generator.

    python benchmarks/bench_api.py [--seconds 10] [--concurrency 32] [--store sqlite|postgresql|both]
                                   [--repeat 1] [--profile FILE.svg]

How it is measured:
* The sandbox runs in its own process (``python -m refresher sandbox``), the daemon in another
  (``python -m refresher run -c bench.yaml``: SQLite in a temp dir, or a throw-away PostgreSQL database;
  tokens encrypted at rest; logging at ``info`` in JSON to a file, as in production; one Shopee shop
  onboarded through the sandbox's consent before the daemon starts).
* The load comes from a third process: ``wrk`` (``apt-get install wrk``) with ``--concurrency``
  connections for ``--seconds`` per target, or, where wrk is missing, a Python httpx load generator in a
  subprocess (it says so: its own CPU cost is higher, so the ratios are pessimistic).
* Targets, in one run: ``/healthz`` (the baseline: the same server, no auth, no store), the token read
  ``GET /v1/accounts/{app}/{key}/token`` with an API token (not the admin token: every configured token
  is compared), the proxy ``/proxy/{app}/{key}/api/v2/shop/get_shop_info``, and the very same signed call
  made directly to the sandbox (signed once by the Shopee plugin; the sandbox accepts a timestamp for
  5 minutes). The token read's rate is printed as a ratio to ``/healthz``'s.
* The proxy's overhead is latency, not throughput (at concurrency 32 both are bound by the sandbox, a
  Python process on the same 2 cores): proxy and direct call are also measured one request at a time,
  and the overhead is the difference of their p50.
* ``--profile FILE`` samples the daemon with ``py-spy record`` (if py-spy is on PATH) while the token
  read is loaded (first run only) and writes a flame graph (``.svg``) or collapsed stacks (``.txt``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import SandboxProcess, free_port, machine, pg_database

from refresher import platforms
from refresher.config import Settings, parse_config
from refresher.crypto import generate_key
from refresher.daemon import build_platforms
from refresher.domain import SystemClock
from refresher.platforms.base import ApiCall, make_http_client
from refresher.store import open_store

ADMIN = "bench-admin-token-0123456789"
READER = "bench-reader-token-0123456789"
APP = "shopee-bench"
SHOP_PATH = "/api/v2/shop/get_shop_info"
TARGET_RATIO = 0.5
TARGET_P99_MS = 20.0
TARGET_OVERHEAD_MS = 2.0


# ----------------------------------------------------------------------------- load generators


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, token: str | None, concurrency: int, seconds: float) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    stats: dict[str, Any] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for q in ("50", "99"):
        found = re.search(rf"^\s+{q}%\s+(\S+)", out, re.M)
        stats[f"p{q}"] = _ms(found.group(1)) if found else float("nan")
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    stats["requests"] = int(total.group(1)) if total else 0
    stats["failed"] = int(bad.group(1)) if bad else 0
    stats["socket_errors"] = errors.group(1) if errors else ""
    return stats


async def _python_load(url: str, token: str | None, concurrency: int, seconds: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    failed = 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=10, trust_env=False) as client:

        async def worker() -> None:
            nonlocal failed
            while time.monotonic() < deadline:
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append((time.perf_counter() - started) * 1000)
                failed += response.status_code >= 400

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {
        "rps": len(latencies) / elapsed,
        "p50": pick(0.5),
        "p99": pick(0.99),
        "requests": len(latencies),
        "failed": failed,
        "socket_errors": "",
    }


def load(url: str, token: str | None, concurrency: int, seconds: float) -> dict[str, Any]:
    """``url`` under ``concurrency`` connections for ``seconds``, from another process."""
    if shutil.which("wrk"):
        return wrk(url, token, concurrency, seconds)
    args = [sys.executable, __file__, "--load-generator", url, str(concurrency), str(seconds)]
    env = {**os.environ, "BENCH_TOKEN": token or ""}
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


# ----------------------------------------------------------------------------- the daemon under test


def config_document(sandbox: SandboxProcess, store_url: str, port: int, log_level: str) -> dict[str, Any]:
    return {
        "store": {"url": store_url, "encryption_keys": [generate_key()]},
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "admin_token": ADMIN,
            "api_tokens": [
                {"name": "billing", "secret": "bench-billing-token-0123456789", "scopes": ["tokens:read"]},
                {"name": "reader", "secret": READER, "scopes": ["tokens:read", "accounts:read", "proxy"]},
            ],
        },
        "logging": {"level": log_level, "format": "json"},  # to stderr, which goes to a file
        "apps": {APP: {**sandbox.view.app_config("shopee"), "rate_limit": 10000}},
    }


async def onboard(settings: Settings) -> tuple[str, str]:
    """One Shopee shop through the sandbox's consent, stored before the daemon starts: (key, direct URL)."""
    clock = SystemClock()
    store = open_store(settings.store, clock)
    await store.open()
    http = make_http_client()
    try:
        plugin = build_platforms(settings, http, clock)[APP]
        pkce = plugin.pkce_pair()
        from refresher.sandbox.runner import answer_consent

        params = await answer_consent(plugin.authorize_url("bench", plugin.app.redirect_uri, pkce))
        (grant,) = await plugin.exchange_code(params, pkce, plugin.app.redirect_uri)
        account = await store.upsert_grant(APP, plugin.name, grant)
        signed = plugin.sign_call(ApiCall(method="GET", path=SHOP_PATH), grant.tokens.access_token, grant.identity)
        return account.key, signed.url
    finally:
        await http.aclose()
        await store.close()


class DaemonProcess:
    """``python -m refresher run`` until :meth:`close`."""

    def __init__(self, config: Path, port: int) -> None:
        command = [sys.executable, "-m", "refresher", "run", "-c", str(config)]
        self.stderr = open(config.with_suffix(".stderr"), "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.stderr)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: see {self.stderr.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("daemon not ready within 60 s")

    def profile(self, output: Path, seconds: float) -> subprocess.Popen[bytes]:
        """py-spy sampling this daemon for ``seconds`` (raw collapsed stacks for a ``.txt`` file)."""
        fmt = "raw" if output.suffix == ".txt" else "flamegraph"
        command = ["py-spy", "record", "--gil", "--pid", str(self.proc.pid), "--duration", str(max(1, round(seconds)))]
        command += ["--rate", "250", "--nonblocking", "--format", fmt, "-o", str(output)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()


# ----------------------------------------------------------------------------- the run


def line(name: str, stats: dict[str, Any], baseline: float | None = None) -> str:
    ratio = f"  {stats['rps'] / baseline:5.2f}x /healthz" if baseline else ""
    errors = f"  non-2xx {stats['failed']}" if stats["failed"] else ""
    errors += f"  socket errors {stats['socket_errors']}" if stats["socket_errors"] else ""
    return (
        f"  {name:28s} {stats['rps']:8.0f} req/s  p50 {stats['p50']:7.2f} ms  p99 {stats['p99']:7.2f} ms{ratio}{errors}"
    )


def measure(engine: str, store_url: str, args: argparse.Namespace, tmp: Path, sandbox: SandboxProcess) -> bool:
    port = free_port()
    config = tmp / f"bench-{engine}.yaml"
    document = config_document(sandbox, store_url, port, args.log_level)
    config.write_text(yaml.safe_dump(document))
    settings = parse_config(config.read_text(), file=str(config), credential_models=platforms.credential_models())
    key, direct_url = asyncio.run(onboard(settings))
    base = f"http://127.0.0.1:{port}"
    token_url = f"{base}/v1/accounts/{APP}/{key}/token"
    proxy_url = f"{base}/proxy/{APP}/{key}{SHOP_PATH}"
    daemon = DaemonProcess(config, port)
    ok = True
    try:
        check = httpx.get(token_url, headers={"Authorization": f"Bearer {READER}"}, trust_env=False)
        if check.status_code != 200:
            raise RuntimeError(f"token read answered {check.status_code}: {check.text[:200]}")
        for run in range(args.repeat):
            c, s = args.concurrency, args.seconds
            print(
                f"\n{engine}, run {run + 1}/{args.repeat}, concurrency {c}, {s:g} s per target "
                f"(load {', '.join(f'{x:.1f}' for x in os.getloadavg())})"
            )
            health = load(f"{base}/healthz", None, c, s)
            profiling = args.profile is not None and run == 0
            spy = daemon.profile(args.profile, s) if profiling and args.profile_target == "token" else None
            read = load(token_url, READER, c, s)
            if spy is not None:
                spy.wait()
                print(f"  (token read profiled by py-spy into {args.profile})")
            print(line("/healthz", health))
            print(line("token read", read, health["rps"]))
            spy = daemon.profile(args.profile, s) if profiling and args.profile_target == "proxy" else None
            proxied = load(proxy_url, READER, c, s)
            if spy is not None:
                spy.wait()
                print(f"  (proxy profiled by py-spy into {args.profile})")
            direct = load(direct_url, None, c, s)
            print(line("proxy", proxied))
            print(line("direct signed call (sandbox)", direct))
            proxied1 = load(proxy_url, READER, 1, s)
            direct1 = load(direct_url, None, 1, s)
            print(line("proxy, one at a time", proxied1))
            print(line("direct, one at a time", direct1))
            ratio = read["rps"] / health["rps"]
            overhead = proxied1["p50"] - direct1["p50"]
            verdict = [
                f"token read {ratio:.2f}x /healthz (target >= {TARGET_RATIO})",
                f"p99 {read['p99']:.1f} ms (target <= {TARGET_P99_MS:g})",
                f"proxy overhead p50 {overhead:.2f} ms (target <= {TARGET_OVERHEAD_MS:g})",
            ]
            print("  => " + "; ".join(verdict))
            ok &= ratio >= TARGET_RATIO and read["p99"] <= TARGET_P99_MS and overhead <= TARGET_OVERHEAD_MS
            ok &= not any(x["failed"] for x in (health, read, proxied, direct, proxied1, direct1))
    finally:
        daemon.close()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per target (default 10)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections in flight (default 32)")
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--repeat", type=int, default=1, help="runs per store (default 1)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="profile of the token read: .svg or .txt (needs py-spy)"
    )
    parser.add_argument(
        "--log-level", default="info", help="the daemon's logging.level (default info, as in production)"
    )
    parser.add_argument("--profile-target", choices=["token", "proxy"], default="token", help="what --profile samples")
    parser.add_argument("--load-generator", nargs=3, metavar=("URL", "CONCURRENCY", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_generator:  # the fallback load generator, in its own process
        url, concurrency, seconds = args.load_generator
        stats = asyncio.run(_python_load(url, os.environ.get("BENCH_TOKEN"), int(concurrency), float(seconds)))
        print(json.dumps(stats))
        return 0
    if args.profile is not None and shutil.which("py-spy") is None:
        parser.error("--profile needs py-spy on PATH (pip install py-spy into the venv)")
    print(f"machine: {machine()}")
    if shutil.which("wrk"):
        print("load generator: wrk (its own process, one thread)")
    else:
        print(
            "load generator: wrk not found (apt-get install wrk) — using a Python httpx loop in a subprocess; "
            "it costs more CPU than wrk on the same cores, so the ratios are pessimistic"
        )
    sandbox = SandboxProcess(access_ttl="4h")
    ok = True
    try:
        with tempfile.TemporaryDirectory() as folder:
            tmp = Path(folder)
            if args.store in ("sqlite", "both"):
                ok &= measure("sqlite", f"sqlite:///{tmp / 'tokens.db'}", args, tmp, sandbox)
            if args.store in ("postgresql", "both"):
                with pg_database("bench_api") as url:
                    ok &= measure("postgresql", url, args, tmp, sandbox)
    finally:
        sandbox.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
