"""The flow functions of refresher.onboarding on real stores (SQLite file and PostgreSQL) and the real
sandbox, without the daemon; plus the pure helpers (allowlist, loopback check, callback parsing)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from sqlalchemy import delete, select

from refresher import platforms as registry
from refresher.domain import AuthorizationDenied, ConfigError, FakeClock
from refresher.onboarding import (
    MissingCode,
    StateError,
    begin,
    complete,
    complete_flow,
    is_loopback_http,
    parse_callback,
    return_to_allowed,
    take_state,
)
from refresher.platforms.base import Platform
from refresher.sandbox import SandboxServer
from refresher.store.base import OAuthState
from refresher.store.schema import oauth_states
from refresher.store.sql import SqlStore
from tests.onboarding_support import config_text, free_port, register_redirect, settings_from

T0 = dt.datetime(2026, 5, 1, 8, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


# clock, store (SQLite and PostgreSQL), sandbox and http come from tests/conftest.py.


def plugin(
    sandbox: SandboxServer, name: str, http: httpx.AsyncClient, clock: FakeClock, **credentials: Any
) -> Platform:
    port = free_port()
    settings = settings_from(config_text(sandbox, port, Path("/nonexistent/unused.db")))
    app = settings.apps[name]
    if credentials:
        assert isinstance(app.credentials, BaseModel)
        app = app.model_copy(update={"credentials": app.credentials.model_copy(update=credentials)})
    register_redirect(sandbox, name, app.redirect_uri or "")
    return registry.get(app.platform)(app, http=http, clock=clock)


async def test_begin_stores_a_single_use_state_with_pkce_where_supported(
    store: SqlStore, sandbox: SandboxServer, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    tiktok = plugin(sandbox, "tiktok", http, clock, pkce="s256")  # a web app's default is no PKCE
    url, state = await begin("tiktok", tiktok, store, clock, ttl=dt.timedelta(minutes=5), return_to="https://x/y")
    assert dict(parse_qsl(urlsplit(url).query))["state"] == state.state
    assert state.pkce_verifier and state.expires_at == clock.now() + dt.timedelta(minutes=5)
    assert "code_challenge=" in url and state.pkce_verifier not in url
    lazada = plugin(sandbox, "lazada", http, clock)
    _, plain = await begin("lazada", lazada, store, clock)
    assert plain.pkce_verifier is None
    web_url, web = await begin("tiktok", plugin(sandbox, "tiktok", http, clock), store, clock)
    assert web.pkce_verifier is None and "code_challenge" not in web_url
    taken = await take_state("tiktok", store, clock, state.state)
    assert (taken.return_to, taken.pkce_verifier) == ("https://x/y", state.pkce_verifier)
    with pytest.raises(StateError) as caught:
        await take_state("tiktok", store, clock, state.state)
    assert caught.value.kind == "reused"


async def test_each_state_refusal_has_its_own_kind(
    store: SqlStore, sandbox: SandboxServer, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    shopee = plugin(sandbox, "shopee", http, clock)
    kinds = {}
    for label in ("missing", "unknown", "wrong_app", "expired"):
        _, state = await begin("shopee", shopee, store, clock, ttl=dt.timedelta(minutes=1))
        value = {"missing": "", "unknown": state.state + "x"}.get(label, state.state)
        if label == "expired":
            clock.advance(61)
        app = "other" if label == "wrong_app" else "shopee"
        with pytest.raises(StateError) as caught:
            await take_state(app, store, clock, value)
        kinds[label] = caught.value.kind
        assert caught.value.message and state.state not in str(caught.value)
    assert kinds == {"missing": "missing", "unknown": "unknown", "wrong_app": "wrong_app", "expired": "expired"}


async def test_complete_exchanges_and_upserts_every_grant_in_place(
    store: SqlStore, sandbox: SandboxServer, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    shopee = plugin(sandbox, "shopee", http, clock)
    url, _ = await begin("shopee", shopee, store, clock)
    params = await sandbox.approve(url, **{"as": "main", "shops": "3", "merchants": "2"})
    accounts = await complete("shopee", shopee, store, clock, params)
    assert len(accounts) == 5 and len({a.id for a in accounts}) == 5
    main_id = params["main_account_id"]
    url, _ = await begin("shopee", shopee, store, clock)
    again = await complete_flow(
        "shopee", shopee, store, clock, await sandbox.approve(url, **{"as": "main", "id": main_id})
    )
    assert sorted(a.id for a in again.accounts) == sorted(a.id for a in accounts)
    assert await store.count(app="shopee") == 5


async def test_denial_and_missing_code(
    store: SqlStore, sandbox: SandboxServer, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    tiktok = plugin(sandbox, "tiktok", http, clock)
    url, state = await begin("tiktok", tiktok, store, clock)
    params = await sandbox.deny(url)
    with pytest.raises(AuthorizationDenied):
        await complete("tiktok", tiktok, store, clock, params)
    # The denied flow's state is spent, and a replay of it is named as such.
    assert await store.consume_state(state.state, "tiktok") is None
    with pytest.raises(StateError) as replay:
        await take_state("tiktok", store, clock, state.state)
    assert replay.value.kind == "reused"
    _, state = await begin("tiktok", tiktok, store, clock)
    with pytest.raises(MissingCode):
        await complete("tiktok", tiktok, store, clock, {"state": state.state})


async def test_begin_without_a_redirect_uri_is_a_config_error(
    store: SqlStore, sandbox: SandboxServer, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    lazada = plugin(sandbox, "lazada", http, clock)
    lazada.app = lazada.app.model_copy(update={"redirect_uri": None})
    with pytest.raises(ConfigError, match=r"apps\.lazada\.redirect_uri is not set"):
        await begin("lazada", lazada, store, clock)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://erp.example.com/oauth/done", True),
        ("https://erp.example.com/oauth/done?x=1", True),
        ("https://ERP.example.com/oauth/", True),
        ("https://erp.example.com/oauthx", False),
        ("https://erp.example.com/", False),
        ("http://erp.example.com/oauth/done", False),
        ("https://erp.example.com.evil.test/oauth/done", False),
        ("https://evil.test/?https://erp.example.com/oauth/", False),
        ("https://a@erp.example.com/oauth/done", False),
        ("https://erp.example.com\\@evil.test/oauth/", False),
        ("javascript:alert(1)//https://erp.example.com/oauth/", False),
        ("//erp.example.com/oauth/done", False),
        ("", False),
        ("https://app.example.net/anything", True),
    ],
)
def test_return_to_allowlist_matches_origin_and_path(url: str, ok: bool) -> None:
    assert return_to_allowed(url, ["https://erp.example.com/oauth/", "https://app.example.net"]) is ok


def test_loopback_and_callback_parsing() -> None:
    assert is_loopback_http("http://127.0.0.1:3017/callback")
    assert is_loopback_http("http://localhost:3017/cb")
    assert is_loopback_http("http://[::1]:3017/cb")
    assert not is_loopback_http("https://127.0.0.1:3017/callback")
    assert not is_loopback_http("http://10.0.0.1:3017/callback")
    assert not is_loopback_http("http://localhost.evil.test/callback")
    expected = {"code": "a*b!", "state": "s"}
    assert parse_callback("http://127.0.0.1:3017/cb?code=a%2Ab%21&state=s") == expected
    assert parse_callback("?code=a%2Ab%21&state=s") == expected
    assert parse_callback("  code=a%2Ab%21&state=s\n") == expected


def test_result_pages_escape_what_the_platform_sent_and_show_no_token() -> None:
    from refresher.domain import AccountStatus, Identity, TokenSet, TransientError
    from refresher.server.onboarding import failure_page, granted_page
    from refresher.store.base import Account

    now = T0
    tokens = TokenSet("ACCESS-" + "a" * 30, "REFRESH-" + "r" * 30, now + dt.timedelta(hours=4), None, ("x<y>",))
    identity = Identity("shop:1", "shop", "1", name='<script>alert("x")</script>', region="S&G")
    account = Account(1, "app", "shopee", "shop:1", identity, AccountStatus.ACTIVE, tokens)
    body = bytes(granted_page("app", [account], now).body).decode()
    assert "<script>" not in body and "&lt;script&gt;" in body and "S&amp;G" in body
    assert tokens.access_token not in body and tokens.refresh_token not in body
    assert "UTC" not in body and "x&lt;y&gt;" not in body  # a seller sees shops, not expiry times or scopes
    failed = failure_page(TransientError("upstream said <b>no</b> SECRETVALUE1", code="e<1>"), ["SECRETVALUE1"])
    text = bytes(failed.body).decode()
    assert failed.status_code == 502
    assert "SECRETVALUE1" not in text and "<b>" not in text and "e&lt;1&gt;" in text


async def test_a_callback_naming_the_wrong_app_leaves_the_real_state_usable(
    store: SqlStore, sandbox: SandboxServer, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    shopee = plugin(sandbox, "shopee", http, clock)
    _, state = await begin("shopee", shopee, store, clock)
    with pytest.raises(StateError) as wrong:
        await take_state("lazada", store, clock, state.state)
    assert wrong.value.kind == "wrong_app"
    taken = await take_state("shopee", store, clock, state.state)  # the seller's real callback still works
    assert taken.state == state.state


_DERIVATIONS: dict[str, Callable[[str], str]] = {
    "sha256": lambda s: hashlib.sha256(s.encode()).hexdigest(),
    "old tombstone": lambda s: "used:" + hashlib.sha256(s.encode()).hexdigest(),
    "prefixed": lambda s: "used:" + s,
    "upper": str.upper,
    "trimmed": lambda s: s[:-1],
    "extended": lambda s: s + "0",
    "spaced": lambda s: f" {s}",
}


async def _stored_values(store: SqlStore) -> set[str]:
    """Every value of every row the store keeps in ``oauth_states``, read from the table itself: a marker
    kept in a row of its own (the old ``used:`` tombstone) is found here without knowing its shape."""
    async with store._tx() as conn:
        rows = (await conn.execute(select(oauth_states))).mappings().all()
    return {str(value) for row in rows for value in row.values() if value is not None}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.text(alphabet=string.ascii_letters + string.digits + "-_.:", min_size=8, max_size=64))
async def test_no_value_derived_from_a_stored_row_is_accepted_as_a_state(
    raw: str, store: SqlStore, clock: FakeClock
) -> None:
    """Whatever the store keeps about a state, used or not, only the exact unused state grants a flow."""
    now, unique = clock.now(), secrets.token_hex(4)  # hypothesis may draw the same text twice
    async with store._tx(write=True) as conn:  # one example's rows at a time (the store outlives examples)
        await conn.execute(delete(oauth_states))
    used = OAuthState(f"u{unique}{raw}", "shopee", now, now + MINUTE)
    live = OAuthState(f"l{unique}{raw}", "shopee", now, now + MINUTE)
    for state in (used, live):
        await store.put_state(state)
    assert await take_state("shopee", store, clock, used.state)
    stored = await _stored_values(store)
    assert live.state in stored  # the table is what was read
    stored.add(used.state)  # kept or not, the spent state itself is refused
    candidates = stored | {derive(value) for value in stored for derive in _DERIVATIONS.values()}
    candidates.discard(live.state)  # the one value that may grant
    for candidate in sorted(candidates):
        with pytest.raises(StateError):
            await take_state("shopee", store, clock, candidate)
    assert (await take_state("shopee", store, clock, live.state)).state == live.state
