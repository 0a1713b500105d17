"""What the HTTP routes may use of the running daemon (a protocol, so the server never imports it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from refresher.alerts.lifecycle import LifecycleEvents
from refresher.config import Settings
from refresher.domain import Clock
from refresher.metrics import Metrics
from refresher.platforms.base import Platform
from refresher.refresh import Refresher
from refresher.store.base import Account
from refresher.store.roles import Store


class Runtime(Protocol):
    settings: Settings
    store: Store
    clock: Clock
    refresher: Refresher
    metrics: Metrics  # the console shows each alarm channel's deliveries from it
    lifecycle: LifecycleEvents  # account.connected, account.needs_reauth … (docs/events.md)

    @property
    def platforms(self) -> Mapping[str, Platform]: ...

    async def readiness(self) -> dict[str, str]:
        """Problems by component; empty when ready (store reachable, scheduler running)."""

    def metrics_payload(self) -> tuple[bytes, str]:
        """The Prometheus exposition body and its content type."""

    def reauth_link(self, app: str, account_key: str) -> str | None:
        """The link a seller opens to re-authorize this account (None without server.public_url)."""

    async def accounts_authorized(self, app: str, accounts: Sequence[Account]) -> None:
        """Called after a web callback stored these accounts (re-authorization resolves open alarms)."""
