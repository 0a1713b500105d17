"""refresher.client (issue 6): TokenSource over the token API and over the store, RefresherAuth, get_token."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from refresher.client import AccessToken, RefresherAuth, TokenSource, TokenUnavailable, get_token
from refresher.domain import ConfigError, Identity
from refresher.store.base import Account
from tests.test_api import APP, TOKENS, ApiEnv, running_api

SHOP_INFO = "/api/v2/shop/get_shop_info"


@pytest.fixture
async def api_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[ApiEnv]:
    async with running_api(tmp_path, capsys) as env:
        yield env


def token_reads(env: ApiEnv) -> int:
    """How many token API reads the daemon logged so far."""
    return sum(
        1
        for line in env.read_logs()
        if line.get("event") == "api.call" and str(line.get("path", "")).endswith("/token")
    )


def test_cache_margin_is_60s_or_a_tenth_of_the_lifetime() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ident = Identity("shop:1", "shop", "1")
    long = AccessToken("a", "shop:1", "t", now + dt.timedelta(hours=4), ident, now)
    assert long.stale_at() == now + dt.timedelta(hours=4) - dt.timedelta(minutes=24)
    short = AccessToken("a", "shop:1", "t", now + dt.timedelta(minutes=5), ident, now)
    assert short.stale_at() == now + dt.timedelta(minutes=4)
    assert "t'" not in repr(long)  # the token is kept out of repr


def test_source_needs_exactly_one_origin() -> None:
    with pytest.raises(ValueError, match="either url"):
        TokenSource()
    with pytest.raises(ValueError, match="api_token"):
        TokenSource(url="http://127.0.0.1:1")


async def test_api_source_reads_and_caches_until_shortly_before_expiry(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    assert account.tokens is not None
    source = TokenSource.from_api(api_env.base, TOKENS["reader"][0], clock=api_env.clock)
    try:
        first = await source.get_token(APP, account.key)
        assert first.token == account.tokens.access_token
        assert first.expires_at == account.tokens.access_expires_at
        assert first.identity.platform_id == account.identity.platform_id
        reads = token_reads(api_env)
        assert reads == 1

        again = await source.get_token(APP, account.key)
        assert again is first and token_reads(api_env) == reads  # served from the cache

        # Just past the cache's margin: the next read goes to the API again.
        api_env.clock.set(first.stale_at() + dt.timedelta(seconds=1))
        await source.get_token(APP, account.key)
        assert token_reads(api_env) == reads + 1
    finally:
        await source.aclose()


async def test_api_source_errors_are_typed_and_never_carry_the_api_token(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    wrong_secret = "wrong-api-token-0123456789"
    source = TokenSource.from_api(api_env.base, wrong_secret)
    with pytest.raises(ConfigError) as refused:
        await source.get_token(APP, account.key)
    assert wrong_secret not in str(refused.value) and refused.value.http_status == 401
    await source.aclose()

    source = TokenSource.from_api(api_env.base, TOKENS["reader"][0])
    with pytest.raises(TokenUnavailable, match="shop:404"):
        await source.get_token(APP, "shop:404")
    await source.aclose()


async def test_sync_api_source_in_a_thread(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    source = TokenSource.from_api(api_env.base, TOKENS["reader"][0])
    try:
        # The daemon runs in this event loop, so the blocking client must run in another thread.
        got = await asyncio.to_thread(source.get_token_sync, APP, account.key)
        assert account.tokens is not None and got.token == account.tokens.access_token
    finally:
        source.close()


async def test_store_source_reads_the_store_directly(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    source = TokenSource.from_store(api_env.daemon.store, clock=api_env.clock)
    got = await source.get_token(APP, account.key)
    assert account.tokens is not None and got.token == account.tokens.access_token
    assert token_reads(api_env) == 0
    with pytest.raises(TypeError, match="asynchronous"):
        source.get_token_sync(APP, "shop:other")
    await api_env.daemon.store.set_status(APP, account.key, "disabled")  # type: ignore[arg-type]
    source.invalidate(APP, account.key)
    with pytest.raises(TokenUnavailable, match="disabled"):
        await source.get_token(APP, account.key)


async def test_get_token_from_the_environment(api_env: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    import refresher.client.source as client

    (account,) = await api_env.onboard()
    monkeypatch.setattr(client, "_default_source", None)
    monkeypatch.delenv("REFRESHER_URL", raising=False)
    with pytest.raises(ConfigError, match="REFRESHER_URL"):
        await get_token(APP, account.key)
    monkeypatch.setenv("REFRESHER_URL", api_env.base)
    monkeypatch.setenv("REFRESHER_API_TOKEN", TOKENS["reader"][0])
    assert account.tokens is not None
    assert await get_token(APP, account.key) == account.tokens.access_token
    assert client._default_source is not None
    await client._default_source.aclose()


async def test_auth_signs_calls_the_platform_accepts(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    source = TokenSource.from_api(api_env.base, TOKENS["reader"][0], clock=api_env.clock)
    auth = RefresherAuth(api_env.settings, APP, account.key, source)
    api_host = api_env.daemon.platforms[APP].host("api")
    async with httpx.AsyncClient(auth=auth) as client:
        answer = await client.get(api_host + SHOP_INFO)
    assert answer.status_code == 200, answer.text
    assert answer.json()["shop_name"] == "Sandbox Shop 1"

    def sync_call() -> httpx.Response:
        with httpx.Client(auth=auth) as client:
            return client.get(api_host + SHOP_INFO)

    answer = await asyncio.to_thread(sync_call)
    assert answer.status_code == 200, answer.text
    await source.aclose()


async def test_auth_retries_once_with_a_fresh_token_after_a_rotation(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    source = TokenSource.from_api(api_env.base, TOKENS["reader"][0], clock=api_env.clock)
    auth = RefresherAuth(api_env.settings, APP, account.key, source, clock=api_env.clock)
    api_host = api_env.daemon.platforms[APP].host("api")
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.params["access_token"])

    async with httpx.AsyncClient(auth=auth, event_hooks={"request": [count]}) as client:
        assert (await client.get(api_host + SHOP_INFO)).status_code == 200
        # The daemon rotates the token; once the old one's grace is over the platform refuses it.
        rotated = await api_env.call("POST", f"/v1/accounts/{APP}/{quote(account.key, safe='')}/refresh")
        assert rotated.json()["outcome"] == "success"
        api_env.clock.advance(dt.timedelta(minutes=10))
        answer = await client.get(api_host + SHOP_INFO)
    assert answer.status_code == 200, answer.text
    assert len(sent) == 3 and sent[0] == sent[1] != sent[2]
    stored = await api_env.daemon.store.get(APP, account.key)
    assert stored is not None and stored.tokens is not None and sent[2] == stored.tokens.access_token
    await source.aclose()


def test_auth_needs_a_configured_app(tmp_path: object) -> None:
    from refresher.config import Settings
    from refresher.domain import UnknownApp

    with pytest.raises(UnknownApp, match="unknown app"):
        RefresherAuth(Settings(), "nope", "shop:1", TokenSource(url="http://127.0.0.1:1", api_token="x" * 16))


# ------------------------------------------------------------------------------ refresher token (CLI)


def _cli_store(tmp_path: Path, *, expires_in: dt.timedelta) -> tuple[Path, Account]:
    """A config file and a SQLite store holding one Shopee account (written through the real store)."""
    from refresher.config import StoreSettings
    from refresher.domain import Grant, SystemClock, TokenSet
    from refresher.store.sql import open_store

    db = tmp_path / "tokens.db"
    config = tmp_path / "refresher.yaml"
    config.write_text(
        f'store:\n  url: "sqlite:///{db}"\n'
        "apps:\n  shopee-sg:\n    platform: shopee\n    partner_id: 100001\n"
        '    partner_key: "cli-partner-key-0123456789"\n',
        encoding="utf-8",
    )
    now = dt.datetime.now(dt.UTC)
    grant = Grant(
        Identity("shop:77", "shop", "77", name="CLI Shop"),
        TokenSet(
            "cli-access-token-abcdef0123", "cli-refresh-token-9876543210", now + expires_in, now + dt.timedelta(days=30)
        ),
    )

    async def seed() -> Account:
        store = open_store(StoreSettings(url=f"sqlite:///{db}"), SystemClock())
        await store.open()
        try:
            return await store.upsert_grant(APP, "shopee", grant)
        finally:
            await store.close()

    return config, asyncio.run(seed())


def _run_cli(*args: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from refresher.cli import main

    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_token_command_prints_only_the_access_token(tmp_path: Path) -> None:
    config, account = _cli_store(tmp_path, expires_in=dt.timedelta(hours=4))
    code, out, err = _run_cli("token", APP, "shop:77", "-c", str(config))
    # stdout is the token alone (stderr may carry log lines of whatever logging a host process set up).
    assert (code, out) == (0, "cli-access-token-abcdef0123\n")
    assert "refresher:" not in err

    code, out, _ = _run_cli("token", APP, "shop:77", "-c", str(config), "--refresh-token")
    assert (code, out) == (0, "cli-refresh-token-9876543210\n")

    code, out, err = _run_cli("token", APP, "shop:78", "-c", str(config))
    assert code == 1 and out == ""
    assert [line for line in err.splitlines() if line.startswith("refresher:")] == [
        "refresher: unknown account 'shop:78' of app 'shopee-sg' (see: refresher accounts list --app shopee-sg)"
    ]
    code, out, err = _run_cli("token", "nope", "shop:77", "-c", str(config))
    assert code == 2 and out == "" and "unknown app 'nope'" in err

    code, out, err = _run_cli("accounts", "list", "-c", str(config))
    assert code == 0 and "shop:77" in out and "CLI Shop" in out
    assert "cli-access-token" not in out + err and "cli-refresh-token" not in out + err
    assert account.key == "shop:77"


def test_token_command_refuses_an_expired_token(tmp_path: Path) -> None:
    config, _ = _cli_store(tmp_path, expires_in=dt.timedelta(minutes=-5))
    code, out, err = _run_cli("token", APP, "shop:77", "-c", str(config))
    assert code == 1 and out == ""
    assert "expired at" in err and "cli-access-token" not in err
    code, out, _ = _run_cli("token", APP, "shop:77", "-c", str(config), "--allow-expired")
    assert (code, out) == (0, "cli-access-token-abcdef0123\n")
