"""TikTok Login Kit v2 plugin against the TikTok sandbox on a real port (docs/platforms.md)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import structlog

from refresher.config import AppSettings
from refresher.domain import (
    AccessTokenInvalid,
    AuthorizationDenied,
    ConfigError,
    FakeClock,
    Grant,
    MalformedAnswer,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TransientError,
)
from refresher.platforms.base import PKCE, Answer, ApiCall
from refresher.platforms.signing import pkce_challenge_hex, pkce_challenge_s256
from refresher.platforms.tiktok import TikTokPlatform
from refresher.sandbox import SandboxServer
from refresher.sandbox.apps import SANDBOX_CREDENTIALS
from tests.support import app_for, assert_no_secret, error_texts

CREDS = SANDBOX_CREDENTIALS["tiktok"]
DESKTOP = {"client_key": "sbxtiktokdesktop01", "client_secret": "sandbox-tiktok-desktop-secret-01", "desktop": True}
HEX_WEB = {"client_key": "sbxtiktokhexweb01", "client_secret": "sandbox-tiktok-hexweb-secret-01", "pkce": "hex"}
START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
REDIRECT = "http://127.0.0.1:3017/callback"


@dataclass
class Rig:
    sandbox: SandboxServer
    plugin: TikTokPlatform
    clock: FakeClock
    http: httpx.AsyncClient
    secrets: set[str] = field(default_factory=set)

    def make(self, **overrides: Any) -> TikTokPlatform:
        return TikTokPlatform(app_for(self.sandbox, "tiktok", **overrides), http=self.http, clock=self.clock)

    def clean(self, error: BaseException) -> None:
        assert_no_secret(
            error_texts(error),
            self.secrets | {CREDS["client_secret"], str(DESKTOP["client_secret"])},
            type(error).__name__,
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock(START)
    async with (
        SandboxServer(clock=clock, fault_delay=0.5, seed=5, credentials={"tiktok": [DESKTOP, HEX_WEB]}) as sandbox,
        httpx.AsyncClient() as http,
    ):
        yield Rig(sandbox, TikTokPlatform(app_for(sandbox, "tiktok"), http=http, clock=clock), clock, http)


async def onboard(rig: Rig, plugin: TikTokPlatform | None = None, **options: str) -> tuple[Grant, dict[str, str]]:
    plugin = plugin or rig.plugin
    pkce = plugin.pkce_pair()
    params = await rig.sandbox.approve(plugin.authorize_url("st-1", REDIRECT, pkce), **options)
    rig.secrets.update({params["code"], *([pkce.verifier] if pkce else [])})
    grants = await plugin.exchange_code(params, pkce, REDIRECT)
    assert len(grants) == 1
    rig.secrets.update({grants[0].tokens.access_token, grants[0].tokens.refresh_token})
    return grants[0], params


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def offline_plugin(**extra: Any) -> TikTokPlatform:
    """Production hosts, no server: for URLs, PKCE and classification."""
    app = AppSettings.model_validate({"name": "tk", "platform": "tiktok", **CREDS, **extra})
    app = app.model_copy(update={"credentials": TikTokPlatform.credentials_model.model_validate(app.credentials)})
    return TikTokPlatform(app, clock=FakeClock(START))


# ---------------------------------------------------------------------------------- consent, PKCE


def test_authorize_url_shape_web() -> None:
    plugin = offline_plugin(scopes=["user.info.basic", "video.list"], pkce="s256")
    pkce = plugin.pkce_pair()
    assert pkce is not None
    url = plugin.authorize_url("st 1", "https://erp.example.com/cb", pkce)
    assert url.startswith("https://www.tiktok.com/v2/auth/authorize/?")
    assert query_of(url) == {
        "client_key": CREDS["client_key"],
        "scope": "user.info.basic,video.list",  # comma-separated
        "response_type": "code",
        "redirect_uri": "https://erp.example.com/cb",
        "state": "st 1",
        "code_challenge": pkce_challenge_s256(pkce.verifier),
        "code_challenge_method": "S256",
    }
    assert 43 <= len(pkce.verifier) <= 128 and pkce.verifier not in repr(pkce)
    plain = query_of(plugin.authorize_url("s", "https://erp.example.com/cb"))
    assert "code_challenge" not in plain and plain["scope"] == "user.info.basic,video.list"


def test_desktop_pkce_uses_the_hex_challenge() -> None:
    plugin = offline_plugin(desktop=True)
    pkce = plugin.pkce_pair()
    assert pkce.challenge == pkce_challenge_hex(pkce.verifier) and len(pkce.challenge) == 64
    # Computed independently with hashlib for this verifier.
    assert (
        pkce_challenge_hex("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
        == "13d31e961a1ad8ec2f16b10c4c982e0876a878ad6df144566ee1894acb70f9c3"
    )


def test_pkce_encoding_is_a_per_app_setting() -> None:
    """The defaults are the documented flows: the hex challenge for desktop apps, no PKCE for web apps
    (the web guide has none); RFC 7636 base64url or hex can be chosen per app."""
    assert offline_plugin().pkce_pair() is None
    desktop = offline_plugin(desktop=True).pkce_pair()
    assert desktop is not None and desktop.challenge == pkce_challenge_hex(desktop.verifier)
    web = offline_plugin(pkce="s256").pkce_pair()
    assert web is not None and web.challenge == pkce_challenge_s256(web.verifier)
    hexed = offline_plugin(pkce="hex").pkce_pair()
    assert hexed is not None and hexed.challenge == pkce_challenge_hex(hexed.verifier)
    standard = offline_plugin(desktop=True, pkce="s256").pkce_pair()
    assert standard is not None and standard.challenge == pkce_challenge_s256(standard.verifier)
    assert offline_plugin(pkce="none").pkce_pair() is None
    with pytest.raises(ValueError, match="pkce"):
        TikTokPlatform.credentials_model.model_validate({**CREDS, "pkce": "base64"})


async def test_a_web_app_set_to_hex_pkce_onboards_against_the_sandbox(rig: Rig) -> None:
    hexed = rig.make(**HEX_WEB)
    grant, _ = await onboard(rig, hexed)
    assert grant.tokens.access_token
    # The same web app sending the RFC 7636 challenge is refused: the sandbox checks what the app is set to.
    wrong = PKCE("v" * 50, pkce_challenge_s256("v" * 50))
    params = await rig.sandbox.approve(hexed.authorize_url("s", REDIRECT, wrong))
    with pytest.raises(ConfigError):
        await hexed.exchange_code(params, wrong, REDIRECT)


def test_authorize_url_needs_a_redirect_uri() -> None:
    with pytest.raises(ConfigError, match="redirect_uri"):
        offline_plugin().authorize_url("s")


async def test_sandbox_consent_validates_the_request(rig: Rig) -> None:
    url = rig.plugin.authorize_url("s", REDIRECT)
    bad_client = url.replace(CREDS["client_key"], "nobody")
    no_redirect = url.replace("redirect_uri=", "redirect=")
    for broken in (bad_client, no_redirect):
        answer = await rig.http.get(broken)
        assert answer.status_code == 400


# ------------------------------------------------------------------------------------- onboarding


async def test_onboarding_web_without_pkce(rig: Rig) -> None:
    """A web app follows the web guide: no code_challenge on the link, no code_verifier in the exchange."""
    assert "code_challenge" not in rig.plugin.authorize_url("s", REDIRECT, rig.plugin.pkce_pair())
    grant, params = await onboard(rig)
    assert params["state"] == "st-1" and params["scopes"] == "user.info.basic"
    chain = rig.sandbox.state.chains[1]
    subject = chain.subjects[0]
    identity = grant.identity
    assert identity.key == identity.platform_id == subject.id and identity.kind == "user"
    assert identity.name == subject.name  # from /v2/user/info/
    assert identity.extra["union_id"] == subject.extra["union_id"]
    assert identity.extra["avatar_url"].startswith("https://")
    # Relative lifetimes turned into absolute UTC: 2 hours and 180 days (Nov-2026 docs).
    assert grant.tokens.access_expires_at == START + dt.timedelta(hours=2)
    assert grant.tokens.refresh_expires_at == START + dt.timedelta(days=180)
    assert grant.tokens.scopes == ("user.info.basic",)
    raw = json.dumps(grant.tokens.raw)
    assert grant.tokens.access_token not in raw and grant.tokens.refresh_token not in raw
    assert rig.sandbox.state.counters["tiktok.api"] == 1


async def test_onboarding_desktop_with_hex_pkce(rig: Rig) -> None:
    desktop = rig.make(**DESKTOP)
    grant, _ = await onboard(rig, desktop)
    assert grant.identity.kind == "user"
    # A desktop app that sends the RFC 7636 base64url challenge is refused, as observed in production.
    verifier = "v" * 50
    wrong = PKCE(verifier, pkce_challenge_s256(verifier))
    params = await rig.sandbox.approve(desktop.authorize_url("s", REDIRECT, wrong))
    rig.secrets.add(params["code"])
    with pytest.raises(ConfigError) as err:
        await desktop.exchange_code(params, wrong, REDIRECT)
    assert err.value.code == "invalid_request" and "Code verifier" in str(err.value)
    assert rig.sandbox.state.counters["tiktok.pkce_mismatch"] == 1
    rig.clean(err.value)
    # The desktop guide requires PKCE: a desktop app's link without a challenge is refused.
    bare = await rig.http.get(desktop.authorize_url("s", REDIRECT))
    assert bare.status_code == 400 and "code_challenge" in bare.text


async def test_wrong_verifier_and_redirect_mismatch(rig: Rig) -> None:
    pkce = PKCE("w" * 60, pkce_challenge_s256("w" * 60))
    params = await rig.sandbox.approve(rig.plugin.authorize_url("s", REDIRECT, pkce))
    rig.secrets.add(params["code"])
    other = PKCE("x" * 60, pkce.challenge)
    with pytest.raises(ConfigError):
        await rig.plugin.exchange_code(params, other, REDIRECT)
    with pytest.raises(ReauthRequired) as mismatch:
        await rig.plugin.exchange_code(params, pkce, "http://127.0.0.1:9/elsewhere")
    assert mismatch.value.code == "invalid_grant"
    grants = await rig.plugin.exchange_code(params, pkce, REDIRECT)  # still unused: both were refused
    assert grants[0].identity.key


async def test_expired_and_reused_code(rig: Rig) -> None:
    _, params = await onboard(rig)
    pkce = rig.plugin.pkce_pair()
    with pytest.raises(ReauthRequired) as reused:
        await rig.plugin.exchange_code(params, pkce, REDIRECT)
    assert reused.value.code == "invalid_grant" and reused.value.request_id
    late = await rig.sandbox.approve(rig.plugin.authorize_url("s", REDIRECT, pkce))
    rig.secrets.add(late["code"])
    rig.clock.advance(dt.timedelta(minutes=11))
    with pytest.raises(ReauthRequired):
        await rig.plugin.exchange_code(late, pkce, REDIRECT)
    rig.clean(reused.value)


async def test_reauthorizing_the_same_user_keeps_the_open_id(rig: Rig) -> None:
    first, _ = await onboard(rig)
    again, _ = await onboard(rig, id=first.identity.key)
    assert again.identity.key == first.identity.key and again.identity.name == first.identity.name


async def test_failed_user_info_keeps_the_grant(rig: Rig) -> None:
    rig.sandbox.set_faults("tiktok:api:500|x1")
    with structlog.testing.capture_logs() as logs:
        grant, _ = await onboard(rig)
    assert grant.identity.name is None and "user_info_error" in grant.identity.extra
    assert any(entry["event"] == "tiktok.user_info_failed" for entry in logs)
    text = repr(logs) + repr(grant.identity)
    for secret in rig.secrets | {CREDS["client_secret"]}:
        assert secret not in text
    assert (await rig.plugin.user_info(grant.tokens.access_token))["open_id"] == grant.identity.key


async def test_denied_and_failed_consent(rig: Rig) -> None:
    params = await rig.sandbox.deny(rig.plugin.authorize_url("s-d", REDIRECT))
    assert params["error"] == "access_denied" and params["state"] == "s-d"
    with pytest.raises(AuthorizationDenied):
        await rig.plugin.exchange_code(params)
    assert isinstance(rig.plugin.callback_error({"error": "invalid_scope"}), ConfigError)


async def test_wrong_client_secret_is_a_config_error(rig: Rig) -> None:
    pkce = rig.plugin.pkce_pair()
    params = await rig.sandbox.approve(rig.plugin.authorize_url("s", REDIRECT, pkce))
    bad = rig.make(client_secret="definitely-not-the-secret-1")
    rig.secrets.update({params["code"], "definitely-not-the-secret-1"})
    with pytest.raises(ConfigError) as err:
        await bad.exchange_code(params, pkce, REDIRECT)
    assert err.value.code == "invalid_client" and err.value.http_status == 401
    rig.clean(err.value)


# ---------------------------------------------------------------------------------------- refresh


async def test_refresh_rotates_strictly(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    rig.clock.advance(dt.timedelta(hours=1, minutes=45))
    fresh = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    rig.secrets.update({fresh.access_token, fresh.refresh_token})
    assert fresh.refresh_token != grant.tokens.refresh_token
    assert fresh.access_expires_at == rig.clock.now() + dt.timedelta(hours=2)
    assert fresh.refresh_expires_at == rig.clock.now() + dt.timedelta(days=180)  # TikTok restarts it
    with pytest.raises(RefreshTokenRejected) as old:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert old.value.code == "invalid_grant" and old.value.request_id
    assert rig.sandbox.state.counters["tiktok.reuse"] == 1
    rig.clean(old.value)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("503", TransientError),
        ("429", TransientError),
        ("error200", TransientError),
        ("html", MalformedAnswer),
        ("truncated", MalformedAnswer),
        ("wrongtypes", MalformedAnswer),
        ("revoked", RefreshTokenRejected),
        ("lost", TransientError),
    ],
)
async def test_refresh_faults(rig: Rig, kind: str, expected: type[RefresherError]) -> None:
    grant, _ = await onboard(rig)
    rig.sandbox.set_faults(f"tiktok:refresh:{kind}|x1")
    with pytest.raises(RefresherError) as err:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert type(err.value) is expected, f"{kind}: {type(err.value).__name__} {err.value}"
    if kind == "error200":
        assert err.value.code == "server_error" and err.value.request_id
    rig.clean(err.value)


async def test_exchange_faults(rig: Rig) -> None:
    for kind, expected in [("error200", TransientError), ("wrongtypes", MalformedAnswer), ("revoked", ReauthRequired)]:
        pkce = rig.plugin.pkce_pair()
        params = await rig.sandbox.approve(rig.plugin.authorize_url("s", REDIRECT, pkce))
        rig.secrets.add(params["code"])
        rig.sandbox.set_faults(f"tiktok:token:{kind}|x1")
        with pytest.raises(RefresherError) as err:
            await rig.plugin.exchange_code(params, pkce, REDIRECT)
        assert type(err.value) is expected, kind
        rig.clean(err.value)


async def test_timeout_is_transient(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    plugin = rig.make(timeout="0.2s")
    rig.sandbox.set_faults("tiktok:refresh:timeout|x1")
    with pytest.raises(TransientError) as err:
        await plugin.refresh(grant.identity, grant.tokens.refresh_token)
    rig.clean(err.value)


# ------------------------------------------------------------------------------------- API, revoke


async def user_info(rig: Rig, token: str, fields: str = "open_id,display_name") -> Answer:
    signed = rig.plugin.sign_call(ApiCall("GET", "/v2/user/info/", (("fields", fields),)), token)
    return await rig.plugin.transport.send(signed.method, signed.url, headers=signed.headers)


async def test_api_call_and_refusals(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    token = grant.tokens.access_token
    ok = await user_info(rig, token)
    assert rig.plugin.classify_api_answer(ok) is None
    assert json.loads(ok.body)["data"]["user"] == {"open_id": grant.identity.key, "display_name": grant.identity.name}
    tampered = rig.plugin.classify_api_answer(await user_info(rig, token[:-2] + "zz"))
    assert isinstance(tampered, AccessTokenInvalid) and tampered.code == "access_token_invalid"
    bad_fields = rig.plugin.classify_api_answer(await user_info(rig, token, "open_id,password"))
    assert isinstance(bad_fields, ConfigError) and bad_fields.code == "invalid_params"
    rig.clock.advance(dt.timedelta(hours=2, seconds=1))
    expired = rig.plugin.classify_api_answer(await user_info(rig, token))
    assert isinstance(expired, AccessTokenInvalid) and expired.http_status == 401 and expired.request_id
    rig.clean(expired)
    fresh = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert rig.plugin.classify_api_answer(await user_info(rig, fresh.access_token)) is None


async def test_revoke_ends_the_grant(rig: Rig) -> None:
    grant, _ = await onboard(rig)
    await rig.plugin.revoke(grant.tokens.access_token)
    assert rig.sandbox.state.counters["tiktok.revoked"] == 1
    assert isinstance(
        rig.plugin.classify_api_answer(await user_info(rig, grant.tokens.access_token)), AccessTokenInvalid
    )
    with pytest.raises(RefreshTokenRejected):
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    with pytest.raises(ConfigError) as again:  # the token is gone now
        await rig.plugin.revoke(grant.tokens.access_token)
    rig.clean(again.value)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("error200", TransientError), ("503", TransientError), ("html", MalformedAnswer), ("revoked", AccessTokenInvalid)],
)
async def test_api_faults(rig: Rig, kind: str, expected: type[RefresherError]) -> None:
    grant, _ = await onboard(rig)
    rig.sandbox.set_faults(f"tiktok:api:{kind}|x1")
    assert type(rig.plugin.classify_api_answer(await user_info(rig, grant.tokens.access_token))) is expected


def test_sign_call_is_a_bearer_header() -> None:
    plugin = offline_plugin()
    signed = plugin.sign_call(ApiCall("GET", "/v2/user/info/", (("fields", "open_id"),)), "act.secret-token-value")
    assert signed.url == "https://open.tiktokapis.com/v2/user/info/?fields=open_id"
    assert signed.headers["authorization"] == "Bearer act.secret-token-value"
    assert "secret-token-value" not in repr(signed)


# -------------------------------------------------------------------------------- classification


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status, httpx.Headers(headers or {}), raw)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "access_token_invalid", AccessTokenInvalid),
        (401, "scope_not_authorized", ReauthRequired),
        (401, "scope_permission_missed", ConfigError),
        (400, "invalid_params", ConfigError),
        (500, "internal_error", TransientError),
        (418, "something_new", TransientError),
    ],
)
def test_api_error_codes(status: int, code: str, expected: type[RefresherError]) -> None:
    body = {"data": {}, "error": {"code": code, "message": "m", "log_id": "L1"}}
    error = offline_plugin().classify_api_answer(answer(status, body))
    assert type(error) is expected
    assert error is not None and error.code == code and error.request_id == "L1"


def test_rate_limit_keeps_retry_after() -> None:
    body = {"data": {}, "error": {"code": "rate_limit_exceeded", "message": "slow down", "log_id": "L"}}
    error = offline_plugin().classify_api_answer(answer(429, body, {"retry-after": "12"}))
    assert isinstance(error, TransientError) and error.retry_after == 12
    assert offline_plugin().classify_api_answer(answer(200, {"data": {}, "error": {"code": "ok"}})) is None


def test_credentials_model() -> None:
    from pydantic import ValidationError

    model = TikTokPlatform.credentials_model
    assert model.model_validate({"client_key": "k", "client_secret": "s"}).desktop is False
    with pytest.raises(ValidationError):
        model.model_validate({"client_key": "k", "client_secret": "s", "client_id": "typo"})
