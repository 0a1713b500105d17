"""What every console page shares: the session check, the store's console queries, form parsing."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from refresher.server.auth import get_runtime
from refresher.server.runtime import Runtime
from refresher.server.ui.render import render
from refresher.server.ui.session import Session, SessionKeeper, csrf_ok
from refresher.store.base import Alarm, AlarmDelivery
from refresher.store.browse import SqlBrowse

KEEPER = SessionKeeper()
MAX_FORM = 16 * 1024  # bytes: the console's forms are a few fields


def safe_next(target: str | None) -> str:
    """Where to go after login: only a path of the console itself (never another site)."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)


async def session_of(request: Request) -> Session | None:
    runtime = get_runtime(request)
    return await KEEPER.current(runtime.settings.server, request, runtime.store)


def browse_of(runtime: Runtime) -> SqlBrowse:
    store = runtime.store
    if not isinstance(store, SqlBrowse):  # a test stand-in without SQL: the console needs the real store
        raise TypeError("the console needs the SQL store")
    return store


async def form_of(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the only kind the console sends), first values."""
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items() if values}


def csrf_refused(request: Request) -> HTMLResponse:
    return page(
        request,
        None,
        "ui/message.html",
        {"title": "Request refused", "lines": ["The form was stale or not sent by this console. Reload and retry."]},
        status=403,
    )


async def checked_post(request: Request) -> tuple[Session, dict[str, str]] | Response:
    """A POST of a logged-in console user with the right CSRF token, or the answer refusing it."""
    session = await session_of(request)
    if session is None:
        return login_redirect(request)
    form = await form_of(request)
    if not csrf_ok(session, form.get("csrf") or request.headers.get("x-csrf-token")):
        return csrf_refused(request)
    return session, form


def page(
    request: Request, session: Session | None, template: str, context: dict[str, Any], status: int = 200
) -> HTMLResponse:
    runtime = get_runtime(request)
    now: dt.datetime = runtime.clock.now()
    base = {"session": session, "csrf": session.csrf if session else "", "now": now, "path": request.url.path}
    return render(request, template, {**base, **context}, status)


AlarmKey = tuple[str, str, str]


async def deliveries_of(runtime: Runtime, alarms: Sequence[Alarm]) -> dict[AlarmKey, list[AlarmDelivery]]:
    """Per alarm, each channel's outcome of its latest message (``alarm_deliveries``).

    A channel whose row is older than the alarm's newest message has not tried that message yet: its row
    is shown as ``queued`` (the row's own state belongs to the previous message)."""
    keys = [(a.app, a.account_key, a.cause) for a in alarms]
    found: dict[AlarmKey, list[AlarmDelivery]] = {}
    for row in await runtime.store.alarm_deliveries(keys):
        found.setdefault((row.app, row.account_key, row.cause), []).append(row)
    for alarm in alarms:
        sent = alarm.last_sent_at
        if alarm.resolved_at is not None or sent is None:
            continue
        rows = found.get((alarm.app, alarm.account_key, alarm.cause), [])
        rows[:] = [
            dataclasses.replace(row, state="queued", last_error=None) if row.last_attempt_at < sent else row
            for row in rows
        ]
    return found
