"""Due-claim latency with 1,000,000 accounts of one app, on SQLite and PostgreSQL.

    python benchmarks/bench_claim.py [--rows 1000000] [--claims 10] [--engine sqlite|postgresql|both]

How it is measured: the store creates its schema (the real Alembic migrations), then the rows are generated
inside the database in one INSERT … SELECT (a recursive CTE on SQLite, generate_series on PostgreSQL):
access tokens expiring evenly over 30 days from "now" (a fixed FakeClock), the soonest 10 minutes ahead,
1% needs_reauth. Then ``SqlStore.claim_due(app, horizon, limit=100, …)`` is timed (wall clock, each call its
own transaction as in a sweep) in three situations:

* idle — nothing due (horizon 5 min): what every tick of a quiet app costs;
* expiring — horizon 1 h, ~1,150 tokens due: ``--claims`` consecutive claims of 100;
* retrying — 1,000 accounts with a past ``next_attempt_at`` (a failed refresh to retry), nothing expiring.

Leases are cleared between situations. Prints median / p95 / max per situation and engine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import figures, machine, pg_database

from refresher.config import StoreSettings
from refresher.domain import FakeClock
from refresher.store import open_store

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
APP = "big"
SPREAD = 30 * 86400  # seconds over which the expiries are spread

SQLITE_FILL = """
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :rows)
INSERT INTO accounts (app, platform, key, kind, platform_id, extra, status, access_token, refresh_token,
    access_expires_at, refresh_expires_at, scopes, raw, consecutive_failures, version, created_at, updated_at)
SELECT :app, 'shopee', 'shop:' || x, 'shop', CAST(x AS TEXT), '{}',
    CASE WHEN x % 100 = 0 THEN 'needs_reauth' ELSE 'active' END,
    'at-' || x, 'rt-' || x,
    strftime('%Y-%m-%d %H:%M:%S', :t0, '+' || (:offset + (x * :step) % :spread) || ' seconds') || '.000000',
    strftime('%Y-%m-%d %H:%M:%S', :t0, '+60 days') || '.000000',
    '[]', '{}', 0, 1,
    strftime('%Y-%m-%d %H:%M:%S', :t0) || '.000000', strftime('%Y-%m-%d %H:%M:%S', :t0) || '.000000'
FROM n
"""

PG_FILL = """
INSERT INTO accounts (app, platform, key, kind, platform_id, extra, status, access_token, refresh_token,
    access_expires_at, refresh_expires_at, scopes, raw, consecutive_failures, version, created_at, updated_at)
SELECT %(app)s, 'shopee', 'shop:' || x, 'shop', x::text, '{}'::jsonb,
    CASE WHEN x %% 100 = 0 THEN 'needs_reauth' ELSE 'active' END,
    'at-' || x, 'rt-' || x,
    %(t0)s::timestamptz + make_interval(secs => %(offset)s + (x::bigint * %(step)s) %% %(spread)s),
    %(t0)s::timestamptz + interval '60 days',
    '[]'::jsonb, '{}'::jsonb, 0, 1, %(t0)s::timestamptz, %(t0)s::timestamptz
FROM generate_series(1, %(rows)s) AS x
"""


def fill_sqlite(path: Path, rows: int, *, app: str = APP, t0: dt.datetime = T0, offset: int = 600) -> None:
    """``rows`` accounts of ``app`` expiring from ``t0 + offset`` seconds on, evenly over 30 days."""
    step = max(1, SPREAD // rows) if rows < SPREAD else 1
    stamp = t0.strftime("%Y-%m-%d %H:%M:%S")
    params = {"rows": rows, "t0": stamp, "step": step, "spread": SPREAD, "app": app, "offset": offset}
    with sqlite3.connect(path) as conn:
        conn.execute(SQLITE_FILL, params)
        conn.execute("ANALYZE")


def fill_pg(url: str, rows: int, *, app: str = APP, t0: dt.datetime = T0, offset: int = 600) -> None:
    step = max(1, SPREAD // rows) if rows < SPREAD else 1
    params = {"rows": rows, "t0": t0.isoformat(), "step": step, "spread": SPREAD, "app": app, "offset": offset}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(PG_FILL, params)
        conn.execute("VACUUM ANALYZE accounts")


def run_sql(engine: str, target: str, sql: str) -> None:
    if engine == "sqlite":
        with sqlite3.connect(target) as conn:
            conn.execute(sql)
    else:
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(sql)


def stamp(engine: str, value: dt.datetime) -> str:
    return f"'{value.strftime('%Y-%m-%d %H:%M:%S')}.000000'" if engine == "sqlite" else f"'{value.isoformat()}'"


async def measure(engine: str, url: str, target: str, rows: int, claims: int) -> list[tuple[str, str]]:
    clock = FakeClock(T0)
    store = open_store(StoreSettings(url=url), clock)
    await store.open()  # the migrations create the schema and its indexes
    await store.close()
    started = time.perf_counter()
    if engine == "sqlite":
        fill_sqlite(Path(target), rows)
    else:
        fill_pg(target, rows)
    fill_seconds = time.perf_counter() - started
    store = open_store(StoreSettings(url=url), clock)
    await store.open()
    out = [("engine", engine), ("rows", f"{rows:,} (filled in {fill_seconds:.1f} s)")]
    release = "UPDATE accounts SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL"
    try:

        async def timed(horizon: dt.timedelta, count: int) -> tuple[list[float], int]:
            times, got = [], 0
            for i in range(count):
                began = time.perf_counter()
                claimed = await store.claim_due(APP, horizon, 100, f"bench-{i}", dt.timedelta(minutes=10))
                times.append((time.perf_counter() - began) * 1000)
                got += len(claimed)
            return times, got

        def describe(times: list[float], got: int) -> str:
            ordered = sorted(times)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
            median = statistics.median(ordered)
            return f"median {median:.2f} ms, p95 {p95:.2f} ms, max {ordered[-1]:.2f} ms ({got} claimed)"

        times, got = await timed(dt.timedelta(minutes=5), claims)
        out.append(("idle (nothing due)", describe(times, got)))
        times, got = await timed(dt.timedelta(hours=1), claims)
        out.append(("expiring (horizon 1 h)", describe(times, got)))
        run_sql(engine, target, release)
        past = stamp(engine, T0 - dt.timedelta(minutes=1))
        run_sql(engine, target, f"UPDATE accounts SET next_attempt_at = {past} WHERE id % 1000 = 7")
        times, got = await timed(dt.timedelta(minutes=5), claims)
        out.append(("retrying (1,000 retries due)", describe(times, got)))
    finally:
        await store.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--claims", type=int, default=10)
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if args.engine in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "claim.db"
            figures(
                "claim_due, SQLite", await measure("sqlite", f"sqlite:///{path}", str(path), args.rows, args.claims)
            )
    if args.engine in ("postgresql", "both"):
        with pg_database("bench_claim") as url:
            figures("claim_due, PostgreSQL", await measure("postgresql", url, url, args.rows, args.claims))


if __name__ == "__main__":
    asyncio.run(main())
