"""Token reads never hand out a token that will not work (issue 13, points 1 and 4).

Over real sockets: a daemon on a real port with a SQLite file, the sandbox platform, the token API, the
Python client (API and store sources) and the CLI all refuse the same accounts with the same reason; a
token inside the read margin is refreshed first, once however many readers ask; the re-authorization link
of a 409 (and of the alarm) completes a re-authorization without the admin token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr

from refresher.client import TokenRefused, TokenSource
from refresher.daemon import Daemon
from refresher.domain import AccountStatus, FakeClock
from refresher.invites import check_invite
from refresher.sandbox import SandboxServer
from refresher.token_read import MAX_DEFAULT_MARGIN, ReadMargin, ReadRefresher
from tests.onboarding_support import browse
from tests.test_api import APP, TOKENS, ApiEnv, build_settings, capture_json_logs

INVITE_SECRET = "invite-secret-token-read-0123456789"
READER = TOKENS["reader"][0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running_public(tmp_path: Path, capsys: pytest.CaptureFixture[str], **extra: Any) -> AsyncIterator[ApiEnv]:
    """The API test rig with a public URL (its own port) and an invitation secret, so links are signed;
    ``extra`` updates the settings' server (``server=``) and alerts (``alerts=``) sections."""
    with capture_json_logs(capsys) as read_logs:
        clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        async with SandboxServer(clock=clock) as sandbox:
            base = build_settings(sandbox, tmp_path / "tokens.db", apps=("shopee",))
            port = free_port()
            public = f"http://127.0.0.1:{port}"
            server = base.server.model_copy(
                update={"port": port, "public_url": public, "invite_secret": SecretStr(INVITE_SECRET)}
            )
            server = server.model_copy(update=extra.get("server", {}))
            alerts = base.alerts.model_copy(update=extra.get("alerts", {}))
            app = base.apps[APP].model_copy(update={"redirect_uri": f"{public}/callback/{APP}"})
            settings = base.model_copy(update={"server": server, "apps": {APP: app}, "alerts": alerts})
            daemon = Daemon(settings, clock=clock)
            await daemon.start(schedule=False)
            try:
                async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
                    yield ApiEnv(daemon, sandbox, clock, settings, http, read_logs)
            finally:
                await daemon.stop(grace=5)


@pytest.fixture
async def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[ApiEnv]:
    async with running_public(tmp_path, capsys) as running:
        yield running


def token_path(key: str) -> str:
    return f"/v1/accounts/{APP}/{quote(key, safe='')}/token"


async def refresh_calls(env: ApiEnv) -> int:
    counters = await env.counters()
    return sum(n for name, n in counters.items() if name.startswith("shopee.") and "refresh" in name)


def _cli(env: ApiEnv, tmp_path: Path, key: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from refresher.cli import main

    config = tmp_path / "cli.yaml"
    # The CLI needs the app in its config; the daemon's own settings file is not on disk, so name it here.
    config.write_text(
        f'store:\n  url: "{env.settings.store.url}"\n'
        "apps:\n  shopee-sg:\n    platform: shopee\n    partner_id: 100001\n"
        '    partner_key: "cli-partner-key-0123456789"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["token", APP, key, "-c", str(config)])
    return result.exit_code, result.stdout, result.stderr


async def test_needs_reauth_is_409_in_api_client_and_cli(env: ApiEnv, tmp_path: Path) -> None:
    (account,) = await env.onboard()
    assert account.tokens is not None
    await env.daemon.store.set_status(APP, account.key, AccountStatus.NEEDS_REAUTH)

    answer = await env.call("GET", token_path(account.key), "reader")
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert (body["status"], body["reason"]) == ("needs_reauth", "needs_reauth")
    assert account.tokens.access_token not in answer.text
    link = httpx.URL(body["reauth_url"])
    assert link.params["account"] == account.key
    check_invite(link.params["invite"], APP, secret=INVITE_SECRET, clock=env.clock, account=account.key)

    source = TokenSource.from_api(env.base, READER, clock=env.clock)
    try:
        with pytest.raises(TokenRefused) as refused:
            await source.get_token(APP, account.key)
        assert (refused.value.reason, refused.value.status) == ("needs_reauth", "needs_reauth")
        assert refused.value.reauth_url == body["reauth_url"]
        with pytest.raises(TokenRefused):  # in a thread: the daemon answers on this test's event loop
            await asyncio.to_thread(source.get_token_sync, APP, account.key)
    finally:
        await source.aclose()

    direct = TokenSource.from_store(env.daemon.store, clock=env.clock)
    with pytest.raises(TokenRefused) as from_store:
        await direct.get_token(APP, account.key)
    assert from_store.value.reason == "needs_reauth"

    code, out, err = await asyncio.to_thread(_cli, env, tmp_path, account.key)
    assert code == 1 and out == "" and "[needs_reauth]" in err
    assert account.tokens.access_token not in err


async def test_disabled_and_expired_are_409_and_every_200_says_status_and_identity(env: ApiEnv) -> None:
    first, second, *_ = await env.onboard(**{"as": "main", "shops": "2"})
    ok = await env.call("GET", token_path(first.key), "reader")
    assert ok.status_code == 200
    body = ok.json()
    assert body["status"] == "active" and body["identity"]["key"] == first.key and body["access_expires_at"]

    await env.daemon.store.set_status(APP, first.key, AccountStatus.DISABLED)
    disabled = await env.call("GET", token_path(first.key), "reader")
    assert disabled.status_code == 409
    assert disabled.json() == {
        "detail": f"account {first.key!r} of app {APP!r} is disabled",
        "status": "disabled",
        "reason": "disabled",
        "reauth_url": None,
    }

    # Past expiry with the platform failing every refresh: refused as expired, never the dead token.
    env.sandbox.set_faults("shopee:refresh:503")
    assert second.tokens is not None
    env.clock.advance(second.tokens.access_expires_at - env.clock.now() + dt.timedelta(seconds=1))
    expired = await env.call("GET", token_path(second.key), "reader")
    assert expired.status_code == 409, expired.text
    assert expired.json()["reason"] == "expired" and expired.json()["status"] == "active"
    assert second.tokens.access_token not in expired.text


async def test_twenty_concurrent_readers_inside_the_margin_make_one_platform_call(env: ApiEnv) -> None:
    (account,) = await env.onboard()
    assert account.tokens is not None
    env.clock.advance(account.tokens.access_expires_at - env.clock.now() - dt.timedelta(minutes=2))
    before = await refresh_calls(env)

    answers = await asyncio.gather(*(env.call("GET", token_path(account.key), "reader") for _ in range(20)))

    assert [a.status_code for a in answers] == [200] * 20
    tokens = {a.json()["access_token"] for a in answers}
    assert len(tokens) == 1 and account.tokens.access_token not in tokens  # all got the new token
    assert await refresh_calls(env) - before == 1
    stored = await env.daemon.store.get(APP, account.key)
    assert stored is not None and stored.version == account.version + 1

    # Outside the margin nothing is refreshed.
    again = await env.call("GET", token_path(account.key), "reader")
    assert again.status_code == 200 and await refresh_calls(env) - before == 1


async def test_readers_of_two_replicas_share_one_refresh_through_the_lease(env: ApiEnv) -> None:
    """A second refresher (another process's, with its own owner id) on the same store: its readers and
    the daemon's together make one platform call."""
    from refresher.refresh import Refresher

    (account,) = await env.onboard()
    assert account.tokens is not None
    daemon = env.daemon
    other = Refresher(env.settings, daemon.store, daemon.platforms, env.clock, "replica-b")
    env.clock.advance(account.tokens.access_expires_at - env.clock.now() - dt.timedelta(minutes=1))
    before = await refresh_calls(env)
    source = TokenSource.from_store(daemon.store, reader=ReadRefresher(other))

    api = [env.call("GET", token_path(account.key), "reader") for _ in range(10)]
    direct = [source.get_token(APP, account.key) for _ in range(10)]
    results = await asyncio.gather(*api, *direct)

    assert await refresh_calls(env) - before == 1
    api_tokens = {r.json()["access_token"] for r in results[:10]}  # type: ignore[attr-defined]
    direct_tokens = {r.token for r in results[10:]}  # type: ignore[attr-defined]
    assert api_tokens == direct_tokens and len(api_tokens) == 1


def test_default_margin_is_refresh_before_capped_at_five_minutes() -> None:
    assert ReadMargin().of(dt.timedelta(hours=1)) == MAX_DEFAULT_MARGIN
    assert ReadMargin().of(dt.timedelta(minutes=2)) == dt.timedelta(minutes=2)
    assert ReadMargin(dt.timedelta(seconds=30)).of(dt.timedelta(hours=1)) == dt.timedelta(seconds=30)


async def test_the_409s_link_reauthorizes_in_place_without_the_admin_token(env: ApiEnv) -> None:
    (account,) = await env.onboard()
    env.sandbox.state.revoke("shopee")
    refused = await env.call("POST", f"/v1/accounts/{APP}/{quote(account.key, safe='')}/refresh", "admin")
    assert refused.status_code == 502
    answer = await env.call("GET", token_path(account.key), "reader")
    assert answer.json()["reason"] == "needs_reauth"
    link = answer.json()["reauth_url"]

    # The seller: a plain HTTP client with no token of any kind, as curl would be.
    async with httpx.AsyncClient(timeout=30, trust_env=False) as seller:
        unsigned = await seller.get(f"{env.base}/connect/{APP}")
        assert unsigned.status_code == 401  # the door is shut without the invitation ...
        moved = link.replace(quote(account.key, safe=""), quote("shop:999", safe=""))
        assert (await seller.get(moved)).status_code == 403  # ... and the link is bound to its account
        visit = await browse(seller, link, options={"id": account.identity.platform_id})  # the same shop
    assert visit.final.status_code == 200, visit.final.text

    stored = await env.daemon.store.get(APP, account.key)
    assert stored is not None and stored.status == AccountStatus.ACTIVE and stored.version > account.version
    ok = await env.call("GET", token_path(account.key), "reader")
    assert ok.status_code == 200 and ok.json()["status"] == "active"


async def test_reauth_link_on_demand_and_the_audit_log_over_the_api(env: ApiEnv) -> None:
    (account,) = await env.onboard()
    path = f"/v1/accounts/{APP}/{quote(account.key, safe='')}"
    assert (await env.call("GET", path + "/reauth-link", "reader")).status_code == 403  # accounts:write
    answer = await env.call("GET", path + "/reauth-link", "writer")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["account"] == account.key
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert expires == env.clock.now() + dt.timedelta(days=7)
    url = httpx.URL(body["url"])
    assert body["id"] == url.params["id"] and body["single_use"] is False  # stored: revocable alone
    invitation = url.params["id"]
    assert check_invite(
        url.params["invite"], APP, secret=INVITE_SECRET, clock=env.clock, account=account.key, invitation=invitation
    )

    env.sandbox.set_faults("shopee:refresh:503|x1")
    assert (await env.call("POST", path + "/refresh", "admin")).status_code == 200  # retried past the fault
    assert (await env.call("POST", path + "/refresh", "admin")).status_code == 200
    events = await env.call("GET", path + "/events", "reader", params={"limit": 5})
    assert events.status_code == 200
    items = events.json()["items"]
    assert [i["outcome"] for i in items] == ["success", "success"]
    assert items[1]["attempts"] == 2 and isinstance(items[0]["duration_ms"], int)
    assert (await env.call("GET", f"/v1/accounts/{APP}/shop:1/events", "reader")).status_code == 404


def api_token_reads(env: ApiEnv) -> int:
    return sum(
        1
        for line in env.read_logs()
        if line.get("event") == "api.call" and str(line.get("path", "")).endswith("/token")
    )


async def test_client_cache_is_single_flight_and_bounded(env: ApiEnv) -> None:
    first, second, *_ = await env.onboard(**{"as": "main", "shops": "2"})
    source = TokenSource.from_api(env.base, READER, clock=env.clock, cache_size=1)
    try:
        before = api_token_reads(env)
        tokens = await asyncio.gather(*(source.get_token(APP, first.key) for _ in range(10)))
        assert len({t.token for t in tokens}) == 1
        assert api_token_reads(env) - before == 1  # ten concurrent readers, one API read

        await source.get_token(APP, second.key)  # evicts the first (cache_size=1)
        await source.get_token(APP, first.key)
        assert api_token_reads(env) - before == 3
        await source.get_token(APP, first.key)  # cached
        assert api_token_reads(env) - before == 3
    finally:
        await source.aclose()
    with pytest.raises(ValueError, match="cache_size"):
        TokenSource(store=env.daemon.store, cache_size=0)
