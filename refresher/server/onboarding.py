"""``GET /connect/{app}`` and ``GET /callback/{app}``: the web side of onboarding.

The flow itself lives in :mod:`refresher.onboarding`; this module adds the HTTP concerns: who may start
a flow (admin token or invitation), the ``return_to`` allowlist, and small HTML pages that say exactly
what happened. Pages never show a token or the authorization code, and every value on them is escaped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

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
from refresher.server import connections
from refresher.server.auth import ADMIN_NAME, authenticate
from refresher.server.runtime import Runtime
from refresher.server.ui import seller
from refresher.server.ui.render import platform_name
from refresher.server.ui.seller import Brand, brand_of
from refresher.store.base import Account, StoreError

log = structlog.get_logger("refresher.server.onboarding")

# The callback URL carries the code: no caching, and no Referer from the result page to anywhere.
_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}


def message_page(
    title: str, outcome: str, lines: Iterable[str], status: int, brand: Brand | None = None
) -> HTMLResponse:
    return seller.message(title, outcome, lines, status, brand)


def _when(value: dt.datetime | None, now: dt.datetime) -> str:
    if value is None:
        return "no end given"
    return f"{value:%Y-%m-%d %H:%M} UTC (in {format_duration(value - now)})"


def describe_account(account: Account, now: dt.datetime) -> list[tuple[str, str]]:
    """What an operator may see of an account (the desktop flow's terminal lines): who it is and when
    its grant ends. Never a token."""
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


def granted_page(
    app: str, accounts: Sequence[Account], now: dt.datetime, brand: Brand | None = None, *, again: bool = False
) -> HTMLResponse:
    """The seller's "you're connected" page: the shops by name and where they sell, in plain words
    (``again``: a reload of a completed callback, "already connected")."""
    return seller.granted(accounts, brand, again=again)


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Belt and braces: error messages are built without secrets, but never echo one if one slipped in."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def failure_page(error: RefresherError, secrets: Iterable[str], brand: Brand | None = None) -> HTMLResponse:
    """The page for a failed exchange: plain words first, then the error class and the platform's code
    (small print for the operator), never a secret."""
    details = [f"error class: {error.error_class}", f"reason: {_scrub(error.message, secrets)}"]
    if error.code:
        details.append(f"platform code: {_scrub(error.code, secrets)}")
    if error.request_id:
        details.append(f"request id: {error.request_id}")
    return seller.message(
        "Something went wrong",
        "failed",
        [
            "The platform did not accept the authorization, so nothing was stored.",
            "Please start again from your link. If it keeps failing, send the details below to whoever gave "
            "you the link.",
        ],
        502,
        brand,
        details=details,
    )


def denied_page(error: RefresherError, brand: Brand | None = None) -> HTMLResponse:
    return seller.message(
        "Access not given",
        "denied",
        [
            "You declined the request on the platform, so nothing was connected.",
            "If that was a mistake, open your link again and choose Approve.",
        ],
        400,
        brand,
        details=[f"platform answer: {error.code or 'denied'}"],
    )


_STATE_WORDS = {
    "expired": (
        "This link has expired",
        "The sign-in took too long and the link ran out. Please open your link again.",
    ),
    "reused": (
        "This link was already used",
        "Each sign-in link works once. If you already approved, you are connected; otherwise open your link again.",
    ),
    "missing": (
        "This link is incomplete",
        "The page was opened without the part that identifies it. Open your link again.",
    ),
}


def state_page(error: StateError, brand: Brand | None = None) -> HTMLResponse:
    title, line = _STATE_WORDS.get(
        error.kind, ("This link is not valid", "It does not belong to a sign-in started here. Open your link again.")
    )
    lines = [line, "Nothing was stored."]
    return seller.message(title, f"state_{error.kind}", lines, 400, brand, details=[f"reason: {error.message}"])


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
    brand = brand_of(settings, app)
    who = brand.display_name or "whoever sent it"
    if invite:
        if server.invite_secret is None:
            lines = ["This server does not accept invitation links."]
            return message_page("Invitation not accepted", "invite_disabled", lines, 403, brand)
        try:
            # A re-authorization link names its account, a stored invitation its id; the signature covers both.
            account, stored = request.query_params.get("account"), request.query_params.get("id")
            secret = server.invite_secret.get_secret_value()
            check_invite(invite, app, secret=secret, clock=clock, account=account, invitation=stored)
        except InviteError as exc:
            log.info("connect.invite_refused", app=app, reason=exc.kind)
            title = "This link has expired" if exc.kind == "expired" else "This link is not valid"
            lines = [f"Please ask {who} for a new link.", "Nothing was connected."]
            return seller.message(title, f"invite_{exc.kind}", lines, 403, brand, details=[exc.message + "."])
        return None
    if token is not None:
        log.info("connect.token_refused", app=app)
        refused = message_page("Not allowed", "unauthorized", ["The admin token is not valid."], 401, brand)
    else:
        refused = message_page(
            "Invitation needed",
            "unauthorized",
            [f"Connecting here needs the invitation link from {who}."],
            401,
            brand,
        )
    refused.headers["WWW-Authenticate"] = 'Bearer realm="refresher"'
    return refused


def _pages(**statuses: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for answers that are HTML pages (or a redirect), keyed ``s302=...``."""
    return {
        int(name[1:]): {"description": text, "content": {} if name == "s302" else {"text/html": {}}}
        for name, text in statuses.items()
    }


_START_PAGES = _pages(
    s302="Sent on to the platform's consent page (a client presenting the admin token, or /continue)",
    s400="A return_to outside server.return_to_allowlist",
    s401="Neither the admin token nor an invitation (when server.connect_requires_auth)",
    s403="An invitation that is damaged, expired, for another app, or not accepted here",
    s404="No app of that name is configured",
    s503="The app is not fully configured, or the store is unavailable: try again",
)
_CALLBACK_PAGES = _pages(
    s302="Back to the flow's return_to, with the outcome in its query",
    s400="A missing, unknown, expired or used state; no code; or the seller declined",
    s404="No app of that name is configured",
    s502="The platform refused to exchange the code (expired or used code, or the app's credentials)",
    s503="The store is unavailable: nothing was stored, try again",
)


def router(runtime: Runtime) -> APIRouter:
    """The onboarding routes, bound to the running daemon."""
    routes = APIRouter(tags=["onboarding"])

    def app_and_platform(app: str) -> tuple[Settings, Platform] | HTMLResponse:
        settings = runtime.settings
        platform = runtime.platforms.get(app)
        if app not in settings.apps or platform is None:
            return message_page("Unknown app", "unknown_app", [f"No app named {app!r} is configured."], 404)
        return settings, platform

    async def checked(request: Request, app: str, return_to: str | None) -> tuple[Settings, Platform] | Response:
        """The app and its plugin when this request may start a flow, else the page saying why not."""
        found = app_and_platform(app)
        if isinstance(found, HTMLResponse):
            return found
        settings, _ = found
        refusal = _connect_refusal(settings, request, app, runtime.clock)
        if refusal is None:
            refusal = await connections.invitation_refusal(runtime, request, app)  # stored: live, unused
        if refusal is not None:
            return refusal
        if return_to is not None and not return_to_allowed(return_to, settings.server.return_to_allowlist):
            error = ReturnToRejected()
            brand = brand_of(settings, app)
            return message_page("Redirect not allowed", "return_to", [error.message + "."], 400, brand)
        return found

    async def start(
        app: str, settings: Settings, platform: Platform, return_to: str | None, request: Request | None = None
    ) -> Response:
        brand = brand_of(settings, app)
        # A connect session or single-use invitation is spent here; its context rides on the state.
        context = {} if request is None else await connections.take_invitation(runtime, request, app)
        if isinstance(context, HTMLResponse):
            return context
        redirect_uri = settings.apps[app].redirect_uri
        if redirect_uri is None and settings.server.public_url:
            redirect_uri = f"{settings.server.public_url.rstrip('/')}/callback/{app}"
        try:
            url, oauth_state = await begin(
                app,
                platform,
                runtime.store,
                runtime.clock,
                return_to=return_to,
                redirect_uri=redirect_uri,
                ttl=settings.server.state_ttl,
            )
        except ConfigError as exc:
            return message_page("Not configured", "config_error", [exc.message], 503, brand)
        except StoreError:
            log.error("connect.store_unavailable", app=app)
            lines = ["The service is busy right now. Please try again in a minute."]
            return message_page("Try again", "store_unavailable", lines, 503, brand)
        if context:
            await runtime.store.set_state_context(oauth_state.state, context)
        return RedirectResponse(url, status_code=302, headers=_HEADERS)

    @routes.get("/connect/{app}", response_class=HTMLResponse, summary="Start an authorization", responses=_START_PAGES)
    async def connect(request: Request, app: str, return_to: str | None = None) -> Response:
        """A browser gets a page naming who asks and the platform, with one button to continue; a client
        presenting the admin token as a bearer header (a script) is sent to the platform at once."""
        found = await checked(request, app, return_to)
        if isinstance(found, Response):
            return found
        settings, platform = found
        if _bearer(request) is not None:
            return await start(app, settings, platform, return_to, request)
        query = request.url.query
        return seller.render_seller(
            "seller/landing.html",
            f"Connect your {platform_name(platform.name)} {platform.grant_subject}",
            "landing",
            200,
            brand_of(settings, app),
            platform=platform_name(platform.name),
            subject=platform.grant_subject,
            continue_url=f"/connect/{quote(app, safe='')}/continue" + (f"?{query}" if query else ""),
        )

    @routes.get(
        "/connect/{app}/continue",
        response_class=HTMLResponse,
        summary="Go on to the platform's consent page",
        responses=_START_PAGES,
    )
    async def connect_continue(request: Request, app: str, return_to: str | None = None) -> Response:
        found = await checked(request, app, return_to)
        if isinstance(found, Response):
            return found
        settings, platform = found
        return await start(app, settings, platform, return_to, request)

    @routes.get(
        "/callback/{app}",
        response_class=HTMLResponse,
        summary="The platform's redirect back",
        responses=_CALLBACK_PAGES,
    )
    async def callback(request: Request, app: str) -> Response:
        found = app_and_platform(app)
        if isinstance(found, HTMLResponse):
            return found
        settings, platform = found
        brand = brand_of(settings, app)
        params = dict(request.query_params)
        try:
            done = await complete_flow(app, platform, runtime.store, runtime.clock, params)
        except AuthorizationDenied as exc:
            return denied_page(exc, brand)
        except StateError as exc:
            log.warning("callback.state_refused", app=app, reason=exc.kind)
            again = None
            if exc.kind == "reused":
                again = await connections.reload_accounts(runtime, app, params.get("state"))
            if again:  # a reload of a completed callback: say what it connected, not "not valid"
                return granted_page(app, again, runtime.clock.now(), brand, again=True)
            return state_page(exc, brand)
        except (MissingCode, OnboardingError) as exc:
            return message_page("This link is not valid", exc.code or "bad_request", [exc.message], 400, brand)
        except StoreError:  # before RefresherError, its root: the store failing is not the platform failing
            log.error("callback.store_unavailable", app=app)
            return message_page(
                "Try again",
                "store_unavailable",
                ["The service is busy; nothing was stored. Please try again."],
                503,
                brand,
            )
        except RefresherError as exc:
            return failure_page(exc, [*settings.secrets(), params.get("code", "")], brand)
        try:
            # Tokens are committed already; closing alarms is a follow-up whose failure the seller
            # must not see as a failed authorization.
            await runtime.accounts_authorized(app, done.accounts)
        except Exception as exc:  # noqa: BLE001 - any follow-up failure is logged, not shown
            log.warning("callback.follow_up_failed", app=app, error=type(exc).__name__)
        try:
            target = await connections.after_callback(runtime, app, done)  # tags, events, what to say on reload
        except StoreError:
            log.error("callback.follow_up_failed", app=app, error="StoreError")
            target = done.state.return_to
        if target:
            return RedirectResponse(target, status_code=302, headers=_HEADERS)
        return granted_page(app, done.accounts, runtime.clock.now(), brand)

    return routes
