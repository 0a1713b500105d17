"""One vocabulary of outcomes and causes, and RefreshEvent beside its producer (issue 12, point 3)."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest

import refresher
from refresher.alerts import RefreshEvent as ReExported
from refresher.alerts import policy
from refresher.alerts.events import AlarmCause
from refresher.domain import AccountStatus
from refresher.refresh_events import Outcome, RefreshEvent

PACKAGE = Path(refresher.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, TYPE_CHECKING-only imports included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def event(outcome: str) -> RefreshEvent:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return RefreshEvent("a", "shopee", "shop:1", None, outcome, None, 0, AccountStatus.ACTIVE, None, None, now)


def test_the_event_lives_beside_the_refresher_and_neither_metrics_nor_refresh_import_alerts() -> None:
    assert RefreshEvent.__module__ == "refresher.refresh_events" and ReExported is RefreshEvent
    for module in ("metrics.py", "refresh.py", "refresh_events.py"):
        reached = {m for m in imported_modules(PACKAGE / module) if m.startswith("refresher.alerts")}
        assert reached == set(), (module, reached)


def test_outcomes_are_one_enum_and_an_unknown_one_is_refused() -> None:
    assert event("success").outcome is Outcome.SUCCESS and event("failure").outcome == "failure"
    assert {o.value for o in Outcome} == {"success", "failure", "skipped", "busy"}
    with pytest.raises(ValueError, match="'succeeded'"):
        event("succeeded")


def test_the_policy_causes_are_the_enum() -> None:
    names = ("FAILURES", "REAUTH_REQUIRED", "CONFIG_ERROR", "REFRESH_EXPIRING", "EXPIRED_WHILE_LEASED")
    assert [getattr(policy, n) for n in (*names, "STORE_UNAVAILABLE")] == [
        AlarmCause[n] for n in (*names, "STORE_UNAVAILABLE")
    ]
