"""Connect sessions and what an onboarding flow hands on to the accounts it stores (issue 13, 2 and 5).

``POST /v1/connect-sessions`` stores a short-lived, single-use invitation carrying the integrator's end
user, tags and return_to, and answers its link. The web flow (:mod:`refresher.server.onboarding`) calls
the functions below: a stored invitation (``&id=``) must be live and is spent on Continue; its context
rides on the OAuth state; after the callback stored the accounts they get the end user and tags, the state
remembers their keys (a reload of the page says "already connected"), ``account.connected`` or
``account.reauthorized`` is sent, and return_to gets the account keys and the session id.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from refresher.alerts.lifecycle import EventType
from refresher.invites import MAX_TTL, invite_url, make_invite, new_invitation_id
from refresher.onboarding import Completed, return_to_allowed
from refresher.server.api_models import Problem
from refresher.server.auth import require, runtime_dependency
from refresher.server.runtime import Runtime
from refresher.server.ui import seller
from refresher.server.ui.seller import Brand
from refresher.store.base import Account
from refresher.store.connection_types import Invitation

log = structlog.get_logger("refresher.connect")

SESSION_TTL = dt.timedelta(minutes=30)
MAX_SESSION_TTL = dt.timedelta(hours=24)


class EndUser(BaseModel):
    """Who, in the integrator's own system, this connection belongs to (a tenant, a user)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=255)
    email: str | None = Field(None, max_length=320)
    display_name: str | None = Field(None, max_length=200)


class ConnectSessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    app: str = Field(min_length=1, max_length=63)
    end_user: EndUser
    tags: dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=255)]] = Field(
        default_factory=dict, max_length=20
    )
    return_to: str | None = Field(None, max_length=2048, description="Must be on server.return_to_allowlist.")
    ttl_seconds: int = Field(int(SESSION_TTL.total_seconds()), ge=60, le=int(MAX_SESSION_TTL.total_seconds()))


class ConnectSessionOut(BaseModel):
    id: str = Field(description="The session id; return_to receives it as session_id.")
    app: str
    url: str = Field(description="The single-use connect link to open in the end user's browser.")
    expires_at: dt.datetime


router = APIRouter(
    prefix="/v1",
    tags=["connect"],
    responses={
        401: {"model": Problem, "description": "Missing or wrong bearer token."},
        403: {"model": Problem, "description": "The token lacks the scope."},
    },
)


@router.post(
    "/connect-sessions",
    response_model=ConnectSessionOut,
    status_code=201,
    responses={
        400: {"model": Problem, "description": "return_to is not on server.return_to_allowlist."},
        404: {"model": Problem, "description": "Unknown app."},
        409: {"model": Problem, "description": "server.public_url or server.invite_secret is not set."},
    },
    summary="A short-lived, single-use connect link for one end user (Nango-style connect session)",
)
async def create_connect_session(
    body: ConnectSessionIn,
    runtime: Annotated[Runtime, Depends(runtime_dependency)],
    _caller: Annotated[str, Depends(require("connect"))],
) -> ConnectSessionOut:
    settings = runtime.settings
    if body.app not in settings.apps:
        raise HTTPException(status_code=404, detail=f"unknown app {body.app!r}")
    server = settings.server
    if not server.public_url or server.invite_secret is None:
        raise HTTPException(status_code=409, detail="connect sessions need server.public_url and server.invite_secret")
    if body.return_to is not None and not return_to_allowed(body.return_to, server.return_to_allowlist):
        raise HTTPException(status_code=400, detail="return_to is not on server.return_to_allowlist")
    now = runtime.clock.now()
    ttl = dt.timedelta(seconds=body.ttl_seconds)
    invitation = Invitation(
        id=new_invitation_id(),
        kind="session",
        app=body.app,
        created_at=now,
        expires_at=now + ttl,
        single_use=True,
        end_user=body.end_user.model_dump(),
        tags=dict(body.tags),
        return_to=body.return_to,
    )
    await runtime.store.put_invitation(invitation)
    token = make_invite(
        body.app, ttl, secret=server.invite_secret.get_secret_value(), clock=runtime.clock, invitation=invitation.id
    )
    log.info("connect.session_created", app=body.app, session=invitation.id)
    return ConnectSessionOut(
        id=invitation.id,
        app=body.app,
        url=invite_url(server.public_url, body.app, token, invitation=invitation.id),
        expires_at=invitation.expires_at,
    )


async def stored_reauth_link(runtime: Runtime, app: str, key: str, *, single_use: bool) -> tuple[Invitation, str]:
    """An on-demand re-authorization link for one account, stored as an invitation row (kind ``reauth``)
    so ``refresher invite revoke ID`` withdraws it alone and ``single_use`` is kept; its signature covers
    the account and the row's id. The caller checked that public_url and invite_secret are set."""
    server = runtime.settings.server
    assert server.public_url and server.invite_secret is not None
    now = runtime.clock.now()
    ttl = min(server.reauth_link_ttl, MAX_TTL)
    invitation = Invitation(
        id=new_invitation_id(),
        kind="reauth",
        app=app,
        created_at=now,
        expires_at=now + ttl,
        single_use=single_use,
        account_key=key,
    )
    await runtime.store.put_invitation(invitation)
    secret = server.invite_secret.get_secret_value()
    token = make_invite(app, ttl, secret=secret, clock=runtime.clock, account=key, invitation=invitation.id)
    log.info("connect.reauth_link_created", app=app, account=key, invitation=invitation.id, single_use=single_use)
    return invitation, invite_url(server.public_url, app, token, key, invitation=invitation.id)


# ----------------------------------------------------------------------------- the web flow's part


def _refused(kind: str, line: str) -> HTMLResponse:
    return seller.message("Invitation not accepted", f"invite_{kind}", [line], 403)


def _unusable(found: Invitation | None, app: str, now: dt.datetime) -> HTMLResponse | None:
    if found is None or found.app != app:
        return _refused("invalid", "This invitation link is not known here.")
    if found.revoked_at is not None:
        return _refused("revoked", "This invitation link was withdrawn; ask for a new one.")
    if found.expires_at <= now:
        return _refused("expired", "This invitation link has expired; ask for a new one.")
    if found.single_use and found.used_at is not None:
        return _refused("used", "This invitation link was already used; ask for a new one.")
    return None


async def invitation_refusal(runtime: Runtime, request: Request, app: str) -> HTMLResponse | None:
    """For a signed link naming a stored invitation (``&id=``): the page refusing it, or None."""
    invitation_id = request.query_params.get("id")
    if not invitation_id or not request.query_params.get("invite"):
        return None
    return _unusable(await runtime.store.get_invitation(invitation_id), app, runtime.clock.now())


async def take_invitation(runtime: Runtime, request: Request, app: str) -> dict[str, Any] | HTMLResponse:
    """On Continue: spend a stored invitation (single use) and return the context the flow carries."""
    context: dict[str, Any] = {}
    account = request.query_params.get("account")
    if account and request.query_params.get("invite"):
        context["account"] = account
    invitation_id = request.query_params.get("id")
    if not invitation_id or not request.query_params.get("invite"):
        return context
    found = await runtime.store.get_invitation(invitation_id)
    refusal = _unusable(found, app, runtime.clock.now())
    if refusal is not None or found is None:
        return refusal or _refused("invalid", "This invitation link is not known here.")
    if not await runtime.store.use_invitation(invitation_id):
        return _refused("used", "This invitation link was already used; ask for a new one.")
    context.update(invitation=found.id, kind=found.kind, end_user=found.end_user, tags=found.tags)
    if found.return_to:
        context["return_to"] = found.return_to
    return context


async def after_callback(runtime: Runtime, app: str, done: Completed) -> str | None:
    """Tag the stored accounts, remember them on the state, send their events; the return_to URL."""
    state = done.state.state
    context = await runtime.store.state_context(state) or {}
    end_user, tags = context.get("end_user"), dict(context.get("tags") or {})
    keys = [a.key for a in done.accounts]
    await runtime.store.mark_connected(state, keys)
    for account in done.accounts:
        if end_user is not None or tags:
            await runtime.store.set_connection(app, account.key, end_user, tags)
        stored_user, stored_tags = await runtime.store.connection(app, account.key)
        # A grant creates an account at version 1; re-authorizing an existing one bumps its version.
        kind = EventType.CONNECTED if account.version == 1 else EventType.REAUTHORIZED
        await runtime.lifecycle.emit(
            kind,
            account,
            marker=f"{account.version}:{state}",
            end_user=stored_user,
            tags=stored_tags,
            session_id=context.get("invitation") if context.get("kind") == "session" else None,
        )
    target = context.get("return_to") or done.state.return_to
    if not target:
        return None
    query: list[tuple[str, str]] = [("connected", app), ("accounts", str(len(keys)))]
    query += [("account", key) for key in keys]
    if context.get("kind") == "session":
        query.append(("session_id", str(context["invitation"])))
    return f"{target}{'&' if '?' in target else '?'}{urlencode(query)}"


async def reload_accounts(runtime: Runtime, app: str, state: str | None) -> list[Account] | None:
    """The accounts a completed callback with this state stored (a reload of its page), else None."""
    if not state:
        return None
    found = await runtime.store.find_state(state)
    if found is None or found.app != app or found.used_at is None:
        return None
    keys = await runtime.store.connected_keys(state)
    if not keys:
        return None
    accounts = [a for a in [await runtime.store.get(app, key) for key in keys] if a is not None]
    return accounts or None


def brand(runtime: Runtime, app: str) -> Brand:
    return seller.brand_of(runtime.settings, app)
