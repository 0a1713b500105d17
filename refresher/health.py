"""Whether the token store takes writes, as the daemon sees it, and when an outage becomes an alarm.

Every store failure the refresher meets (a claim, a mark, a settle, a release) and every write probe of
the daemon's monitor is reported here; any success ends the outage. The alarm itself cannot go through the
store (its dedupe lives there), so this object remembers that it has alarmed, and says so once when the
store takes writes again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from refresher.store.base import StoreError


class StoreHealth:
    """An outage's start, its last error, and whether it has been alarmed."""

    def __init__(self, alarm_after: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.alarm_after = alarm_after
        self._monotonic = monotonic
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.alarmed = False

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def outage_seconds(self) -> float:
        return 0.0 if self.failing_since is None else self._monotonic() - self.failing_since

    def report(self, error: BaseException | None) -> str | None:
        """Record a store failure (``error``) or success (None). Returns ``"alarm"`` when the outage has
        just lasted longer than ``alarm_after``, ``"resolved"`` when an alarmed outage just ended, else
        None."""
        if error is None:
            if self.failing_since is None:
                return None
            was_alarmed = self.alarmed
            self.failing_since, self.last_error, self.alarmed = None, None, False
            return "resolved" if was_alarmed else None
        if self.failing_since is None:
            self.failing_since = self._monotonic()
        # Only the error's type and message (store errors name no secret; the redactor runs anyway).
        self.last_error = f"{type(error).__name__}: {error}" if isinstance(error, StoreError) else type(error).__name__
        if not self.alarmed and self.outage_seconds() >= self.alarm_after:
            self.alarmed = True
            return "alarm"
        return None
