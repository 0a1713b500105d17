"""Scale: a real ``refresher run`` process with 100,000 accounts — start-up time to ready, resident memory
idle and during a sweep, idle CPU over a minute.

    python benchmarks/bench_scale.py [--accounts 100000] [--due 2000] [--idle 60] [--engine sqlite|postgresql]

How it is measured:
* The store is migrated, then ``--accounts`` Shopee accounts are generated in the database in one
  INSERT … SELECT (bench_claim's fill): tokens expiring 1 to 31 days from now, so none is due; 1% needs_reauth.
* ``python -m refresher run`` starts (JSON logs at info to a file, sweeps every 30 s — busier than the
  Shopee default — the HTTP server on); start-up is the time from spawn until ``/readyz`` answers 200.
* Idle: after a 5 s settle, the daemon's CPU (utime + stime from /proc/PID/stat) over ``--idle`` seconds,
  and its VmRSS from /proc/PID/status.
* Sweep: ``--due`` more shops are onboarded through the sandbox (its own process) with tokens that live
  10 minutes (inside the 1 h window): the next tick refreshes them. VmRSS is sampled every 0.1 s until the
  last one is refreshed; the peak is reported, and RSS again after the sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import SandboxProcess, figures, free_port, machine, onboard_shops, pg_database
from bench_claim import fill_pg, fill_sqlite

from refresher import platforms
from refresher.config import parse_config
from refresher.domain import SystemClock
from refresher.platforms.base import make_http_client
from refresher.store import open_store

APP = "shopee"


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_ready(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.02)
    raise RuntimeError("the daemon never became ready")


async def scale(
    engine: str, url: str, target: str, tmp: Path, accounts: int, due: int, idle: float
) -> list[tuple[str, str]]:
    sandbox = SandboxProcess(access_ttl="600s")
    port = free_port()
    document = {
        "store": {"url": url},
        "server": {"port": port},
        "logging": {"level": "info", "format": "json"},
        "apps": {
            APP: {**sandbox.view.app_config("shopee"), "interval": "30s", "refresh_before": "1h", "rate_limit": 10000}
        },
    }
    config = tmp / "scale.yaml"
    config.write_text(yaml.safe_dump(document))
    settings = parse_config(config.read_text(), file=str(config), credential_models=platforms.credential_models())
    store = open_store(settings.store, SystemClock())
    await store.open()
    await store.close()
    began = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    if engine == "sqlite":
        fill_sqlite(Path(target), accounts, app=APP, t0=now, offset=86400)
    else:
        fill_pg(target, accounts, app=APP, t0=now, offset=86400)
    fill_s = time.perf_counter() - began

    log = open(tmp / "daemon.log", "w")  # noqa: SIM115 - closed below, after the process
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "refresher", "run", "-c", str(config)], stdout=log, stderr=log)
    try:
        await wait_ready(port)
        ready_s = time.perf_counter() - started
        rss_ready = proc_rss_mb(proc.pid)
        await asyncio.sleep(5)
        cpu0, t0 = proc_cpu(proc.pid), time.perf_counter()
        await asyncio.sleep(idle)
        idle_cpu, idle_wall = proc_cpu(proc.pid) - cpu0, time.perf_counter() - t0
        rss_idle = proc_rss_mb(proc.pid)

        store = open_store(settings.store, SystemClock())
        await store.open()
        http = make_http_client()
        try:
            plugin = platforms.get("shopee")(settings.apps[APP], http=http)
            await onboard_shops(store, plugin, sandbox.view, due)
            peak, samples = 0.0, 0
            cpu_sweep0, began = proc_cpu(proc.pid), time.perf_counter()
            deadline = time.monotonic() + 600
            refreshed = 0
            while time.monotonic() < deadline:
                peak = max(peak, proc_rss_mb(proc.pid))
                samples += 1
                if samples % 10 == 0:
                    refreshed = len(
                        [e for e in await store.audit_log(app=APP, limit=due + 10) if e.outcome == "success"]
                    )
                    if refreshed >= due:
                        break
                await asyncio.sleep(0.1)
            sweep_s = time.perf_counter() - began
            sweep_cpu = proc_cpu(proc.pid) - cpu_sweep0
        finally:
            await http.aclose()
            await store.close()
        rss_after = proc_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        sandbox.close()
    return [
        ("engine", engine),
        ("accounts", f"{accounts:,} generated in {fill_s:.1f} s (none due) + {due:,} onboarded due"),
        ("start-up to ready", f"{ready_s:.2f} s (spawn until /readyz 200), RSS then {rss_ready:.0f} MiB"),
        ("idle CPU", f"{idle_cpu:.2f} s over {idle_wall:.0f} s = {idle_cpu / idle_wall * 100:.2f}% of one core "
         f"(sweeps every 30 s)"),
        ("idle RSS", f"{rss_idle:.0f} MiB"),
        ("sweep", f"{refreshed:,} refreshed in {sweep_s:.1f} s (incl. wait for the next tick), "
         f"daemon CPU {sweep_cpu:.1f} s"),
        ("RSS during sweep", f"peak {peak:.0f} MiB ({samples} samples), after {rss_after:.0f} MiB"),
    ]  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--engine", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.engine == "sqlite":
            path = Path(tmp) / "tokens.db"
            rows = await scale("sqlite", f"sqlite:///{path}", str(path), Path(tmp), args.accounts, args.due, args.idle)
        else:
            with pg_database("bench_scale") as url:
                rows = await scale("postgresql", url, url, Path(tmp), args.accounts, args.due, args.idle)
    figures(f"scale, {args.engine}", rows)


if __name__ == "__main__":
    asyncio.run(main())
