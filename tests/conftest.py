"""Fixtures shared by the test modules, one per real component, and the test tiers.

Fixtures: ``clock`` (a FakeClock at the current second), ``sandbox`` (the built-in platform stand-in on a
loopback port, on ``clock``), ``store_url`` and ``store`` (a real store, once on a SQLite file and once in a
throwaway PostgreSQL schema; the PostgreSQL run is skipped when the server cannot be reached), ``daemon``
(a running daemon wired to ``sandbox`` with one app per platform), ``http`` (an httpx client made like the
daemon's). A module that needs something else defines its own fixture of the same name.

Tiers: ``python -m pytest -m "not slow"`` is the fast tier a developer runs while working (under a minute
on two cores); CI runs everything. A test is slow when it is marked ``@pytest.mark.slow`` or lives in one
of the end-to-end modules in ``SLOW_MODULES`` (real processes, browsers, simulated weeks, hostile corpora),
is listed in ``SLOW_TESTS``, needs PostgreSQL (``@pytest.mark.postgres``, or the PostgreSQL run of a test
parametrized over both store engines). With exactly ``-m "not slow"`` the slow modules are not even
imported.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.platforms.transport import make_http_client
from refresher.sandbox import SandboxServer
from refresher.store import SqlStore
from tests.onboarding_support import running_daemon
from tests.support import pg_schema

# Whole modules of end-to-end and real-database tests: each starts real processes or servers many times,
# opens and migrates real stores test after test, or drives long simulations. Listed here rather than
# marked in each file, so that the tiers are visible in one place.
SLOW_MODULES = frozenset(
    {
        "test_alerts_e2e",
        "test_api",
        "test_authorize_cli",
        "test_bad_config_corpus",
        "test_cli_bad_args",
        "test_client",
        "test_connect",
        "test_conformance",
        "test_console",
        "test_console_alarms_browser",
        "test_console_browse",
        "test_console_browser",
        "test_console_replicas",
        "test_crash_restart",
        "test_daemon_process",
        "test_demo_cli",
        "test_event_delivery",
        "test_deploy",
        "test_exchange_cli",
        "test_hostile_platform",
        "test_lazada",
        "test_lazop_sdk",
        "test_leases",
        "test_multiprocess_refresh",
        "test_onboarding_browser",
        "test_onboarding_flow",
        "test_onboarding_web",
        "test_properties",
        "test_proxy",
        "test_proxy_fast_path",
        "test_replicas",
        "test_schemathesis",
        "test_shopee",
        "test_shopee_shop_info",
        "test_simulated_month",
        "test_soak",
        "test_not_yet_due",  # the soak harness's split, on a real daemon and sandbox
        "test_store",
        "test_store_cli",
        "test_store_concurrency",
        "test_store_outage",
        "test_store_retention",
        "test_tiktok",
        "test_tiktok_shop",
        "test_token_read",
        "test_token_cache",
    }
)
# Single slow tests of otherwise fast modules (by "module::name" prefix): each runs the CLI as a
# subprocess several times, or compares thousands of generated schedules.
SLOW_TESTS = (
    "test_config::test_check_config_cli_",
    "test_config_example::test_check_config_cli_",
    "test_console_browse::test_keyset_pages_list_every_account_once_in_order",
    "test_cron::test_generated_weekday_fields_match_croniter",
    "test_logging::test_full_process_output_has_no_secret",
    "test_urgent_retry::test_two_failed_sweeps_near_expiry_",
)
# Fast modules that also hold a few process-starting tests, all of them listed in SLOW_TESTS.
# tests/test_tiers.py fails for any other module that starts processes or servers and is not slow.
MIXED_MODULES = frozenset({"test_config", "test_config_example", "test_logging", "test_urgent_retry"})
FAST_TIER = "not slow"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """In the fast tier, do not even import the slow modules: importing them (schemathesis, playwright,
    the hostile corpora ...) costs more than the fast tests take to run."""
    if config.option.markexpr == FAST_TIER and collection_path.stem in SLOW_MODULES:
        return True
    return None


def is_slow(item: pytest.Item) -> bool:
    if item.get_closest_marker("slow") or item.get_closest_marker("postgres") or item.path.stem in SLOW_MODULES:
        return True
    if f"{item.path.stem}::{item.name}".startswith(SLOW_TESTS):
        return True
    # The PostgreSQL run of a test parametrized over both engines: the SQLite run stays in the fast tier.
    params = getattr(item, "callspec", None)
    return params is not None and "postgresql" in params.params.values()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def clock() -> FakeClock:
    """Simulated time starting now (whole seconds, as the platforms' timestamps are)."""
    return FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[SandboxServer]:
    """The four platforms' stand-in on a free loopback port, on the test's clock."""
    async with SandboxServer(clock=clock) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL: a SQLite file in ``tmp_path``, or a fresh PostgreSQL schema dropped afterwards."""
    with contextlib.ExitStack() as stack:
        yield f"sqlite:///{tmp_path}/tokens.db" if request.param == "sqlite" else stack.enter_context(pg_schema())


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def role_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """Where a store role's contract test runs: ``None`` for its in-memory stand-in (store/memory.py), a
    SQLite file, or a fresh PostgreSQL schema. Open it with :func:`tests.support.store_or_fake`."""
    if request.param == "memory":
        yield None
        return
    with contextlib.ExitStack() as stack:
        yield f"sqlite:///{tmp_path}/tokens.db" if request.param == "sqlite" else stack.enter_context(pg_schema())


@pytest.fixture
async def store(store_url: str, clock: FakeClock) -> AsyncIterator[SqlStore]:
    """The real store on ``store_url``, migrated and open, closed after the test."""
    opened = SqlStore(store_url, clock=clock)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def daemon(sandbox: SandboxServer, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Daemon]:
    """A daemon with one app per platform on ``sandbox``, its server on a free port, its store in tmp_path."""
    async with running_daemon(sandbox, clock, tmp_path / "tokens.db") as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client made the way the daemon makes its own (timeouts, pool, raw bodies)."""
    client = make_http_client(timeout=5)
    try:
        yield client
    finally:
        await client.aclose()
