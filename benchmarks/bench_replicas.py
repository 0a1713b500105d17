"""Replicas at full size: 10,000 accounts, a simulated week, two and three daemons on one PostgreSQL database
and two on one SQLite file, one replica killed on day three.

    python benchmarks/bench_replicas.py [--accounts 10000] [--setups pg2,pg3,sqlite2]

The very run of ``tests/test_replicas.py`` (same code: ``run_week`` and ``check_week``), sized up. Each setup
prints the accounts, fire times, refreshes per replica, the killed replica's leases and when they were taken
over, the sandbox's rotation and reuse counters, and the checks: zero reuses, zero failures, zero expired
tokens, every rotation committed once, no account refreshed twice for one expiry.

Cost: about four refreshes per account in the week (~20-30 ms of CPU each) plus the ticks; 10,000 accounts
take several minutes per setup on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # the repository root: the tests package


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--setups", default="pg2,pg3,sqlite2")
    args = parser.parse_args()
    os.environ["REFRESHER_REPLICA_ACCOUNTS"] = str(args.accounts)  # read by the test module at import
    from _support import figures, machine, pg_database

    from tests import test_replicas as rep

    print(f"machine: {machine()}")
    for setup in args.setups.split(","):
        replicas = int(setup[-1])
        if setup.startswith("pg"):
            with pg_database("bench_replicas") as url:
                run = await rep.run_week(url, replicas, args.accounts)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                run = await rep.run_week(f"sqlite:///{Path(tmp) / 'tokens.db'}", replicas, args.accounts)
        try:
            rep.check_week(run, replicas)
            verdict = "all checks pass"
        except AssertionError as exc:
            verdict = f"FAILED: {str(exc)[:300]}"
        per_owner: dict[str, int] = {}
        for r in run.refreshes:
            per_owner[r.owner] = per_owner.get(r.owner, 0) + 1
        kill = run.kill
        takeover = ""
        if kill is not None:
            firsts = [
                min(r.at for r in run.refreshes if (r.app, r.key) == k and r.at > kill.at) - kill.at
                for k in kill.held
                if any((r.app, r.key) == k and r.at > kill.at for r in run.refreshes)
            ]
            if firsts:
                takeover = f"taken over {min(firsts)} .. {max(firsts)} after the kill (lease TTL {rep.LEASE_TTL})"
        figures(
            f"{replicas} replicas, {'PostgreSQL' if setup.startswith('pg') else 'SQLite'}",
            [
                ("accounts", f"{run.accounts:,}"),
                ("simulated", f"7 days, {run.ticks} fire times, {run.seconds:.0f} s real"),
                ("refreshes", f"{len(run.refreshes):,} {per_owner}"),
                (
                    "killed replica",
                    f"held {len(kill.held) if kill else 0} leases at {kill.at if kill else '-'}; {takeover}",
                ),
                ("sandbox", str({k: v for k, v in run.counters.items() if k.endswith((".rotated", ".reuse"))})),
                ("expired tokens", str(len(run.expired))),
                ("verdict", verdict),
            ],
        )


if __name__ == "__main__":
    asyncio.run(main())
