"""Shopee shop names from get_shop_info, against the Shopee sandbox on a real port: read at onboarding
(shop login and main account), again with the daily identity check, signed strictly (the sandbox refuses
any other base string), and never at the cost of the grant."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import structlog

from refresher.domain import FakeClock, Grant, Identity
from refresher.platforms.base import ApiCall
from refresher.platforms.shopee import ShopeePlatform
from refresher.platforms.shopee_shop_info import SHOP_INFO_PATH, shop_info
from refresher.platforms.signing import shopee_sign
from refresher.sandbox import SandboxServer
from refresher.sandbox.apps import SANDBOX_CREDENTIALS
from tests.support import app_for, assert_no_secret

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

    async def onboard(self, **options: str) -> list[Grant]:
        params = await self.sandbox.approve(self.plugin.authorize_url("st-1"), **options)
        self.secrets.add(params["code"])
        grants = await self.plugin.exchange_code(params)
        for grant in grants:
            self.secrets |= {grant.tokens.access_token, grant.tokens.refresh_token}
        return grants

    def subject_of(self, identity: Identity) -> Any:
        chain = self.sandbox.state.find_chain("shopee", identity.platform_id)
        assert chain is not None
        return next(s for s in chain.subjects if s.id == identity.platform_id)

    def counter(self, name: str) -> int:
        return int(self.sandbox.state.counters.get(f"shopee.{name}", 0))


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = FakeClock(START)  # the sandbox's and the plugin's
    async with SandboxServer(clock=clock, seed=5) as sandbox, httpx.AsyncClient() as http:
        plugin = ShopeePlatform(app_for(sandbox, "shopee", timeout="1s"), http=http, clock=clock)
        yield Rig(sandbox, plugin, clock, http)


async def test_a_shop_login_grant_names_the_shop_and_its_region(rig: Rig) -> None:
    [grant] = await rig.onboard()
    shop = rig.subject_of(grant.identity)
    assert (grant.identity.name, grant.identity.region) == (shop.name, shop.region)
    assert grant.identity.name == "Sandbox Shop 1" and grant.identity.region == "SG"
    assert "shop_status" not in grant.identity.extra  # NORMAL is not worth a line
    assert rig.counter("api") == 1 and rig.counter("bad_sign") == 0


async def test_a_main_account_grant_names_every_shop_not_the_merchants(rig: Rig) -> None:
    grants = await rig.onboard(**{"as": "main", "shops": "3", "merchants": "1"})
    shops = [g for g in grants if g.identity.kind == "shop"]
    assert [g.identity.name for g in shops] == ["Sandbox Shop 1", "Sandbox Shop 2", "Sandbox Shop 3"]
    assert all(g.identity.region == "SG" for g in shops)
    assert all(g.identity.extra.get("main_account_id") for g in shops)  # what the grant said is kept
    [merchant] = [g for g in grants if g.identity.kind == "merchant"]
    assert merchant.identity.name is None  # get_shop_info is a shop API
    assert rig.counter("api") == 3 and rig.counter("bad_sign") == 0


@pytest.mark.parametrize("fault", ["shopee:api:503", "shopee:api:revoked", "shopee:api:error200"])
async def test_a_failing_get_shop_info_keeps_the_grant_and_warns_without_secrets(rig: Rig, fault: str) -> None:
    rig.sandbox.set_faults(fault)
    with structlog.testing.capture_logs() as logs:
        [grant] = await rig.onboard()
    assert grant.identity.name is None and grant.identity.kind == "shop"  # the fallback name is the page's
    assert grant.tokens.access_token and grant.tokens.refresh_token
    [warning] = [entry for entry in logs if entry["event"] == "shopee.shop_info_unread"]
    assert warning["log_level"] == "warning" and warning["shop_id"] == grant.identity.platform_id
    assert_no_secret([repr(entry) for entry in logs], rig.secrets | {KEY}, "logs")


async def test_the_daily_identity_check_names_a_shop_onboarded_without_a_name(rig: Rig) -> None:
    rig.sandbox.set_faults("shopee:api:503")
    [grant] = await rig.onboard()
    assert grant.identity.name is None
    rig.sandbox.set_faults(None)
    # A day later the refresh's identity check reads the authorization list and the shop's name.
    rig.clock.advance(dt.timedelta(days=1, minutes=1))
    tokens = await rig.plugin.refresh(grant.identity, grant.tokens.refresh_token)
    updated = await rig.plugin.updated_identity(grant.identity, tokens)
    assert updated is not None and updated.name == "Sandbox Shop 1" and updated.region == "SG"
    assert "authorization_expires_at" in updated.extra


async def test_the_sandbox_refuses_get_shop_info_signed_any_other_way(rig: Rig) -> None:
    [grant] = await rig.onboard()
    token = grant.tokens.access_token
    assert (await shop_info(rig.plugin, grant.identity, token))["shop_name"] == "Sandbox Shop 1"
    good = httpx.URL(rig.plugin.sign_call(ApiCall("GET", SHOP_INFO_PATH), token, grant.identity).url)
    ts = int(good.params["timestamp"])
    shop_id = grant.identity.platform_id

    async def answer(sign: str, **changes: str) -> dict[str, Any]:
        params = {**dict(good.params), "sign": sign, **changes}
        response = await rig.http.get(str(good.copy_with(query=None)), params=params)
        return dict(response.json())

    public = shopee_sign(KEY, PARTNER_ID, SHOP_INFO_PATH, ts)  # signed as a public API (no token, no shop)
    no_shop = shopee_sign(KEY, PARTNER_ID, SHOP_INFO_PATH, ts, token)
    other_path = shopee_sign(KEY, PARTNER_ID, "/api/v2/shop/get_profile", ts, token, shop_id)
    for sign in (public, no_shop, other_path, good.params["sign"].upper()):
        assert (await answer(sign))["error"] == "error_sign"
    # Another shop's id with a sign over it: the token does not cover that shop.
    other = str(int(shop_id) + 1)
    refused = await answer(shopee_sign(KEY, PARTNER_ID, SHOP_INFO_PATH, ts, token, other), shop_id=other)
    assert refused["error"] == "error_auth"
    # A timestamp outside the 5-minute window, correctly signed.
    late = ts - 301
    stale = await answer(shopee_sign(KEY, PARTNER_ID, SHOP_INFO_PATH, late, token, shop_id), timestamp=str(late))
    assert (stale["error"], stale["message"]) == ("error_param", "Invalid timestamp")
    assert (await answer(good.params["sign"]))["shop_name"] == "Sandbox Shop 1"
    assert_no_secret([str(dataclasses.asdict(grant.identity))], rig.secrets | {KEY}, "identity")
