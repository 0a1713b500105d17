"""``GET /connect/{app}`` and ``GET /callback/{app}``: the web side of onboarding.

The flow itself lives in :mod:`refresher.onboarding`; this module adds the HTTP concerns: who may start
a flow (admin token or invitation), the ``return_to`` allowlist, and small HTML pages that say exactly
what happened. Pages never show a token or the authorization code, and every value on them is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from refresher.config import Settings, format_duration
from refresher.domain import AuthorizationDenied, Clock, ConfigError, RefresherError
from refresher.invites import InviteError, check_invite
from refresher.onboarding import (
    MissingCode,
    OnboardingError,
    ReturnToRejected,
    StateError,
    begin,
    complete_flow,
    return_to_allowed,
)
from refresher.platforms.base import Platform
from refresher.server.auth import ADMIN_NAME, authenticate
from refresher.server.runtime import Runtime
from refresher.store.base import Account, StoreError

log = structlog.get_logger("refresher.server.onboarding")

# The callback URL carries the code: no caching, and no Referer from the result page to anywhere.
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 46em; margin: 3em auto; padding: 0 1em">
<h1 id="outcome" data-outcome="{outcome}">{title}</h1>
{body}
</body></html>
"""


def page(title: str, outcome: str, body_html: str, status: int) -> HTMLResponse:
    """A small page; ``body_html`` must already be escaped."""
    text = _PAGE.format(title=html.escape(title), outcome=html.escape(outcome), body=body_html)
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


def message_page(title: str, outcome: str, lines: Iterable[str], status: int) -> HTMLResponse:
    body = "\n".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return page(title, outcome, body, status)


def _when(value: dt.datetime | None, now: dt.datetime) -> str:
    if value is None:
        return "no end given"
    return f"{value:%Y-%m-%d %H:%M} UTC (in {format_duration(value - now)})"


def describe_account(account: Account, now: dt.datetime) -> list[tuple[str, str]]:
    """What a person may see of an account: who it is and when its grant ends. Never a token."""
    identity = account.identity
    rows = [
        ("account", f"{identity.kind} {identity.platform_id}"),
        ("name", identity.name or "—"),
        ("region", identity.region or "—"),
    ]
    if account.tokens is not None:
        rows += [
            ("scopes", ", ".join(account.tokens.scopes) or "—"),
            ("access token expires", _when(account.tokens.access_expires_at, now)),
            ("authorization ends", _when(account.tokens.refresh_expires_at, now)),
        ]
    return rows


def granted_page(app: str, accounts: Sequence[Account], now: dt.datetime) -> HTMLResponse:
    parts = [f"<p>App <code>{html.escape(app)}</code> now holds {len(accounts)} authorized account(s).</p>"]
    for account in accounts:
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in describe_account(account, now)
        )
        parts.append(f'<table class="account" data-key="{html.escape(account.key)}">{cells}</table><hr>')
    parts.append("<p>You can close this window.</p>")
    return page("Authorization granted", "granted", "\n".join(parts), 200)


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Belt and braces: error messages are built without secrets, but never echo one if one slipped in."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def failure_page(error: RefresherError, secrets: Iterable[str]) -> HTMLResponse:
    """The page for a failed exchange: the error class and the platform's code, never a secret."""
    lines = [
        "The platform did not accept the authorization code, so nothing was stored.",
        f"error class: {error.error_class}",
        f"reason: {_scrub(error.message, secrets)}",
    ]
    if error.code:
        lines.append(f"platform code: {_scrub(error.code, secrets)}")
    if error.request_id:
        lines.append(f"request id: {error.request_id}")
    lines.append("Start the authorization again; if it keeps failing, give the operator the lines above.")
    return message_page("Authorization failed", "failed", lines, 502)


def denied_page(error: RefresherError) -> HTMLResponse:
    return message_page(
        "Authorization declined",
        "denied",
        [
            "The authorization was declined on the platform, so nothing was stored.",
            f"platform answer: {error.code or 'denied'}",
            "If this was a mistake, open the authorization link again and approve.",
        ],
        400,
    )


def state_page(error: StateError) -> HTMLResponse:
    return message_page(
        "Authorization link not valid",
        f"state_{error.kind}",
        [f"This callback was refused: {error.message}.", "Nothing was stored."],
        400,
    )


# ------------------------------------------------------------------------------------------- router


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _connect_refusal(settings: Settings, request: Request, app: str, clock: Clock) -> HTMLResponse | None:
    """``None`` when this request may start a flow, else the page that says why not."""
    server = settings.server
    if not server.connect_requires_auth:
        return None
    token = _bearer(request)
    caller = authenticate(server, token)
    if caller is not None and caller.name == ADMIN_NAME:  # the same constant-time check as the API's
        return None
    invite = request.query_params.get("invite")
    if invite:
        if server.invite_secret is None:
            return message_page(
                "Invitation not accepted", "invite_disabled", ["This server does not accept invitations."], 403
            )
        try:
            check_invite(invite, app, secret=server.invite_secret.get_secret_value(), clock=clock)
        except InviteError as exc:
            log.info("connect.invite_refused", app=app, reason=exc.kind)
            return message_page("Invitation not accepted", f"invite_{exc.kind}", [exc.message + "."], 403)
        return None
    if token is not None:
        log.info("connect.token_refused", app=app)
        refused = message_page("Not allowed", "unauthorized", ["The admin token is not valid."], 401)
    else:
        refused = message_page(
            "Invitation needed",
            "unauthorized",
            ["Starting an authorization here needs an invitation link from the operator."],
            401,
        )
    refused.headers["WWW-Authenticate"] = 'Bearer realm="refresher"'
    return refused


def router(runtime: Runtime) -> APIRouter:
    """The onboarding routes, bound to the running daemon."""
    routes = APIRouter(tags=["onboarding"])

    def app_and_platform(app: str) -> tuple[Settings, Platform] | HTMLResponse:
        settings = runtime.settings
        platform = runtime.platforms.get(app)
        if app not in settings.apps or platform is None:
            return message_page("Unknown app", "unknown_app", [f"No app named {app!r} is configured."], 404)
        return settings, platform

    @routes.get("/connect/{app}", response_class=HTMLResponse, summary="Start an authorization")
    async def connect(request: Request, app: str, return_to: str | None = None) -> Response:
        found = app_and_platform(app)
        if isinstance(found, HTMLResponse):
            return found
        settings, platform = found
        refusal = _connect_refusal(settings, request, app, runtime.clock)
        if refusal is not None:
            return refusal
        if return_to is not None and not return_to_allowed(return_to, settings.server.return_to_allowlist):
            error = ReturnToRejected()
            return message_page("Redirect not allowed", "return_to", [error.message + "."], 400)
        redirect_uri = settings.apps[app].redirect_uri
        if redirect_uri is None and settings.server.public_url:
            redirect_uri = f"{settings.server.public_url.rstrip('/')}/callback/{app}"
        try:
            url, _ = await begin(
                app,
                platform,
                runtime.store,
                runtime.clock,
                return_to=return_to,
                redirect_uri=redirect_uri,
                ttl=settings.server.state_ttl,
            )
        except ConfigError as exc:
            return message_page("Not configured", "config_error", [exc.message], 503)
        except StoreError:
            log.error("connect.store_unavailable", app=app)
            return message_page("Try again", "store_unavailable", ["The token store is unavailable."], 503)
        return RedirectResponse(url, status_code=302, headers=_HEADERS)

    @routes.get("/callback/{app}", response_class=HTMLResponse, summary="The platform's redirect back")
    async def callback(request: Request, app: str) -> Response:
        found = app_and_platform(app)
        if isinstance(found, HTMLResponse):
            return found
        settings, platform = found
        params = dict(request.query_params)
        try:
            done = await complete_flow(app, platform, runtime.store, runtime.clock, params)
        except AuthorizationDenied as exc:
            return denied_page(exc)
        except StateError as exc:
            log.warning("callback.state_refused", app=app, reason=exc.kind)
            return state_page(exc)
        except (MissingCode, OnboardingError) as exc:
            return message_page("Authorization link not valid", exc.code or "bad_request", [exc.message], 400)
        except StoreError:  # before RefresherError, its root: the store failing is not the platform failing
            log.error("callback.store_unavailable", app=app)
            return message_page(
                "Try again", "store_unavailable", ["The token store is unavailable; nothing was stored."], 503
            )
        except RefresherError as exc:
            return failure_page(exc, [*settings.secrets(), params.get("code", "")])
        try:
            # Tokens are committed already; closing alarms is a follow-up whose failure the seller
            # must not see as a failed authorization.
            await runtime.accounts_authorized(app, done.accounts)
        except Exception as exc:  # noqa: BLE001 - any follow-up failure is logged, not shown
            log.warning("callback.follow_up_failed", app=app, error=type(exc).__name__)
        if done.state.return_to:
            query = urlencode({"connected": app, "accounts": len(done.accounts)})
            target = done.state.return_to
            return RedirectResponse(
                f"{target}{'&' if '?' in target else '?'}{query}", status_code=302, headers=_HEADERS
            )
        return granted_page(app, done.accounts, runtime.clock.now())

    return routes
