"""The sandbox's HTTP side: one Starlette app with every platform mounted under its own prefix, the
consent page a "seller" approves or denies, fault rendering and the admin endpoints tests drive.

Platform modules subclass :class:`SandboxPlatform`; :func:`build_app` mounts the ones it is given. This
module imports none of them (they import it): :class:`SandboxServer` in ``runner.py`` puts them together
and runs the app on a loopback port inside the caller's event loop (tests, ``refresher demo``).
"""

from __future__ import annotations

import datetime as dt
import html
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from refresher.sandbox.core import ConsentTicket, SandboxRejection, SandboxState, Subject
from refresher.sandbox.faults import FaultPlan, FaultSpecError

ADMIN = "/_sandbox"


class SandboxPlatform(ABC):
    """One platform's wire protocol on top of the shared :class:`SandboxState`."""

    name: str  # the plugin name: shopee, tiktok_shop, lazada, tiktok
    prefix: str  # where it is mounted: /shopee, /tiktok-shop, /lazada, /tiktok

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    @abstractmethod
    def routes(self) -> list[BaseRoute]:
        """The platform's endpoints, relative to :attr:`prefix`."""

    def hosts(self, base_url: str) -> dict[str, str]:
        """The app config ``hosts:`` that point the plugin at this sandbox (role -> URL)."""
        root = f"{base_url.rstrip('/')}{self.prefix}"
        return {"consent": root, "auth": root, "api": root}

    @abstractmethod
    def subjects_for(self, ticket: ConsentTicket, options: Mapping[str, str]) -> list[Subject]:
        """Who the seller authorizes on the consent page (``options`` are the approve link's query)."""

    @abstractmethod
    def approved_redirect(self, ticket: ConsentTicket, code: str, subjects: Sequence[Subject]) -> str:
        """Where the platform sends the browser after approval (the app's redirect URI + its params)."""

    @abstractmethod
    def denied_redirect(self, ticket: ConsentTicket) -> str:
        """Where the platform sends the browser after the seller said no."""

    def code_challenge(self, ticket: ConsentTicket) -> str | None:
        """The PKCE challenge the authorize request carried, if the platform supports PKCE."""
        return None

    async def fault(self, op: str) -> Response | str | None:
        """A generic faulty response for ``op``, a protocol-specific fault kind for the caller to render
        (``revoked``, ``wrongtypes``, ``error200``, ``lost``), or None for a normal answer."""
        kind = self.state.faults.take(self.name, op)
        if kind is None:
            return None
        self.state.count(self.name, f"fault.{kind}")
        return await generic_fault(self.state, kind)

    def protocol_fault(self, kind: str, op: str) -> Response | None:
        """This platform's answer to a protocol fault kind on ``op``, for :meth:`begin` (None: no answer)."""
        return None

    async def begin(self, op: str) -> Response | str | None:
        """The fault for this call rendered through :meth:`protocol_fault`: a finished response, ``"lost"``
        (answer normally, then fail with a 500), or None."""
        fault = await self.fault(op)
        if isinstance(fault, str) and fault != "lost":
            return self.protocol_fault(fault, op)
        return fault

    # -- consent page (shared by every platform's authorize endpoint)

    async def consent(self, ticket: ConsentTicket, base_url: str) -> Response:
        if self.state.auto_approve:
            return self.approve(ticket, {})
        approve = f"{base_url}{ADMIN}/consent/{ticket.id}/approve"
        deny = f"{base_url}{ADMIN}/consent/{ticket.id}/deny"
        page = CONSENT_PAGE.format(
            platform=html.escape(self.name),
            app=html.escape(ticket.app_id),
            scopes=html.escape(", ".join(ticket.scopes) or "default"),
            approve=html.escape(approve),
            deny=html.escape(deny),
        )
        return HTMLResponse(page)

    def approve(self, ticket: ConsentTicket, options: Mapping[str, str]) -> Response:
        subjects = self.subjects_for(ticket, options)
        code = self.state.issue_code(
            self.name,
            ticket.app_id,
            subjects,
            ticket.scopes,
            redirect_uri=ticket.redirect_uri,
            code_challenge=self.code_challenge(ticket),
        )
        self.state.tickets.pop(ticket.id, None)
        return RedirectResponse(self.approved_redirect(ticket, code.code, subjects), status_code=302)

    def deny(self, ticket: ConsentTicket) -> Response:
        self.state.tickets.pop(ticket.id, None)
        self.state.count(self.name, "denied")
        return RedirectResponse(self.denied_redirect(ticket), status_code=302)


def with_query(url: str, params: Mapping[str, Any]) -> str:
    clean = {k: v for k, v in params.items() if v is not None}
    return f"{url}{'&' if '?' in url else '?'}{urlencode(clean)}"


CONSENT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sandbox consent: {platform}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>{platform} sandbox</h1>
<p>App <code>{app}</code> asks for access ({scopes}).</p>
<p><a id="approve" href="{approve}">Approve</a> &nbsp; <a id="deny" href="{deny}">Deny</a></p>
<p style="color: #666">Approve link options: <code>?shops=N</code>, <code>?as=main&amp;shops=N&amp;merchants=M</code>
(Shopee), <code>?countries=sg,my</code> (Lazada), <code>?id=EXISTING</code> to re-authorize the same seller.</p>
</body></html>
"""


async def generic_fault(state: SandboxState, kind: str) -> Response | str | None:
    if kind == "timeout":
        await state.delay()
        return Response(status_code=504)
    if kind in ("500", "502", "503"):
        return Response("upstream trouble", status_code=int(kind), media_type="text/plain")
    if kind == "429":
        return JSONResponse({"error": "too many requests"}, status_code=429, headers={"Retry-After": "1"})
    if kind == "html":
        return HTMLResponse("<html><body><h1>502 Bad Gateway</h1></body></html>", status_code=200)
    if kind == "truncated":
        return Response('{"access_token": "sp', status_code=200, media_type="application/json")
    if kind == "empty":
        return Response(b"", status_code=200, media_type="application/json")
    if kind == "big":
        return Response(b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', media_type="application/json")
    if kind == "slow":
        await state.delay(1.5)
        return None
    return kind  # protocol-specific: the platform renders it


# --------------------------------------------------------------------------------------------- app


def build_app(state: SandboxState, platforms: Sequence[SandboxPlatform]) -> Starlette:
    """The whole sandbox as one ASGI app, with ``platforms`` mounted under their prefixes."""
    mounted = list(platforms)
    by_name = {p.name: p for p in mounted}

    def ticket_of(request: Request) -> tuple[SandboxPlatform, ConsentTicket] | Response:
        ticket = state.tickets.get(request.path_params["ticket"])
        if ticket is None:
            return HTMLResponse("<p>This consent page has expired or was already answered.</p>", status_code=404)
        return by_name[ticket.platform], ticket

    async def approve(request: Request) -> Response:
        found = ticket_of(request)
        if isinstance(found, Response):
            return found
        platform, ticket = found
        return platform.approve(ticket, dict(request.query_params))

    async def deny(request: Request) -> Response:
        found = ticket_of(request)
        if isinstance(found, Response):
            return found
        platform, ticket = found
        return platform.deny(ticket)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "platforms": sorted(by_name)})

    async def counters(request: Request) -> Response:
        return JSONResponse(dict(state.counters))

    async def accounts(request: Request) -> Response:
        platform = request.query_params.get("platform")
        return JSONResponse([c.public() for c in state.chains.values() if platform is None or c.platform == platform])

    async def introspect(request: Request) -> Response:
        body = await _json(request)
        platform, token = str(body.get("platform", "")), str(body.get("token", ""))
        try:
            chain = state.check_access(platform, token)
        except SandboxRejection as exc:
            return JSONResponse({"active": False, "reason": exc.reason})
        return JSONResponse({"active": True, "chain": chain.id})

    async def revoke(request: Request) -> Response:
        body = await _json(request)
        revoked = state.revoke(
            str(body.get("platform", "")),
            subject_id=str(body["subject_id"]) if body.get("subject_id") is not None else None,
            chain_id=int(body["chain_id"]) if body.get("chain_id") is not None else None,
        )
        return JSONResponse({"revoked": revoked})

    async def faults(request: Request) -> Response:
        if request.method == "PUT":
            body = await _json(request)
            try:
                state.faults = FaultPlan.parse(str(body.get("spec", "")), seed=body.get("seed"))
            except FaultSpecError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(state.faults.describe())

    async def expire(request: Request) -> Response:
        """Make a chain's access (or refresh) token expire now: ``{"platform", "subject_id", "what"}``."""
        body = await _json(request)
        chain = state.find_chain(str(body.get("platform", "")), str(body.get("subject_id", "")))
        if chain is None:
            return JSONResponse({"error": "no such grant"}, status_code=404)
        past = state.clock.now() - dt.timedelta(seconds=1)
        if body.get("what") == "refresh":
            chain.refresh_expires_at = past
        else:
            chain.access_expires_at = past
        return JSONResponse(chain.public())

    routes: list[BaseRoute] = [
        Route(f"{ADMIN}/consent/{{ticket}}/approve", approve),
        Route(f"{ADMIN}/consent/{{ticket}}/deny", deny),
        Route(f"{ADMIN}/health", health),
        Route(f"{ADMIN}/counters", counters),
        Route(f"{ADMIN}/accounts", accounts),
        Route(f"{ADMIN}/introspect", introspect, methods=["POST"]),
        Route(f"{ADMIN}/revoke", revoke, methods=["POST"]),
        Route(f"{ADMIN}/faults", faults, methods=["GET", "PUT"]),
        Route(f"{ADMIN}/expire", expire, methods=["POST"]),
    ]
    routes += [Mount(p.prefix, routes=p.routes()) for p in mounted]
    app = Starlette(routes=routes)
    app.state.sandbox = state
    app.state.platforms = by_name
    return app


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def base_url_of(request: Request) -> str:
    """The sandbox's own root URL as the caller reached it (for links on the consent page)."""
    return str(request.base_url).rstrip("/").removesuffix(request.scope.get("root_path", "")).rstrip("/")
