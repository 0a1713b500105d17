"""The token read, ``GET /v1/accounts/{app}/{key}/token``: its one implementation and its fast path.

:func:`token_answer` is the whole route once the caller is known; the FastAPI route in
:mod:`refresher.server.api` declares it (``/openapi.json``, validation) and calls it.

:class:`TokenReadFastPath` serves the same route without FastAPI's routing, exception middleware and
dependency solving: measured under load, those were ~40 % of a token read's CPU, more than the read
itself (a cached, decrypted account and one JSON answer; benchmarks/RESULTS.md, token API). It takes a
request only when FastAPI could not answer it differently — a GET of exactly that path, an app and a key
within the route's declared lengths, and a query that is empty or one ``include_refresh`` with a plain
boolean — and authenticates it with the same function as every other route
(:func:`refresher.server.auth.check_caller`). Anything else goes on to FastAPI unchanged (a 422, a HEAD,
an unknown query parameter), so the two can only differ in speed; tests compare their answers.
"""

from __future__ import annotations

import weakref
from urllib.parse import parse_qsl

from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from refresher.refresh import Refresher
from refresher.server.api_models import TokenOut, TokenRefusedOut, identity_out
from refresher.server.auth import Caller, bearer_token, check_caller
from refresher.server.runtime import Runtime
from refresher.store.base import Account, AccountNotFound
from refresher.token_cache import TokenCache, cache_for
from refresher.token_read import ReadMargin, ReadRefresher, Refusal, judge, refusal_message

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# The route's declared bounds (api.AppPath, api.KeyPath): outside them FastAPI answers 422.
APP_MAX, KEY_MAX = 63, 200
_PREFIX, _SUFFIX = "/v1/accounts/", "/token"
# The spellings of include_refresh taken here; pydantic reads a few more (yes, on, …), FastAPI gets those.
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def check_app(runtime: Runtime, app: str) -> None:
    if app not in runtime.settings.apps:
        raise HTTPException(status_code=404, detail=f"unknown app {app!r}")


def token_cache(runtime: Runtime) -> TokenCache:
    """The store's cache of accounts for token reads and the proxy (its bounds follow a reload)."""
    server = runtime.settings.server
    return cache_for(runtime.store, size=server.token_cache_size, max_age=server.token_cache_max_age.total_seconds())


async def account_of(runtime: Runtime, app: str, key: str, *, cached: bool = False) -> Account:
    """The account, or a 404 naming what is unknown."""
    check_app(runtime, app)
    account = await (token_cache(runtime) if cached else runtime.store).get(app, key)
    if account is None:
        raise HTTPException(status_code=404, detail=f"unknown account {key!r} of app {app!r}")
    return account


_readers: weakref.WeakKeyDictionary[Refresher, ReadRefresher] = weakref.WeakKeyDictionary()


def reader_for(runtime: Runtime) -> ReadRefresher:
    """The refresh-on-read coordinator of this daemon's refresher (one per refresher, margin from config)."""
    reader = _readers.get(runtime.refresher)
    if reader is None:
        reader = _readers[runtime.refresher] = ReadRefresher(runtime.refresher)
    reader.margin = ReadMargin(runtime.settings.server.token_read_margin)  # follows a config reload
    return reader


async def token_answer(runtime: Runtime, caller: Caller, app: str, key: str, include_refresh: bool) -> Response:
    """The answer to a token read by ``caller`` (already holding ``tokens:read``); HTTPException for 403/404."""
    if include_refresh and not caller.allows("tokens:read_refresh"):
        raise HTTPException(status_code=403, detail=f"token {caller.name!r} lacks the scope tokens:read_refresh")
    account = await account_of(runtime, app, key, cached=True)
    try:
        account = await reader_for(runtime).fresh(account)
    except AccountNotFound:
        raise HTTPException(status_code=404, detail=f"unknown account {key!r} of app {app!r}") from None
    reason = judge(account, runtime.clock.now())
    tokens = account.tokens
    if reason is not None or tokens is None:
        reason = reason or Refusal.NO_TOKEN
        link = runtime.reauth_link(app, account.key) if reason != Refusal.DISABLED else None
        refused = TokenRefusedOut(
            detail=refusal_message(account, reason), status=account.status, reason=reason, reauth_url=link
        )
        return JSONResponse(refused.model_dump(mode="json"), status_code=409, headers=NO_STORE)
    body = TokenOut(
        app=account.app,
        account=account.key,
        identity=identity_out(account),
        status=account.status,
        access_token=tokens.access_token,
        access_expires_at=tokens.access_expires_at,
        refresh_token=tokens.refresh_token if include_refresh else None,
        refresh_expires_at=tokens.refresh_expires_at,
        version=account.version,
    )
    # Rendered here: returned as a model, FastAPI would validate it against response_model once more.
    return Response(body.model_dump_json(), media_type="application/json", headers=NO_STORE)


def fast_path_target(path: str, query: bytes) -> tuple[str, str, bool] | None:
    """(app, key, include_refresh) when the fast path may answer this request, else ``None``."""
    if not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
        return None
    app, slash, key = path[len(_PREFIX) : -len(_SUFFIX)].partition("/")
    if not slash or not 0 < len(app) <= APP_MAX or not 0 < len(key) <= KEY_MAX or "/" in key:
        return None
    if not query:
        return app, key, False
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "include_refresh":
        return None
    flag = _BOOLEANS.get(pairs[0][1].lower())
    return None if flag is None else (app, key, flag)


class TokenReadFastPath:
    """ASGI middleware: the token read answered before FastAPI's routing (see the module's docstring).

    Installed with ``app.add_middleware``, so it runs inside Starlette's ``ServerErrorMiddleware``: an
    unexpected error still becomes the same logged 500 as on any route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = None
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            target = fast_path_target(path, scope.get("query_string", b""))
        if target is None:
            await self.app(scope, receive, send)
            return
        app, key, include_refresh = target
        runtime: Runtime = scope["app"].state.runtime
        authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        try:
            caller = check_caller(runtime, "GET", path, bearer_token(authorization), "tokens:read")
            response = await token_answer(runtime, caller, app, key, include_refresh)
        except HTTPException as exc:
            # As FastAPI's own handler renders it.
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        await response(scope, receive, send)
