"""Prometheus metrics of one daemon, on a registry of its own (tests can build as many as they like)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from refresher.refresh_events import RefreshEvent

# Refresh calls take from tens of milliseconds to a whole retry budget (minutes).
_REFRESH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SWEEP_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)


class Metrics:
    """Every metric refresher exports, all named ``refresher_*``."""

    content_type: str = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.refreshes = Counter(
            "refresher_refreshes", "Settled refreshes by outcome.", ["app", "platform", "outcome"], registry=r
        )
        self.refresh_seconds = Histogram(
            "refresher_refresh_duration_seconds",
            "Time one refresh took, retries included.",
            ["app", "platform"],
            buckets=_REFRESH_BUCKETS,
            registry=r,
        )
        self.refresh_errors = Counter(
            "refresher_refresh_errors", "Failed refreshes by error class.", ["app", "error_class"], registry=r
        )
        self.consecutive_failures = Gauge(
            "refresher_account_consecutive_failures_max",
            "Highest consecutive failure count seen on the app's last settled refresh of each account.",
            ["app"],
            registry=r,
        )
        self.sweeps = Counter("refresher_sweeps", "Sweeps by outcome.", ["app", "outcome"], registry=r)
        self.sweep_seconds = Histogram(
            "refresher_sweep_duration_seconds",
            "Time one sweep took.",
            ["app"],
            buckets=_SWEEP_BUCKETS,
            registry=r,
        )
        self.accounts = Gauge("refresher_accounts", "Accounts by status.", ["app", "status"], registry=r)
        self.earliest_expiry = Gauge(
            "refresher_earliest_access_expiry_seconds",
            "Seconds until the earliest access-token expiry among the app's active accounts.",
            ["app"],
            registry=r,
        )
        self.alerts = Counter(
            "refresher_alert_deliveries",
            "Alarm deliveries by channel and outcome.",
            ["channel", "outcome"],
            registry=r,
        )
        self.hooks = Counter(
            "refresher_hook_deliveries", "Hook deliveries by app and outcome.", ["app", "outcome"], registry=r
        )
        self.dropped = Counter(
            "refresher_deliveries_dropped",
            "Deliveries dropped because the queue was full.",
            ["kind"],
            registry=r,
        )
        # Per-account failure counts, so the max gauge can go down when an account recovers.
        self._failures: dict[tuple[str, str], int] = {}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def sweep_finished(self, app: str, outcome: str, seconds: float) -> None:
        self.sweeps.labels(app, outcome).inc()
        self.sweep_seconds.labels(app).observe(max(seconds, 0.0))

    def set_accounts(self, app: str, status: str, count: int) -> None:
        self.accounts.labels(app, status).set(count)

    def set_earliest_expiry(self, app: str, seconds: float | None) -> None:
        if seconds is None:
            # No active account: drop the series rather than export a misleading number.
            with contextlib.suppress(KeyError):
                self.earliest_expiry.remove(app)
            return
        self.earliest_expiry.labels(app).set(seconds)

    def refresh_finished(self, event: RefreshEvent) -> None:
        self.refreshes.labels(event.app, event.platform, event.outcome).inc()
        if event.outcome == "skipped":
            return
        self.refresh_seconds.labels(event.app, event.platform).observe(max(event.duration_ms, 0) / 1000)
        if event.outcome == "failure" and event.error is not None:
            self.refresh_errors.labels(event.app, event.error.error_class).inc()
        self._failures[(event.app, event.account_key)] = event.consecutive_failures
        worst = max((n for (a, _), n in self._failures.items() if a == event.app), default=0)
        self.consecutive_failures.labels(event.app).set(worst)
        if event.consecutive_failures == 0:
            self._failures.pop((event.app, event.account_key), None)  # keep only the failing ones

    def alert_sent(self, channel: str, outcome: str) -> None:
        self.alerts.labels(channel, outcome).inc()

    def hook_sent(self, app: str, outcome: str) -> None:
        self.hooks.labels(app, outcome).inc()

    def delivery_dropped(self, kind: str) -> None:
        self.dropped.labels(kind).inc()
