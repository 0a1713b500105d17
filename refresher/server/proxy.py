"""The signing proxy: ``/proxy/{app}/{account}/{path}`` → the platform's API host, signed.

A service calls the proxy as it would call the platform, minus every credential: the proxy adds the
current access token and the platform's signature (``Platform.sign_call``), relays the answer unchanged
(status, body, content type), and when the platform says the access token is invalid it refreshes the
account once (under the store lease, through ``Refresher.refresh_now``) and retries the call once.

The caller's ``Authorization`` header (its refresher API token) and cookies never reach the platform:
only an allow-list of content headers is forwarded. Answers are buffered (with the plugin's size cap)
because the invalid-token check has to read the body before anything is sent back.

:func:`proxy_answer` is the proxy; the FastAPI route declares it and :class:`ProxyFastPath` serves it
without FastAPI's routing and dependency machinery (tests/test_proxy_fast_path.py compares the two).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Annotated
from urllib.parse import unquote

import httpx
import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from refresher.domain import (
    AccessTokenInvalid,
    AccountStatus,
    Identity,
    PlatformTimeout,
    RefresherError,
    TransientError,
    UnknownApp,
)
from refresher.platforms.base import MAX_API_ANSWER_BYTES, Answer, ApiCall, Platform
from refresher.refresh_events import Outcome
from refresher.server.auth import bearer_token, check_caller, get_runtime, require, runtime_dependency
from refresher.server.runtime import Runtime
from refresher.server.token_route import token_cache
from refresher.store.base import Account, AccountNotFound, StoreError

log = structlog.get_logger("refresher.proxy")

MAX_REQUEST_BYTES = 10 << 20  # platform APIs take small JSON bodies; an upload of 10 MiB is already odd
# Platform API paths are a few dozen characters and queries a few hundred; the signed URL must also stay
# under httpx's 64 KiB URL limit once the token and signature are added.
MAX_PATH_CHARS = 2048
MAX_QUERY_CHARS = 16384
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# Request headers the platform may see. Everything else stays here: Authorization (the caller's refresher
# token), cookies, hop-by-hop headers, Host, and the platform's own auth headers (the signer sets those).
FORWARD_REQUEST_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "content-language",
        "if-none-match",
        "if-modified-since",
        "x-request-id",
    }
)
# Answer headers that describe the connection or the (already decoded) encoding, not the content.
DROP_ANSWER_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "set-cookie",
        "date",
        "server",
    }
)

router = APIRouter(tags=["proxy"])


def _problem(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


async def _read_body(request: Request) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _path_problem(path: str) -> str | None:
    """Why ``path`` (already percent-decoded once by the router) must not be forwarded, or None.

    An upstream may decode the path again, so every further decoding is checked too: no dot segment
    (climbing out of the API base path), no ``?`` or ``#`` (which would inject query parameters ahead of
    the signed ones, or cut the signed query off) and no control character, at any level of encoding.
    """
    if len(path) > MAX_PATH_CHARS:
        return f"the platform path is longer than {MAX_PATH_CHARS} characters"
    level = path
    for _ in range(8):  # each round undoes one layer of percent-encoding; 8 covers any real double-encoding
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in level):
            return "the platform path must not contain control characters"
        if "?" in level or "#" in level:
            return "the platform path must not contain an encoded '?' or '#'"
        if any(segment in (".", "..") for segment in level.replace("\\", "/").split("/")):
            return "the platform path must not contain '.' or '..' segments, encoded or not"
        decoded = unquote(level)
        if decoded == level:
            return None
        level = decoded
    return "the platform path is percent-encoded too many times"


def _relay(answer: Answer, extra: dict[str, str] | None = None) -> Response:
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in DROP_ANSWER_HEADERS}
    if extra:
        headers.update(extra)
    return Response(content=answer.body, status_code=answer.status, headers=headers)


async def _send(platform: Platform, call: ApiCall, account: Account) -> Answer:
    assert account.tokens is not None  # checked by the caller
    signed = platform.sign_call(call, account.tokens.access_token, account.identity)
    return await platform.transport.send(
        signed.method,
        signed.url,
        content=signed.body,
        headers=dict(signed.headers),
        max_bytes=MAX_API_ANSWER_BYTES,
        what="proxied call",
    )


async def _keep_identity(runtime: Runtime, app: str, account: str, identity: Identity) -> None:
    """Store an identity the proxy had to read again (new shop ciphers), so the next call starts from it
    instead of being refused and re-reading once more. Failing to store it never fails the call."""
    try:
        await runtime.store.update_identity(app, account, identity)
    except StoreError as exc:
        log.warning("proxy.identity_not_stored", app=app, account=account, error=str(exc))


@router.api_route("/proxy/{app}/{account}/{path:path}", methods=METHODS, include_in_schema=False)
async def proxy(
    request: Request,
    app: str,
    account: str,
    path: str,
    runtime: Annotated[Runtime, Depends(runtime_dependency)],
    caller: Annotated[str, Depends(require("proxy"))],
) -> Response:
    """Forward one call to the platform's API host with the account's token and signature."""
    # Served by ProxyFastPath whenever this route would take the request (see proxy_answer).
    return await proxy_answer(request, runtime, caller, app, account, path)


async def proxy_answer(request: Request, runtime: Runtime, caller: str, app: str, account: str, path: str) -> Response:
    """The whole proxy once the caller (holding ``proxy``) is known: the one implementation, called by the
    FastAPI route above and by :class:`ProxyFastPath`."""
    platform = runtime.platforms.get(app)
    if platform is None:
        return _problem(404, f"unknown app {app!r}")
    current = await token_cache(runtime).get(app, account)
    if current is None:
        return _problem(404, f"unknown account {account!r} of app {app!r}")
    if current.status != AccountStatus.ACTIVE or current.tokens is None:
        return _problem(409, f"account {account!r} of app {app!r} is {current.status} and has no usable token")
    problem = _path_problem(path)
    if problem is not None:
        return _problem(400, problem)
    if len(request.url.query) > MAX_QUERY_CHARS:
        return _problem(400, f"the query string is longer than {MAX_QUERY_CHARS} characters")
    body = await _read_body(request)
    if body is None:
        return _problem(413, f"request body larger than {MAX_REQUEST_BYTES} bytes")

    query: Sequence[tuple[str, str]] = request.query_params.multi_items()
    forwarded = FORWARD_REQUEST_HEADERS | platform.proxy_request_headers
    headers = {k: v for k, v in request.headers.items() if k.lower() in forwarded}
    call = ApiCall(
        method=request.method,
        path="/" + path.lstrip("/"),
        query=tuple(query),
        body=body or None,
        content_type=request.headers.get("content-type"),
        headers=headers,
    )
    started = time.monotonic()
    retried = False
    try:
        answer = await _send(platform, call, current)
        verdict = platform.classify_api_answer(answer)
        if verdict is not None and current.tokens is not None and platform.identity_is_stale(verdict):
            # The platform says what we know of the account is out of date (TikTok Shop: a changed
            # shop_cipher): read it again and retry once with it.
            fresh_identity = await platform.updated_identity(current.identity, current.tokens)
            if fresh_identity is not None:
                retried = True
                answer = await _send(platform, call, dataclasses.replace(current, identity=fresh_identity))
                verdict = platform.classify_api_answer(answer)
                await _keep_identity(runtime, app, account, fresh_identity)
        if isinstance(verdict, AccessTokenInvalid):
            # Refresh once under the lease (another worker's concurrent refresh counts), then retry once.
            fresh: Account | None = None
            try:
                result = await runtime.refresher.refresh_now(app, account)
                # A success carries the account as just stored (or as another worker just stored it).
                outcome, fresh = result.outcome, result.account
            except (UnknownApp, AccountNotFound):  # no refresh policy (app disabled), or the account just vanished
                outcome = Outcome.SKIPPED
            if outcome == Outcome.SUCCESS and fresh is not None and fresh.tokens is not None:
                retried = True
                answer = await _send(platform, call, fresh)
            else:
                log.warning("proxy.refresh_failed", app=app, account=account, outcome=outcome.value)
    except httpx.InvalidURL:
        # httpx refused the URL we built (a character or length it will not send). Its message quotes
        # the URL, which holds the signed query: say only what the caller can fix.
        log.warning("proxy.invalid_url", app=app, account=account, caller=caller)
        return _problem(400, "the platform path or query cannot be sent as a URL (invalid character or length)")
    except TransientError as exc:
        log.warning("proxy.upstream_failed", app=app, account=account, caller=caller, error=str(exc))
        status = 504 if isinstance(exc, PlatformTimeout) else 502
        return _problem(status, f"platform unreachable: {exc.message}")
    except RefresherError as exc:
        log.warning("proxy.failed", app=app, account=account, caller=caller, error=str(exc))
        return _problem(502, exc.message)
    log.info(
        "proxy.call",
        app=app,
        account=account,
        caller=caller,
        method=request.method,
        path="/" + path.lstrip("/"),
        status=answer.status,
        retried=retried,
        duration_ms=int((time.monotonic() - started) * 1000),
    )
    return _relay(answer, {"x-refresher-retried": "1"} if retried else None)


# ----------------------------------------------------------------------------------------- fast path


def _proxy_route() -> APIRoute:
    route = router.routes[-1]
    assert isinstance(route, APIRoute) and route.endpoint is proxy
    return route


_ROUTE = _proxy_route()


def fast_path_target(scope: Scope) -> dict[str, str] | None:
    """The route's path parameters (app, account, path) when :class:`ProxyFastPath` may answer ``scope``.

    Decided by Starlette's ``Route.matches`` on the route itself (its compiled pattern, converters and
    methods): only a full match is taken. Anything else (a HEAD, ``/proxy/a/b`` without the trailing
    slash, a path with a newline) goes on to FastAPI, which answers it (404, 405, redirect) as before.
    """
    if scope["type"] != "http":
        return None
    match, child = Route.matches(_ROUTE, scope)
    if match is not Match.FULL:
        return None
    params: dict[str, str] = child["path_params"]
    return params


def install(app: FastAPI) -> None:
    """Mount the proxy route and its fast path on ``app``."""
    app.include_router(router)
    app.add_middleware(ProxyFastPath)


class ProxyFastPath:
    """ASGI middleware: the proxy answered before FastAPI's routing and dependency solving.

    Profiled under load (py-spy --gil), FastAPI's routing, exception middleware and dependency solving
    were ~22 % of a proxied call's CPU; the route has no parameter FastAPI validates (three plain path
    strings, no query or body model), so its only answers of its own are routing ones, left to it by
    :func:`fast_path_target`. The caller is checked by the same function as on every route
    (:func:`refresher.server.auth.check_caller`, with the token read as ``HTTPBearer`` reads it) and the
    refusal rendered by FastAPI's own handler; the call itself is :func:`proxy_answer`, as on the route.
    Installed with ``add_middleware``, so inside ``ServerErrorMiddleware``: an unexpected error is the
    same logged 500 as on any route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = fast_path_target(scope)
        if params is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        runtime = get_runtime(request)
        response: Response
        try:
            presented = bearer_token(request.headers.get("authorization"))
            caller = check_caller(runtime, request.method, request.url.path, presented, "proxy")
        except HTTPException as exc:
            response = await http_exception_handler(request, exc)
        else:
            app, account, path = params["app"], params["account"], params["path"]
            response = await proxy_answer(request, runtime, caller.name, app, account, path)
        await response(scope, receive, send)
