"""TikTok Shop plugin against the TikTok Shop sandbox on a real port (docs/platforms.md)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import structlog

from refresher.config import AppSettings
from refresher.domain import (
    AccessTokenInvalid,
    AuthorizationDenied,
    ClockSkew,
    ConfigError,
    FakeClock,
    Grant,
    MalformedAnswer,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TransientError,
)
from refresher.platforms.base import Answer, ApiCall
from refresher.platforms.signing import tiktok_shop_sign
from refresher.platforms.tiktok_shop import TikTokShopPlatform
from refresher.sandbox import SandboxServer
from refresher.sandbox.apps import SANDBOX_CREDENTIALS
from tests.support import app_for, assert_no_secret, error_texts

CREDS = SANDBOX_CREDENTIALS["tiktok_shop"]
START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@dataclass
class Rig:
    sandbox: SandboxServer
    plugin: TikTokShopPlatform
    clock: FakeClock
    http: httpx.AsyncClient
    secrets: set[str] = field(default_factory=set)

    def make(self, **overrides: Any) -> TikTokShopPlatform:
        return TikTokShopPlatform(app_for(self.sandbox, "tiktok_shop", **overrides), http=self.http, clock=self.clock)

    def clean(self, error: BaseException) -> None:
        """No token, code or secret in any text an error offers."""
        assert_no_secret(error_texts(error), self.secrets | {CREDS["app_secret"]}, type(error).__name__)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock(START)
    async with SandboxServer(clock=clock, fault_delay=0.5, seed=3) as sandbox, httpx.AsyncClient() as http:
        plugin = TikTokShopPlatform(app_for(sandbox, "tiktok_shop", timeout="2s"), http=http, clock=clock)
        yield Rig(sandbox, plugin, clock, http)


async def onboard(rig: Rig, plugin: TikTokShopPlatform | None = None, **options: str) -> tuple[Grant, dict[str, str]]:
    plugin = plugin or rig.plugin
    params = await rig.sandbox.approve(plugin.authorize_url("st-1"), **options)
    rig.secrets.add(params["code"])
    grants = await plugin.exchange_code(params)
    assert len(grants) == 1
    rig.secrets.update({grants[0].tokens.access_token, grants[0].tokens.refresh_token})
    return grants[0], params


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


# --------------------------------------------------------------------------------------- consent


async def test_authorize_url_uses_service_id(rig: Rig) -> None:
    url = rig.plugin.authorize_url("abc 1", "http://ignored.example/cb")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{rig.sandbox.url}/tiktok-shop/open/authorize"
    # The redirect URI is registered in Partner Center: the link carries only these two.
    assert query_of(url) == {"service_id": CREDS["service_id"], "state": "abc 1"}


async def test_legacy_authorize_url_without_service_id(rig: Rig) -> None:
    plugin = rig.make(service_id=None)
    url = plugin.authorize_url("s2")
    assert urlsplit(url).path == "/tiktok-shop/oauth/authorize"
    assert query_of(url) == {"app_key": CREDS["app_key"], "state": "s2"}
    grant, params = await onboard(rig, plugin)
    assert params["state"] == "st-1" and grant.identity.kind == "seller"


def offline_plugin() -> TikTokShopPlatform:
    """The plugin with production hosts and no server (for pure logic: URLs, signing, classification)."""
    app = AppSettings.model_validate({"name": "tts", "platform": "tiktok_shop", **CREDS})
    app = app.model_copy(update={"credentials": TikTokShopPlatform.credentials_model.model_validate(app.credentials)})
    return TikTokShopPlatform(app, clock=FakeClock(START))


def test_production_hosts_by_default() -> None:
    plugin = offline_plugin()
    assert plugin.authorize_url("x").startswith("https://services.tiktokshop.com/open/authorize?service_id=")
    signed = plugin.sign_call(ApiCall("GET", "/authorization/202309/shops"), "tok")
    assert signed.url.startswith("https://open-api.tiktokglobalshop.com/authorization/202309/shops?")


async def test_unknown_service_id_is_refused_by_the_sandbox(rig: Rig) -> None:
    plugin = rig.make(service_id="42")
    answer = await rig.http.get(plugin.authorize_url("s"))
    assert answer.status_code == 400 and "service_id" in answer.text


# ------------------------------------------------------------------------------------- onboarding


async def test_onboarding_yields_one_seller_with_its_shops(rig: Rig) -> None:
    grant, params = await onboard(rig, shops="3", region="my")
    assert params["state"] == "st-1" and params["app_key"] == CREDS["app_key"]
    identity = grant.identity
    chain = rig.sandbox.state.chains[1]
    assert identity.key == identity.platform_id == chain.subjects[0].id
    assert identity.kind == "seller" and identity.region == "MY" and identity.name
    shops = identity.extra["shops"]
    assert [s["name"] for s in shops] == ["Sandbox Shop 1", "Sandbox Shop 2", "Sandbox Shop 3"]
    assert all(s["cipher"].startswith("ROW_") and s["region"] == "MY" for s in shops)
    # Absolute expiries, straight from the answer: 7 days and the sandbox's 365-day authorization.
    assert grant.tokens.access_expires_at == START + dt.timedelta(days=7)
    assert grant.tokens.refresh_expires_at == START + dt.timedelta(days=365)
    assert grant.tokens.access_expires_at.tzinfo is not None
    assert "seller.shop.info" in grant.tokens.scopes
    # raw is kept for audit without a token in it
    raw = json.dumps(grant.tokens.raw)
    assert grant.tokens.access_token not in raw and grant.tokens.refresh_token not in raw
    assert grant.tokens.raw["request_id"]
    assert rig.sandbox.state.counters["tiktok_shop.api"] == 1  # Get Authorized Shops was called


async def test_reauthorizing_the_same_seller_keeps_its_id(rig: Rig) -> None:
    first, _ = await onboard(rig, shops="2")
    again, _ = await onboard(rig, id=first.identity.key)
    assert again.identity.key == first.identity.key
    assert [s["cipher"] for s in again.identity.extra["shops"]] == [s["cipher"] for s in first.identity.extra["shops"]]
    assert again.tokens.refresh_token != first.tokens.refresh_token


async def test_failed_shop_listing_keeps_the_grant(rig: Rig) -> None:
    rig.sandbox.set_faults("tiktok_shop:api:503|x1")
    with structlog.testing.capture_logs() as logs:
        grant, _ = await onboard(rig)
    assert grant.identity.extra["shops"] == []
    assert "platform server error" in grant.identity.extra["shops_error"]
    assert any(entry["event"] == "tiktok_shop.shops_failed" for entry in logs)
    text = repr(logs) + repr(grant.identity)
    for secret in rig.secrets | {CREDS["app_secret"]}:
        assert secret not in text
    # The tokens are good: the listing can simply be repeated.
    assert len(await rig.plugin.authorized_shops(grant.tokens.access_token)) == 1


async def test_denied_consent(rig: Rig) -> None:
    params = await rig.sandbox.deny(rig.plugin.authorize_url("s-d"))
    assert params["error"] == "auth_denied" and params["state"] == "s-d"
    assert isinstance(rig.plugin.callback_error(params), AuthorizationDenied)
    with pytest.raises(AuthorizationDenied):
        await rig.plugin.exchange_code(params)
    # The other spelling in the changelog is handled the same way.
    assert isinstance(rig.plugin.callback_error({"code": "null", "error": "access_denied"}), AuthorizationDenied)


async def test_expired_and_reused_codes(rig: Rig) -> None:
    params = await rig.sandbox.approve(rig.plugin.authorize_url("s"))
    rig.secrets.add(params["code"])
    rig.clock.advance(dt.timedelta(minutes=29))  # 30-minute codes
    await rig.plugin.exchange_code(params)
    with pytest.raises(ReauthRequired) as reused:
        await rig.plugin.exchange_code(params)
    assert reused.value.code == "36004004" and reused.value.request_id
    late = await rig.sandbox.approve(rig.plugin.authorize_url("s"))
    rig.secrets.add(late["code"])
    rig.clock.advance(dt.timedelta(minutes=31))
    with pytest.raises(ReauthRequired) as expired:
        await rig.plugin.exchange_code(late)
    rig.clean(reused.value)
    rig.clean(expired.value)


async def test_wrong_app_secret_is_a_config_error(rig: Rig) -> None:
    params = await rig.sandbox.approve(rig.plugin.authorize_url("s"))
    bad = rig.make(app_secret="not-the-secret-at-all-000")
    rig.secrets.update({params["code"], "not-the-secret-at-all-000"})
    with pytest.raises(ConfigError) as err:
        await bad.exchange_code(params)
    assert err.value.code == "36004003"  # invalid app_key or app_secret: never retried as transient
    rig.clean(err.value)


async def test_token_endpoints_are_get_only(rig: Rig) -> None:
    answer = await rig.http.post(f"{rig.sandbox.url}/tiktok-shop/api/v2/token/get", json={})
    assert answer.status_code == 404


# ---------------------------------------------------------------------------------------- refresh


async def test_refresh_rotates_and_the_old_token_is_refused(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    rig.clock.advance(dt.timedelta(days=6))
    fresh = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    rig.secrets.update({fresh.access_token, fresh.refresh_token})
    assert fresh.refresh_token != grant.tokens.refresh_token
    assert fresh.access_expires_at == rig.clock.now() + dt.timedelta(days=7)
    # The refresh token's end is the authorization's end: a refresh does not extend it.
    assert fresh.refresh_expires_at == grant.tokens.refresh_expires_at
    with pytest.raises(RefreshTokenRejected) as old:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert old.value.code == "36004005" and old.value.request_id
    assert rig.sandbox.state.counters["tiktok_shop.reuse"] == 1
    rig.clean(old.value)


async def test_expired_refresh_token(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    rig.clock.advance(dt.timedelta(days=366))
    with pytest.raises(RefreshTokenRejected) as err:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert err.value.code == "36004001"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("503", TransientError),
        ("429", TransientError),
        ("error200", TransientError),
        ("html", MalformedAnswer),
        ("truncated", MalformedAnswer),
        ("empty", MalformedAnswer),
        ("wrongtypes", MalformedAnswer),
        ("revoked", RefreshTokenRejected),
        ("lost", TransientError),
    ],
)
async def test_refresh_faults(rig: Rig, kind: str, expected: type[RefresherError]) -> None:
    grant, _ = await onboard(rig)
    rig.sandbox.set_faults(f"tiktok_shop:refresh:{kind}|x1")
    with pytest.raises(RefresherError) as err:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert type(err.value) is expected, f"{kind}: {type(err.value).__name__} {err.value}"
    if kind == "429":
        assert err.value.retry_after == 1
    if kind == "error200":
        assert err.value.code == "36009003" and err.value.request_id
    rig.clean(err.value)


async def test_exchange_faults(rig: Rig) -> None:
    for kind, expected in [("error200", TransientError), ("wrongtypes", MalformedAnswer), ("revoked", ReauthRequired)]:
        params = await rig.sandbox.approve(rig.plugin.authorize_url("s"))
        rig.secrets.add(params["code"])
        rig.sandbox.set_faults(f"tiktok_shop:token:{kind}|x1")
        with pytest.raises(RefresherError) as err:
            await rig.plugin.exchange_code(params)
        assert type(err.value) is expected, kind
        rig.clean(err.value)


async def test_timeout_is_transient(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    plugin = rig.make(timeout="0.2s")
    rig.sandbox.set_faults("tiktok_shop:refresh:timeout|x1")
    with pytest.raises(TransientError) as err:
        await plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert "?" not in str(err.value) and "app_secret" not in str(err.value)  # never a URL with its query
    rig.clean(err.value)


# ------------------------------------------------------------------------------------ signed API


async def call(rig: Rig, plugin: TikTokShopPlatform, api: ApiCall, token: str, grant: Grant | None = None) -> Answer:
    signed = plugin.sign_call(api, token, grant.identity if grant else None)
    return await plugin.transport.send(signed.method, signed.url, headers=signed.headers, content=signed.body)


async def test_signed_call_accepted_and_tampered_refused(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    token = grant.tokens.access_token
    shops = ApiCall("GET", "/authorization/202309/shops")
    ok = await call(rig, rig.plugin, shops, token, grant)
    assert ok.status == 200 and rig.plugin.classify_api_answer(ok) is None
    assert json.loads(ok.body)["data"]["shops"][0]["cipher"] == grant.identity.extra["shops"][0]["cipher"]

    signed = rig.plugin.sign_call(shops, token)
    tampered = signed.url.replace("timestamp=", "timestamp=1")  # a changed signed value
    answer = await rig.plugin.transport.send("GET", tampered, headers=signed.headers)
    stamped = rig.plugin.classify_api_answer(answer)
    assert isinstance(stamped, ClockSkew | ConfigError)
    forged = signed.url.replace(f"sign={signed.sign}", "sign=" + "0" * 64)
    error = rig.plugin.classify_api_answer(await rig.plugin.transport.send("GET", forged, headers=signed.headers))
    assert isinstance(error, ConfigError) and not isinstance(error, ClockSkew)
    assert error.code == "106001" and error.http_status == 401 and error.request_id
    assert rig.sandbox.state.counters["tiktok_shop.sign_error"] == 1

    wrong_secret = rig.make(app_secret="another-secret-for-signing")
    error = rig.plugin.classify_api_answer(await call(rig, wrong_secret, shops, token))
    assert isinstance(error, ConfigError) and error.code == "106001"
    rig.clean(error)


async def test_timestamp_outside_the_window_is_clock_skew(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    now = int(rig.clock.now().timestamp())
    for stamp in (now - 301, now + 31):
        answer = await call(rig, rig.plugin, ApiCall("GET", "/authorization/202309/shops", timestamp=stamp), "x")
        assert isinstance(rig.plugin.classify_api_answer(answer), ClockSkew)
    for stamp in (now - 299, now + 29):
        api = ApiCall("GET", "/authorization/202309/shops", timestamp=stamp)
        assert rig.plugin.classify_api_answer(await call(rig, rig.plugin, api, grant.tokens.access_token)) is None


async def test_access_token_refusals(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    shops = ApiCall("GET", "/authorization/202309/shops")
    unknown = rig.plugin.classify_api_answer(await call(rig, rig.plugin, shops, "tts-not-a-token"))
    assert isinstance(unknown, AccessTokenInvalid) and unknown.code == "36009004"
    rig.clock.advance(dt.timedelta(days=7, seconds=1))
    expired = rig.plugin.classify_api_answer(await call(rig, rig.plugin, shops, grant.tokens.access_token))
    assert isinstance(expired, AccessTokenInvalid) and expired.code == "105002"
    rig.clean(expired)
    # The proxy's path: refresh once, then the call goes through.
    fresh = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert rig.plugin.classify_api_answer(await call(rig, rig.plugin, shops, fresh.access_token)) is None
    rig.sandbox.state.revoke("tiktok_shop", subject_id=grant.identity.key)
    revoked = rig.plugin.classify_api_answer(await call(rig, rig.plugin, shops, fresh.access_token))
    assert isinstance(revoked, AccessTokenInvalid) and revoked.code == "105001"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("error200", TransientError), ("503", TransientError), ("html", MalformedAnswer), ("revoked", AccessTokenInvalid)],
)
async def test_api_faults(rig: Rig, kind: str, expected: type[RefresherError]) -> None:
    grant, _ = await onboard(rig)
    rig.sandbox.set_faults(f"tiktok_shop:api:{kind}|x1")
    answer = await call(rig, rig.plugin, ApiCall("GET", "/authorization/202309/shops"), grant.tokens.access_token)
    error = rig.plugin.classify_api_answer(answer)
    assert type(error) is expected


async def test_wrong_types_in_shop_listing(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    rig.sandbox.set_faults("tiktok_shop:api:wrongtypes|x1")
    with pytest.raises(MalformedAnswer):
        await rig.plugin.authorized_shops(grant.tokens.access_token)


async def test_sign_call_shape(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    body = b'{"order_status":"UNPAID"}'
    api = ApiCall("POST", "/order/202309/orders/search", (("page_size", "20"),), body, timestamp=1700000000)
    signed = rig.plugin.sign_call(api, "the-access-token-xyz", grant.identity)
    query = query_of(signed.url)
    cipher = grant.identity.extra["shops"][0]["cipher"]
    assert query == {
        "page_size": "20",
        "app_key": CREDS["app_key"],
        "timestamp": "1700000000",
        "shop_cipher": cipher,  # the only shop's cipher is added for shop-scoped paths
        "sign": signed.sign,
    }
    expected = tiktok_shop_sign(
        CREDS["app_secret"],
        "/order/202309/orders/search",
        [("page_size", "20"), ("app_key", CREDS["app_key"]), ("timestamp", "1700000000"), ("shop_cipher", cipher)],
        body,
    )
    assert signed.sign == expected and signed.body == body
    assert signed.headers["x-tts-access-token"] == "the-access-token-xyz"
    assert signed.headers["content-type"] == "application/json"
    assert "access_token" not in query and "the-access-token-xyz" not in repr(signed)
    # An empty object is never sent: its signature is ambiguous (vector T11).
    empty = rig.plugin.sign_call(ApiCall("POST", "/order/202309/orders/search", body=b"{}", timestamp=1), "tok")
    assert empty.body is None
    assert empty.sign == tiktok_shop_sign(
        CREDS["app_secret"], "/order/202309/orders/search", [("app_key", CREDS["app_key"]), ("timestamp", "1")]
    )
    # /authorization calls never carry a shop cipher; a timestamp in the query is honoured.
    auth = rig.plugin.sign_call(
        ApiCall("GET", "/authorization/202309/shops", (("timestamp", "123"),)), "t", grant.identity
    )
    assert "shop_cipher" not in query_of(auth.url) and query_of(auth.url)["timestamp"] == "123"


# -------------------------------------------------------------------------------- classification


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status, httpx.Headers(headers or {}), raw)


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (36009004, "Invalid credentials. Invalid app_key.", ConfigError),
        (36004003, "invalid app_key or app_secret", ConfigError),
        (36009004, "Invalid timestamp.", ClockSkew),
        (36009004, "Invalid credentials. The x-tts-access-token header is invalid", AccessTokenInvalid),
        (105002, "Expired credentials.", AccessTokenInvalid),
        (105005, "Access denied: scope", ReauthRequired),
        (36009033, "Access denied. Your IP address is not in the IP allow list", ConfigError),
        (106013, "missing shop_cipher", ConfigError),
        (36009002, "Too many requests", TransientError),
        (36009007, "timeout", TransientError),
        (77777777, "something new", TransientError),
    ],
)
def test_api_codes(code: int, message: str, expected: type[RefresherError]) -> None:
    error = offline_plugin().classify_api_answer(answer(200, {"code": code, "message": message, "request_id": "R1"}))
    assert type(error) is expected
    assert error is not None and error.code == str(code) and error.request_id == "R1"


def test_unknown_code_keeps_code_and_no_token_in_message() -> None:
    token = "TTP_" + "a1B2c3D4" * 6
    body = {"code": 123, "message": f"bad token {token}", "request_id": "R2"}
    error = offline_plugin().classify_api_answer(answer(200, body))
    assert isinstance(error, TransientError) and error.code == "123"
    assert token not in str(error) and token not in repr(error.info())
    assert "123" in error.info().message  # the alarm after the retry budget names the raw code


def test_status_and_shape_classification() -> None:
    limited = offline_plugin().classify_api_answer(
        answer(429, {"code": 36009002, "message": "Too many requests", "request_id": "R"}, {"retry-after": "7"})
    )
    assert isinstance(limited, TransientError) and limited.retry_after == 7 and limited.code == "36009002"
    assert isinstance(offline_plugin().classify_api_answer(answer(502, b"<html>bad gateway</html>")), TransientError)
    assert isinstance(offline_plugin().classify_api_answer(answer(400, b"<html>no</html>")), MalformedAnswer)
    assert isinstance(offline_plugin().classify_api_answer(answer(200, {"code": "0"})), MalformedAnswer)
    assert offline_plugin().classify_api_answer(answer(200, {"code": 0, "data": {}})) is None
    assert offline_plugin().classify_api_answer(answer(200, b"%PDF-1.4 a file")) is None  # not a JSON API answer


def test_credentials_model_rejects_typos_and_numbers() -> None:
    from pydantic import ValidationError

    model = TikTokShopPlatform.credentials_model
    with pytest.raises(ValidationError):
        model.model_validate({"app_key": "a", "app_secret": "b", "app_secert": "c"})
    with pytest.raises(ValidationError):
        model.model_validate({"app_key": 123, "app_secret": "b"})
    assert "b" not in repr(model.model_validate({"app_key": "a", "app_secret": "bbbbbbbb"}))


async def test_unreadable_answer_keeps_the_gateway_log_id(rig: Rig) -> None:
    """The sandbox's HTML page carries no request id; the plugin falls back to the X-Tt-Logid header."""
    broken = Answer(200, httpx.Headers({"x-tt-logid": "LOG123", "content-type": "text/html"}), b"<html>oops</html>")
    with pytest.raises(MalformedAnswer) as err:
        rig.plugin.transport.envelope(broken, "refresh")
    assert err.value.request_id == "LOG123" and str(err.value).startswith("refresh: HTML")


async def test_callback_without_code(rig: Rig) -> None:
    assert rig.plugin.callback_error({"state": "s"}) is None  # not a denial …
    with pytest.raises(MalformedAnswer, match="without an authorization code"):
        await rig.plugin.exchange_code({"state": "s", "code": "null"})  # … but nothing to exchange either


# ------------------------------------------------------------------- shops kept current (issue 14.3)

SEARCH = "/order/202309/orders/search"


async def _search(rig: Rig, grant: Grant, identity: Any, query: tuple[tuple[str, str], ...] = ()) -> Any:
    call = ApiCall("POST", SEARCH, query, b'{"order_status":"UNPAID"}')
    signed = rig.plugin.sign_call(call, grant.tokens.access_token, identity)
    answer = await rig.plugin.transport.send(signed.method, signed.url, headers=signed.headers, content=signed.body)
    return answer, rig.plugin.classify_api_answer(answer)


async def test_multi_shop_seller_names_the_shop_by_id(rig: Rig) -> None:
    grant, _ = await onboard(rig, shops="3")
    shops = grant.identity.extra["shops"]
    answer, error = await _search(rig, grant, grant.identity, (("shop_id", shops[2]["id"]),))
    assert error is None, answer.body
    assert json.loads(answer.body)["data"]["shop_id"] == shops[2]["id"]
    signed = rig.plugin.sign_call(ApiCall("POST", SEARCH, (("shop_id", shops[1]["id"]),)), "t", grant.identity)
    assert query_of(signed.url)["shop_cipher"] == shops[1]["cipher"] and "shop_id" not in query_of(signed.url)
    # Without a shop id a multi-shop seller's call has no cipher: the platform says so, refresher does not guess.
    _, missing = await _search(rig, grant, grant.identity)
    assert isinstance(missing, ConfigError) and missing.code == "106013"
    with pytest.raises(ConfigError, match="not among the seller's authorized shops"):
        rig.plugin.sign_call(ApiCall("POST", SEARCH, (("shop_id", "999"),)), "t", grant.identity)


async def test_a_changed_cipher_is_noticed_and_read_again(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    assert (await _search(rig, grant, grant.identity))[1] is None
    rig.sandbox.platforms["tiktok_shop"].rotate_ciphers(grant.identity.key)  # type: ignore[attr-defined]
    _, stale = await _search(rig, grant, grant.identity)
    assert isinstance(stale, ConfigError) and rig.plugin.identity_is_stale(stale)
    fresh = await rig.plugin.updated_identity(grant.identity, grant.tokens)
    assert fresh is not None and fresh.extra["shops"][0]["cipher"] != grant.identity.extra["shops"][0]["cipher"]
    assert (await _search(rig, grant, fresh))[1] is None


async def test_shops_are_read_again_with_each_refresh(rig: Rig) -> None:
    """A listing that failed at the exchange (shops_error) is retried by the next refresh, and a shop the
    seller added since is picked up."""
    rig.sandbox.set_faults("tiktok_shop:api:error200|x1")
    grant, _ = await onboard(rig)
    assert grant.identity.extra["shops"] == [] and "shops_error" in grant.identity.extra
    chain = rig.sandbox.state.find_chain("tiktok_shop", grant.identity.key)
    assert chain is not None
    tokens = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    updated = await rig.plugin.updated_identity(grant.identity, tokens)
    assert updated is not None and "shops_error" not in updated.extra and len(updated.extra["shops"]) == 1
    chain.subjects[0].extra["shops"].append({**chain.subjects[0].extra["shops"][0], "id": "42", "cipher": "ROW_new"})
    again = await rig.plugin.updated_identity(updated, tokens)
    assert again is not None and [s["id"] for s in again.extra["shops"]][-1] == "42"
    assert await rig.plugin.updated_identity(again, tokens) is None  # nothing new: nothing to store
    # A failed listing keeps the shops known so far.
    rig.sandbox.set_faults("tiktok_shop:api:error200|x1")
    failed = await rig.plugin.updated_identity(again, tokens)
    assert failed is not None and failed.extra["shops"] == again.extra["shops"] and failed.extra["shops_error"]


async def test_the_refresher_stores_the_shops_it_reads_again(rig: Rig, tmp_path: Path) -> None:
    from refresher.refresh import Refresher
    from refresher.store import open_store
    from tests.support import settings_for

    settings = settings_for(rig.sandbox, {"tiktok_shop": "tiktok_shop"}, store={"url": f"sqlite:///{tmp_path}/t.db"})
    store = open_store(settings.store, rig.clock)
    await store.open()
    try:
        rig.sandbox.set_faults("tiktok_shop:api:error200|x1")
        grant, _ = await onboard(rig)
        await store.upsert_grant("tiktok_shop", "tiktok_shop", grant)
        refresher = Refresher(settings, store, {"tiktok_shop": rig.plugin}, rig.clock, "test-owner")
        result = await refresher.refresh_now("tiktok_shop", grant.identity.key)
        assert result.outcome == "success"
        stored = await store.get("tiktok_shop", grant.identity.key)
        assert stored is not None and len(stored.identity.extra["shops"]) == 1
        assert "shops_error" not in stored.identity.extra
    finally:
        await store.close()
