"""Prometheus metrics: own registry per instance, names, labels and values in the exposition text."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from refresher.alerts.events import RefreshEvent
from refresher.domain import AccountStatus, ErrorInfo
from refresher.metrics import Metrics

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def event(outcome: str, key: str = "shop:1", failures: int = 0, ms: int = 250) -> RefreshEvent:
    return RefreshEvent(
        app="shopee-sg",
        platform="shopee",
        account_key=key,
        account_name=None,
        outcome=outcome,
        error=ErrorInfo("transient", "E1", "busy") if outcome == "failure" else None,
        consecutive_failures=failures,
        status=AccountStatus.ACTIVE,
        access_expires_at=None,
        refresh_expires_at=None,
        at=T0,
        attempts=1,
        duration_ms=ms,
    )


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the rendered exposition text (what Prometheus would scrape)."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_refresh_counters_histogram_and_failure_gauge() -> None:
    metrics = Metrics()
    metrics.refresh_finished(event("success"))
    metrics.refresh_finished(event("failure", key="shop:2", failures=2, ms=1500))
    metrics.refresh_finished(event("failure", key="shop:3", failures=5))
    metrics.refresh_finished(event("skipped"))
    got = samples(metrics)
    base = (("app", "shopee-sg"), ("platform", "shopee"))
    assert got[("refresher_refreshes_total", (*base[:1], ("outcome", "success"), base[1]))] == 1
    assert got[("refresher_refreshes_total", (*base[:1], ("outcome", "failure"), base[1]))] == 2
    assert got[("refresher_refreshes_total", (*base[:1], ("outcome", "skipped"), base[1]))] == 1
    assert got[("refresher_refresh_duration_seconds_count", base)] == 3  # skipped is not timed
    assert got[("refresher_refresh_duration_seconds_sum", base)] == 2.0
    assert got[("refresher_refresh_errors_total", (("app", "shopee-sg"), ("error_class", "transient")))] == 2
    gauge = ("refresher_account_consecutive_failures_max", (("app", "shopee-sg"),))
    assert got[gauge] == 5
    metrics.refresh_finished(event("success", key="shop:3"))  # the worst account recovers
    assert samples(metrics)[gauge] == 2


def test_gauges_sweeps_and_deliveries() -> None:
    metrics = Metrics()
    metrics.set_accounts("lazada-my", "active", 7)
    metrics.set_accounts("lazada-my", "needs_reauth", 1)
    metrics.set_earliest_expiry("lazada-my", 3600.0)
    metrics.sweep_finished("lazada-my", "ok", 0.4)
    metrics.alert_sent("ops", "success")
    metrics.alert_sent("ops", "failure")
    metrics.hook_sent("lazada-my", "success")
    metrics.delivery_dropped("alert")
    got = samples(metrics)
    assert got[("refresher_accounts", (("app", "lazada-my"), ("status", "needs_reauth")))] == 1
    assert got[("refresher_earliest_access_expiry_seconds", (("app", "lazada-my"),))] == 3600
    assert got[("refresher_sweeps_total", (("app", "lazada-my"), ("outcome", "ok")))] == 1
    assert got[("refresher_alert_deliveries_total", (("channel", "ops"), ("outcome", "failure")))] == 1
    assert got[("refresher_hook_deliveries_total", (("app", "lazada-my"), ("outcome", "success")))] == 1
    assert got[("refresher_deliveries_dropped_total", (("kind", "alert"),))] == 1
    metrics.set_earliest_expiry("lazada-my", None)  # no active account left: no stale number
    assert ("refresher_earliest_access_expiry_seconds", (("app", "lazada-my"),)) not in samples(metrics)
    metrics.set_earliest_expiry("never-seen", None)  # no error for an app without a series


def test_instances_are_independent_and_prefixed() -> None:
    a, b = Metrics(), Metrics()
    a.sweep_finished("x", "ok", 1)
    assert ("refresher_sweeps_total", (("app", "x"), ("outcome", "ok"))) not in samples(b)
    assert "text/plain" in a.content_type
    names = {family.name for family in text_string_to_metric_families(a.render().decode())}
    assert names and all(name.startswith("refresher_") for name in names)
