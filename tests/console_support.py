"""Helpers of the console tests: a daemon with onboarded sandbox accounts, and the secrets no page may show."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from refresher.daemon import Daemon
from tests.onboarding_support import ADMIN_TOKEN, browse

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"


def base(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.port}"


async def onboard(daemon: Daemon) -> None:
    """Accounts on every platform through the sandbox's real consent flow (Shopee: 2 shops, 1 merchant)."""
    async with httpx.AsyncClient(timeout=10) as client:
        shopee = {"as": "main", "shops": "2", "merchants": "1"}
        for platform, options in (("shopee", shopee), ("tiktok_shop", None), ("lazada", None), ("tiktok", None)):
            visit = await browse(client, f"{base(daemon)}/connect/{platform}", headers=AUTH, options=options)
            assert visit.outcome == "granted", visit.final.text[:300]


async def secrets_of(daemon: Daemon) -> list[str]:
    """Everything a page must never contain: configured secrets and every account's tokens."""
    found = [s for s in daemon.settings.secrets() if s]
    for account in await daemon.store.list(limit=1000):
        if account.tokens is not None:
            found += [account.tokens.access_token, account.tokens.refresh_token]
        if account.previous_refresh_token:
            found.append(account.previous_refresh_token)
    for app in daemon.settings.apps:
        for account in await daemon.store.list(app=app, limit=1000):
            for entry in await daemon.store.history(app, account.key):
                found += [entry.tokens.access_token, entry.tokens.refresh_token]
    return found


def assert_clean(html: str, secrets: list[str], where: str) -> None:
    leaked = [s[:4] + "…" for s in secrets if len(s) >= 6 and s in html]
    assert not leaked, f"{where} shows a secret or token: {leaked}"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)
