"""The full soak in simulated time, on demand: ``python benchmarks/soak.py --accounts 10000 --days 30``.

The same harness as the short test (tests/soak/harness.py): real daemon tick, real SQLite store with
durable commits, plugins over HTTP to the loopback sandbox, real lifetimes and default schedules, ~10 %
transient faults (timeouts rarer than in the short test: harness.FULL_RUN_TRANSIENT says why) and ~1 %
malformed ones on refresh calls, a few revoked grants, alarms counted by a real webhook receiver. Prints
progress while it runs and the report at the end; exits 1 if a must-be-zero figure is not zero or the
alarms do not match the accounts that needed a human.

The sandbox runs in a process of its own by default (``--sandbox-inline`` keeps it in this one, as the
short test does): a platform's CPU is not the daemon's, and on this 2-core VM each gets a core. The daemon
and the sandbox then share nothing but HTTP and the simulated time, which the harness sends the sandbox
before every sweep (tests/soak/sandbox_link.py).

Cost: every refresh is a real end-to-end refresh (plus the fsyncs of its commits). 10,000 accounts for
30 days need ~1.5 million refreshes (Shopee 4 h and TikTok 2 h tokens dominate); benchmarks/RESULTS.md
has the measured rates. ``--db-dir`` puts the SQLite file elsewhere (e.g. /dev/shm, to measure without
disk fsync latency; say so if you do).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.soak.harness import FULL_RUN_TRANSIENT, SoakConfig, fault_spec, run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--revoked", type=int, default=8, help="grants revoked at chosen moments")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32, help="refreshes in flight per app")
    parser.add_argument("--batch", type=int, default=256, help="accounts claimed per batch")
    parser.add_argument("--db-dir", default=None, help="directory for the SQLite file (default: a temp dir)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="real seconds the run may take; past them it ends at the simulated day reached, all checks still made",
    )
    parser.add_argument(
        "--sandbox-inline",
        action="store_true",
        help="run the sandbox in this process (default: a process of its own, so its CPU is not the daemon's)",
    )
    args = parser.parse_args()

    def say(line: str) -> None:
        print(line, flush=True)

    config = SoakConfig(
        accounts=args.accounts,
        days=args.days,
        revoked=args.revoked,
        seed=args.seed,
        concurrency=args.concurrency,
        batch=args.batch,
        progress=say,
        progress_every=30.0,
        sandbox_process=not args.sandbox_inline,
        deadline=args.deadline,
        fault_spec=fault_spec(FULL_RUN_TRANSIENT),
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.db_dir, prefix="soak-") as tmp:
        report = asyncio.run(run_soak(config, Path(tmp)))
    for line in report.lines():
        say(line)
    say(f"  total wall time {time.perf_counter() - started:.0f} s; python {sys.version.split()[0]}")
    ok = (
        not report.expired_while_refreshable
        and not report.lost_refresh_tokens
        and report.reuses == 0
        and report.alarmed == report.needs_human
        and not report.leaked
    )
    for problem in report.expired_while_refreshable[:5] + report.lost_refresh_tokens[:5]:
        say(f"  ! {problem}")
    say("RESULT: " + ("every must-be-zero is zero" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
