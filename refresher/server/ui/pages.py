"""The console's lists: ``/ui`` (overview), ``/ui/accounts`` (search, filters, pages), ``/ui/alarms``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from refresher.domain import AccountStatus
from refresher.server.auth import get_runtime
from refresher.server.runtime import Runtime
from refresher.server.ui import chart
from refresher.server.ui.common import browse_of, deliveries_of, login_redirect, page, session_of
from refresher.store.base import Alarm
from refresher.store.browse import AccountQuery, SortKey

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
RECENT_ALARMS = dt.timedelta(days=7)
SORTS: tuple[SortKey, ...] = ("access", "refresh", "key", "failures")


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui", response_class=HTMLResponse)
async def overview(request: Request, range: str = "24h") -> Response:
    session = await session_of(request)
    if session is None:
        return login_redirect(request)
    runtime = get_runtime(request)
    store = browse_of(runtime)
    settings = runtime.settings
    now = runtime.clock.now()
    warn_before = now + settings.alerts.reauth_warning
    apps: list[dict[str, Any]] = []
    for name, app in sorted(settings.apps.items()):
        policy = runtime.refresher.policies.get(name)
        counts = await runtime.store.count_by_status(name)
        apps.append(
            {
                "name": name,
                "platform": app.platform,
                "enabled": app.enabled and policy is not None,
                "counts": {str(status): counts.get(status, 0) for status in AccountStatus},
                "total": sum(counts.values()),
                "next_due": await store.next_due(name, policy.refresh_before) if policy else None,
                "expiring": await store.refresh_expiring_count(name, warn_before),
            }
        )
    range = range if range in chart.RANGES else "24h"
    bucket, count = chart.RANGES[range]
    start = _floor(now, bucket) - bucket * (count - 1)
    activity = chart.build(await store.activity(start, bucket, count), bucket)
    open_alarms = [a for a in await runtime.store.open_alarms() if a.resolved_at is None]
    problems = await runtime.readiness()
    context = {
        "title": "Overview",
        "apps": apps,
        "statuses": [str(s) for s in AccountStatus],
        "chart": activity,
        "range": range,
        "open_alarms": sorted(open_alarms, key=lambda a: a.opened_at, reverse=True)[:10],
        "open_alarm_count": len(open_alarms),
        "store": {"backend": store.backend, "url": store.safe_url, "encrypted": runtime.store.encrypted},
        "problems": problems,
        "warn_days": settings.alerts.reauth_warning,
    }
    return page(request, session, "ui/overview.html", context)


def _floor(value: dt.datetime, bucket: dt.timedelta) -> dt.datetime:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    seconds = bucket.total_seconds()
    return epoch + dt.timedelta(seconds=((value - epoch).total_seconds() // seconds) * seconds)


@router.get("/ui/accounts", response_class=HTMLResponse)
async def accounts(
    request: Request,
    q: str = "",
    app: str = "",
    platform: str = "",
    status: str = "",
    end_user: Annotated[str, Query(max_length=255)] = "",
    tag: Annotated[str, Query(max_length=320)] = "",
    sort: str = "access",
    order: str = "asc",
    page_no: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
    after: Annotated[str, Query(max_length=80)] = "",
) -> Response:
    session = await session_of(request)
    if session is None:
        return login_redirect(request)
    runtime = get_runtime(request)
    settings = runtime.settings
    query = AccountQuery(
        app=app if app in settings.apps else None,
        platform=platform or None,
        status=AccountStatus(status) if status in {str(s) for s in AccountStatus} else None,
        search=q[:200] or None,
        sort=next((s for s in SORTS if s == sort), "access"),
        descending=order == "desc",
        apps=tuple(sorted(settings.apps)),
        end_user_id=end_user.strip() or None,
        tag=tag_filter(tag),
    )
    found = await browse_of(runtime).browse_accounts(
        query, limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE, after=after or None
    )
    params = {"q": q, "app": query.app or "", "platform": platform, "status": status, "sort": query.sort}
    params |= {"end_user": end_user, "tag": tag}
    params["order"] = "desc" if query.descending else "asc"

    def link(**changes: Any) -> str:
        merged = {**params, **changes}
        return "/ui/accounts?" + urlencode({k: v for k, v in merged.items() if v not in ("", None)})

    context = {
        "title": "Accounts",
        "found": found,
        "query": query,
        "params": params,
        "page_no": page_no,
        "pages": max((found.total + PAGE_SIZE - 1) // PAGE_SIZE, 1),
        "link": link,
        "apps": sorted(settings.apps),
        "platforms": sorted({a.platform for a in settings.apps.values()}),
        "statuses": [str(s) for s in AccountStatus],
    }
    return page(request, session, "ui/accounts.html", context)


def tag_filter(text: str) -> tuple[str, str | None] | None:
    """``key:value`` (as /v1/accounts takes it) or a bare ``key`` (any value); blank is no filter."""
    name, colon, value = text.strip().partition(":")
    if not name:
        return None
    return (name, value) if colon else (name, None)


@router.get("/ui/alarms", response_class=HTMLResponse)
async def alarms(request: Request) -> Response:
    session = await session_of(request)
    if session is None:
        return login_redirect(request)
    runtime = get_runtime(request)
    now = runtime.clock.now()
    found = await browse_of(runtime).recent_alarms(now - RECENT_ALARMS)
    context = {
        "title": "Alarms",
        "open": [a for a in found if a.resolved_at is None],
        "recent": [a for a in found if a.resolved_at is not None],
        "channels": channel_states(runtime),
        "delivery": delivery_state,
        "deliveries": await deliveries_of(runtime, found),
    }
    return page(request, session, "ui/alarms.html", context)


def delivery_state(alarm: Alarm) -> str:
    """Whether a channel confirmed the alarm's latest message."""
    if alarm.last_sent_at is None:
        return "not sent yet"
    if alarm.delivered_at is not None and alarm.delivered_at >= alarm.last_sent_at:
        return "delivered"
    return "not confirmed by any channel yet"


def channel_states(runtime: Runtime) -> list[dict[str, Any]]:
    """Each configured channel with its deliveries since the daemon started (from its metrics)."""
    rows = []
    for channel in runtime.settings.alerts.channels:
        counts = {"success": 0, "failure": 0}
        for outcome in counts:
            value = runtime.metrics.registry.get_sample_value(
                "refresher_alert_deliveries_total", {"channel": channel.name, "outcome": outcome}
            )
            counts[outcome] = int(value or 0)
        rows.append({"name": channel.name, "type": channel.type, **counts})
    return rows
