"""Hostile platforms: every bad answer of the corpus (tests/hostile_corpus.py) fed to each plugin's
``refresh`` and ``exchange_code`` over a real socket, then a daemon sweep against the same server.

Each answer must be classified as the taxonomy says, in bounded time (the app's timeout), in bounded
memory (well under the 50 MB bodies the server sends), and with no secret in the error or the logs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from refresher import platforms
from refresher.config import AppSettings, Settings, parse_config
from refresher.daemon import Daemon
from refresher.domain import (
    AccountStatus,
    FakeClock,
    Grant,
    Identity,
    MalformedAnswer,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TokenSet,
    TransientError,
)
from refresher.logging import configure_logging, reset_logging
from refresher.platforms.base import make_http_client
from tests import support
from tests.hostile_corpus import (
    APP_SECRETS,
    AUTH_CODE,
    NEW_ACCESS_TOKEN,
    NEW_REFRESH_TOKEN,
    OLD_REFRESH_TOKEN,
    PLATFORMS,
    Case,
    HostileServer,
    corpus,
    error_envelope,
    http,
    json_answer,
    secrets_of,
    success,
)

START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
NOW = int(START.timestamp())
TIMEOUT = 1.0  # the app timeout: every case must end within it (plus scheduling slack)
MEMORY_CAP = 10 * 1024 * 1024  # tracemalloc peak per case; the server sends up to 50 MB

IDS = [(p, c.name) for p in PLATFORMS for c in corpus(p, NOW, "http://127.0.0.1:9")]


def test_corpus_has_at_least_thirty_bad_answers_per_platform() -> None:
    for platform in PLATFORMS:
        bad = [c for c in corpus(platform, NOW, "http://x") if c.expect is not None]
        assert len(bad) >= 30, (platform, len(bad))
        assert len({c.name for c in corpus(platform, NOW, "http://x")}) == len(corpus(platform, NOW, "http://x"))


def app_settings(platform: str, url: str, **extra: Any) -> Settings:
    cls = platforms.get(platform)
    document = {
        "server": {"enabled": False},
        **extra.pop("top", {}),
        "apps": {
            platform: {
                "platform": platform,
                "hosts": {role: url for role in cls.default_hosts},
                "redirect_uri": f"https://erp.example.com/callback/{platform}",
                "timeout": f"{TIMEOUT}s",
                **APP_SECRETS[platform],
                **extra,
            }
        },
    }
    return parse_config(yaml.safe_dump(document), file="hostile.yaml", credential_models=platforms.credential_models())


def identity_of(platform: str) -> Identity:
    if platform == "shopee":
        return Identity(key="shop:14701711", kind="shop", platform_id="14701711")
    return Identity(key="hostile-open-id", kind="seller", platform_id="hostile-open-id")


def callback_of(platform: str) -> dict[str, str]:
    params = {"code": AUTH_CODE, "state": "s"}
    if platform == "shopee":
        params["shop_id"] = "14701711"
    return params


@pytest.fixture
async def hostile() -> AsyncIterator[HostileServer]:
    async with HostileServer() as server:
        yield server


@pytest.fixture
async def elsewhere() -> AsyncIterator[HostileServer]:
    """Where redirects point: it must never be called (no redirect is followed with our secrets)."""
    async with HostileServer(respond=http(200, b"{}")) as server:
        yield server


def assert_no_secret(platform: str, texts: list[str]) -> None:
    support.assert_no_secret(texts, secrets_of(platform), "an error text")


async def run_case(plugin: Any, case: Case, call: str, platform: str) -> tuple[Any, float, int, list[str]]:
    """Run one plugin call; returns (result or error, seconds, tracemalloc peak, captured log lines)."""
    tracemalloc.start()
    started = time.monotonic()
    result: Any
    with structlog.testing.capture_logs() as logs:
        try:
            if call == "refresh":
                result = await plugin.refresh(identity_of(platform), OLD_REFRESH_TOKEN)
            else:
                pkce = plugin.pkce_pair()
                result = await plugin.exchange_code(callback_of(platform), pkce, plugin.app.redirect_uri)
        except Exception as exc:  # noqa: BLE001 - anything that is not a RefresherError fails below
            result = exc
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, elapsed, peak, [json.dumps(entry, default=str) for entry in logs]


def check(platform: str, case: Case, call: str, result: Any, elapsed: float, peak: int, logs: list[str]) -> None:
    where = f"{platform}/{case.name}/{call}"
    assert elapsed < TIMEOUT + 1.5, f"{where}: took {elapsed:.1f}s"
    assert peak < MEMORY_CAP, f"{where}: peak {peak / 1e6:.1f} MB"
    expect = case.expect
    if call == "exchange" and expect is RefreshTokenRejected:
        expect = ReauthRequired  # a rejected code is a reauth matter whatever the subclass
    if expect is None:
        assert not isinstance(result, BaseException), f"{where}: {type(result).__name__}: {result}"
        tokens: TokenSet = result if call == "refresh" else result[0].tokens
        assert (tokens.access_token, tokens.refresh_token) == (NEW_ACCESS_TOKEN, NEW_REFRESH_TOKEN), where
        assert tokens.access_expires_at.tzinfo is not None
        texts = [repr(tokens), json.dumps(dict(tokens.raw), default=str)]
    else:
        assert isinstance(result, RefresherError), f"{where}: got {type(result).__name__}: {result!r}"
        assert isinstance(result, expect), f"{where}: {type(result).__name__} ({result}) is not {expect.__name__}"
        if case.exact and expect is TransientError:
            assert not isinstance(result, MalformedAnswer), f"{where}: {result}"
        assert result.platform == platform, where
        if case.retry_after is not None and call == "refresh":
            low, high = case.retry_after
            assert result.retry_after is not None and low <= result.retry_after <= high, (where, result.retry_after)
        # One clear line: no newline, bounded length.
        assert "\n" not in str(result) and len(str(result)) < 400, (where, str(result))
        texts = [str(result), repr(result), result.message, repr(result.info()), repr(result.args)]
    assert_no_secret(platform, texts + logs)


@pytest.mark.parametrize(("platform", "name"), IDS, ids=[f"{p}-{n}" for p, n in IDS])
async def test_bad_answer_is_classified_quickly_in_bounded_memory_without_secrets(
    platform: str, name: str, hostile: HostileServer, elsewhere: HostileServer
) -> None:
    case = next(c for c in corpus(platform, NOW, elsewhere.url) if c.name == name)
    hostile.respond = case.respond
    clock = FakeClock(START)
    settings = app_settings(platform, hostile.url)
    async with make_http_client() as client:
        plugin = platforms.get(platform)(settings.apps[platform], http=client, clock=clock)
        calls = ["refresh", "exchange"] if case.name not in ("slow-drip-headers",) else ["refresh"]
        for call in calls:
            hostile.received.clear()
            result, elapsed, peak, logs = await run_case(plugin, case, call, platform)
            check(platform, case, call, result, elapsed, peak, logs)
            # The plugin itself never retries: that is the refresh worker's job, with backoff.
            # (By path: a shop API's query carries access_token too.)
            token_calls = [r for r in hostile.received if "token" in r.target.split("?")[0] or "/auth/" in r.target]
            assert len(token_calls) == 1, (call, [r.target for r in hostile.received])
    assert elsewhere.received == [], "a redirect was followed"


async def test_secrets_travel_only_where_the_platform_wants_them(hostile: HostileServer) -> None:
    """TikTok Shop puts the app secret in the token URL's query (its API wants it so); the others keep the
    refresh token out of URLs, so access logs of proxies in between never see it."""
    for platform in PLATFORMS:
        hostile.respond = json_answer(200, error_envelope(platform, "busy"))
        hostile.received.clear()
        settings = app_settings(platform, hostile.url)
        async with make_http_client() as client:
            plugin = platforms.get(platform)(settings.apps[platform], http=client, clock=FakeClock(START))
            with pytest.raises(TransientError):
                await plugin.refresh(identity_of(platform), OLD_REFRESH_TOKEN)
        (request,) = hostile.received
        if platform != "tiktok_shop":
            assert OLD_REFRESH_TOKEN not in request.target, platform
            assert OLD_REFRESH_TOKEN in request.body.decode(), platform


# -------------------------------------------------------------------------------- a daemon sweep


class Sweep:
    """A daemon with one account of ``platform`` whose platform is the hostile server."""

    def __init__(self, platform: str, hostile: HostileServer, webhook: HostileServer, tmp: Path) -> None:
        self.platform = platform
        self.hostile = hostile
        self.webhook = webhook
        self.clock = FakeClock(START)
        self.settings = app_settings(
            platform,
            hostile.url,
            retry={"attempts": 3, "initial_delay": "10ms", "max_delay": "20ms"},
            top={
                "store": {"url": f"sqlite:///{tmp / 'tokens.db'}"},
                "logging": {"level": "debug", "format": "json"},
                "alerts": {
                    "after_failures": 2,
                    "delivery_attempts": 1,
                    "channels": [
                        {
                            "type": "webhook",
                            "name": "ops",
                            "url": f"{webhook.url}/hook",
                            "secret": "webhook-signing-secret-0123456789",
                        }
                    ],
                },
            },
        )
        self.daemon = Daemon(self.settings, clock=self.clock)

    async def __aenter__(self) -> Sweep:
        await self.daemon.start(schedule=False)
        tokens = TokenSet(
            access_token="AOLD-hostile-access-token-0f1e2d3c4b5a6978",
            refresh_token=OLD_REFRESH_TOKEN,
            access_expires_at=START + dt.timedelta(minutes=5),  # due now on every platform
            refresh_expires_at=START + dt.timedelta(days=20),
        )
        await self.daemon.store.upsert_grant(self.platform, self.platform, Grant(identity_of(self.platform), tokens))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.daemon.stop(grace=2)

    async def account(self) -> Any:
        account = await self.daemon.store.get(self.platform, identity_of(self.platform).key)
        assert account is not None
        return account

    async def tick(self, case_respond: Any) -> int:
        """One sweep against ``case_respond``; returns the number of token calls the platform saw (a
        success is followed by the identity's own reads, Shopee's authorized list or TikTok Shop's shops,
        which are not refreshes)."""
        self.hostile.respond = case_respond
        self.hostile.received.clear()
        await self.daemon.tick(self.platform)
        return len([r for r in self.hostile.received if not r.target.startswith(IDENTITY_READS)])

    async def hooks(self, count: int) -> list[dict[str, Any]]:
        """Wait (briefly) for ``count`` webhook deliveries; alarms are sent after the commit."""
        for _ in range(100):
            if len(self.webhook.received) >= count:
                break
            await asyncio.sleep(0.05)
        return [json.loads(r.body) for r in self.webhook.received]


# Calls a plugin makes after a refresh to keep the account's identity current (Platform.updated_identity).
IDENTITY_READS = (
    "/api/v2/public/get_shops_by_partner",
    "/api/v2/public/get_merchants_by_partner",
    "/api/v2/shop/get_shop_info",
    "/authorization/",
)


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_sweep_retries_transient_answers_and_never_drops_the_refresh_token(
    platform: str, hostile: HostileServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async with HostileServer(respond=http(200, b"{}")) as webhook, Sweep(platform, hostile, webhook, tmp_path) as run:
        configure_logging(run.settings.logging)
        try:
            # 1. A gateway's HTML 503 page: transient, retried within the sweep (3 attempts), then backoff.
            calls = await run.tick(http(503, b"<html>Service Unavailable</html>", content_type="text/html"))
            assert calls == 3
            account = await run.account()
            assert account.status == AccountStatus.ACTIVE
            assert account.consecutive_failures == 1
            assert account.next_attempt_at is not None and account.next_attempt_at > run.clock.now()
            assert account.tokens.refresh_token == OLD_REFRESH_TOKEN
            assert account.last_error is not None and account.last_error.error_class == "transient"
            assert await run.daemon.store.open_alarms(platform) == []  # one failed sweep is not an alarm

            # Not due yet: the next sweep leaves it alone (no call to the platform).
            assert await run.tick(http(503, b"")) == 0

            # 2. A malformed answer (a login page with 200) is retried the same way; the second failed
            #    sweep reaches after_failures=2 and raises the "failures" alarm.
            run.clock.set(account.next_attempt_at + dt.timedelta(seconds=1))
            from tests.hostile_corpus import HTML_LOGIN

            assert await run.tick(http(200, HTML_LOGIN, content_type="text/html")) == 3
            account = await run.account()
            assert account.consecutive_failures == 2
            assert account.last_error.error_class == "malformed"
            assert account.tokens.refresh_token == OLD_REFRESH_TOKEN
            alarms = await run.daemon.store.open_alarms(platform)
            assert [a.cause for a in alarms] == ["failures"]

            # 3. The refresh token is refused: one call, no retry, needs_reauth, an alarm at once.
            run.clock.set(account.next_attempt_at + dt.timedelta(seconds=1))
            assert await run.tick(json_answer(200, error_envelope(platform, "rejected"))) == 1
            account = await run.account()
            assert account.status == AccountStatus.NEEDS_REAUTH
            assert account.next_attempt_at is None
            assert account.tokens.refresh_token == OLD_REFRESH_TOKEN  # kept: a resend code may still recover
            assert "reauth_required" in {a.cause for a in await run.daemon.store.open_alarms(platform)}
            hooks = await run.hooks(2)
            assert len(hooks) >= 2, hooks
            # A needs_reauth account is never called again by sweeps.
            run.clock.advance(dt.timedelta(hours=2))
            assert await run.tick(json_answer(200, error_envelope(platform, "busy"))) == 0
        finally:
            reset_logging()
    out, err = capfd.readouterr()
    logged = out + err
    assert '"refresh"' in logged or "refresh" in logged
    assert_no_secret(platform, [logged, *(json.dumps(h) for h in hooks)])
    assert "webhook-signing-secret-0123456789" not in logged


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_sweep_config_error_is_not_retried_and_alarms_at_once(
    platform: str, hostile: HostileServer, tmp_path: Path
) -> None:
    async with HostileServer(respond=http(200, b"{}")) as webhook, Sweep(platform, hostile, webhook, tmp_path) as run:
        assert await run.tick(json_answer(200, error_envelope(platform, "config"))) == 1
        account = await run.account()
        assert account.status == AccountStatus.ACTIVE  # the operator fixes the app; the grant is fine
        assert account.next_attempt_at is not None
        assert account.next_attempt_at - run.clock.now() >= dt.timedelta(minutes=5)
        assert account.tokens.refresh_token == OLD_REFRESH_TOKEN
        assert [a.cause for a in await run.daemon.store.open_alarms(platform)] == ["config_error"]
        hooks = await run.hooks(1)
        assert hooks, "no config_error alarm delivered"
        assert_no_secret(platform, [json.dumps(h) for h in hooks])

        # A slow drip and a 50 MB body: retried, bounded, the token kept.
        from tests.hostile_corpus import drip, huge

        run.clock.set(account.next_attempt_at + dt.timedelta(seconds=1))
        started = time.monotonic()
        assert await run.tick(drip(interval=0.2)) == 3
        assert time.monotonic() - started < 3 * TIMEOUT + 2
        run.clock.advance(dt.timedelta(hours=1))
        assert await run.tick(huge(declared=False)) == 3
        account = await run.account()
        assert account.tokens.refresh_token == OLD_REFRESH_TOKEN
        assert account.consecutive_failures == 3

        # And when the platform recovers, the new token is stored and the alarms resolve.
        run.clock.advance(dt.timedelta(hours=1))
        from tests.hostile_corpus import success

        assert await run.tick(json_answer(200, success(platform, int(run.clock.now().timestamp())))) == 1
        account = await run.account()
        assert account.tokens.refresh_token == NEW_REFRESH_TOKEN
        assert account.consecutive_failures == 0
        assert await run.daemon.store.open_alarms(platform) == []


def test_app_settings_helper_points_every_role_at_the_server() -> None:
    for platform in PLATFORMS:
        app: AppSettings = app_settings(platform, "http://127.0.0.1:1").apps[platform]
        plugin = platforms.get(platform)(app)
        for role in plugin.default_hosts:
            assert plugin.host(role).startswith("http://127.0.0.1:1"), (platform, role)


EXPIRY_FIELD = {
    "shopee": "expire_in",
    "tiktok_shop": "access_token_expire_in",
    "lazada": "expires_in",
    "tiktok": "expires_in",
}


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_new_tokens_in_a_flawed_answer_are_kept_not_dropped(
    platform: str, hostile: HostileServer, tmp_path: Path
) -> None:
    """The platform rotated and answered the new pair with an unreadable expiry: the old refresh token is
    spent, so dropping the new pair would cost a re-authorization. It is kept, with a short expiry, and
    never retried over (a retry would send the spent token)."""
    from tests.hostile_corpus import NEW_ACCESS_TOKEN, NEW_REFRESH_TOKEN

    async with HostileServer(respond=http(200, b"{}")) as webhook, Sweep(platform, hostile, webhook, tmp_path) as run:
        flawed = success(platform, int(run.clock.now().timestamp()), **{EXPIRY_FIELD[platform]: "soon"})
        assert await run.tick(json_answer(200, flawed)) == 1  # no retry over a spent token
        account = await run.account()
        assert account.tokens.refresh_token == NEW_REFRESH_TOKEN
        assert account.tokens.access_token == NEW_ACCESS_TOKEN
        assert account.status == AccountStatus.ACTIVE and account.consecutive_failures == 0
        # Short-lived on purpose: the next sweep refreshes it with the new refresh token.
        assert account.tokens.access_expires_at <= run.clock.now() + dt.timedelta(minutes=10)
        assert await run.tick(json_answer(200, success(platform, int(run.clock.now().timestamp())))) == 1
        sent = [r for r in hostile.received if not r.target.startswith(IDENTITY_READS)][-1]
        assert NEW_REFRESH_TOKEN in sent.target + sent.body.decode("latin-1")
