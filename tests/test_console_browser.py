"""The operator console and the seller pages in a real headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright; no browser is downloaded). Screenshots of every page go to artifacts/screenshots/.

Skipped with a reason only where chromium is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, ViewportSize, async_playwright

from refresher.daemon import Daemon
from refresher.domain import AccountStatus, FakeClock
from refresher.invites import make_invite
from refresher.sandbox import SandboxServer
from refresher.store.base import Alarm
from tests.console_support import AUTH, SHOTS, assert_clean, base, onboard, secrets_of
from tests.onboarding_support import ADMIN_TOKEN, INVITE_SECRET, browse, running_daemon

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)"),
]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))


@pytest.fixture
async def daemon(clock: FakeClock, tmp_path: Path) -> AsyncIterator[Daemon]:
    async with (
        SandboxServer(clock=clock) as sandbox,
        running_daemon(sandbox, clock, tmp_path / "tokens.db", display_name="Acme ERP") as running,
    ):
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_operator_logs_in_finds_refreshes_disables_and_opens_an_alarm(
    daemon: Daemon, browser: Browser, clock: FakeClock
) -> None:
    await onboard(daemon)
    (shop, *_) = [a for a in await daemon.store.list(app="shopee") if a.identity.kind == "shop"]
    await daemon.store.put_alarm(
        Alarm("tiktok", (await daemon.store.list(app="tiktok"))[0].key, "reauth_required", clock.now(), None, None,
              {"message": "the seller withdrew consent"})
    )  # fmt: skip
    secrets = await secrets_of(daemon)
    page = await browser.new_page(viewport=DESKTOP)
    pages: dict[str, str] = {}

    # An unauthenticated visit lands on the login form.
    await page.goto(f"{base(daemon)}/ui/accounts")
    assert page.url.startswith(f"{base(daemon)}/ui/login?next=")
    await shot(page, "login")
    await page.fill("#token", "not-the-admin-token")
    await page.click("button[type=submit]")
    assert "not the admin token" in await page.inner_text("#login-error")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    assert page.url == f"{base(daemon)}/ui/accounts"  # back where the visit began
    cookie = next(c for c in await page.context.cookies() if c["name"] == "refresher_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
    secrets.append(cookie["value"])

    # Find the shop by searching its id.
    await page.goto(f"{base(daemon)}/ui/accounts")
    await page.fill("#q", shop.identity.platform_id)
    await page.click("#search")
    rows = page.locator("#accounts tr[data-key]")
    assert await rows.count() == 1
    assert await rows.first.get_attribute("data-key") == shop.key
    pages["accounts"] = await page.content()
    await shot(page, "accounts")

    # Open it, refresh now: a new expiry (the clock moved on) and a new version.
    await rows.first.locator("a").first.click()
    await page.wait_for_selector("#access-expiry")
    before = await page.inner_text("#access-expiry")
    assert await page.inner_text("#version") == "1"
    clock.advance(dt.timedelta(minutes=7))
    await page.click("#refresh-now")
    await page.wait_for_selector("#notice")
    assert "Refreshed" in await page.inner_text("#notice")
    after = await page.inner_text("#access-expiry")
    assert after != before
    assert await page.inner_text("#version") == "2"
    refreshed = await daemon.store.get("shopee", shop.key)
    assert refreshed is not None and refreshed.tokens is not None
    assert f"{refreshed.tokens.access_expires_at:%Y-%m-%d %H:%M}" in after
    assert await page.locator("#events tr").count() >= 2  # the grant and the refresh
    assert await page.locator("#history tr").count() == 2  # header + the replaced version
    secrets = await secrets_of(daemon) + [cookie["value"]]
    pages["account"] = await page.content()
    await shot(page, "account")

    # The overview counts the refresh in its chart (from the audit table).
    await page.goto(f"{base(daemon)}/ui")
    assert "ready" in await page.inner_text("#health")
    assert await page.locator("#apps tr[data-app=shopee]").count() == 1
    assert await page.locator("svg#activity rect.ok").count() == 1
    assert "1 refreshed" in await page.inner_text(".legend")
    pages["overview"] = await page.content()
    await shot(page, "overview")
    await page.go_back()

    # Copy a re-authorization link (fetched on demand, never part of the page as served).
    await page.click("#copy-reauth")
    await page.locator("#reauth-link:not([hidden])").wait_for()  # (the page's CSP forbids eval'd probes)
    assert (await page.input_value("#reauth-link")).startswith(f"{base(daemon)}/connect/shopee")

    # Disable it.
    await page.click("#disable")
    await page.wait_for_selector("#enable")
    assert await page.inner_text("#status") == "disabled"
    disabled = await daemon.store.get("shopee", shop.key)
    assert disabled is not None and disabled.status is AccountStatus.DISABLED

    # Open the alarm: from the alarms page to its account.
    await page.goto(f"{base(daemon)}/ui/alarms")
    assert await page.locator("#open tr[data-cause=reauth_required]").count() == 1
    pages["alarms"] = await page.content()
    await shot(page, "alarms")
    await page.click("#open .alarm-account")
    await page.wait_for_selector("#account-alarms")
    assert "reauth required" in await page.inner_text("#account-alarms")

    # Delete, after the confirmation.
    await page.goto(f"{base(daemon)}/ui/accounts/shopee/{shop.key}")
    await page.click("#delete")
    await page.wait_for_selector("#confirm-delete")
    await shot(page, "account-delete")
    await page.click("#delete-confirmed")
    await page.wait_for_url(f"{base(daemon)}/ui/accounts?*")
    assert await daemon.store.get("shopee", shop.key) is None

    for name, html in pages.items():
        assert_clean(html, secrets, name)

    # Log out: the old cookie no longer opens the console.
    await page.goto(f"{base(daemon)}/ui")
    await page.click("#logout")
    assert "/ui/login" in page.url
    await page.context.add_cookies([{"name": "refresher_console", "value": cookie["value"], "url": base(daemon)}])
    await page.goto(f"{base(daemon)}/ui")
    assert "/ui/login" in page.url


async def test_seller_sees_who_asks_then_the_connected_shops_by_name(
    daemon: Daemon, browser: Browser, clock: FakeClock
) -> None:
    invite = make_invite("tiktok_shop", dt.timedelta(hours=1), secret=INVITE_SECRET, clock=clock)
    page = await browser.new_page(viewport=PHONE)
    await page.goto(f"{base(daemon)}/connect/tiktok_shop?invite={invite}")
    assert await page.inner_text("#integrator") == "Acme ERP"
    assert "TikTok Shop" in await page.inner_text("body")
    landing = await page.content()
    await shot(page, "seller-landing")
    await page.click("#continue")
    await page.click("#approve")  # the sandbox's consent page
    await page.wait_for_selector("[data-outcome=granted]")
    (seller,) = await daemon.store.list(app="tiktok_shop")
    text = await page.inner_text("body")
    assert "Acme ERP can now work with this TikTok Shop account" in text
    assert seller.identity.name and seller.identity.name in text
    for shop in seller.identity.extra.get("shops", []):
        assert shop["name"] in text
    assert "tiktok_shop" not in text and "UTC" not in text  # no internal app name, no expiry times
    granted = await page.content()
    await shot(page, "seller-granted")

    # Reloading the result: the state is used now.
    await page.reload()
    reloaded = await page.content()
    await shot(page, "seller-reload")

    # A refusal: the expired invitation.
    clock.advance(dt.timedelta(hours=2))
    await page.goto(f"{base(daemon)}/connect/tiktok_shop?invite={invite}")
    assert "expired" in (await page.inner_text("body")).lower()
    refused = await page.content()
    await shot(page, "seller-expired")

    # Shopee: shop names (or plain words), never a bare dash.
    shopee = await browser.new_page(viewport=PHONE)
    shopee_invite = make_invite("shopee", dt.timedelta(hours=1), secret=INVITE_SECRET, clock=clock)
    await shopee.goto(f"{base(daemon)}/connect/shopee?invite={shopee_invite}")
    await shopee.click("#continue")
    await shopee.click("#approve")
    await shopee.wait_for_selector("[data-outcome=granted]")
    shopee_text = await shopee.inner_text("body")
    assert "—" not in shopee_text
    # The shop by its name and country (get_shop_info at onboarding), not "Shopee shop 123".
    assert "Sandbox Shop 1" in shopee_text and "Singapore" in shopee_text and "Shopee shop" not in shopee_text
    await shot(shopee, "seller-granted-shopee")

    secrets = [*await secrets_of(daemon), invite]
    for name, html in {"granted": granted, "reloaded": reloaded, "refused": refused}.items():
        assert_clean(html, secrets, name)
    assert_clean(landing, [s for s in secrets if s != invite], "landing")  # its Continue link carries it


async def test_operator_filters_accounts_by_end_user_and_tag(daemon: Daemon, browser: Browser) -> None:
    await onboard(daemon)  # accounts of no end user
    before = {a.key for a in await daemon.store.list(app="lazada")}
    # One more, through a connect session of the integrator's end user (the real flow, no admin token).
    async with httpx.AsyncClient(timeout=10) as client:
        end_user = {"id": "tenant-42", "email": "ops@tenant42.example"}
        body = {"app": "lazada", "end_user": end_user, "tags": {"plan": "gold"}}
        created = await client.post(f"{base(daemon)}/v1/connect-sessions", json=body, headers=AUTH)
        assert created.status_code == 201, created.text
        visit = await browse(client, created.json()["url"])
        assert visit.outcome == "granted", visit.final.text[:300]
    [mine] = [a for a in await daemon.store.list(app="lazada") if a.key not in before]
    stored, tags = await daemon.store.connection("lazada", mine.key)
    assert stored is not None and stored["id"] == "tenant-42" and tags == {"plan": "gold"}
    assert await daemon.store.count() > 1

    page = await browser.new_page(viewport=DESKTOP)
    await page.goto(f"{base(daemon)}/ui/accounts")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base(daemon)}/ui/accounts")
    await page.fill("#end-user", "tenant-42")
    await page.click("#search")
    await page.wait_for_url("**/ui/accounts?*end_user=tenant-42*")
    rows = page.locator("#accounts tr[data-key]")
    assert await rows.count() == 1 and await rows.first.get_attribute("data-key") == mine.key
    assert await page.input_value("#end-user") == "tenant-42"  # the filter stays in the form
    await shot(page, "accounts-end-user")
    # By tag (key:value, as /v1/accounts takes it) the same account; another end user finds none.
    await page.fill("#end-user", "")
    await page.fill("#tag", "plan:gold")
    await page.click("#search")
    await page.wait_for_url("**/ui/accounts?*tag=plan*")
    assert await rows.count() == 1 and await rows.first.get_attribute("data-key") == mine.key
    await page.fill("#tag", "")
    await page.fill("#end-user", "tenant-43")
    await page.click("#search")
    await page.wait_for_url("**/ui/accounts?*end_user=tenant-43*")
    assert await rows.count() == 0 and "0 accounts" in await page.inner_text("#total")
