"""One account in the console: what it is, when its tokens expire (never the tokens), its event log,
token history and alarms; and the operator's actions on it (refresh now, disable / enable, delete,
re-authorization link), each a CSRF-checked POST."""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote, urlencode

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from refresher.domain import AccountStatus, RefresherError
from refresher.server import account_actions
from refresher.server.auth import get_runtime
from refresher.server.ui.common import browse_of, checked_post, deliveries_of, login_redirect, page, session_of
from refresher.store.base import AccountNotFound, StoreError

log = structlog.get_logger("refresher.console")
router = APIRouter(include_in_schema=False)

EVENTS = 100
RECENT = dt.timedelta(days=30)

# What the page says after an action (the query carries only the name, never text from the request).
NOTICES = {
    "refreshed": "Refreshed: new tokens are stored.",
    "refresh_failed": "The refresh failed; see the event log below.",
    "refresh_busy": "Another worker is refreshing this account right now; reload in a moment.",
    "refresh_skipped": "Nothing was refreshed (the account is not active).",
    "disabled": "Disabled: the account is no longer refreshed.",
    "enabled": "Enabled: the account is refreshed again.",
}


def account_url(app: str, key: str, **query: str) -> str:
    url = f"/ui/accounts/{quote(app, safe='')}/{quote(key, safe='')}"
    return f"{url}?{urlencode(query)}" if query else url


@router.get("/ui/accounts/{app}/{key:path}", response_class=HTMLResponse)
async def account_page(request: Request, app: str, key: str, notice: str = "", confirm: str = "") -> Response:
    session = await session_of(request)
    if session is None:
        return login_redirect(request)
    runtime = get_runtime(request)
    store = browse_of(runtime)
    account = await store.account_summary(app, key)
    if account is None:
        missing = {"title": "No such account", "lines": [f"There is no account {key!r} in app {app!r}."]}
        return page(request, session, "ui/message.html", missing, status=404)
    now = runtime.clock.now()
    alarms = await store.recent_alarms(now - RECENT, app=app, account_key=key)
    context: dict[str, object] = {
        "title": account.identity.name or account.key,
        "account": account,
        "events": await runtime.store.audit_log(app=app, account_key=key, limit=EVENTS),
        "versions": await store.token_versions(app, key),
        "alarms": alarms,
        "deliveries": await deliveries_of(runtime, alarms),
        "notice": NOTICES.get(notice),
        "confirm_delete": confirm == "delete",
        "action_url": account_url(app, key),
        "extra_rows": _extra_rows(account.identity.extra),
    }
    return page(request, session, "ui/account.html", context)


def _extra_rows(extra: object) -> list[tuple[str, str]]:
    """Shops and ciphers, countries and other identity details, as plain text rows."""
    rows: list[tuple[str, str]] = []
    if not isinstance(extra, dict):
        return rows
    for shop in extra.get("shops") or []:
        if isinstance(shop, dict):
            parts = [str(shop.get(k)) for k in ("name", "region", "id") if shop.get(k)]
            cipher = f" · cipher {shop['cipher']}" if shop.get("cipher") else ""
            rows.append(("shop", " · ".join(parts) + cipher))
    countries = extra.get("countries")
    if isinstance(countries, dict) and countries:
        rows.append(("countries", ", ".join(sorted(str(c) for c in countries))))
    for name in ("main_account_id", "user_type", "account_platform", "union_id"):
        if extra.get(name) not in (None, "", []):
            rows.append((name.replace("_", " "), str(extra[name])))
    return rows


@router.post("/ui/accounts/{app}/{key:path}")
async def account_action(request: Request, app: str, key: str) -> Response:
    checked = await checked_post(request)
    if isinstance(checked, Response):
        return checked
    session, form = checked
    runtime = get_runtime(request)
    action = form.get("action", "")
    if app not in runtime.settings.apps or await runtime.store.get(app, key) is None:
        context = {"title": "No such account", "lines": [f"There is no account {key!r} in app {app!r}."]}
        return page(request, session, "ui/message.html", context, status=404)
    log.info("console.action", action=action, app=app, account=key)
    if action == "refresh":
        try:
            result = await runtime.refresher.refresh_now(app, key)
        except (RefresherError, StoreError):
            return RedirectResponse(account_url(app, key, notice="refresh_failed"), status_code=303)
        notice = {"success": "refreshed", "busy": "refresh_busy", "skipped": "refresh_skipped"}
        return RedirectResponse(
            account_url(app, key, notice=notice.get(result.outcome, "refresh_failed")), status_code=303
        )
    if action in ("disable", "enable"):
        status = AccountStatus.DISABLED if action == "disable" else AccountStatus.ACTIVE
        try:
            await account_actions.set_status(runtime, app, key, status)  # account.disabled goes with it
        except AccountNotFound:
            return RedirectResponse("/ui/accounts", status_code=303)
        return RedirectResponse(account_url(app, key, notice=f"{action}d"), status_code=303)
    if action == "delete":
        await account_actions.delete(runtime, app, key)
        return RedirectResponse("/ui/accounts?" + urlencode({"deleted": key}), status_code=303)
    if action == "reauth_link":
        link = runtime.reauth_link(app, key)
        # Asked for on purpose, answered to this session only, never cached; not part of any page.
        headers = {"Cache-Control": "no-store"}
        if link is None:
            return JSONResponse({"error": "set server.public_url to make re-authorization links"}, 409, headers)
        return JSONResponse({"url": link}, headers=headers)
    context = {"title": "Unknown action", "lines": ["The console does not know that action."]}
    return page(request, session, "ui/message.html", context, status=400)
