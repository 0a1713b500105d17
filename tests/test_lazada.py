"""Lazada plugin against the Lazada sandbox on a real port: consent link, code exchange with
country_user_info, rotation without moving the grant's deadline, signed API calls, every fault
classified, and no token, code or secret in any error text."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import yaml

from refresher import platforms
from refresher.config import parse_config
from refresher.domain import (
    AccessTokenInvalid,
    AuthorizationDenied,
    ClockSkew,
    ConfigError,
    FakeClock,
    Grant,
    Identity,
    MalformedAnswer,
    PlatformTimeout,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TransientError,
)
from refresher.platforms.base import Answer, ApiCall
from refresher.platforms.lazada import LazadaPlatform
from refresher.platforms.signing import lazada_sign
from refresher.sandbox import SandboxServer
from refresher.sandbox.apps import SANDBOX_CREDENTIALS
from tests.support import app_for, assert_no_secret, error_texts

SECRET = SANDBOX_CREDENTIALS["lazada"]["app_secret"]
APP_KEY = SANDBOX_CREDENTIALS["lazada"]["app_key"]
START = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@dataclass
class Rig:
    sandbox: SandboxServer
    plugin: LazadaPlatform
    clock: FakeClock
    http: httpx.AsyncClient
    secrets: set[str] = field(default_factory=set)

    def check(self, error: BaseException) -> None:
        assert_no_secret(error_texts(error), self.secrets | {SECRET}, type(error).__name__)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock(START)
    async with SandboxServer(clock=clock, fault_delay=1.5, seed=5) as sandbox, httpx.AsyncClient() as http:
        plugin = LazadaPlatform(app_for(sandbox, "lazada", timeout="1s"), http=http, clock=clock)
        yield Rig(sandbox, plugin, clock, http)


def offline(**credentials: object) -> LazadaPlatform:
    entry = {"platform": "lazada", "app_key": "123", "app_secret": "s3cret", "redirect_uri": "https://e.x/callback/a"}
    text = yaml.safe_dump({"apps": {"a": {**entry, **credentials}}})
    return LazadaPlatform(parse_config(text, credential_models=platforms.credential_models()).apps["a"])


async def onboard(rig: Rig, **options: str) -> tuple[dict[str, str], Grant]:
    params = await rig.sandbox.approve(rig.plugin.authorize_url("st-1"), **options)
    rig.secrets.add(params["code"])
    [grant] = await rig.plugin.exchange_code(params)
    rig.secrets |= {grant.tokens.access_token, grant.tokens.refresh_token}
    return params, grant


async def api(rig: Rig, access_token: str, tamper: bool = False) -> RefresherError | None:
    signed = rig.plugin.sign_call(ApiCall("GET", "/seller/get"), access_token)
    url = signed.url
    if tamper:
        url = url.replace(f"sign={signed.sign}", f"sign={signed.sign[:-1]}{'0' if signed.sign[-1] != '0' else '1'}")
    answer = await rig.plugin.transport.send(signed.method, url, headers=signed.headers)
    return rig.plugin.classify_api_answer(answer)


# ------------------------------------------------------------------------------------------- consent


async def test_authorize_url_shape(rig: Rig) -> None:
    url = rig.plugin.authorize_url("state-abc", "https://erp.example.com/cb")
    parts = urlsplit(url)
    assert parts.path == "/lazada/oauth/authorize"
    assert dict(parse_qsl(parts.query)) == {
        "response_type": "code",
        "force_auth": "true",
        "redirect_uri": "https://erp.example.com/cb",
        "client_id": APP_KEY,
        "state": "state-abc",
    }


def test_production_hosts_and_country_gateway() -> None:
    assert offline().authorize_url("s").startswith("https://auth.lazada.com/oauth/authorize?")
    assert offline().host("api") == "https://api.lazada.sg/rest"
    assert offline(country="th").host("api") == "https://api.lazada.co.th/rest"
    assert offline(base_url="http://127.0.0.1:9/lazada").host("api") == "http://127.0.0.1:9/lazada/rest"
    signed = offline(country="my").sign_call(ApiCall("GET", "/seller/get", timestamp=1717000000), "tok")
    query = dict(parse_qsl(urlsplit(signed.url).query))
    assert signed.url.startswith("https://api.lazada.com.my/rest/seller/get?")
    assert query["timestamp"] == "1717000000000" and query["sign_method"] == "sha256"
    expected = lazada_sign("s3cret", "/seller/get", {k: v for k, v in query.items() if k != "sign"})
    assert query["sign"] == signed.sign == expected


def test_empty_parameter_is_refused_not_signed() -> None:
    with pytest.raises(ConfigError, match="'offset' is empty"):
        offline().sign_call(ApiCall("GET", "/orders/get", query=[("offset", "")]), "tok")


async def test_denied_consent_is_authorization_denied(rig: Rig) -> None:
    params = await rig.sandbox.deny(rig.plugin.authorize_url("st-d"))
    assert params["error"] == "access_denied" and params["state"] == "st-d"
    assert isinstance(rig.plugin.callback_error(params), AuthorizationDenied)
    with pytest.raises(AuthorizationDenied):
        await rig.plugin.exchange_code(params)


# ------------------------------------------------------------------------------------------- tokens


async def test_onboarding_refresh_and_rotation(rig: Rig) -> None:
    params, grant = await onboard(rig)
    assert params["state"] == "st-1"
    identity = grant.identity
    assert identity.kind == "seller" and identity.key == identity.platform_id and identity.key.isdigit()
    assert identity.region == "sg"
    assert identity.extra["country_user_info"][0]["seller_id"] == identity.key
    assert grant.tokens.access_expires_at == START + dt.timedelta(days=30)
    assert grant.tokens.refresh_expires_at == START + dt.timedelta(days=180)
    assert "access_token" not in grant.tokens.raw and grant.tokens.raw["request_id"]
    assert await api(rig, grant.tokens.access_token) is None

    rig.clock.advance(dt.timedelta(days=20))
    fresh = await rig.plugin.refresh(identity, grant.tokens.refresh_token)
    rig.secrets |= {fresh.access_token, fresh.refresh_token}
    assert fresh.refresh_token != grant.tokens.refresh_token
    assert fresh.access_expires_at == rig.clock.now() + dt.timedelta(days=30)
    assert fresh.refresh_expires_at == START + dt.timedelta(days=180)  # the grant's deadline does not move
    assert "country_user_info_list" in fresh.raw
    assert await api(rig, fresh.access_token) is None

    with pytest.raises(RefreshTokenRejected) as reused:
        await rig.plugin.refresh(identity, grant.tokens.refresh_token)
    assert reused.value.code == "IllegalRefreshToken" and reused.value.request_id
    rig.check(reused.value)
    assert rig.sandbox.state.counters["lazada.reuse"] == 1

    rig.clock.advance(dt.timedelta(days=31))
    expired = await api(rig, fresh.access_token)
    assert isinstance(expired, AccessTokenInvalid) and expired.code == "IllegalAccessToken"
    rig.check(expired)


async def test_cross_border_seller_keeps_every_country(rig: Rig) -> None:
    _, grant = await onboard(rig, countries="sg,my,th")
    infos = grant.identity.extra["country_user_info"]
    assert [i["country"] for i in infos] == ["sg", "my", "th"]
    assert grant.identity.key == infos[0]["seller_id"] and grant.identity.region == "cb"
    _, again = await onboard(rig, id=grant.identity.key)
    assert again.identity.key == grant.identity.key


async def test_expired_and_reused_codes_are_rejected(rig: Rig) -> None:
    params = await rig.sandbox.approve(rig.plugin.authorize_url("st"))
    rig.secrets.add(params["code"])
    rig.clock.advance(dt.timedelta(minutes=31))
    with pytest.raises(ReauthRequired) as expired:
        await rig.plugin.exchange_code(params)
    assert expired.value.code == "InvalidCode"
    rig.check(expired.value)
    params, _ = await onboard(rig)
    with pytest.raises(ReauthRequired) as reused:
        await rig.plugin.exchange_code(params)
    rig.check(reused.value)


async def test_refresh_after_the_grant_ended_is_rejected(rig: Rig) -> None:
    _, grant = await onboard(rig)
    rig.clock.advance(dt.timedelta(days=181))
    with pytest.raises(RefreshTokenRejected) as err:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    rig.check(err.value)


# ----------------------------------------------------------------------------------- config errors


async def test_tampered_signature_is_a_config_error(rig: Rig) -> None:
    _, grant = await onboard(rig)
    error = await api(rig, grant.tokens.access_token, tamper=True)
    assert isinstance(error, ConfigError) and error.code == "IncompleteSignature"
    rig.check(error)


async def test_wrong_app_secret_is_a_config_error(rig: Rig) -> None:
    _, grant = await onboard(rig)
    wrong = LazadaPlatform(
        app_for(rig.sandbox, "lazada", app_secret="wrong-secret-0001"), http=rig.http, clock=rig.clock
    )
    rig.secrets.add("wrong-secret-0001")
    with pytest.raises(ConfigError) as err:
        await wrong.refresh(grant.identity, grant.tokens.refresh_token)
    assert err.value.code == "IncompleteSignature"
    rig.check(err.value)


async def test_skewed_clock_is_clock_skew(rig: Rig) -> None:
    _, grant = await onboard(rig)
    skewed = LazadaPlatform(rig.plugin.app, http=rig.http, clock=FakeClock(START + dt.timedelta(hours=3)))
    with pytest.raises(ClockSkew) as err:
        await skewed.refresh(grant.identity, grant.tokens.refresh_token)
    assert err.value.code == "OPEN_API_TIMESTAMP_INVALID"
    rig.check(err.value)
    # within Lazada's two hours either way it is fine
    near = LazadaPlatform(rig.plugin.app, http=rig.http, clock=FakeClock(START - dt.timedelta(hours=1)))
    assert (await near.refresh(grant.identity, grant.tokens.refresh_token)).access_token


# ------------------------------------------------------------------------------------------- faults

FAULTS = [
    ("timeout", PlatformTimeout),
    ("502", TransientError),
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
    _, grant = await onboard(rig)
    rig.sandbox.set_faults(f"lazada:refresh:{kind}|x1")
    with pytest.raises(RefresherError) as err:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert type(err.value) is expected, f"{kind}: {type(err.value).__name__}: {err.value}"
    rig.check(err.value)
    if kind == "error200":
        assert err.value.code == "SYS_ERROR" and err.value.request_id
    if kind == "lost":
        with pytest.raises(RefreshTokenRejected):
            await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    elif kind != "revoked":
        assert (await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)).access_token


@pytest.mark.parametrize(("kind", "expected"), [("revoked", ReauthRequired), ("503", TransientError)])
async def test_token_faults_are_classified(rig: Rig, kind: str, expected: type[RefresherError]) -> None:
    params = await rig.sandbox.approve(rig.plugin.authorize_url("st"))
    rig.secrets.add(params["code"])
    rig.sandbox.set_faults(f"lazada:token:{kind}|x1")
    with pytest.raises(expected) as err:
        await rig.plugin.exchange_code(params)
    rig.check(err.value)


async def test_api_revoked_fault_is_access_token_invalid(rig: Rig) -> None:
    _, grant = await onboard(rig)
    rig.sandbox.set_faults("lazada:api:revoked|x1")
    error = await api(rig, grant.tokens.access_token)
    assert isinstance(error, AccessTokenInvalid)
    rig.check(error)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"code": "IllegalRefreshToken"}, RefreshTokenRejected),
        ({"code": "InvalidCode"}, ReauthRequired),
        ({"code": "IncompleteSignature"}, ConfigError),
        ({"code": "APP_KEY_INVALID"}, ConfigError),
        ({"code": "AUTH_TYPE_UNSUPPORTED"}, ConfigError),
        ({"code": "OPEN_API_TIMESTAMP_INVALID"}, ClockSkew),
        ({"code": "ApiCallLimit"}, TransientError),
        ({"code": "ServiceTimeout"}, TransientError),
        ({"code": "SomethingNew"}, TransientError),
        ({"code": ["0"]}, MalformedAnswer),
        ({"message": "no code at all"}, MalformedAnswer),
    ],
)
def test_error_codes(body: dict[str, object], expected: type[RefresherError]) -> None:
    answer = Answer(200, httpx.Headers(), json.dumps({**body, "type": "ISV", "request_id": "rq-9"}).encode())
    with pytest.raises(RefresherError) as err:
        offline()._checked(answer, "token refresh", "refresh")
    assert type(err.value) is expected
    assert err.value.request_id == "rq-9"
    if body.get("code") == "ApiCallLimit":
        assert err.value.retry_after == 1.0


def test_numeric_string_lifetimes_are_read() -> None:
    body = {
        "access_token": "a" * 30,
        "refresh_token": "r" * 30,
        "expires_in": "60",
        "refresh_expires_in": "120",
        "code": "0",
        "country_user_info": [{"country": "sg", "seller_id": "1001"}],
    }
    plugin = offline()
    plugin.clock = FakeClock(START)
    tokens = plugin.token_set(body, plugin._strict_token_set)
    assert tokens.access_expires_at == START + dt.timedelta(seconds=60)
    assert tokens.refresh_expires_at == START + dt.timedelta(seconds=120)


async def test_consent_checks_client_id_and_redirect(rig: Rig) -> None:
    url = rig.plugin.authorize_url("st")
    assert (await rig.http.get(url)).status_code == 200
    assert (await rig.http.get(url.replace(f"client_id={APP_KEY}", "client_id=999"))).status_code == 400
    no_redirect = url.replace("redirect_uri=", "redirect_urx=")
    assert (await rig.http.get(no_redirect)).status_code == 400


# ------------------------------------------------------------------------- bodies (issue: POST signing)

FORM = "application/x-www-form-urlencoded"


async def _send(rig: Rig, call: ApiCall, access_token: str, identity: Identity | None = None) -> Answer:
    signed = rig.plugin.sign_call(call, access_token, identity)
    return await rig.plugin.transport.send(signed.method, signed.url, headers=signed.headers, content=signed.body)


async def test_form_body_is_signed_as_parameters_and_accepted(rig: Rig) -> None:
    _, grant = await onboard(rig)
    form = b"payload=%7B%22a%22%3A1%7D&page=2"
    answer = await _send(rig, ApiCall("POST", "/seller/get", body=form, content_type=FORM), grant.tokens.access_token)
    assert rig.plugin.classify_api_answer(answer) is None, answer.body
    assert json.loads(answer.body)["data"]["received"] == {"payload": '{"a":1}', "page": "2"}
    assert rig.sandbox.state.counters["lazada.bad_sign"] == 0


async def test_the_sandbox_refuses_a_form_signed_as_raw_body_bytes(rig: Rig) -> None:
    """The old signer appended the form's bytes to the signed text: Lazada (and the sandbox) refuse that."""
    _, grant = await onboard(rig)
    form = "payload=%7B%22a%22%3A1%7D"
    params = {
        "app_key": APP_KEY,
        "timestamp": str(int(rig.clock.now().timestamp() * 1000)),
        "sign_method": "sha256",
        "access_token": grant.tokens.access_token,
    }
    params["sign"] = lazada_sign(str(SECRET), "/seller/get", params, form)
    answer = await rig.plugin.transport.send(
        "POST",
        f"{rig.plugin.host('api')}/seller/get",
        params=params,
        content=form.encode(),
        headers={"content-type": FORM},
    )
    error = rig.plugin.classify_api_answer(answer)
    assert isinstance(error, ConfigError) and error.code == "IncompleteSignature"


async def test_json_body_is_appended_raw_and_tampering_is_caught(rig: Rig) -> None:
    _, grant = await onboard(rig)
    call = ApiCall("POST", "/seller/get", body=b'{"Request":{"x":1}}', content_type="application/json")
    answer = await _send(rig, call, grant.tokens.access_token)
    assert rig.plugin.classify_api_answer(answer) is None, answer.body
    signed = rig.plugin.sign_call(call, grant.tokens.access_token)
    forged = await rig.plugin.transport.send("POST", signed.url, headers=signed.headers, content=b'{"Request":{"x":2}}')
    error = rig.plugin.classify_api_answer(forged)
    assert isinstance(error, ConfigError) and error.code == "IncompleteSignature"


async def test_system_parameters_in_a_form_are_replaced_not_signed_twice(rig: Rig) -> None:
    _, grant = await onboard(rig)
    call = ApiCall("POST", "/seller/get", body=b"app_key=evil&sign=x&q=1", content_type=FORM)
    signed = rig.plugin.sign_call(call, grant.tokens.access_token)
    assert signed.body == b"q=1"
    answer = await _send(rig, call, grant.tokens.access_token)
    assert rig.plugin.classify_api_answer(answer) is None, answer.body


# ---------------------------------------------------------------- routing per account (issue: regions)


async def test_each_account_is_routed_to_its_own_venture(rig: Rig) -> None:
    _, grant = await onboard(rig, countries="my")
    assert grant.identity.region == "my"
    call = ApiCall("GET", "/seller/get")
    signed = rig.plugin.sign_call(call, grant.tokens.access_token, grant.identity)
    assert signed.base_url == rig.plugin.host("api_my") and "/lazada/my/rest/" in signed.url
    answer = await _send(rig, call, grant.tokens.access_token, grant.identity)
    assert rig.plugin.classify_api_answer(answer) is None, answer.body
    assert json.loads(answer.body)["data"]["location"] == "MY"
    # The app's default gateway (Singapore) does not know a Malaysian seller, as on Lazada.
    wrong = await _send(rig, call, grant.tokens.access_token)
    assert rig.plugin.classify_api_answer(wrong) is not None
    assert rig.sandbox.state.counters["lazada.wrong_gateway"] == 1


async def test_cross_border_seller_picks_a_venture_per_call(rig: Rig) -> None:
    _, grant = await onboard(rig, countries="sg,my,th")
    countries = grant.identity.extra["countries"]
    assert sorted(countries) == ["my", "sg", "th"] and all(c["seller_id"] for c in countries.values())
    default = rig.plugin.sign_call(ApiCall("GET", "/seller/get"), grant.tokens.access_token, grant.identity)
    assert default.base_url == rig.plugin.host("api_sg")
    thai = ApiCall("GET", "/seller/get", headers={"x-refresher-country": "th"})
    signed = rig.plugin.sign_call(thai, grant.tokens.access_token, grant.identity)
    assert signed.base_url == rig.plugin.host("api_th") and "x-refresher-country" not in signed.headers
    answer = await _send(rig, thai, grant.tokens.access_token, grant.identity)
    data = json.loads(answer.body)["data"]
    assert data["location"] == "TH" and str(data["seller_id"]) == countries["th"]["seller_id"]


async def test_refresh_keeps_the_ventures_current(rig: Rig) -> None:
    _, grant = await onboard(rig, countries="sg,my")
    stale = replace(
        grant.identity, region="sg", extra={**grant.identity.extra, "country_user_info": [], "countries": {}}
    )
    tokens = await rig.plugin.refresh(stale, grant.tokens.refresh_token)
    updated = await rig.plugin.updated_identity(stale, tokens)
    assert updated is not None and updated.region == "cb"
    assert sorted(updated.extra["countries"]) == ["my", "sg"]
    assert await rig.plugin.updated_identity(updated, tokens) is None  # unchanged: nothing to store


# ------------------------------------------------------------------------------------- error codes


@pytest.mark.parametrize(
    ("code", "expected"),
    [("InvalidApiPath", ConfigError), ("InvalidTimestamp", ClockSkew), ("OPEN_API_TIMESTAMP_INVALID", ClockSkew)],
)
def test_documented_codes_are_not_transient(rig: Rig, code: str, expected: type[RefresherError]) -> None:
    body = json.dumps({"type": "ISV", "code": code, "message": "m", "request_id": "r"}).encode()
    error = rig.plugin.classify_api_answer(Answer(200, httpx.Headers({"content-type": "application/json"}), body))
    assert type(error) is expected and error.code == code


def test_an_unknown_code_keeps_its_raw_code(rig: Rig) -> None:
    body = json.dumps({"type": "ISP", "code": "E0123_NEW", "message": "m", "request_id": "r"}).encode()
    error = rig.plugin.classify_api_answer(Answer(200, httpx.Headers({"content-type": "application/json"}), body))
    assert isinstance(error, TransientError) and error.code == "E0123_NEW" and "E0123_NEW" in error.message


async def test_the_refresher_keeps_the_stored_ventures_current(rig: Rig, tmp_path: Path) -> None:
    from refresher.refresh import Refresher
    from refresher.store import open_store
    from tests.support import settings_for

    settings = settings_for(rig.sandbox, {"lazada": "lazada"}, store={"url": f"sqlite:///{tmp_path}/t.db"})
    store = open_store(settings.store, rig.clock)
    await store.open()
    try:
        _, grant = await onboard(rig, countries="sg,my")
        stale = replace(
            grant.identity, region="sg", extra={"country_user_info": grant.identity.extra["country_user_info"][:1]}
        )
        await store.upsert_grant("lazada", "lazada", Grant(stale, grant.tokens))
        refresher = Refresher(settings, store, {"lazada": rig.plugin}, rig.clock, "test-owner")
        assert (await refresher.refresh_now("lazada", stale.key)).outcome == "success"
        stored = await store.get("lazada", stale.key)
        assert stored is not None and stored.identity.region == "cb"
        assert sorted(stored.identity.extra["countries"]) == ["my", "sg"]
    finally:
        await store.close()
