"""The sandbox's apps: the credentials it accepts out of the box and how long what it issues lives."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Lifetimes:
    """How long what the sandbox issues lives. ``refresh_extends``: a refresh restarts the refresh
    token's lifetime (Shopee, TikTok) instead of keeping the grant's original deadline (Lazada, TTS)."""

    access: dt.timedelta
    refresh: dt.timedelta
    code: dt.timedelta = dt.timedelta(minutes=10)
    refresh_extends: bool = True
    previous_access_grace: dt.timedelta = dt.timedelta(0)

    def scaled(self, access: dt.timedelta | None, refresh: dt.timedelta | None) -> Lifetimes:
        return Lifetimes(
            access=access or self.access,
            refresh=refresh or self.refresh,
            code=self.code,
            refresh_extends=self.refresh_extends,
            previous_access_grace=self.previous_access_grace,
        )


DEFAULT_LIFETIMES: dict[str, Lifetimes] = {
    "shopee": Lifetimes(
        dt.timedelta(hours=4), dt.timedelta(days=30), dt.timedelta(minutes=10), True, dt.timedelta(minutes=5)
    ),
    "tiktok_shop": Lifetimes(dt.timedelta(days=7), dt.timedelta(days=365), dt.timedelta(minutes=30), False),
    "lazada": Lifetimes(dt.timedelta(days=30), dt.timedelta(days=180), dt.timedelta(minutes=30), False),
    "tiktok": Lifetimes(dt.timedelta(hours=2), dt.timedelta(days=180), dt.timedelta(minutes=10), True),
}

# What the sandbox accepts out of the box; `refresher demo` and the tests use these. They are sandbox
# values, published on purpose, and worthless anywhere else.
SANDBOX_CREDENTIALS: dict[str, dict[str, Any]] = {
    "shopee": {"partner_id": 100001, "partner_key": "sandbox-shopee-partner-key-0001"},
    "tiktok_shop": {
        "app_key": "sbxttsapp01",
        "app_secret": "sandbox-tiktok-shop-app-secret-01",
        "service_id": "7000000000000000001",
    },
    "lazada": {"app_key": "100001", "app_secret": "sandbox-lazada-app-secret-0001"},
    "tiktok": {"client_key": "sbxtiktokclient01", "client_secret": "sandbox-tiktok-client-secret-01"},
}


def app_id_of(platform: str, credentials: Mapping[str, Any]) -> str:
    """The public half of an app's credentials, as the platform sees it on the wire."""
    for key in ("partner_id", "app_key", "client_key"):
        if key in credentials:
            return str(credentials[key])
    raise ValueError(f"{platform}: credentials have no app id")


def secret_of(credentials: Mapping[str, Any]) -> str:
    for key in ("partner_key", "app_secret", "client_secret"):
        if key in credentials:
            return str(credentials[key])
    raise ValueError("credentials have no secret")
