"""Several real processes claim and save the same accounts of one database at once.

Each worker "refreshes" an account by storing token n+1 in place of token n, where n is read from the
account *as returned by the claim*. If two workers ever held live leases on the same account at once,
both would have read the same n: so every (account, n) pair must be seen exactly once, and every
account must end at exactly ROUNDS refreshes (no update lost, none done twice).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import multiprocessing
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from refresher.domain import Grant, Identity, SystemClock, TokenSet
from refresher.store import LeaseLost, SqlStore
from tests.support import pg_schema

APP = "mp-app"
ACCOUNTS = 120
ROUNDS = 3
WORKERS = 3


def _tokens(key: str, n: int, now: dt.datetime) -> TokenSet:
    # Due again at once until the last round, so the same accounts are fought over ROUNDS times.
    expires = now if n < ROUNDS else now + dt.timedelta(days=1)
    return TokenSet(f"AT-{n}-{key}", f"RT-{n}-{key}", expires)


async def _work(url: str, owner: str, out: str) -> None:
    clock = SystemClock()
    store = SqlStore(url, clock=clock, pool_size=2)
    await store.open()
    seen: list[tuple[int, int]] = []
    lost = 0
    idle = 0
    try:
        while idle < 5:
            claimed = await store.claim_due(APP, dt.timedelta(minutes=1), 8, owner, dt.timedelta(minutes=5))
            if not claimed:
                idle += 1
                await asyncio.sleep(0.02)
                continue
            idle = 0
            for account in claimed:
                assert account.tokens is not None and account.lease_owner == owner
                n = int(account.tokens.refresh_token.split("-")[1])
                seen.append((account.id, n))
                try:
                    await store.save_tokens(account.id, owner, _tokens(account.key, n + 1, clock.now()))
                except LeaseLost:
                    lost += 1
    finally:
        await store.close()
    Path(out).write_text(json.dumps({"seen": seen, "lost": lost}))


def _worker(url: str, owner: str, out: str) -> None:
    asyncio.run(_work(url, owner, out))


@pytest.fixture(params=["sqlite", "postgresql"])
def mp_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tokens.db"
    else:
        with pg_schema() as url:
            yield url


@pytest.mark.slow
async def test_processes_never_refresh_the_same_account_twice(mp_url: str, tmp_path: Path) -> None:
    clock = SystemClock()
    store = SqlStore(mp_url, clock=clock)
    await store.open()
    for i in range(ACCOUNTS):
        key = f"shop:{i}"
        await store.upsert_grant(APP, "shopee", Grant(Identity(key, "shop", str(i)), _tokens(key, 0, clock.now())))

    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"w{i}.json" for i in range(WORKERS)]
    procs = [ctx.Process(target=_worker, args=(mp_url, f"worker-{i}", str(outs[i]))) for i in range(WORKERS)]
    for p in procs:
        p.start()
    loop = asyncio.get_running_loop()
    for p in procs:
        await loop.run_in_executor(None, p.join, 240)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"

    results = [json.loads(o.read_text()) for o in outs]
    assert sum(r["lost"] for r in results) == 0
    seen = Counter((acc, n) for r in results for acc, n in r["seen"])
    assert max(seen.values()) == 1, "two workers read the same token of an account under live leases"
    assert len(seen) == ACCOUNTS * ROUNDS
    # The work was really shared: more than one process refreshed accounts.
    assert sum(1 for r in results if r["seen"]) >= 2

    accounts = await store.list(app=APP, limit=ACCOUNTS + 1)
    assert len(accounts) == ACCOUNTS
    for account in accounts:
        assert account.tokens is not None
        assert account.tokens.refresh_token == f"RT-{ROUNDS}-{account.key}"
        assert account.previous_refresh_token == f"RT-{ROUNDS - 1}-{account.key}"
        assert account.version == 1 + ROUNDS and account.lease_owner is None
    await store.close()
