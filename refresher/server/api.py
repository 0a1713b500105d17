"""The token API under ``/v1``: apps, accounts, current tokens, forced refreshes, history.

Every route needs a bearer token with the scope it names (see :mod:`refresher.server.auth`). Answers
never carry a token except ``GET …/token`` (``tokens:read``; the refresh token only with
``tokens:read_refresh``), and token answers are marked ``Cache-Control: no-store``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from refresher.domain import AccountStatus, UnknownApp
from refresher.refresh_events import Outcome
from refresher.server import account_actions, connections
from refresher.server.api_models import (
    AccountOut,
    AccountPage,
    AppList,
    AppOut,
    AuditItem,
    AuditOut,
    HistoryItem,
    HistoryOut,
    Problem,
    ReauthLinkOut,
    RefreshOut,
    TokenOut,
    TokenRefusedOut,
    account_out,
    error_out,
)
from refresher.server.auth import Caller, get_runtime, require, require_caller, runtime_dependency
from refresher.server.runtime import Runtime
from refresher.server.token_route import NO_STORE, TokenReadFastPath, account_of, check_app, token_answer
from refresher.store.base import AccountNotFound

MAX_PAGE = 500


# What every protected route may answer besides its success; declared so /openapi.json is exact.
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or wrong bearer token."},
    403: {"model": Problem, "description": "The token lacks the scope."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "Unknown app or account."}}


# ----------------------------------------------------------------------------------------- helpers


def _encode_cursor(offset: int) -> str:
    return str(offset)


def _decode_cursor(cursor: str) -> int:
    # The cursor is the offset of the next page. It is documented as an opaque string (pattern-checked
    # by FastAPI) so it can become a keyset cursor later without breaking clients.
    return int(cursor)


AppPath = Annotated[str, Path(description="App name from the config.", min_length=1, max_length=63)]
KeyPath = Annotated[
    str, Path(description="Account key, e.g. shop:123 (URL-encode it if you like).", min_length=1, max_length=200)
]
RuntimeDep = Annotated[Runtime, Depends(runtime_dependency)]


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 answer minus the echoed ``input``: a secret pasted into the wrong parameter must not
    come back in an answer (or land in some proxy's log). ``loc`` still names the parameter."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "invalid value")), "type": str(e.get("type", ""))}
        for e in errors
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def install(app: FastAPI) -> None:
    """Mount the token API on ``app`` (and its validation-error policy, which covers every route)."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(router)
    app.include_router(connections.router)
    app.add_middleware(TokenReadFastPath)  # the token read without FastAPI's routing (token_route.py)


# ----------------------------------------------------------------------------------------- routes

router = APIRouter(prefix="/v1", tags=["tokens"], responses=_AUTH_ERRORS)


@router.get("/apps", response_model=AppList, summary="Configured apps with account counts")
async def list_apps(runtime: RuntimeDep, _caller: Annotated[str, Depends(require("accounts:read"))]) -> AppList:
    items = []
    for name, app in sorted(runtime.settings.apps.items()):
        counts = {str(status): n for status, n in (await runtime.store.count_by_status(name)).items()}
        items.append(
            AppOut(name=name, platform=app.platform, enabled=app.enabled, accounts=counts, total=sum(counts.values()))
        )
    return AppList(items=items)


@router.get("/accounts", response_model=AccountPage, responses=_NOT_FOUND, summary="Accounts, filtered and paged")
async def list_accounts(
    runtime: RuntimeDep,
    _caller: Annotated[str, Depends(require("accounts:read"))],
    app: Annotated[str | None, Query(description="Only this app's accounts.", max_length=63)] = None,
    status: Annotated[AccountStatus | None, Query(description="Only accounts in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,12}$", description="next_cursor of the previous page.")
    ] = None,
    end_user_id: Annotated[
        str | None, Query(max_length=255, description="Only accounts connected for this end user.")
    ] = None,
    tag: Annotated[
        str | None, Query(pattern=r"^[^:]{1,64}:.{0,255}$", description="Only accounts with this tag, as key:value.")
    ] = None,
) -> AccountPage:
    if app is not None:
        check_app(runtime, app)
    offset = _decode_cursor(cursor) if cursor else 0
    name, _, value = (tag or "").partition(":")
    # One extra row tells whether a next page exists without a second COUNT query.
    rows = await runtime.store.list(
        app=app,
        status=status,
        limit=limit + 1,
        offset=offset,
        end_user_id=end_user_id,
        tag=(name, value) if tag is not None else None,
    )
    more = len(rows) > limit
    return AccountPage(
        items=[account_out(a) for a in rows[:limit]],
        next_cursor=_encode_cursor(offset + limit) if more else None,
    )


@router.get("/accounts/{app}/{key}", response_model=AccountOut, responses=_NOT_FOUND, summary="One account")
async def get_account(
    runtime: RuntimeDep, app: AppPath, key: KeyPath, _caller: Annotated[str, Depends(require("accounts:read"))]
) -> AccountOut:
    account = await account_of(runtime, app, key)
    end_user, tags = await runtime.store.connection(app, account.key)
    return account_out(account).model_copy(update={"end_user": end_user, "tags": tags})


# One refresh-on-read coordinator per running refresher (a reload keeps the refresher, so its in-flight map).
@router.get(
    "/accounts/{app}/{key}/token",
    response_model=TokenOut,
    responses={
        **_NOT_FOUND,
        409: {
            "model": TokenRefusedOut,
            "description": "No working token: the account needs re-authorization, is disabled, holds no "
            "token, or its token expired and could not be refreshed.",
        },
    },
    summary="The current access token (and, with tokens:read_refresh, the refresh token)",
    description="A token expiring within server.token_read_margin is refreshed before it is returned "
    "(one platform call however many readers ask at once, across replicas too).",
)
async def get_token(
    request: Request,
    app: AppPath,
    key: KeyPath,
    caller: Annotated[Caller, Depends(require_caller("tokens:read"))],
    include_refresh: Annotated[bool, Query(description="Also return the refresh token.")] = False,
) -> Response:
    # Served by TokenReadFastPath (refresher.server.token_route) whenever FastAPI could not answer
    # differently; this route declares it and answers the rest (422s, other spellings of the query).
    return await token_answer(get_runtime(request), caller, app, key, include_refresh)


@router.post(
    "/accounts/{app}/{key}/refresh",
    response_model=RefreshOut,
    responses={
        **_NOT_FOUND,
        409: {"model": RefreshOut, "description": "Busy elsewhere too long, or the account is not active."},
        502: {"model": RefreshOut, "description": "The platform refused or failed the refresh."},
    },
    summary="Refresh now and wait for the result (respects the lease)",
)
async def refresh_account(
    runtime: RuntimeDep,
    response: Response,
    app: AppPath,
    key: KeyPath,
    _caller: Annotated[str, Depends(require("refresh"))],
) -> RefreshOut:
    await account_of(runtime, app, key)
    try:
        result = await runtime.refresher.refresh_now(app, key)
    except (UnknownApp, AccountNotFound):
        # The app has no plugin loaded (disabled) or the account vanished meanwhile.
        raise HTTPException(status_code=404, detail=f"unknown account {key!r} of app {app!r}") from None
    response.headers.update(NO_STORE)
    if result.outcome in (Outcome.BUSY, Outcome.SKIPPED):
        response.status_code = 409
    elif result.outcome != Outcome.SUCCESS:
        response.status_code = 502
    return RefreshOut(
        outcome=result.outcome.value,
        attempts=result.attempts,
        duration_ms=result.duration_ms,
        error=error_out(result.error.info()) if result.error else None,
        account=account_out(result.account),
    )


async def _set_status(runtime: Runtime, app: str, key: str, status: AccountStatus) -> AccountOut:
    before = await account_of(runtime, app, key)
    try:
        saved = await account_actions.set_status(runtime, app, before.key, status)
    except AccountNotFound:
        raise HTTPException(status_code=404, detail=f"unknown account {key!r} of app {app!r}") from None
    return account_out(saved)


@router.post(
    "/accounts/{app}/{key}/disable", response_model=AccountOut, responses=_NOT_FOUND, summary="Stop refreshing"
)
async def disable_account(
    runtime: RuntimeDep, app: AppPath, key: KeyPath, _caller: Annotated[str, Depends(require("accounts:write"))]
) -> AccountOut:
    return await _set_status(runtime, app, key, AccountStatus.DISABLED)


@router.post("/accounts/{app}/{key}/enable", response_model=AccountOut, responses=_NOT_FOUND, summary="Refresh again")
async def enable_account(
    runtime: RuntimeDep, app: AppPath, key: KeyPath, _caller: Annotated[str, Depends(require("accounts:write"))]
) -> AccountOut:
    return await _set_status(runtime, app, key, AccountStatus.ACTIVE)


@router.delete(
    "/accounts/{app}/{key}",
    status_code=204,
    response_class=Response,
    responses=_NOT_FOUND,
    summary="Forget an account and its tokens",
)
async def delete_account(
    runtime: RuntimeDep, app: AppPath, key: KeyPath, _caller: Annotated[str, Depends(require("accounts:write"))]
) -> Response:
    account = await account_of(runtime, app, key)
    if not await account_actions.delete(runtime, app, account.key):
        raise HTTPException(status_code=404, detail=f"unknown account {key!r} of app {app!r}")
    return Response(status_code=204)


@router.get(
    "/accounts/{app}/{key}/history",
    response_model=HistoryOut,
    responses=_NOT_FOUND,
    summary="Earlier token versions and their expiries (never the tokens)",
)
async def account_history(
    runtime: RuntimeDep,
    app: AppPath,
    key: KeyPath,
    _caller: Annotated[str, Depends(require("accounts:read"))],
    limit: Annotated[int, Query(ge=1, le=1000, description="How many versions, newest first.")] = 20,
) -> HistoryOut:
    account = await account_of(runtime, app, key)
    entries = await runtime.store.history(app, key, limit=limit)
    return HistoryOut(
        app=app,
        account=account.key,
        current_version=account.version,
        items=[
            HistoryItem(
                version=e.version,
                access_expires_at=e.tokens.access_expires_at,
                refresh_expires_at=e.tokens.refresh_expires_at,
                replaced_at=e.replaced_at,
            )
            for e in entries
        ],
    )


@router.get(
    "/accounts/{app}/{key}/reauth-link",
    response_model=ReauthLinkOut,
    responses={
        **_NOT_FOUND,
        409: {"model": Problem, "description": "server.public_url or server.invite_secret is not set."},
    },
    summary="A signed, expiring re-authorization link for this account, stored so it can be revoked alone",
)
async def reauth_link(
    runtime: RuntimeDep,
    app: AppPath,
    key: KeyPath,
    _caller: Annotated[str, Depends(require("accounts:write"))],
    single_use: Annotated[bool, Query(description="The link re-authorizes once, then is refused.")] = False,
) -> ReauthLinkOut:
    account = await account_of(runtime, app, key)
    server = runtime.settings.server
    if not server.public_url or server.invite_secret is None:
        raise HTTPException(
            status_code=409, detail="re-authorization links need server.public_url and server.invite_secret"
        )
    invitation, url = await connections.stored_reauth_link(runtime, app, account.key, single_use=single_use)
    return ReauthLinkOut(
        app=app,
        account=account.key,
        url=url,
        expires_at=invitation.expires_at,
        id=invitation.id,
        single_use=single_use,
    )


@router.get(
    "/accounts/{app}/{key}/events",
    response_model=AuditOut,
    responses=_NOT_FOUND,
    summary="The audit log of one account: every refresh attempt, its outcome and error (newest first)",
)
async def account_events(
    runtime: RuntimeDep,
    app: AppPath,
    key: KeyPath,
    _caller: Annotated[str, Depends(require("accounts:read"))],
    limit: Annotated[int, Query(ge=1, le=1000, description="How many events, newest first.")] = 100,
) -> AuditOut:
    account = await account_of(runtime, app, key)
    entries = await runtime.store.audit_log(app, account.key, limit=limit)
    return AuditOut(
        app=app,
        account=account.key,
        items=[AuditItem.model_validate(e, from_attributes=True) for e in entries],
    )
