"""One conformance suite, run against every platform plugin with the sandbox on a real port.

authorize URL → approval → code exchange → refresh → the rotated token works and the old one is
rejected; an expired code is rejected; every fault kind is classified; no secret in any error text.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from refresher import platforms
from refresher.domain import (
    FakeClock,
    Grant,
    MalformedAnswer,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TransientError,
)
from refresher.platforms.base import ApiCall, Platform
from refresher.sandbox import SandboxServer
from refresher.sandbox.apps import SANDBOX_CREDENTIALS, secret_of
from tests import support
from tests.support import ECHO_CALLS, PLATFORMS, app_for

pytestmark = pytest.mark.parametrize("platform_name", PLATFORMS)


@dataclass
class Rig:
    sandbox: SandboxServer
    plugin: Platform
    clock: FakeClock
    secrets: set[str]


@pytest.fixture
async def rig(platform_name: str) -> AsyncIterator[Rig]:
    clock = FakeClock()
    async with SandboxServer(clock=clock, fault_delay=3.0, seed=7) as sandbox, httpx.AsyncClient() as http:
        app = app_for(sandbox, platform_name)
        plugin = platforms.get(platform_name)(app, http=http, clock=clock)
        yield Rig(sandbox, plugin, clock, {secret_of(SANDBOX_CREDENTIALS[platform_name])})


async def onboard(rig: Rig) -> list[Grant]:
    pkce = rig.plugin.pkce_pair()
    url = rig.plugin.authorize_url("state-123", rig.plugin.app.redirect_uri, pkce)
    params = await rig.sandbox.approve(url)
    assert params.get("code"), f"no code in the callback: {sorted(params)}"
    rig.secrets.add(params["code"])
    grants = await rig.plugin.exchange_code(params, pkce, rig.plugin.app.redirect_uri)
    for grant in grants:
        rig.secrets.update({grant.tokens.access_token, grant.tokens.refresh_token})
    return grants


def assert_no_secret(rig: Rig, error: BaseException) -> None:
    support.assert_no_secret(support.error_texts(error), rig.secrets, type(error).__name__)


async def api_call_ok(rig: Rig, grant: Grant, access_token: str) -> RefresherError | None:
    path, query = ECHO_CALLS[rig.plugin.name]
    signed = rig.plugin.sign_call(ApiCall("GET", path, query), access_token, grant.identity)
    answer = await rig.plugin.transport.send(signed.method, signed.url, headers=signed.headers, content=signed.body)
    return rig.plugin.classify_api_answer(answer)


async def test_authorize_exchange_refresh_rotate(rig: Rig) -> None:
    grants = await onboard(rig)
    assert grants, "an approval yields at least one account"
    grant = grants[0]
    now = rig.clock.now()
    assert grant.tokens.access_expires_at > now
    assert await api_call_ok(rig, grant, grant.tokens.access_token) is None

    rig.clock.advance(dt.timedelta(minutes=30))
    fresh = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    rig.secrets.update({fresh.access_token, fresh.refresh_token})
    assert fresh.refresh_token != grant.tokens.refresh_token
    assert fresh.access_expires_at > rig.clock.now()
    assert await api_call_ok(rig, grant, fresh.access_token) is None

    with pytest.raises(RefreshTokenRejected) as old:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    assert_no_secret(rig, old.value)

    again = await rig.plugin.refresh(grant.identity, fresh.refresh_token)  # the rotated one still works
    assert again.refresh_token not in (fresh.refresh_token, grant.tokens.refresh_token)


async def test_expired_code_is_rejected(rig: Rig) -> None:
    pkce = rig.plugin.pkce_pair()
    url = rig.plugin.authorize_url("state-456", rig.plugin.app.redirect_uri, pkce)
    params = await rig.sandbox.approve(url)
    rig.secrets.add(params["code"])
    rig.clock.advance(rig.plugin.code_lifetime + dt.timedelta(minutes=1))
    with pytest.raises(ReauthRequired) as err:
        await rig.plugin.exchange_code(params, pkce, rig.plugin.app.redirect_uri)
    assert_no_secret(rig, err.value)


async def test_reused_code_is_rejected(rig: Rig) -> None:
    pkce = rig.plugin.pkce_pair()
    url = rig.plugin.authorize_url("state-789", rig.plugin.app.redirect_uri, pkce)
    params = await rig.sandbox.approve(url)
    rig.secrets.add(params["code"])
    await rig.plugin.exchange_code(params, pkce, rig.plugin.app.redirect_uri)
    with pytest.raises(ReauthRequired) as err:
        await rig.plugin.exchange_code(params, pkce, rig.plugin.app.redirect_uri)
    assert_no_secret(rig, err.value)


TRANSIENT_KINDS = ["timeout", "500", "502", "503", "429", "error200"]
MALFORMED_KINDS = ["html", "truncated", "empty", "big", "wrongtypes"]


@pytest.mark.parametrize("kind", TRANSIENT_KINDS + MALFORMED_KINDS + ["revoked", "lost"])
async def test_refresh_faults_are_classified(rig: Rig, kind: str) -> None:
    grant = (await onboard(rig))[0]
    rig.sandbox.set_faults(f"{rig.plugin.name}:refresh:{kind}|x1")
    with pytest.raises(RefresherError) as err:
        await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    error = err.value
    assert_no_secret(rig, error)
    if kind in MALFORMED_KINDS:
        assert isinstance(error, MalformedAnswer), f"{kind}: {type(error).__name__}: {error}"
    elif kind == "revoked":
        assert isinstance(error, RefreshTokenRejected), f"{kind}: {type(error).__name__}: {error}"
    else:
        assert isinstance(error, TransientError), f"{kind}: {type(error).__name__}: {error}"
        assert not isinstance(error, ReauthRequired)
    if kind == "lost":
        # The platform rotated but the answer never arrived: the old token is now spent, and saying so is
        # how the refresh worker recognises a lost rotation (refresh_started_at still set).
        with pytest.raises(RefreshTokenRejected):
            await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    elif kind != "revoked":
        fresh = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)  # the fault was one-off
        assert fresh.refresh_token != grant.tokens.refresh_token


@pytest.mark.parametrize("kind", ["503", "html"])
async def test_token_exchange_faults_are_transient(rig: Rig, kind: str) -> None:
    pkce = rig.plugin.pkce_pair()
    url = rig.plugin.authorize_url("state-f", rig.plugin.app.redirect_uri, pkce)
    params = await rig.sandbox.approve(url)
    rig.secrets.add(params["code"])
    rig.sandbox.set_faults(f"{rig.plugin.name}:token:{kind}|x1")
    with pytest.raises(TransientError) as err:
        await rig.plugin.exchange_code(params, pkce, rig.plugin.app.redirect_uri)
    assert_no_secret(rig, err.value)


async def test_denied_consent_is_authorization_denied(rig: Rig) -> None:
    pkce = rig.plugin.pkce_pair()
    url = rig.plugin.authorize_url("state-d", rig.plugin.app.redirect_uri, pkce)
    params = await rig.sandbox.deny(url)
    error = rig.plugin.callback_error(params)
    assert error is not None and isinstance(error, ReauthRequired)
