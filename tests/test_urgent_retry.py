"""Urgent retries (refresher/scheduler.py): a failed refresh near expiry is retried before the next tick.

The case the full soak found: a TikTok token (2 h) enters its 30-minute window just after a tick, so the
regular 10-minute ticks give it two sweeps; two failed sweeps in a row and it expired. Here, in simulated
time with the real daemon, store and sandbox, the first six refresh calls fail (two sweeps of three
attempts): with urgent retries the token is refreshed in time, without them (the control, which proves
the test can fail) it expires. And the live scheduler plans such a retry only when it is due before the
next tick.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from refresher import platforms
from refresher.config import parse_config
from refresher.domain import FakeClock
from refresher.sandbox import SandboxServer
from refresher.scheduler import URGENT_RETRY_MIN_GAP, Scheduler, simulate
from tests.support import consent_and_store, started_daemon

START = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)  # a Monday, midnight: on a tick of */10


async def _run_tiktok_with_two_failed_sweeps(tmp_path: Path, urgent: bool) -> tuple[list[str], list[dt.datetime]]:
    clock = FakeClock(START)
    async with SandboxServer(clock=clock, seed=5) as sandbox:
        document = {
            "store": {"url": f"sqlite:///{tmp_path / 'urgent.db'}"},
            "server": {"enabled": False},
            "logging": {"level": "warning", "format": "json"},
            "apps": {
                "tiktok": {
                    **sandbox.app_config("tiktok"),
                    "retry": {"attempts": 3, "initial_delay": "10ms", "max_delay": "20ms"},
                }
            },
        }
        async with started_daemon(document, clock, "urgent.yaml") as daemon:
            await consent_and_store(daemon, sandbox, "tiktok")
            sandbox.set_faults("tiktok:refresh:503|x6")  # the first two sweeps (3 attempts each) fail
            expired: list[str] = []
            swept_at: list[dt.datetime] = []

            async def tick(app: str) -> Any:
                now = clock.now()
                swept_at.append(now)
                for account in await daemon.store.list(app=app):
                    if account.tokens is not None and account.tokens.access_expires_at <= now:
                        expired.append(
                            f"{account.key} expired {account.tokens.access_expires_at:%H:%M} (at {now:%H:%M})"
                        )
                await daemon.tick(app)

            probe = daemon.store.earliest_urgent_retry if urgent else None
            await simulate(
                daemon.settings, platforms.available(), clock, START + dt.timedelta(hours=2, minutes=30), tick, probe
            )
            assert sandbox.state.counters["tiktok.fault.503"] == 6
    return expired, swept_at


@pytest.mark.parametrize("urgent", [True, False], ids=["urgent retries", "control: ticks only"])
async def test_two_failed_sweeps_near_expiry_no_longer_let_a_token_expire(tmp_path: Path, urgent: bool) -> None:
    expired, swept_at = await _run_tiktok_with_two_failed_sweeps(tmp_path, urgent)
    off_tick = [t for t in swept_at if t.minute % 10 or t.second or t.microsecond]
    if urgent:
        assert expired == []
        # The retries ran between the regular ticks, after the failed one at 1:40 and before the one at 1:50.
        assert off_tick
        assert all(
            START + dt.timedelta(hours=1, minutes=40) < t < START + dt.timedelta(hours=1, minutes=50) for t in off_tick
        )
    else:
        assert off_tick == []
        assert expired, "the control must show the failure the urgent retries prevent"


@pytest.mark.parametrize(
    ("retry_in", "planned_in"),
    [
        (dt.timedelta(seconds=40), dt.timedelta(seconds=40)),  # due before the next tick: planned
        (dt.timedelta(seconds=-5), URGENT_RETRY_MIN_GAP),  # overdue (e.g. leased elsewhere): not in a loop
        (dt.timedelta(seconds=90), None),  # the next tick (60 s) comes first: nothing planned
        (None, None),  # nothing at risk
    ],
)
async def test_the_live_scheduler_plans_an_urgent_retry_only_before_the_next_tick(
    retry_in: dt.timedelta | None, planned_in: dt.timedelta | None
) -> None:
    asked: list[dt.datetime] = []
    swept = asyncio.Event()

    async def tick(app: str) -> None:
        swept.set()

    async def probe(app: str, expiring_before: dt.datetime) -> dt.datetime | None:
        asked.append(expiring_before)
        return None if retry_in is None else dt.datetime.now(dt.UTC) + retry_in

    settings = parse_config(
        yaml.safe_dump(
            {"apps": {"tt": {"platform": "tiktok", "interval": "60s", "client_key": "k", "client_secret": "s"}}}
        ),
        file="live.yaml",
        credential_models=platforms.credential_models(),
    )
    scheduler = Scheduler(tick, urgent_retry=probe)
    scheduler.configure(settings, platforms.available())
    scheduler.start()
    try:
        await asyncio.wait_for(swept.wait(), 5)  # the sweep at start
        for _ in range(100):
            if asked:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        regular, retry = scheduler.next_fire_times("tt")
        assert regular is not None
        assert asked and asked[0] > regular  # asked about the tick after next
        if planned_in is None:
            assert retry is None
        else:
            expected = dt.datetime.now(dt.UTC) + planned_in
            assert retry is not None and abs((retry - expected).total_seconds()) < 2
            assert retry < regular
    finally:
        scheduler.shutdown()


async def test_simulate_sweeps_apps_due_together_concurrently_and_raises_after_both_end() -> None:
    app = {"platform": "tiktok", "interval": "60s", "client_key": "k", "client_secret": "s"}
    settings = parse_config(
        yaml.safe_dump({"apps": {"a": app, "b": app}}), file="sim.yaml", credential_models=platforms.credential_models()
    )
    clock = FakeClock(START)
    running: set[str] = set()
    overlapped: list[str] = []
    finished: list[str] = []

    async def tick(name: str) -> None:
        running.add(name)
        await asyncio.sleep(0.01)
        if running - {name}:
            overlapped.append(name)
        running.discard(name)
        if name == "a":
            raise RuntimeError("stop")
        await asyncio.sleep(0.01)
        finished.append(name)

    with pytest.raises(RuntimeError):
        await simulate(settings, platforms.available(), clock, START + dt.timedelta(minutes=5), tick)
    assert overlapped  # the two sweeps of one instant ran at the same time
    assert finished == ["b"]  # and the error waited for the other sweep to end
