"""Web onboarding end to end: a real daemon on a real port, the sandbox's consent page, a browser-like client.

/connect/{app} → platform consent page → approve → /callback/{app} → accounts in the store.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from refresher.daemon import Daemon
from refresher.domain import AccountStatus, ErrorInfo, FakeClock
from refresher.invites import make_invite
from refresher.sandbox import SandboxServer
from refresher.store.base import Alarm
from tests.onboarding_support import (
    ADMIN_TOKEN,
    ALLOWED_RETURN,
    INVITE_SECRET,
    PLATFORMS,
    browse,
    running_daemon,
)

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# clock, sandbox and daemon come from tests/conftest.py.


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10, follow_redirects=False) as http:
        yield http


def base(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.port}"


def assert_no_secret(text: str, daemon: Daemon, *more: str) -> None:
    for secret in [*daemon.settings.secrets(), *more]:
        assert secret not in text


@pytest.mark.parametrize("platform", PLATFORMS)
async def test_connect_approve_callback_stores_the_account(
    platform: str, daemon: Daemon, client: httpx.AsyncClient
) -> None:
    visit = await browse(client, f"{base(daemon)}/connect/{platform}", headers=AUTH)
    assert visit.final.status_code == 200, visit.final.text
    assert visit.outcome == "granted"
    # The browser really went to the sandbox's consent page and came back to our callback.
    assert any(urlsplit(u).path.startswith("/_sandbox/consent/") for u in visit.urls)
    assert urlsplit(visit.callback_url).path == f"/callback/{platform}"
    accounts = await daemon.store.list(app=platform)
    assert len(accounts) >= 1
    for account in accounts:
        assert account.status is AccountStatus.ACTIVE
        assert account.tokens is not None
        assert account.key in visit.final.text  # every account is listed on the page
        # Never a token, the code or a credential on the page.
        assert_no_secret(
            visit.final.text,
            daemon,
            account.tokens.access_token,
            account.tokens.refresh_token,
            dict(parse_qsl(urlsplit(visit.callback_url).query))["code"],
        )
    assert visit.final.headers["cache-control"] == "no-store"
    assert visit.final.headers["referrer-policy"] == "no-referrer"


async def test_shopee_main_account_grant_stores_every_shop_and_merchant(
    daemon: Daemon, client: httpx.AsyncClient
) -> None:
    visit = await browse(
        client, f"{base(daemon)}/connect/shopee", headers=AUTH, options={"as": "main", "shops": "2", "merchants": "1"}
    )
    assert visit.outcome == "granted", visit.final.text
    accounts = await daemon.store.list(app="shopee")
    assert sorted(a.identity.kind for a in accounts) == ["merchant", "shop", "shop"]
    for account in accounts:
        assert account.key in visit.final.text
        assert (account.identity.name or "") in visit.final.text
    assert visit.final.text.count('<li class="account"') == 3  # every shop and the merchant, by name


async def test_denial_gives_a_clear_page_never_a_500(daemon: Daemon, client: httpx.AsyncClient) -> None:
    for platform in PLATFORMS:
        visit = await browse(client, f"{base(daemon)}/connect/{platform}", headers=AUTH, choice="deny")
        assert visit.final.status_code == 400, (platform, visit.final.text)
        assert visit.outcome == "denied"
        assert "declined" in visit.final.text
        assert await daemon.store.list(app=platform) == []


async def test_state_missing_unknown_tampered_reused_and_expired(
    daemon: Daemon, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    visit = await browse(client, f"{base(daemon)}/connect/tiktok_shop", headers=AUTH, stop_at="/callback/")
    callback = visit.callback_url
    params = dict(parse_qsl(urlsplit(callback).query))
    cb = f"{base(daemon)}/callback/tiktok_shop"

    missing = await client.get(cb, params={k: v for k, v in params.items() if k != "state"})
    assert (missing.status_code, "no state parameter" in missing.text) == (400, True)

    tampered = await client.get(cb, params={**params, "state": params["state"][:-3] + "zzz"})
    assert tampered.status_code == 400
    assert "not one this server issued" in tampered.text

    first = await client.get(callback)
    assert first.status_code == 200, first.text
    # A reload of the completed callback (issue 13): "already connected" with the accounts, nothing exchanged
    # again (the code is not sent to the platform a second time, the state stays spent).
    replay = await client.get(callback)
    assert replay.status_code == 200
    assert "Already connected" in replay.text and "Nothing was stored" not in replay.text
    assert "Already connected" in (await client.get(callback)).text  # and stays so

    late = await browse(client, f"{base(daemon)}/connect/tiktok_shop", headers=AUTH, stop_at="/callback/")
    clock.advance(daemon.settings.server.state_ttl + dt.timedelta(seconds=1))
    expired = await client.get(late.callback_url)
    assert expired.status_code == 400
    assert "expired" in expired.text
    for page in (missing, tampered, replay, expired):
        assert_no_secret(page.text, daemon, params["code"])


async def test_a_replayed_code_with_a_fresh_state_fails_with_502_and_no_secret(
    daemon: Daemon, client: httpx.AsyncClient
) -> None:
    used = await browse(client, f"{base(daemon)}/connect/shopee", headers=AUTH)
    assert used.outcome == "granted"
    params = dict(parse_qsl(urlsplit(used.callback_url).query))
    code = params["code"]
    fresh = await browse(client, f"{base(daemon)}/connect/shopee", headers=AUTH, stop_at="/callback/")
    state = dict(parse_qsl(urlsplit(fresh.callback_url).query))["state"]
    replay = await client.get(f"{base(daemon)}/callback/shopee", params={**params, "state": state})
    assert replay.status_code == 502, replay.text
    assert "error class:" in replay.text
    assert_no_secret(replay.text, daemon, code)


async def test_return_to_allowlist(daemon: Daemon, client: httpx.AsyncClient) -> None:
    for bad in (
        "https://evil.example.com/oauth/done",
        "https://erp.example.com.evil.test/oauth/done",
        "https://erp.example.com/other",
        "javascript:alert(1)",
        "https://user@erp.example.com/oauth/done",
    ):
        refused = await client.get(f"{base(daemon)}/connect/tiktok", params={"return_to": bad}, headers=AUTH)
        assert refused.status_code == 400, bad
        assert "return_to_allowlist" in refused.text
    visit = await browse(
        client, f"{base(daemon)}/connect/tiktok?return_to={ALLOWED_RETURN}", headers=AUTH, stop_at="/oauth/done"
    )
    landed = urlsplit(visit.urls[-1])
    assert f"{landed.scheme}://{landed.netloc}{landed.path}" == ALLOWED_RETURN
    query = dict(parse_qsl(landed.query))
    (account,) = await daemon.store.list(app="tiktok")
    assert query == {"connected": "tiktok", "accounts": "1", "account": account.key}  # the keys (issue 13)
    assert len(await daemon.store.list(app="tiktok")) == 1


async def test_an_api_token_even_with_every_scope_cannot_start_a_flow(
    sandbox: SandboxServer, clock: FakeClock, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    every = ["tokens:read", "tokens:read_refresh", "accounts:read", "accounts:write", "refresh", "proxy"]
    erp = {"name": "erp", "secret": "erp-token-0123456789abcdef", "scopes": every}
    async with running_daemon(sandbox, clock, tmp_path / "tokens.db", api_tokens=[erp]) as daemon:
        url = f"{base(daemon)}/connect/shopee"
        refused = await client.get(url, headers={"Authorization": f"Bearer {erp['secret']}"})
        assert refused.status_code == 401 and "admin token is not valid" in refused.text
        assert (await client.get(url, headers=AUTH)).status_code == 302


async def test_connect_needs_the_admin_token_or_a_valid_invitation(
    daemon: Daemon, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    url = f"{base(daemon)}/connect/shopee"
    anonymous = await client.get(url)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "invitation" in anonymous.text
    wrong = await client.get(url, headers={"Authorization": "Bearer not-the-admin-token"})
    assert wrong.status_code == 401
    assert (await client.get(url, headers=AUTH)).status_code == 302

    invite = make_invite("shopee", dt.timedelta(hours=1), secret=INVITE_SECRET, clock=clock)
    # A seller's browser first sees the landing page; its Continue link goes on to the platform.
    landing = await client.get(url, params={"invite": invite})
    assert landing.status_code == 200 and 'id="continue"' in landing.text
    assert (await client.get(f"{url}/continue", params={"invite": invite})).status_code == 302
    other_app = await client.get(f"{base(daemon)}/connect/lazada", params={"invite": invite})
    assert other_app.status_code == 403
    tampered = await client.get(url, params={"invite": invite[:-2] + ("AA" if invite[-2:] != "AA" else "BB")})
    assert tampered.status_code == 403
    assert "not valid" in tampered.text
    clock.advance(dt.timedelta(hours=1, seconds=1))
    expired = await client.get(url, params={"invite": invite})
    assert expired.status_code == 403
    assert "expired" in expired.text
    # The Continue link checks the invitation again: an expired one never reaches the platform.
    assert (await client.get(f"{url}/continue", params={"invite": invite})).status_code == 403
    for page in (wrong, other_app, tampered, expired):
        assert_no_secret(page.text, daemon)
    assert (await client.get(f"{base(daemon)}/connect/nope", headers=AUTH)).status_code == 404


async def test_the_landing_page_names_the_platform_and_what_the_seller_grants(
    daemon: Daemon, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """Both from the plugin (display_name, grant_subject); the page once asked `platform == 'TikTok'`."""
    for app, name, subject in (
        ("shopee", "Shopee", "shop"),
        ("tiktok_shop", "TikTok Shop", "shop"),
        ("tiktok", "TikTok", "account"),
    ):
        invite = make_invite(app, dt.timedelta(hours=1), secret=INVITE_SECRET, clock=clock)
        landing = await client.get(f"{base(daemon)}/connect/{app}", params={"invite": invite})
        assert landing.status_code == 200, landing.text
        assert f"<title>Connect your {name} {subject}" in landing.text, landing.text
        assert f"your <strong>{name}</strong> {subject}." in landing.text, landing.text


async def test_open_connect_when_auth_is_not_required(
    sandbox: SandboxServer, clock: FakeClock, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    async with running_daemon(sandbox, clock, tmp_path / "open.db", connect_requires_auth=False) as daemon:
        visit = await browse(client, f"{base(daemon)}/connect/shopee")
        assert visit.outcome == "granted"


async def test_reauthorization_updates_the_account_in_place(daemon: Daemon, client: httpx.AsyncClient) -> None:
    first = await browse(client, f"{base(daemon)}/connect/shopee", headers=AUTH)
    assert first.outcome == "granted"
    (account,) = await daemon.store.list(app="shopee")
    # The account went bad: failures counted and flagged for re-authorization.
    owner = "test-owner"
    claimed = await daemon.store.claim("shopee", account.key, owner, dt.timedelta(minutes=1))
    assert claimed is not None
    await daemon.store.record_failure(
        account.id,
        owner,
        ErrorInfo("reauth_required", "invalid_refresh_token", "refresh token revoked"),
        None,
        status=AccountStatus.NEEDS_REAUTH,
    )
    broken = await daemon.store.get("shopee", account.key)
    assert broken is not None and broken.status is AccountStatus.NEEDS_REAUTH and broken.consecutive_failures == 1
    now = daemon.clock.now()
    await daemon.store.put_alarm(Alarm("shopee", account.key, "reauth_required", now, now, None))

    again = await browse(
        client, f"{base(daemon)}/connect/shopee", headers=AUTH, options={"id": account.identity.platform_id}
    )
    assert again.outcome == "granted", again.final.text
    (renewed,) = await daemon.store.list(app="shopee")
    assert renewed.id == account.id and renewed.key == account.key
    assert renewed.status is AccountStatus.ACTIVE
    assert renewed.consecutive_failures == 0
    assert renewed.tokens is not None and account.tokens is not None
    assert renewed.tokens.access_token != account.tokens.access_token
    # The daemon closes the account's open alarm once the seller has re-authorized.
    alarm = await daemon.store.get_alarm("shopee", account.key, "reauth_required")
    assert alarm is not None and alarm.resolved_at is not None


async def test_logs_of_a_whole_flow_carry_no_secret(
    daemon: Daemon, client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from refresher.logging import configure_logging

    configure_logging(daemon.settings.logging, secrets=daemon.settings.secrets())
    ok = await browse(client, f"{base(daemon)}/connect/tiktok", headers=AUTH)
    denied = await browse(client, f"{base(daemon)}/connect/tiktok", headers=AUTH, choice="deny")
    assert (ok.outcome, denied.outcome) == ("granted", "denied")
    (account,) = await daemon.store.list(app="tiktok")
    assert account.tokens is not None
    captured = capsys.readouterr()
    output = captured.out + captured.err
    events = [json.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert "onboarding.granted" in events and "onboarding.denied" in events
    code = dict(parse_qsl(urlsplit(ok.callback_url).query))["code"]
    assert_no_secret(output, daemon, account.tokens.access_token, account.tokens.refresh_token, code)


@pytest.mark.parametrize("platform", ["lazada", "tiktok_shop"])
async def test_a_used_states_marker_never_opens_a_flow(
    platform: str, daemon: Daemon, client: httpx.AsyncClient
) -> None:
    """The old tombstone attack: a used state's marker (``used:`` + its SHA-256, what the store used to
    keep) sent through the platform's real consent to our callback must be refused like any stranger."""
    import hashlib

    first = await browse(client, f"{base(daemon)}/connect/{platform}", headers=AUTH)
    assert first.outcome == "granted", first.final.text
    used = dict(parse_qsl(urlsplit(first.callback_url).query))["state"]
    stored = {a.key for a in await daemon.store.list(app=platform)}
    consent = first.urls[1]  # the platform's authorize URL /connect sent the browser to
    assert urlsplit(consent).port != daemon.port and "state=" in consent
    for forged in (f"used:{hashlib.sha256(used.encode()).hexdigest()}", hashlib.sha256(used.encode()).hexdigest()):
        query = dict(parse_qsl(urlsplit(consent).query))
        attack_url = urlsplit(consent)._replace(query=urlencode({**query, "state": forged})).geturl()
        # No admin token, no invitation: straight to the platform, as an attacker would.
        attack = await browse(client, attack_url)
        assert attack.final.status_code == 400, attack.final.text
        assert "not one this server issued" in attack.final.text
        assert {a.key for a in await daemon.store.list(app=platform)} == stored
