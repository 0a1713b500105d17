"""30 simulated days of 1,000 accounts over all four platforms: no access token ever expires.

Everything is real except time: the daemon's own tick (sweeps, leases, retries, alarms), the real SQLite
store, the plugins talking HTTP to the sandbox on a real port, and the very triggers the scheduler uses
(``scheduler.simulate`` jumps a FakeClock from one fire time to the next).

Time is stretched in one more way, said plainly: a platform whose access token lives less than a week
(Shopee 4 h, TikTok 2 h) has its access lifetime, refresh window and schedule multiplied by a common factor
that brings the lifetime to a week (42 and 84), so the month costs a few thousand real refreshes instead of
~150,000. The arithmetic that decides whether a token can expire — window vs. tick gap vs. lifetime — is
unchanged by a common factor; TikTok Shop and Lazada run on their real lifetimes, and no refresh-token
deadline (30/180/365 days) is scaled. ``benchmarks/soak.py`` runs the unscaled month and prints figures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from pathlib import Path

import pytest
import yaml

from refresher import platforms
from refresher.config import parse_config
from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.logging import configure_logging
from refresher.platforms.base import Platform
from refresher.sandbox import SandboxServer
from refresher.sandbox.apps import DEFAULT_LIFETIMES, Lifetimes
from refresher.scheduler import simulate

pytestmark = pytest.mark.slow

WEEK = dt.timedelta(days=7)


def scale_of(platform: str) -> int:
    """The stretch factor of a platform (1 for lifetimes of a week or more)."""
    return max(1, -(-WEEK // DEFAULT_LIFETIMES[platform].access))


ACCOUNTS = int(os.environ.get("REFRESHER_SIM_ACCOUNTS", "1000"))
DAYS = int(os.environ.get("REFRESHER_SIM_DAYS", "30"))

# Per platform: share of the accounts, the consent options of one grant, and how many accounts it yields.
MIX = {
    "shopee": (0.25, {"as": "main", "shops": "10"}, 10),
    "tiktok_shop": (0.25, {}, 1),
    "lazada": (0.25, {}, 1),
    "tiktok": (0.25, {}, 1),
}


def scaled(life: Lifetimes, factor: int) -> Lifetimes:
    return Lifetimes(
        access=life.access * factor,
        refresh=life.refresh,
        code=life.code,
        refresh_extends=life.refresh_extends,
        previous_access_grace=life.previous_access_grace * factor,
    )


def app_document(sandbox: SandboxServer, tmp: Path) -> dict[str, object]:
    apps = {}
    for name in MIX:
        cls = platforms.get(name)
        minutes = _schedule_minutes(cls.default_schedule)
        factor = scale_of(name)
        apps[name] = {
            **sandbox.app_config(name),
            "interval": f"{minutes * factor}m",
            "refresh_before": f"{int(cls.default_refresh_before.total_seconds() * factor)}s",
            "rate_limit": 10000,
            "concurrency": 8,
        }
    return {
        "store": {"url": f"sqlite:///{tmp / 'tokens.db'}"},
        "server": {"enabled": False},
        "logging": {"level": "warning"},
        "apps": apps,
    }


def _schedule_minutes(cron: str) -> int:
    minute, hour = cron.split()[:2]
    if minute.startswith("*/"):
        return int(minute[2:])
    if hour == "*":
        return 60
    raise AssertionError(f"unexpected default schedule {cron!r}")


async def test_thirty_days_of_a_thousand_accounts_without_an_expiry(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    lifetimes = {name: scaled(life, scale_of(name)) for name, life in DEFAULT_LIFETIMES.items()}
    async with SandboxServer(clock=clock, lifetimes=lifetimes, seed=1) as sandbox:
        settings = parse_config(
            yaml.safe_dump(app_document(sandbox, tmp_path)),
            file="sim.yaml",
            credential_models=platforms.credential_models(),
        )
        configure_logging(settings.logging)
        daemon = Daemon(settings, clock=clock)
        await daemon.start(schedule=False)
        try:
            started = time.perf_counter()
            for name, (share, options, per_grant) in MIX.items():
                plugin = daemon.platforms[name]

                async def onboard_one(
                    plugin: Platform = plugin, name: str = name, options: dict[str, str] = options
                ) -> None:
                    pkce = plugin.pkce_pair()
                    params = await sandbox.approve(
                        plugin.authorize_url("sim", plugin.app.redirect_uri, pkce), **options
                    )
                    for grant in await plugin.exchange_code(params, pkce, plugin.app.redirect_uri):
                        await daemon.store.upsert_grant(name, name, grant)

                grants = max(1, round(ACCOUNTS * share / per_grant))
                for first in range(0, grants, 16):  # a few sellers at a time, as on a busy morning
                    await asyncio.gather(*(onboard_one() for _ in range(min(16, grants - first))))
            onboarded = await daemon.store.count()
            per_app = {name: await daemon.store.count(app=name) for name in MIX}
            assert onboarded >= ACCOUNTS * 0.95, per_app
            onboard_seconds = time.perf_counter() - started

            expired: list[str] = []

            async def tick(app: str) -> None:
                await daemon.tick(app)
                earliest = await daemon.store.earliest_expiry(app)
                if earliest is not None and earliest <= clock.now():
                    expired.append(f"{app}: a token expired at {earliest.isoformat()}, seen {clock.now().isoformat()}")

            started = time.perf_counter()
            ticks = await simulate(settings, platforms.available(), clock, clock.now() + dt.timedelta(days=DAYS), tick)
            run_seconds = time.perf_counter() - started
        finally:
            await daemon.stop(grace=5)

        counters = sandbox.state.counters
        rotations = sum(v for k, v in counters.items() if k.endswith(".rotated"))
        reuses = sum(v for k, v in counters.items() if k.endswith(".reuse"))
        stretch = {n: scale_of(n) for n in MIX}
        print(
            f"\nsimulated {DAYS} days x {onboarded} accounts (stretched {stretch}): {ticks} ticks, "
            f"{rotations} refreshes "
            f"in {run_seconds:.1f} s real ({rotations / max(run_seconds, 1e-9):.0f}/s); "
            f"onboarding {onboard_seconds:.1f} s"
        )
        assert not expired, f"{len(expired)} expiries, first: {expired[:3]}"
        assert reuses == 0, dict(counters)
        assert rotations >= onboarded  # every account was refreshed at least once
