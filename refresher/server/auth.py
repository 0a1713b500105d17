"""Bearer-token authentication for the token API and the proxy.

Tokens come from ``server.api_tokens`` (each a name, a secret and scopes); ``server.admin_token`` holds
every scope under the name ``admin``. The presented secret is compared with *every* configured secret,
through SHA-256 digests and :func:`hmac.compare_digest`, so neither the position of a match nor the length
of a secret shows in the timing. Every call is logged with the caller's token *name*, never its secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_args

import structlog
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from refresher.config import Scope, ServerSettings
from refresher.server.runtime import Runtime

log = structlog.get_logger("refresher.api")

ALL_SCOPES: frozenset[str] = frozenset(get_args(Scope))
ADMIN_NAME = "admin"

# auto_error=False: a missing header is our 401 (with WWW-Authenticate), not FastAPI's 403. The scheme
# still lands in /openapi.json, so clients and schemathesis know how to authenticate.
_bearer = HTTPBearer(auto_error=False, description="An API token from server.api_tokens (or the admin token).")


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's name (safe to log) and what it may do."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def _candidates(server: ServerSettings) -> list[tuple[str, bytes, frozenset[str]]]:
    """(name, digest of the secret, scopes) of every configured token, hashed once per settings object
    (a reload brings new settings, so new digests)."""
    cached = _CANDIDATES.get(id(server))
    if cached is not None and cached[0] is server:
        return cached[1]
    candidates: list[tuple[str, bytes, frozenset[str]]] = []
    if server.admin_token is not None and server.admin_token.get_secret_value():
        candidates.append((ADMIN_NAME, _digest(server.admin_token.get_secret_value()), ALL_SCOPES))
    for token in server.api_tokens:
        candidates.append((token.name, _digest(token.secret.get_secret_value()), frozenset(token.scopes)))
    _CANDIDATES.clear()  # one live settings object at a time; the dict only avoids rehashing per call
    _CANDIDATES[id(server)] = (server, candidates)
    return candidates


_CANDIDATES: dict[int, tuple[ServerSettings, list[tuple[str, bytes, frozenset[str]]]]] = {}


def authenticate(server: ServerSettings, presented: str | None) -> Caller | None:
    """The caller whose secret is ``presented``, or ``None``. Compares against every token, always."""
    if not presented:
        return None
    given = _digest(presented)
    found: Caller | None = None
    for name, digest, scopes in _candidates(server):
        # No early exit: the loop's duration must not tell which token (if any) matched.
        if hmac.compare_digest(given, digest) and found is None:
            found = Caller(name, scopes)
    return found


def get_runtime(request: Request) -> Runtime:
    """The running daemon, as :func:`refresher.server.app.create_app` left it on the app state."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def runtime_dependency(request: Request) -> Runtime:
    """:func:`get_runtime` as a FastAPI dependency: ``Depends(runtime_dependency)``, never the plain
    function — FastAPI runs a ``def`` dependency in its thread pool, and that hop (a thread hand-off and
    a GIL switch per request) cost more than the whole token read behind it."""
    return get_runtime(request)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail=message,
        headers={"WWW-Authenticate": 'Bearer realm="refresher"'},
    )


def require(scope: Scope) -> Callable[..., Awaitable[str]]:
    """A FastAPI dependency: the caller must present a bearer token with ``scope``.

    Returns the caller's token name. Missing or wrong token: 401 with ``WWW-Authenticate``; a valid token
    without the scope: 403.
    """
    check = require_caller(scope)

    async def dependency(caller: Caller = Depends(check)) -> str:
        return caller.name

    dependency.__name__ = f"require_{scope.replace(':', '_')}"
    return dependency


def require_caller(scope: Scope) -> Callable[..., Awaitable[Caller]]:
    """Like :func:`require`, but returns the whole :class:`Caller` (for finer scope checks)."""

    async def dependency(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> Caller:
        # The runtime straight from the request, not as one more dependency: each costs per request.
        presented = None if credentials is None else credentials.credentials
        return check_caller(get_runtime(request), request.method, request.url.path, presented, scope)

    dependency.__name__ = f"require_caller_{scope.replace(':', '_')}"
    return dependency


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, read as FastAPI's ``HTTPBearer`` reads it (for
    the token route's fast path, which has no FastAPI to ask)."""
    kind, token = get_authorization_scheme_param(authorization)
    return token if token and kind.lower() == "bearer" else None


def check_caller(runtime: Runtime, method: str, path: str, presented: str | None, scope: str) -> Caller:
    """The caller whose bearer token is ``presented``, who must hold ``scope``; every call logged.

    Missing or wrong token: 401 with ``WWW-Authenticate``; a valid token without the scope: 403.
    """
    if not presented:
        _log_call(method, path, None, None, "missing_token")
        raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
    caller = authenticate(runtime.settings.server, presented)
    if caller is None:
        _log_call(method, path, None, None, "wrong_token")
        raise _unauthorized("the bearer token is not valid")
    if not caller.allows(scope):
        _log_call(method, path, caller.name, scope, "forbidden")
        raise HTTPException(status_code=403, detail=f"token {caller.name!r} lacks the scope {scope}")
    _log_call(method, path, caller.name, scope, "allowed")
    return caller


def _log_call(method: str, path: str, caller: str | None, scope: str | None, outcome: str) -> None:
    # The path only: a query string may carry anything the caller typed. The key "caller" (not "token")
    # because the redactor masks every key named like a secret.
    fields: dict[str, Any] = {"method": method, "path": path, "outcome": outcome}
    if caller is not None:
        fields["caller"] = caller
    if scope is not None:
        fields["scope"] = scope
    if outcome == "allowed":
        log.info("api.call", **fields)
    else:
        log.warning("api.denied", **fields)
