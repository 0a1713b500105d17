"""Store throughput with 100,000 accounts: claims and commits per second, SQLite and PostgreSQL.

    python benchmarks/bench_store.py [--rows 100000] [--work 5000] [--concurrency 8] [--engine both]

How it is measured: the real migrations create the schema, ``--rows`` accounts are generated inside the
database (see bench_claim.py), and the FakeClock is moved past every expiry so all are due. Then ``--work``
accounts go through what a sweep does to the store, with no platform in between: ``claim_due`` in batches
of 100 under a lease, then, by ``--concurrency`` workers, ``mark_refresh_started`` and ``save_tokens`` (new
token set + history + lease release, one durable transaction). Wall time; claims/s counts accounts claimed,
commits/s counts save_tokens transactions.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import figures, machine, pg_database
from bench_claim import T0, fill_pg, fill_sqlite

from refresher.config import StoreSettings
from refresher.domain import FakeClock, TokenSet
from refresher.store import open_store

APP = "big"
LEASE = dt.timedelta(minutes=10)


async def measure(url: str, fill: object, rows: int, work: int, concurrency: int) -> list[tuple[str, str]]:
    clock = FakeClock(T0)
    store = open_store(StoreSettings(url=url), clock)
    await store.open()
    try:
        started = time.perf_counter()
        fill()  # type: ignore[operator]
        filled = time.perf_counter() - started
        clock.set(T0 + dt.timedelta(days=31))  # every token expired: all due
        claim_time = 0.0
        claimed_total = 0
        commits = 0
        semaphore = asyncio.Semaphore(concurrency)

        async def settle(account_id: int, key: str) -> None:
            nonlocal commits
            async with semaphore:
                await store.mark_refresh_started(account_id, "bench")
                tokens = TokenSet(f"at-new-{key}", f"rt-new-{key}", clock.now() + dt.timedelta(days=60))
                await store.save_tokens(account_id, "bench", tokens)
                commits += 1

        began = time.perf_counter()
        while claimed_total < work:
            t = time.perf_counter()
            batch = await store.claim_due(APP, dt.timedelta(hours=1), min(100, work - claimed_total), "bench", LEASE)
            claim_time += time.perf_counter() - t
            if not batch:
                break
            claimed_total += len(batch)
            await asyncio.gather(*(settle(a.id, a.key) for a in batch))
        total = time.perf_counter() - began
    finally:
        await store.close()
    return [
        ("accounts in the store", f"{rows:,} (generated in {filled:.1f} s)"),
        (
            "claimed",
            f"{claimed_total:,} in batches of 100: {claimed_total / claim_time:,.0f} claims/s (claim time only)",
        ),
        (
            "committed (mark + save_tokens)",
            f"{commits:,} in {total:.1f} s: {commits / total:,.0f} refreshes/s end to end",
        ),
        ("concurrency", str(concurrency)),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--work", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.engine in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "store.db"
            rows = await measure(
                f"sqlite:///{path}",
                lambda: fill_sqlite(path, args.rows, app=APP),
                args.rows,
                args.work,
                args.concurrency,
            )
            figures("store throughput, SQLite (synchronous=FULL, WAL)", rows)
    if args.engine in ("postgresql", "both"):
        with pg_database("bench_store") as url:
            rows = await measure(url, lambda: fill_pg(url, args.rows, app=APP), args.rows, args.work, args.concurrency)
            figures("store throughput, PostgreSQL", rows)


if __name__ == "__main__":
    asyncio.run(main())
