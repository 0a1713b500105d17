"""What alarm channels receive, and why an alarm is open. (:class:`RefreshEvent`, what the refresh worker
tells its listeners, lives beside its producer in :mod:`refresher.refresh_events`; re-exported here.)"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import asdict, dataclass
from typing import Any

from refresher.config import format_duration
from refresher.refresh_events import RefreshEvent

__all__ = ["AlarmCause", "AlarmMessage", "RefreshEvent"]


class AlarmCause(enum.StrEnum):
    """Why an alarm is open (the ``cause`` of alarm messages and of the alarms table)."""

    FAILURES = "failures"
    REAUTH_REQUIRED = "reauth_required"
    CONFIG_ERROR = "config_error"
    REFRESH_EXPIRING = "refresh_expiring"
    EXPIRED_WHILE_LEASED = "expired_while_leased"
    STORE_UNAVAILABLE = "store_unavailable"


_CAUSE_TEXT = {
    "failures": "refresh keeps failing",
    "reauth_required": "the seller must re-authorize",
    "config_error": "configuration error: fix the app's credentials or settings",
    "refresh_expiring": "refresh token expires soon: the seller must re-authorize before then",
}


@dataclass(frozen=True)
class AlarmMessage:
    """One alarm, reminder or all-clear for one account, as every channel receives it."""

    kind: str  # "alarm" | "resolved" | "reauth_soon"
    cause: str  # "failures" | "reauth_required" | "config_error" | "refresh_expiring"
    app: str
    platform: str
    account_key: str
    account_name: str | None
    at: dt.datetime
    error_class: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    consecutive_failures: int = 0
    access_expires_at: dt.datetime | None = None
    refresh_expires_at: dt.datetime | None = None
    reauth_url: str | None = None

    @property
    def account_label(self) -> str:
        return f"{self.account_name} ({self.account_key})" if self.account_name else self.account_key

    def title(self) -> str:
        head = {"alarm": "ALARM", "resolved": "RESOLVED", "reauth_soon": "RE-AUTHORIZE SOON"}.get(
            self.kind, self.kind.upper()
        )
        return f"[refresher] {head}: {self.app} / {self.account_label}"

    def text(self) -> str:
        """A few plain lines for chat and mail."""
        lines: list[str] = []
        if self.kind == "resolved":
            lines.append(f"Resolved; it was: {_CAUSE_TEXT.get(self.cause, self.cause)}.")
        else:
            lines.append(_CAUSE_TEXT.get(self.cause, self.cause).capitalize() + ".")
        lines.append(f"App: {self.app} ({self.platform}); account: {self.account_label}")
        if self.kind != "resolved" and self.error_class:
            detail = f"Error: {self.error_class}"
            if self.error_code:
                detail += f" code={self.error_code}"
            if self.request_id:
                detail += f" request_id={self.request_id}"
            lines.append(detail)
            if self.error_message:
                lines.append(f"Message: {self.error_message}")
        if self.consecutive_failures and self.kind != "resolved":
            lines.append(f"Consecutive failed sweeps: {self.consecutive_failures}")
        if self.access_expires_at is not None:
            lines.append(f"Access token expires: {_when(self.access_expires_at, self.at)}")
        if self.refresh_expires_at is not None:
            lines.append(f"Refresh token expires: {_when(self.refresh_expires_at, self.at)}")
        if self.reauth_url and self.kind != "resolved":
            lines.append(f"Re-authorize: {self.reauth_url}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, dt.datetime):
                data[key] = value.isoformat()
        data["title"] = self.title()
        return data


def _when(moment: dt.datetime, now: dt.datetime) -> str:
    left = moment - now
    relative = f"in {format_duration(left)}" if left.total_seconds() >= 0 else f"{format_duration(-left)} ago"
    return f"{moment.isoformat()} ({relative})"
