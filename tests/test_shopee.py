"""Shopee plugin against the Shopee sandbox on a real port: consent link, shop and main-account grants,
single-use refresh per shop/merchant, signed API calls, recovery by resend code, every fault classified,
and no token, code or key in any error text."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import yaml

from refresher import platforms
from refresher.config import ConfigFileError, parse_config
from refresher.domain import (
    AccessTokenInvalid,
    AuthorizationDenied,
    ClockSkew,
    ConfigError,
    FakeClock,
    Grant,
    MalformedAnswer,
    PlatformTimeout,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TransientError,
)
from refresher.platforms.base import Answer, ApiCall
from refresher.platforms.shopee import ShopeePlatform
from refresher.platforms.signing import shopee_sign
from refresher.sandbox import SandboxServer
from refresher.sandbox.apps import SANDBOX_CREDENTIALS
from tests.support import app_for, assert_no_secret, error_texts

KEY = SANDBOX_CREDENTIALS["shopee"]["partner_key"]
PARTNER_ID = SANDBOX_CREDENTIALS["shopee"]["partner_id"]
START = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@dataclass
class Rig:
    sandbox: SandboxServer
    plugin: ShopeePlatform
    clock: FakeClock
    http: httpx.AsyncClient
    secrets: set[str] = field(default_factory=set)

    def check(self, error: BaseException) -> None:
        """No secret of this test in the error's text, repr or stored summary."""
        assert_no_secret(error_texts(error), self.secrets | {KEY}, type(error).__name__)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock(START)
    async with SandboxServer(clock=clock, fault_delay=1.5, seed=11) as sandbox, httpx.AsyncClient() as http:
        plugin = ShopeePlatform(app_for(sandbox, "shopee", timeout="1s"), http=http, clock=clock)
        yield Rig(sandbox, plugin, clock, http)


async def onboard(rig: Rig, **options: str) -> tuple[dict[str, str], list[Grant]]:
    url = rig.plugin.authorize_url("st-1")
    params = await rig.sandbox.approve(url, **options)
    rig.secrets.add(params["code"])
    grants = await rig.plugin.exchange_code(params)
    for grant in grants:
        rig.secrets |= {grant.tokens.access_token, grant.tokens.refresh_token}
    return params, grants


async def api(rig: Rig, grant: Grant, access_token: str, tamper: bool = False) -> RefresherError | None:
    path = "/api/v2/merchant/get_merchant_info" if grant.identity.kind == "merchant" else "/api/v2/shop/get_shop_info"
    signed = rig.plugin.sign_call(ApiCall("GET", path), access_token, grant.identity)
    url = signed.url
    if tamper:
        url = url.replace(f"sign={signed.sign}", f"sign={signed.sign[:-1]}{'0' if signed.sign[-1] != '0' else '1'}")
    answer = await rig.plugin.transport.send(signed.method, url, headers=signed.headers)
    return rig.plugin.classify_api_answer(answer)


# ------------------------------------------------------------------------------------------- consent


async def test_authorize_url_is_the_signed_auth_partner_link(rig: Rig) -> None:
    url = rig.plugin.authorize_url("state-abc", "https://erp.example.com/cb")
    parts = urlsplit(url)
    assert parts.path == "/shopee/api/v2/shop/auth_partner"
    query = dict(parse_qsl(parts.query))
    assert set(query) == {"partner_id", "timestamp", "sign", "redirect"}
    assert query["partner_id"] == str(PARTNER_ID)
    assert query["timestamp"] == str(int(START.timestamp()))
    assert query["sign"] == shopee_sign(KEY, PARTNER_ID, "/api/v2/shop/auth_partner", query["timestamp"])
    # Shopee has no state parameter: the state rides in the redirect URL's query.
    assert query["redirect"] == "https://erp.example.com/cb?state=state-abc"


def test_production_host_is_the_default() -> None:
    text = yaml.safe_dump(
        {
            "apps": {
                "sg": {
                    "platform": "shopee",
                    "partner_id": 2001234,
                    "partner_key": "k" * 20,
                    "redirect_uri": "https://erp.example.com/callback/sg",
                }
            }
        }
    )
    app = parse_config(text, credential_models=platforms.credential_models()).apps["sg"]
    url = ShopeePlatform(app, clock=FakeClock(START)).authorize_url("s")
    assert url.startswith("https://partner.shopeemobile.com/api/v2/shop/auth_partner?partner_id=2001234&")


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [({"partner_id": "abc"}, "apps.sg.partner_id"), ({"partner_kee": "x"}, "apps.sg.partner_kee: unknown key")],
)
def test_bad_credentials_are_one_line_naming_the_key(entry: dict[str, str], fragment: str) -> None:
    app = {"platform": "shopee", "partner_id": 1, "partner_key": "secret-key-value", **entry}
    with pytest.raises(ConfigFileError) as err:
        parse_config(yaml.safe_dump({"apps": {"sg": app}}), credential_models=platforms.credential_models())
    assert fragment in str(err.value)
    assert "secret-key-value" not in str(err.value)


async def test_denied_consent_is_authorization_denied(rig: Rig) -> None:
    params = await rig.sandbox.deny(rig.plugin.authorize_url("st-d"))
    assert params == {"state": "st-d"}  # the browser comes back without a code
    assert isinstance(rig.plugin.callback_error(params), AuthorizationDenied)
    with pytest.raises(AuthorizationDenied):
        await rig.plugin.exchange_code(params)


async def test_callback_with_a_broken_shop_id_is_one_clear_error(rig: Rig) -> None:
    with pytest.raises(MalformedAnswer, match="callback parameter shop_id is not a number"):
        await rig.plugin.exchange_code({"code": "abcdef", "shop_id": "12x"})


# ------------------------------------------------------------------------------------------- tokens


async def test_shop_onboarding_refresh_and_strict_rotation(rig: Rig) -> None:
    params, grants = await onboard(rig)
    assert params["state"] == "st-1" and params["shop_id"].isdigit() and "main_account_id" not in params
    [grant] = grants
    assert grant.identity.key == f"shop:{params['shop_id']}" and grant.identity.kind == "shop"
    assert grant.tokens.access_expires_at == START + dt.timedelta(hours=4)  # expire_in is relative seconds
    assert grant.tokens.refresh_expires_at == START + dt.timedelta(days=30)
    assert "access_token" not in grant.tokens.raw and "refresh_token" not in grant.tokens.raw
    assert grant.tokens.raw["request_id"]
    assert await api(rig, grant, grant.tokens.access_token) is None

    rig.clock.advance(dt.timedelta(hours=3, minutes=30))
    fresh = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    rig.secrets |= {fresh.access_token, fresh.refresh_token}
    assert fresh.refresh_token != grant.tokens.refresh_token
    assert fresh.access_expires_at == rig.clock.now() + dt.timedelta(hours=4)
    assert await api(rig, grant, fresh.access_token) is None
    assert await api(rig, grant, grant.tokens.access_token) is None  # old access token: 5 minutes' grace

    with pytest.raises(RefreshTokenRejected) as reused:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert reused.value.code == "error_auth" and reused.value.request_id
    rig.check(reused.value)
    assert rig.sandbox.state.counters["shopee.reuse"] == 1

    rig.clock.advance(dt.timedelta(minutes=6))
    stale = await api(rig, grant, grant.tokens.access_token)
    assert isinstance(stale, AccessTokenInvalid) and stale.request_id
    rig.check(stale)


async def test_main_account_yields_one_grant_per_shop_and_merchant(rig: Rig) -> None:
    params, grants = await onboard(rig, **{"as": "main", "shops": "2", "merchants": "1"})
    assert "main_account_id" in params and "shop_id" not in params
    kinds = sorted(g.identity.kind for g in grants)
    assert kinds == ["merchant", "shop", "shop"]
    assert all(g.identity.extra["main_account_id"] == params["main_account_id"] for g in grants)
    shared = grants[0].tokens.refresh_token
    assert all(g.tokens.refresh_token == shared for g in grants)
    for grant in grants:
        assert await api(rig, grant, grant.tokens.access_token) is None

    # Each shop and merchant refreshes the shared first token once, with its own id, into its own chain.
    fresh = {}
    for grant in grants:
        tokens = await rig.plugin.refresh(grant.identity, shared)
        rig.secrets |= {tokens.access_token, tokens.refresh_token}
        fresh[grant.identity.key] = tokens
        assert await api(rig, grant, tokens.access_token) is None
    assert len({t.refresh_token for t in fresh.values()}) == 3
    with pytest.raises(RefreshTokenRejected) as spent:
        await rig.plugin.refresh(grants[0].identity, shared)
    rig.check(spent.value)
    again = await rig.plugin.refresh(grants[1].identity, fresh[grants[1].identity.key].refresh_token)
    assert again.refresh_token != fresh[grants[1].identity.key].refresh_token


async def test_refresh_token_of_another_shop_is_rejected(rig: Rig) -> None:
    _, [grant] = await onboard(rig)
    other = type(grant.identity)("shop:999", "shop", "999")
    with pytest.raises(RefreshTokenRejected) as err:
        await rig.plugin.refresh(other, grant.tokens.refresh_token)
    assert err.value.code == "error_shop_refresh_token"
    rig.check(err.value)
    assert (await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)).refresh_token


async def test_reauthorization_replaces_the_old_pair(rig: Rig) -> None:
    _, [first] = await onboard(rig)
    _, [second] = await onboard(rig, id=first.identity.platform_id)
    assert second.identity.key == first.identity.key
    with pytest.raises(RefreshTokenRejected) as err:
        await rig.plugin.refresh(first.identity, first.tokens.refresh_token)
    assert err.value.code == "shop_no_linked"
    assert (await rig.plugin.refresh(second.identity, second.tokens.refresh_token)).access_token


async def test_expired_and_reused_codes_need_a_new_authorization(rig: Rig) -> None:
    params = await rig.sandbox.approve(rig.plugin.authorize_url("st"))
    rig.secrets.add(params["code"])
    rig.clock.advance(dt.timedelta(minutes=11))
    with pytest.raises(ReauthRequired) as expired:
        await rig.plugin.exchange_code(params)
    assert expired.value.code == "invalid_code"
    rig.check(expired.value)
    params, _ = await onboard(rig)
    with pytest.raises(ReauthRequired) as reused:
        await rig.plugin.exchange_code(params)
    rig.check(reused.value)


async def test_resend_code_recovers_a_lost_refresh_token(rig: Rig) -> None:
    _, [grant] = await onboard(rig)
    console = f"{rig.sandbox.url}/shopee/console/resend_code"
    answer = await rig.http.post(console, json={"shop_id": int(grant.identity.platform_id)})
    resend_code = answer.json()["resend_code"]
    rig.secrets.add(resend_code)
    tokens = await rig.plugin.recover_with_code(grant.identity, resend_code)
    rig.secrets |= {tokens.access_token, tokens.refresh_token}
    assert tokens.refresh_token != grant.tokens.refresh_token
    assert await api(rig, grant, tokens.access_token) is None
    assert (await rig.plugin.refresh(grant.identity, tokens.refresh_token)).access_token
    with pytest.raises(ReauthRequired) as err:
        await rig.plugin.recover_with_code(grant.identity, resend_code)  # once only
    rig.check(err.value)


# ----------------------------------------------------------------------------------- config errors


async def test_tampered_signature_is_a_config_error(rig: Rig) -> None:
    _, [grant] = await onboard(rig)
    error = await api(rig, grant, grant.tokens.access_token, tamper=True)
    assert isinstance(error, ConfigError) and error.code == "error_sign" and error.request_id
    rig.check(error)


async def test_wrong_partner_key_is_a_config_error(rig: Rig) -> None:
    _, [grant] = await onboard(rig)
    wrong = ShopeePlatform(
        app_for(rig.sandbox, "shopee", partner_key="not-the-sandbox-key-000"), http=rig.http, clock=rig.clock
    )
    rig.secrets.add("not-the-sandbox-key-000")
    with pytest.raises(ConfigError) as err:
        await wrong.refresh(grant.identity, grant.tokens.refresh_token)
    assert err.value.code == "error_sign"
    rig.check(err.value)


async def test_skewed_clock_is_clock_skew(rig: Rig) -> None:
    _, [grant] = await onboard(rig)
    ahead = FakeClock(START + dt.timedelta(minutes=10))
    skewed = ShopeePlatform(rig.plugin.app, http=rig.http, clock=ahead)
    with pytest.raises(ClockSkew) as err:
        await skewed.refresh(grant.identity, grant.tokens.refresh_token)
    assert err.value.code == "error_param"
    rig.check(err.value)


# ------------------------------------------------------------------------------------------- faults

FAULTS = [
    ("timeout", PlatformTimeout),
    ("500", TransientError),
    ("503", TransientError),
    ("429", TransientError),
    ("error200", TransientError),
    ("html", MalformedAnswer),
    ("truncated", MalformedAnswer),
    ("empty", MalformedAnswer),
    ("big", MalformedAnswer),
    ("wrongtypes", MalformedAnswer),
    ("revoked", RefreshTokenRejected),
    ("lost", TransientError),
]


@pytest.mark.parametrize(("kind", "expected"), FAULTS)
async def test_refresh_faults_are_classified(rig: Rig, kind: str, expected: type[RefresherError]) -> None:
    _, [grant] = await onboard(rig)
    rig.sandbox.set_faults(f"shopee:refresh:{kind}|x1")
    with pytest.raises(RefresherError) as err:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert type(err.value) is expected, f"{kind}: {type(err.value).__name__}: {err.value}"
    rig.check(err.value)
    if kind == "429":
        assert err.value.retry_after == 1.0
    if kind == "error200":
        assert err.value.code == "error_server" and err.value.request_id
    if kind == "lost":  # rotated server-side, answer lost: the old token is spent now
        with pytest.raises(RefreshTokenRejected):
            await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)


@pytest.mark.parametrize(("kind", "expected"), [("revoked", AccessTokenInvalid), ("error200", TransientError)])
async def test_api_faults_are_classified(rig: Rig, kind: str, expected: type[RefresherError]) -> None:
    _, [grant] = await onboard(rig)
    rig.sandbox.set_faults(f"shopee:api:{kind}|x1")
    error = await api(rig, grant, grant.tokens.access_token)
    assert type(error) is expected
    rig.check(error)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "error_auth", "message": "Invalid refresh_token."}, RefreshTokenRejected),
        ({"error": "refresh_token_expired", "message": "Your refresh_token expired."}, RefreshTokenRejected),
        ({"error": "error_sign", "message": "Wrong sign."}, ConfigError),
        ({"error": "error_param", "message": "Invalid timestamp"}, ClockSkew),
        ({"error": "error_param", "message": "Invalid partner_id."}, ConfigError),
        ({"error": "error_auth", "message": "No permission to current api."}, ConfigError),
        ({"error": "error_server", "message": "Something wrong. Please try later."}, TransientError),
        ({"error": "brand_new_code", "message": "?"}, TransientError),
        ({"error": 7, "message": "?"}, MalformedAnswer),
    ],
)
def test_refresh_error_codes(body: dict[str, object], expected: type[RefresherError]) -> None:
    plugin = ShopeePlatform(
        parse_config(
            yaml.safe_dump({"apps": {"a": {"platform": "shopee", "partner_id": 1, "partner_key": "k"}}}),
            credential_models=platforms.credential_models(),
        ).apps["a"]
    )
    answer = Answer(200, httpx.Headers(), json.dumps({**body, "request_id": "rq-1"}).encode())
    with pytest.raises(RefresherError) as err:
        plugin._checked(answer, "token refresh", "refresh")
    assert type(err.value) is expected
    assert err.value.request_id == "rq-1"
    if isinstance(body["error"], str):
        assert err.value.code == body["error"]  # unknown codes are kept for the operator


@pytest.mark.parametrize("code", ["invalid_acceess_token", "invalid_access_token", "error_auth"])
def test_refused_access_token_on_api_calls(code: str) -> None:
    plugin = ShopeePlatform(
        parse_config(
            yaml.safe_dump({"apps": {"a": {"platform": "shopee", "partner_id": 1, "partner_key": "k"}}}),
            credential_models=platforms.credential_models(),
        ).apps["a"]
    )
    answer = Answer(403, httpx.Headers(), json.dumps({"error": code, "message": "Invalid access_token."}).encode())
    assert isinstance(plugin.classify_api_answer(answer), AccessTokenInvalid)
    ok = Answer(200, httpx.Headers(), b'{"error": "", "message": "", "shop_name": "x"}')
    assert plugin.classify_api_answer(ok) is None


async def test_consent_link_is_verified_like_shopee_does(rig: Rig) -> None:
    url = rig.plugin.authorize_url("st")
    sign = dict(parse_qsl(urlsplit(url).query))["sign"]
    tampered = await rig.http.get(url.replace(sign, "0" * 64))
    assert tampered.json()["error"] == "error_sign"
    rig.clock.advance(dt.timedelta(minutes=6))  # the link lives 5 minutes
    stale = await rig.http.get(url)
    assert stale.json()["error"] == "error_param" and "timestamp" in stale.json()["message"]
    assert (await rig.http.get(rig.plugin.authorize_url("st"))).status_code == 200


# ------------------------------------------------------ suppliers, authorization end, recovery (14.6)


async def test_supplier_grants_are_stored_and_refreshed(rig: Rig) -> None:
    _, grants = await onboard(rig, **{"as": "main", "shops": "1", "merchants": "0", "suppliers": "2"})
    suppliers = [g for g in grants if g.identity.kind == "supplier"]
    assert len(suppliers) == 2 and all(g.identity.key.startswith("supplier:") for g in suppliers)
    tokens = await rig.plugin.refresh(suppliers[0].identity, suppliers[0].tokens.refresh_token)
    rig.secrets |= {tokens.access_token, tokens.refresh_token}
    assert tokens.refresh_token != suppliers[0].tokens.refresh_token
    # The second supplier's first refresh still works with the shared first pair (its own chain starts).
    assert (await rig.plugin.refresh(suppliers[1].identity, suppliers[1].tokens.refresh_token)).access_token


async def test_the_authorization_end_caps_the_refresh_deadline(rig: Rig) -> None:
    _, [grant] = await onboard(rig, validity_days="7")
    end = grant.identity.extra["authorization_expires_at"]
    assert end == int((START + dt.timedelta(days=7)).timestamp())
    # The refresh token would live 30 days; the seller's 7-day authorization ends first.
    assert grant.tokens.refresh_expires_at == START + dt.timedelta(days=7)
    rig.clock.advance(dt.timedelta(hours=4))
    tokens = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert tokens.refresh_expires_at == START + dt.timedelta(days=7)
    assert await rig.plugin.updated_identity(grant.identity, tokens) is None  # read less than a day ago
    rig.clock.advance(dt.timedelta(days=1))
    again = await rig.plugin.updated_identity(grant.identity, tokens)
    assert again is not None and again.extra["authorization_expires_at"] == end
    rig.clock.advance(dt.timedelta(days=6))
    with pytest.raises(RefreshTokenRejected) as ended:
        await rig.plugin.refresh(again, tokens.refresh_token)
    assert ended.value.code == "shop_access_expired"
    rig.check(ended.value)


async def test_reauthorize_soon_sees_the_authorization_end(rig: Rig, tmp_path: Path) -> None:
    from refresher.store import SqlStore

    _, [grant] = await onboard(rig, validity_days="7")
    store = SqlStore(f"sqlite:///{tmp_path}/t.db", clock=rig.clock)
    await store.open()
    try:
        await store.upsert_grant("shopee", "shopee", grant)
        soon = await store.accounts_refresh_expiring("shopee", START + dt.timedelta(days=14))
        assert [a.key for a in soon] == [grant.identity.key]
    finally:
        await store.close()


async def test_recover_command_stores_the_recovered_tokens(rig: Rig, tmp_path: Path) -> None:
    import asyncio

    import yaml
    from click.testing import CliRunner

    from refresher.cli import main
    from refresher.store import SqlStore

    # The command signs with the system clock: the sandbox's (the test's) must agree with it.
    rig.clock.set(dt.datetime.now(dt.UTC))
    _, [grant] = await onboard(rig)
    db = f"sqlite:///{tmp_path}/t.db"
    store = SqlStore(db, clock=rig.clock)
    await store.open()
    await store.upsert_grant("shopee", "shopee", grant)
    await store.close()
    config = tmp_path / "refresher.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": db}, "apps": {"shopee": rig.sandbox.app_config("shopee")}}))
    answer = await rig.http.post(
        f"{rig.sandbox.url}/shopee/console/resend_code", json={"shop_id": int(grant.identity.platform_id)}
    )
    code = answer.json()["resend_code"]
    rig.secrets.add(code)
    invoke = CliRunner().invoke
    result = await asyncio.to_thread(
        invoke, main, ["recover", "-c", str(config), "shopee", grant.identity.key], code + "\n"
    )
    assert result.exit_code == 0, result.output
    assert "recovered" in result.output and code not in result.output
    store = SqlStore(db, clock=rig.clock)
    await store.open()
    try:
        stored = await store.get("shopee", grant.identity.key)
    finally:
        await store.close()
    assert stored is not None and stored.tokens is not None
    assert stored.tokens.refresh_token != grant.tokens.refresh_token and str(stored.status) == "active"
    again = await asyncio.to_thread(
        invoke, main, ["recover", "-c", str(config), "shopee", grant.identity.key], code + "\n"
    )
    assert again.exit_code == 1 and "recovery refused" in again.output and code not in again.output


def test_recover_is_refused_for_a_platform_without_codes(tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from refresher.cli import main

    config = tmp_path / "refresher.yaml"
    config.write_text(yaml.safe_dump({"apps": {"l": {"platform": "lazada", "app_key": "1", "app_secret": "s"}}}))
    result = CliRunner().invoke(main, ["recover", "-c", str(config), "l", "seller1"], "x\n")
    assert result.exit_code == 2 and "no recovery code" in result.output


def test_an_unknown_code_is_retried_and_named(rig: Rig) -> None:
    body = json.dumps({"error": "error_brand_new", "message": "m", "request_id": "r"}).encode()
    error = rig.plugin.classify_api_answer(Answer(200, httpx.Headers({"content-type": "application/json"}), body))
    assert isinstance(error, TransientError) and error.code == "error_brand_new"
    assert "error_brand_new" in error.info().message
