"""``/ui/login`` and ``/ui/logout``: the admin token in, a session cookie out."""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from refresher.server.auth import ADMIN_NAME, authenticate, get_runtime
from refresher.server.ui.common import KEEPER, checked_post, form_of, page, safe_next, session_of

log = structlog.get_logger("refresher.console")
router = APIRouter(include_in_schema=False)

WRONG_TOKEN_DELAY = 0.5  # seconds: a wrong token costs the guesser time (the token itself is long)


@router.get("/ui/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> Response:
    server = get_runtime(request).settings.server
    if not KEEPER.enabled(server):
        return page(request, None, "ui/message.html", _disabled(), status=503)
    if await session_of(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _form_again(request, safe_next(next), None, 200)


@router.post("/ui/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    server = get_runtime(request).settings.server
    if not KEEPER.enabled(server):
        return page(request, None, "ui/message.html", _disabled(), status=503)
    form = await form_of(request)
    target = safe_next(form.get("next"))
    if not KEEPER.login_token_ok(server, request, form.get("csrf")):
        log.warning("console.login_refused", reason="csrf")
        return _form_again(request, target, "The login form had expired. Please try again.", 403)
    caller = authenticate(server, form.get("token", "").strip())
    if caller is None or caller.name != ADMIN_NAME:
        log.warning("console.login_refused", reason="wrong token")
        await asyncio.sleep(WRONG_TOKEN_DELAY)
        return _form_again(request, target, "That is not the admin token.", 401)
    response = RedirectResponse(target, status_code=303)
    KEEPER.start(server, response)
    log.info("console.login")
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    checked = await checked_post(request)
    if isinstance(checked, Response):
        return checked
    session, _ = checked
    runtime = get_runtime(request)
    response: Response = RedirectResponse("/ui/login", status_code=303)
    if not await KEEPER.end(runtime.settings.server, session, response, runtime.store):
        # Said, not hidden: a copy of the cookie still opens the console on another replica until it expires.
        lines = [
            "You are logged out of this server, but the token store did not take the logout:",
            "another replica of this deployment accepts a copy of this session until it expires.",
        ]
        response = page(request, None, "ui/message.html", {"title": "Logged out here only", "lines": lines}, 503)
        KEEPER.end_cookie(runtime.settings.server, response)
    log.info("console.logout")
    return response


def _form_again(request: Request, target: str, error: str | None, status: int) -> Response:
    """The login form with a fresh (or the still valid) CSRF token and its pre-login cookie."""
    server = get_runtime(request).settings.server
    holder = Response()
    token = KEEPER.login_token(server, request, holder)
    response = page(
        request, None, "ui/login.html", {"next": target, "error": error, "login_csrf": token}, status=status
    )
    for name, value in holder.headers.items():
        if name == "set-cookie":
            response.headers.append(name, value)
    return response


def _disabled() -> dict[str, object]:
    return {
        "title": "Console disabled",
        "lines": ["The console needs server.admin_token in the configuration; none is set."],
    }
