"""What the refresh worker tells its listeners once an outcome committed: :class:`RefreshEvent`, and the
one vocabulary of outcomes (:class:`Outcome`) that the refresh result, the event and the API share.

It lives beside its producer (:mod:`refresher.refresh`), below both of its consumers: the alerts and the
metrics import it, and neither imports the other for it.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

from refresher.domain import AccountStatus, ErrorInfo, RefresherError
from refresher.store.base import Account


class Outcome(enum.StrEnum):
    """How one refresh ended. The audit log records ``success`` or, for a failure, the error's class
    (``transient``, ``reauth_required``, ``config_error`` …): :attr:`FAILURE` says only that it failed."""

    SUCCESS = "success"
    FAILURE = "failure"
    SKIPPED = "skipped"  # not refreshed: disabled, not active, deleted meanwhile, lease lost
    BUSY = "busy"  # another worker held the lease for longer than the caller would wait


@dataclass(frozen=True)
class RefreshEvent:
    """One settled refresh of one account (sent after its outcome committed). Never holds a token."""

    app: str
    platform: str
    account_key: str
    account_name: str | None
    outcome: str  # an Outcome value (coerced: comparing with "success" keeps working)
    error: ErrorInfo | None
    consecutive_failures: int
    status: AccountStatus
    access_expires_at: dt.datetime | None
    refresh_expires_at: dt.datetime | None
    at: dt.datetime
    attempts: int = 0
    duration_ms: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", Outcome(self.outcome))  # an unknown outcome is a bug: ValueError


@dataclass(frozen=True)
class RefreshResult:
    account: Account
    outcome: Outcome  # a StrEnum: JSON, logs and the audit log show its value ("success" …)
    error: RefresherError | None = None
    attempts: int = 0
    duration_ms: int = 0


@dataclass
class SweepResult:
    app: str
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    results: list[RefreshResult] = field(default_factory=list)
