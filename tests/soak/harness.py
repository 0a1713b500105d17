"""The soak run in simulated time, shared by the short test and ``benchmarks/soak.py``.

Everything is real except the clock: the daemon's own tick (claims, leases, retries, durable SQLite
commits, alarm policy), the plugins talking HTTP to the sandbox on a loopback port, the platforms' real
lifetimes and default schedules and refresh windows (nothing stretched), the very triggers the
scheduler uses (``scheduler.simulate`` jumps a FakeClock from one fire time to the next), and a real
webhook receiver on loopback that counts the alarms the daemon really sent. The sandbox runs in this
process or in one of its own (``SoakConfig.sandbox_process``), driven over HTTP either way
(``sandbox_link.py``), with the simulated time sent to it before each sweep.

Two things are shortened, and neither changes what is proved:
* retry back-off *inside one refresh* is 10-50 ms of real time instead of 1-30 s (the simulated clock
  does not move during a sweep anyway, so only the wall-clock cost of the run changes);
* the client timeout is 2 s (default 20 s) and a sandbox "timeout" fault hangs 2.2 s, so a timed-out
  call costs 2 s of real time, and is still a real client-side timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from refresher import platforms
from refresher.alerts.events import RefreshEvent
from refresher.config import parse_config
from refresher.daemon import Daemon
from refresher.domain import AccountStatus, FakeClock
from refresher.logging import configure_logging
from refresher.sandbox.apps import DEFAULT_LIFETIMES, SANDBOX_CREDENTIALS, secret_of
from refresher.sandbox.core import fingerprint
from refresher.scheduler import simulate
from refresher.server.http import EmbeddedServer, start_server, stop_server
from tests.soak.sandbox_link import SandboxLink

PLATFORMS = ("shopee", "tiktok_shop", "lazada", "tiktok")

# What one consent yields per platform: a Shopee main account with 9 shops and 1 merchant (10 accounts,
# sharing a first refresh token that each subject splits off on its first refresh), one seller or user
# elsewhere.
GRANT_OPTIONS: dict[str, tuple[dict[str, str], int]] = {
    "shopee": ({"as": "main", "shops": "9", "merchants": "1"}, 10),
    "tiktok_shop": ({}, 1),
    "lazada": ({}, 1),
    "tiktok": ({}, 1),
}

# ~10 % transient faults and ~1 % malformed answers on every refresh call of every platform. A
# "timeout" is a real client timeout (the sandbox hangs longer than the app's timeout); it is kept rare
# because each one costs 2 s of real time. None of these kinds rotates the token before failing (the
# "lost" kind would, and is the crash test's subject).
#
# Why the client timeout is 2 s and not shorter: the first version used 0.3 s, and on this loaded
# 2-core machine an ordinary answer sometimes took longer. The sandbox had rotated the token, the client
# gave up, retried with the spent token, and the account was lost (one reuse). That is the real,
# unavoidable "answer lost after rotation" window (see tests/test_crash_restart.py), not a soak fault:
# a timeout must be long against the platform's real latency.
TRANSIENT = {"503": 0.035, "502": 0.02, "500": 0.017, "429": 0.025, "timeout": 0.003}
MALFORMED = {"html": 0.004, "truncated": 0.003, "wrongtypes": 0.003}

# The full month's mix (benchmarks/soak.py): the same ~10 % transient faults, but timeouts at 0.05 %
# instead of 0.3 % (the difference goes to 503s). Why: a timeout holds its sweep open for the client's
# 2 s, and the simulated clock cannot move until the sweep ends, so at 0.3 % the month's ~5,000
# timeouts alone were ~3 hours of waiting (run 2: the soak process used 45 % of a core). The short
# test keeps 0.3 %, where timeouts are a tested kind; the month still sees several hundred.
FULL_RUN_TRANSIENT = {**TRANSIENT, "503": 0.0375, "timeout": 0.0005}

# Any token the sandbox issues looks like this (sandbox/core.py ``_tokens``): a leak check that needs no
# list of every token ever issued.
TOKEN_RE = re.compile(r"(?:sp|tts|lz|tk)[ar]_[0-9a-f]{32}")


def fault_spec(transient: Mapping[str, float] = TRANSIENT, malformed: Mapping[str, float] = MALFORMED) -> str:
    """The sandbox fault plan. Rules are tried in order with independent draws, so each probability is
    made conditional on the earlier rules not firing: the overall rate of each kind is what is asked."""
    rules, left = [], 1.0
    for kind, rate in {**transient, **malformed}.items():
        rules.append(f"*:refresh:{kind}@{rate / left:.6f}")
        left -= rate
    return ",".join(rules)


@dataclass
class SoakConfig:
    accounts: int = 200
    days: float = 7.0
    revoked: int = 4  # grants revoked at chosen moments (at least one per platform when >= 4)
    seed: int = 8
    concurrency: int = 16
    batch: int | None = None
    attempts: int = 3
    after_failures: int = 3
    fault_spec: str = field(default_factory=fault_spec)
    app_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-platform app keys
    progress: Callable[[str], None] | None = None
    progress_every: float = 10.0  # real seconds between progress lines
    # The sandbox in a child process (its CPU on a core of its own, as a platform's would be), or in this
    # one; both are driven over HTTP (tests/soak/sandbox_link.py).
    sandbox_process: bool = False
    # Real seconds the run may take: past them it ends after the current sweep, at whatever simulated day
    # it reached, and every end-of-run check still runs (None: the whole ``days``).
    deadline: float | None = None


@dataclass
class SoakReport:
    accounts: int
    per_platform: dict[str, int]
    days: float
    ticks: int
    onboard_seconds: float
    run_seconds: float
    expired_while_refreshable: list[str]
    lost_refresh_tokens: list[str]
    reuses: int
    counters: dict[str, int]
    calls_per_account_day: dict[str, float]
    rotations_per_account_day: dict[str, float]
    minimum_per_account_day: dict[str, float]
    faults_injected: int
    failed_sweeps: int
    max_consecutive_failures: int
    failed_attempts: Counter[int]
    needs_human: set[tuple[str, str]]
    alarmed: set[tuple[str, str]]
    alarm_messages: Counter[str]
    needs_reauth: set[tuple[str, str]]
    leaked: list[str]
    sandbox_cpu_seconds: float | None = None  # the child's, when the sandbox ran in its own process
    run_cpu_seconds: float = 0.0  # this process's CPU during the run (daemon, harness, webhook receiver)
    days_asked: float = 0.0  # ``days`` is what was simulated: less when the deadline ended the run
    # Revoked when the run ended but not yet due (no call was owed since): nothing the daemon could notice.
    revoked_not_yet_due: set[tuple[str, str]] = field(default_factory=set)

    @property
    def rotations(self) -> int:
        return sum(v for k, v in self.counters.items() if k.endswith(".rotated"))

    def lines(self) -> list[str]:
        out = [
            f"soak: {self.accounts} accounts {self.per_platform} x {self.days:.2f} simulated days, real lifetimes"
            + (f" (ended by the deadline; {self.days_asked:g} asked)" if self.days < self.days_asked else ""),
            f"  onboarding {self.onboard_seconds:.1f} s; run {self.run_seconds:.1f} s real, {self.ticks} ticks, "
            f"{self.rotations} refreshes ({self.rotations / max(self.run_seconds, 1e-9):.0f}/s), this process's CPU "
            f"{self.run_cpu_seconds:.0f} s ({self.run_cpu_seconds / max(self.rotations, 1) * 1000:.2f} ms per refresh)"
            + (
                f"; sandbox in its own process, its CPU {self.sandbox_cpu_seconds:.0f} s"
                if self.sandbox_cpu_seconds is not None
                else "; sandbox in this process"
            ),
            f"  faults injected on refresh calls: {self.faults_injected}; failed sweeps (all attempts failed): "
            f"{self.failed_sweeps} (attempts each: {dict(self.failed_attempts)}); most consecutive failed sweeps of "
            f"one account: {self.max_consecutive_failures}",
            f"  tokens expired while refreshable: {len(self.expired_while_refreshable)} (must be 0)",
            f"  refresh tokens lost: {len(self.lost_refresh_tokens)} (must be 0)",
            f"  reuses of an old refresh token: {self.reuses} (must be 0)",
            "  platform calls per account per day (calls incl. faulted / successful rotations / minimum the "
            "lifetimes need):",
        ]
        for name in PLATFORMS:
            out.append(
                f"    {name:12s} {self.calls_per_account_day.get(name, 0):7.3f} / "
                f"{self.rotations_per_account_day.get(name, 0):7.3f} / {self.minimum_per_account_day.get(name, 0):7.3f}"
            )
        extra = sorted(self.alarmed - self.needs_human)
        missing = sorted(self.needs_human - self.alarmed)
        out += [
            f"  accounts that needed a human (revoked): {len(self.needs_human)}; accounts alarmed: "
            f"{len(self.alarmed)}; alarmed without need: {len(extra)}; needed but not alarmed: {len(missing)}",
            f"  alarm messages received by the webhook: {dict(self.alarm_messages)}",
            f"  revoked but not yet due when the run ended (no call owed, nothing to notice): "
            f"{len(self.revoked_not_yet_due)}",
            f"  secrets in alarms or logs: {len(self.leaked)} (must be 0)",
        ]
        return out


class WebhookReceiver:
    """A real HTTP endpoint on loopback that records every alarm POSTed to it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.bodies: list[str] = []
        self.port = 0
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def _receive(self, request: Request) -> Response:
        body = (await request.body()).decode("utf-8", "replace")
        self.bodies.append(body)
        self.messages.append(json.loads(body))
        return JSONResponse({"ok": True})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alarm"

    async def __aenter__(self) -> WebhookReceiver:
        app = Starlette(routes=[Route("/alarm", self._receive, methods=["POST"])])
        self._server, self._task, self.port = await start_server(app, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None and self._task is not None:
            await stop_server(self._server, self._task)


def config_document(sandbox: SandboxLink, webhook: WebhookReceiver, tmp: Path, cfg: SoakConfig) -> dict[str, Any]:
    """Every app on its platform's default schedule and refresh window (no ``schedule``/``interval``)."""
    apps = {
        name: {
            **sandbox.app_config(name),
            "concurrency": cfg.concurrency,
            "rate_limit": 10000,
            "timeout": "2s",
            "retry": {"attempts": cfg.attempts, "initial_delay": "10ms", "max_delay": "50ms"},
            **cfg.app_overrides.get(name, {}),
        }
        for name in PLATFORMS
    }
    return {
        "store": {"url": f"sqlite:///{tmp / 'soak.db'}"},
        "server": {"enabled": False},
        "logging": {"level": "warning", "format": "json"},
        "alerts": {
            "after_failures": cfg.after_failures,
            "channels": [{"type": "webhook", "name": "soak", "url": webhook.url, "timeout": "5s"}],
        },
        "apps": apps,
    }


def minimum_refreshes_per_day(platform: str, days: float) -> float:
    """The fewest refreshes one account needs over ``days``: a token issued at the start lasts one
    access lifetime, so ``floor(days / lifetime)`` refreshes, spread over the days."""
    life = DEFAULT_LIFETIMES[platform].access
    return (dt.timedelta(days=days) // life) / days


async def run_soak(cfg: SoakConfig, tmp: Path) -> SoakReport:
    say = cfg.progress or (lambda _line: None)
    rng = random.Random(cfg.seed)
    clock = FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    async with (
        SandboxLink(clock.now(), seed=cfg.seed, fault_delay=2.2, own_process=cfg.sandbox_process) as sandbox,
        WebhookReceiver() as webhook,
    ):
        settings = parse_config(
            yaml.safe_dump(config_document(sandbox, webhook, tmp, cfg)),
            file="soak.yaml",
            credential_models=platforms.credential_models(),
        )
        configure_logging(settings.logging)
        daemon = Daemon(settings, clock=clock)
        if cfg.batch:
            daemon.refresher._batch_size = cfg.batch  # a tuning knob of the worker, not a behaviour change
        await daemon.start(schedule=False)
        try:
            started = time.perf_counter()
            await _onboard(daemon, sandbox, cfg, say)
            onboard_seconds = time.perf_counter() - started
            per_platform = {name: await daemon.store.count(app=name) for name in PLATFORMS}
            total = sum(per_platform.values())
            say(f"onboarded {total} accounts {per_platform} in {onboard_seconds:.1f} s")

            revocations = await _plan_revocations(daemon, cfg, rng, clock.now())
            needs_human: set[tuple[str, str]] = set()
            expired: list[str] = []
            failed_sweeps = 0
            failed_attempts: Counter[int] = Counter()  # attempts reported by failed sweeps
            worst = 0
            ticks_done = 0
            last_progress = time.perf_counter()
            end = clock.now() + dt.timedelta(days=cfg.days)
            await sandbox.set_faults(cfg.fault_spec, seed=cfg.seed)

            async def listen(event: RefreshEvent, account: Any, tokens: Any) -> None:
                nonlocal failed_sweeps, worst
                if event.outcome == "failure" and event.error is not None:
                    if event.error.error_class in ("transient", "malformed"):
                        failed_sweeps += 1
                        failed_attempts[event.attempts] += 1
                    worst = max(worst, event.consecutive_failures)

            daemon.refresher.listeners.append(listen)

            async def tick(app: str) -> None:
                nonlocal ticks_done, last_progress
                if cfg.deadline is not None and time.perf_counter() - started > cfg.deadline:
                    raise _TimeUp
                now = clock.now()
                await sandbox.set_clock(now)
                # Revoke the grants whose moment has come (between sweeps, as a seller would).
                while revocations and revocations[0][0] <= now:
                    _, r_app, key = revocations.pop(0)
                    if await _revoke_current(daemon, sandbox, r_app, key):
                        needs_human.add((r_app, key))
                # Before the sweep: has any active account's access token run out since the last one?
                earliest = await daemon.store.earliest_expiry(app)
                if earliest is not None and earliest <= now:
                    for account in await _all(daemon, app, AccountStatus.ACTIVE):
                        if account.tokens and account.tokens.access_expires_at <= now:
                            expired.append(f"{app}/{account.key} expired {account.tokens.access_expires_at}")
                await daemon.tick(app)
                ticks_done += 1
                if time.perf_counter() - last_progress >= cfg.progress_every:
                    last_progress = time.perf_counter()
                    seen = await sandbox.counters()
                    rotated = sum(v for k, v in seen.items() if k.endswith(".rotated"))
                    reused = sum(v for k, v in seen.items() if k.endswith(".reuse"))
                    done = cfg.days + (clock.now() - end) / dt.timedelta(days=1)
                    say(
                        f"  simulated {clock.now():%Y-%m-%d %H:%M} ({done:.2f}/{cfg.days:g} days): "
                        f"{ticks_done} ticks, {rotated} refreshes, "
                        f"{time.perf_counter() - started:.0f} s real; so far: expired {len(expired)}, reuses {reused}"
                    )

            started, cpu_started = time.perf_counter(), time.process_time()
            try:
                ticks = await simulate(
                    settings, platforms.available(), clock, end, tick, daemon.store.earliest_urgent_retry
                )
            except _TimeUp:
                ticks = ticks_done
                say(f"  deadline of {cfg.deadline:g} s reached at {clock.now():%Y-%m-%d %H:%M}: the run ends here")
            days = (clock.now() - (end - dt.timedelta(days=cfg.days))) / dt.timedelta(days=1)
            run_seconds = time.perf_counter() - started
            run_cpu = time.process_time() - cpu_started
            await sandbox.set_faults(None)
            # A token may have run out after each app's last tick: look once more at the end.
            for app in PLATFORMS:
                for account in await _all(daemon, app, AccountStatus.ACTIVE):
                    if account.tokens and account.tokens.access_expires_at <= clock.now():
                        expired.append(f"{app}/{account.key} expired {account.tokens.access_expires_at} (at end)")
            not_yet_due = await revoked_but_not_yet_due(daemon, needs_human)
            needs_human -= not_yet_due
            lost, needs_reauth = await _check_chains(daemon, sandbox, needs_human | not_yet_due)
        finally:
            await daemon.stop(grace=10)  # also flushes the alarm dispatcher

        counters = await sandbox.counters()
        sandbox_cpu = sandbox.cpu_seconds()
        alarmed = {(m["app"], m["account_key"]) for m in webhook.messages if m.get("kind") == "alarm"}
        leaked = _leaks(webhook.bodies)

    calls = {
        name: (
            counters.get(f"{name}.refresh", 0) + sum(v for k, v in counters.items() if k.startswith(f"{name}.fault."))
        )
        / max(per_platform[name] * days, 1e-9)
        for name in PLATFORMS
    }
    rotations = {name: counters.get(f"{name}.rotated", 0) / max(per_platform[name] * days, 1e-9) for name in PLATFORMS}
    return SoakReport(
        accounts=total,
        per_platform=per_platform,
        days=days,
        days_asked=cfg.days,
        revoked_not_yet_due=not_yet_due,
        ticks=ticks,
        onboard_seconds=onboard_seconds,
        run_seconds=run_seconds,
        expired_while_refreshable=expired,
        lost_refresh_tokens=lost,
        reuses=sum(v for k, v in counters.items() if k.endswith(".reuse")),
        counters=counters,
        calls_per_account_day=calls,
        rotations_per_account_day=rotations,
        minimum_per_account_day={name: minimum_refreshes_per_day(name, days) for name in PLATFORMS},
        faults_injected=sum(v for k, v in counters.items() if ".fault." in k),
        failed_sweeps=failed_sweeps,
        max_consecutive_failures=worst,
        failed_attempts=failed_attempts,
        needs_human=needs_human,
        alarmed=alarmed,
        alarm_messages=Counter(f"{m.get('kind')}:{m.get('cause')}" for m in webhook.messages),
        needs_reauth=needs_reauth,
        leaked=leaked,
        sandbox_cpu_seconds=sandbox_cpu,
        run_cpu_seconds=run_cpu,
    )


class _TimeUp(Exception):
    """The run's real-time deadline passed (raised between sweeps, never inside one)."""


async def revoked_but_not_yet_due(daemon: Daemon, revoked: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The revoked accounts the daemon had no reason to call since their revocation: still active, and
    their access token not yet inside its refresh window. Any other revoked account is owed an alarm."""
    now = daemon.clock.now()
    quiet = set()
    for app, key in revoked:
        account = await daemon.store.get(app, key)
        if account is None or account.status != AccountStatus.ACTIVE or account.tokens is None:
            continue
        window = daemon.settings.apps[app].refresh_before or platforms.get(account.platform).default_refresh_before
        if account.tokens.access_expires_at - window > now:
            quiet.add((app, key))
    return quiet


async def _onboard(daemon: Daemon, sandbox: SandboxLink, cfg: SoakConfig, say: Callable[[str], None]) -> None:
    """Authorize grants through the sandbox's consent flow, a few at a time, as sellers would."""
    semaphore = asyncio.Semaphore(8)

    async def one(name: str) -> None:
        options, _ = GRANT_OPTIONS[name]
        plugin = daemon.platforms[name]
        async with semaphore:
            pkce = plugin.pkce_pair()
            params = await sandbox.approve(plugin.authorize_url("soak", plugin.app.redirect_uri, pkce), **options)
            for grant in await plugin.exchange_code(params, pkce, plugin.app.redirect_uri):
                await daemon.store.upsert_grant(name, name, grant)

    for name in PLATFORMS:
        _, per_grant = GRANT_OPTIONS[name]
        grants = max(1, round(cfg.accounts / len(PLATFORMS) / per_grant))
        await asyncio.gather(*(one(name) for _ in range(grants)))
        say(f"  onboarded {name}: {await daemon.store.count(app=name)} accounts")


async def _all(daemon: Daemon, app: str, status: AccountStatus | None = None) -> list[Any]:
    accounts: list[Any] = []
    while True:
        page = await daemon.store.list(app=app, status=status, limit=1000, offset=len(accounts))
        accounts.extend(page)
        if len(page) < 1000:
            return accounts


async def _plan_revocations(
    daemon: Daemon, cfg: SoakConfig, rng: random.Random, start: dt.datetime
) -> list[tuple[dt.datetime, str, str]]:
    """Pick ``cfg.revoked`` accounts (round-robin over the platforms) and a moment for each, after the
    first simulated day (so Shopee's shared first tokens have split) and before the last quarter.

    refresher learns of a revocation only when it next refreshes the account, so only platforms whose
    tokens come due inside the run are eligible: in a 4-day run TikTok Shop (first refresh after 6 days)
    and Lazada (after 20 days) cannot show a revocation, in the 30-day run all four do."""
    plan = []
    eligible = [
        name
        for name in PLATFORMS
        if DEFAULT_LIFETIMES[name].access - platforms.get(name).default_refresh_before
        < dt.timedelta(days=cfg.days * 0.75)
    ]
    for i in range(cfg.revoked):
        app = eligible[i % len(eligible)]
        accounts = await _all(daemon, app)
        account = rng.choice(accounts)
        # Revoke before the account next comes due, or the run would end before anyone could notice.
        first_due = (DEFAULT_LIFETIMES[app].access - platforms.get(app).default_refresh_before) / dt.timedelta(days=1)
        latest = cfg.days * 0.75 if first_due <= 1 else min(cfg.days * 0.75, first_due - 0.1)
        at = start + dt.timedelta(days=1 + rng.random() * max(latest - 1, 0.1))
        plan.append((at, app, account.key))
    return sorted(plan)


async def _revoke_current(daemon: Daemon, sandbox: SandboxLink, app: str, key: str) -> bool:
    """Revoke, on the platform, the grant whose refresh token the account holds right now."""
    account = await daemon.store.get(app, key)
    if account is None or account.tokens is None:
        return False
    return await sandbox.revoke_holder_of(account.platform, account.tokens.refresh_token)


async def _check_chains(
    daemon: Daemon, sandbox: SandboxLink, revoked: set[tuple[str, str]]
) -> tuple[list[str], set[tuple[str, str]]]:
    """Every account not revoked must hold its chain's *current* refresh token, unexpired and unrevoked:
    that is the one token the platform would accept. Anything else is a lost refresh token. (The
    sandbox shows fingerprints of its tokens, never the tokens: the stored one is compared by its own.)"""
    by_token = {(c["platform"], c["refresh_fingerprint"]): c for c in await sandbox.chains()}
    now = daemon.clock.now()
    lost: list[str] = []
    needs_reauth: set[tuple[str, str]] = set()
    for app in PLATFORMS:
        for account in await _all(daemon, app):
            if account.status == AccountStatus.NEEDS_REAUTH:
                needs_reauth.add((app, account.key))
            if (app, account.key) in revoked:
                continue
            if account.status != AccountStatus.ACTIVE or account.tokens is None:
                lost.append(f"{app}/{account.key}: status {account.status}")
                continue
            chain = by_token.get((account.platform, fingerprint(account.tokens.refresh_token)))
            if chain is None:
                lost.append(f"{app}/{account.key}: stored refresh token is no chain's current one")
            elif chain["revoked"] or dt.datetime.fromisoformat(chain["refresh_expires_at"]) <= now:
                lost.append(f"{app}/{account.key}: chain {chain['id']} revoked or expired")
    return lost, needs_reauth


def _leaks(bodies: list[str]) -> list[str]:
    secrets = [secret_of(SANDBOX_CREDENTIALS[p]) for p in PLATFORMS]
    # Name the message, never quote it: the quote would put the secret into the test report.
    return [
        f"alarm message #{i}"
        for i, body in enumerate(bodies)
        if TOKEN_RE.search(body) or any(s in body for s in secrets)
    ]
