"""``on_success`` / ``on_failure`` hooks: tell a consumer about a refresh the moment it committed.

This is the one place a token leaves the process on purpose: in the body of a POST to the app's
configured ``on_success`` URL, signed like the alarm webhook, and nowhere else (never logged, never in an
error message, never on the failure hook).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import structlog

from refresher.alerts.channels import post_signed, url_secrets
from refresher.alerts.dispatcher import Dispatcher
from refresher.config import AppSettings, HookSettings, Settings
from refresher.domain import Clock, SystemClock, TokenSet
from refresher.redaction import register_secrets
from refresher.refresh_events import RefreshEvent
from refresher.store.base import Account

log = structlog.get_logger("refresher.alerts")


def _safe_transport(url: str) -> bool:
    """https, or plain http that never leaves this machine."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    return parts.scheme == "http" and (host in ("localhost", "::1") or host.startswith("127."))


def _iso(value: Any) -> Any:
    return value.isoformat() if value is not None else None


class HookDispatcher:
    """Queues one signed POST per settled refresh for the apps that configured hooks."""

    def __init__(self, settings: Settings, *, dispatcher: Dispatcher, clock: Clock | None = None) -> None:
        self.dispatcher = dispatcher
        self.clock: Clock = clock or SystemClock()
        self.apply_settings(settings)

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings
        for app in settings.apps.values():
            for field, hook in (("on_success", app.on_success), ("on_failure", app.on_failure)):
                if hook is not None:
                    where = f"apps.{app.name}.{field}.url"
                    if urlsplit(hook.url).scheme not in ("http", "https"):
                        log.error("hook.unusable", where=where, problem="needs an http:// or https:// URL")
                    elif field == "on_success" and not _safe_transport(hook.url):
                        # Tokens would cross the network in clear text; allowed (a private network may
                        # be trusted) but said out loud, once per (re)load.
                        log.warning(
                            "hook.cleartext",
                            where=where,
                            detail="tokens are sent over plain http to a non-loopback host; use https",
                        )
                    register_secrets([hook.secret.get_secret_value() if hook.secret else None])
                    register_secrets(url_secrets(hook.url, path_tokens=False))

    async def refreshed(self, app: AppSettings, event: RefreshEvent, account: Account, tokens: TokenSet | None) -> None:
        """Queue the hook this event calls for, if the app has one (returns at once)."""
        if event.outcome == "success" and app.on_success is not None and tokens is not None:
            self._submit(app, app.on_success, self._success_payload(event, account, tokens))
        elif event.outcome == "failure" and app.on_failure is not None:
            self._submit(app, app.on_failure, self._failure_payload(event, account))

    def _submit(self, app: AppSettings, hook: HookSettings, payload: dict[str, Any]) -> None:
        secret = hook.secret.get_secret_value() if hook.secret else None
        timeout = hook.timeout.total_seconds()
        url = hook.url
        clock = self.clock
        what = f"hook {app.name}"

        async def send() -> None:
            await post_signed(what, url, payload, secret=secret, time_limit=timeout, clock=clock)

        self.dispatcher.submit("hook", app.name, send, attempts=self.settings.alerts.delivery_attempts)

    @staticmethod
    def _account(event: RefreshEvent, account: Account) -> dict[str, Any]:
        identity = account.identity
        return {
            "app": event.app,
            "platform": event.platform,
            "account_key": event.account_key,
            "identity": {
                "key": identity.key,
                "kind": identity.kind,
                "platform_id": identity.platform_id,
                "name": identity.name,
                "region": identity.region,
                "extra": dict(identity.extra),
            },
            "at": _iso(event.at),
        }

    def _success_payload(self, event: RefreshEvent, account: Account, tokens: TokenSet) -> dict[str, Any]:
        return {
            "event": "refreshed",
            **self._account(event, account),
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "access_expires_at": _iso(tokens.access_expires_at),
            "refresh_expires_at": _iso(tokens.refresh_expires_at),
            "scopes": list(tokens.scopes),
            "version": account.version,
        }

    def _failure_payload(self, event: RefreshEvent, account: Account) -> dict[str, Any]:
        error = event.error
        return {
            "event": "refresh_failed",
            **self._account(event, account),
            "status": str(event.status),
            "consecutive_failures": event.consecutive_failures,
            "attempts": event.attempts,
            "error": None
            if error is None
            else {
                "class": error.error_class,
                "code": error.code,
                "message": error.message,
                "request_id": error.request_id,
                "http_status": error.http_status,
            },
            "access_expires_at": _iso(event.access_expires_at),
            "refresh_expires_at": _iso(event.refresh_expires_at),
        }
