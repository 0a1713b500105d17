"""Lazada Open Platform as the sandbox speaks it (docs/platforms.md).

Endpoints, relative to the ``/lazada`` prefix (the app's ``auth`` host; its ``api`` host is ``/lazada/rest``):

* ``GET      /oauth/authorize`` — consent (``client_id``, ``redirect_uri``, ``response_type=code``, ``state``).
* ``GET|POST /rest/auth/token/create`` — code → tokens, signed, parameters in the query or a form body.
* ``GET|POST /rest/auth/token/refresh`` — rotation; the grant's deadline does not move.
* ``GET|POST /rest/seller/get`` — signed echo API that checks the access token, on the Singapore
  gateway; ``/{country}/rest/seller/get`` is the same API on each venture's gateway. A seller is
  served only by the gateways of the ventures it is authorized in (a cross-border seller by several).

Signatures are checked as Lazada documents them: query and form parameters are signed alike (the form of
a POST is parameters, not a body); a JSON or XML body is appended raw after the parameters (the official
Java and C# samples); the sign never covers the raw bytes of a form.

Errors come back with HTTP 200 and ``{"type", "code", "message", "request_id"}``, as Lazada does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from refresher.platforms.signing import lazada_value
from refresher.sandbox.core import Chain, ConsentTicket, SandboxRejection, SandboxState, Subject
from refresher.sandbox.server import SandboxPlatform, base_url_of, with_query

TIMESTAMP_WINDOW = 7200  # seconds, either way (docs/platforms.md)
COUNTRIES = ("sg", "my", "th", "vn", "ph", "id")
# The ``unlisted`` fault's code: well formed, in no document (refresher must retry it and name it).
UNLISTED_CODE = "SandboxUnlistedFailure"
SYSTEM_PARAMS = frozenset({"app_key", "timestamp", "sign_method", "sign", "access_token", "partner_id"})


class LazadaError(Exception):
    def __init__(self, code: str, message: str, kind: str = "ISV") -> None:
        super().__init__(code)
        self.code, self.message, self.kind = code, message, kind


def missing(name: str) -> LazadaError:
    return LazadaError(
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request is not supplied.',
    )


def _request_id() -> str:
    return secrets.token_hex(12)


def error_answer(code: str, message: str, kind: str = "ISV") -> JSONResponse:
    return JSONResponse({"type": kind, "code": code, "message": message, "request_id": _request_id()})


def _signs(secret: str, api_path: str, params: Mapping[str, str], body: bytes = b"") -> list[str]:
    """The signatures a genuine client may have sent. Lazada's own SDKs disagree on empty values (the
    Python SDK signs the key, the Java/C# samples skip it: vector L07), so both are accepted. ``body`` is
    the raw JSON/XML body (never a form's bytes), appended after the parameters."""
    keys = sorted(k for k in params if k != "sign")
    variants = {
        api_path + "".join(k + lazada_value(params[k]) for k in keys),
        api_path + "".join(k + lazada_value(params[k]) for k in keys if params[k] != ""),
    }
    return [
        hmac.new(secret.encode(), v.encode("utf-8", "surrogateescape") + body, hashlib.sha256).hexdigest().upper()
        for v in variants
    ]


def _timestamp(raw: str) -> float | None:
    """Milliseconds since the epoch, or ISO-8601 UTC (both documented)."""
    if raw.isdigit():
        return int(raw) / 1000
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.timestamp() if value.tzinfo is not None else None


class LazadaSandbox(SandboxPlatform):
    name = "lazada"
    prefix = "/lazada"

    def __init__(self, state: SandboxState) -> None:
        super().__init__(state)
        # Every signature the gateway accepted, oldest first (bounded): lets a test compare what two
        # signers sent for the same request.
        self.accepted_signs: deque[str] = deque(maxlen=100)

    def hosts(self, base_url: str) -> dict[str, str]:
        root = f"{base_url.rstrip('/')}{self.prefix}"
        return {"auth": root, "api": f"{root}/rest", **{f"api_{c}": f"{root}/{c}/rest" for c in COUNTRIES}}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/oauth/authorize", self.authorize, methods=["GET"]),
            Route("/rest/auth/token/create", self.token_create, methods=["GET", "POST"]),
            Route("/rest/auth/token/refresh", self.token_refresh, methods=["GET", "POST"]),
            Route("/rest/seller/get", self.seller_get, methods=["GET", "POST"]),
            Route("/{country}/rest/seller/get", self.seller_get, methods=["GET", "POST"]),
        ]

    # -- verification ------------------------------------------------------------------------------

    async def params(self, request: Request) -> dict[str, str]:
        """Query and form parameters together (the gateway takes either). The form is parsed here
        rather than by Starlette, which would need python-multipart for a plain urlencoded body."""
        merged = dict(request.query_params)
        if request.method == "POST" and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            body = (await request.body()).decode("utf-8", "replace")
            merged.update(parse_qsl(body, keep_blank_values=True))
        return merged

    async def signed_body(self, request: Request) -> bytes:
        """The raw body a signature covers: a JSON or XML body, never a form (its fields are parameters)."""
        content_type = request.headers.get("content-type", "").lower()
        if request.method == "GET" or content_type.startswith(("application/x-www-form-urlencoded", "multipart/")):
            return b""
        return await request.body()

    def verify(self, params: Mapping[str, str], api_path: str, body: bytes = b"") -> str:
        """Check app_key, timestamp and sign; returns the app key."""
        app_key = params.get("app_key", "")
        if not app_key:
            raise missing("app_key")
        secret = self.state.secret(self.name, app_key)
        if secret is None:
            raise LazadaError("APP_KEY_INVALID", "App key is invalid, please contact lazada tech team.")
        for name in ("timestamp", "sign"):
            if not params.get(name):
                raise missing(name)
        method = params.get("sign_method", "sha256")
        if method != "sha256":
            raise LazadaError("IncompleteSignature", "The request signature does not conform to lazop standards")
        if not any(hmac.compare_digest(s, params["sign"].upper()) for s in _signs(secret, api_path, params, body)):
            self.state.count(self.name, "bad_sign")
            raise LazadaError("IncompleteSignature", "The request signature does not conform to lazop standards")
        when = _timestamp(params["timestamp"])
        if when is None or abs(self.state.clock.now().timestamp() - when) > TIMESTAMP_WINDOW:
            self.state.count(self.name, "bad_timestamp")
            raise LazadaError("OPEN_API_TIMESTAMP_INVALID", "The input timestamp is invalid")
        self.accepted_signs.append(params["sign"].upper())
        return app_key

    # -- consent -----------------------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        fault = await self.fault("consent")
        if isinstance(fault, Response):
            return fault
        query = request.query_params
        client_id = query.get("client_id", "")
        if self.state.secret(self.name, client_id) is None:
            return HTMLResponse("<p>Invalid client_id.</p>", status_code=400)
        if query.get("response_type") != "code":
            return HTMLResponse("<p>response_type must be code.</p>", status_code=400)
        redirect = query.get("redirect_uri", "")
        if not redirect:
            return HTMLResponse("<p>redirect_uri is required.</p>", status_code=400)
        ticket = self.state.open_ticket(self.name, client_id, redirect, query.get("state"), [], dict(query))
        return await self.consent(ticket, base_url_of(request))

    def subjects_for(self, ticket: ConsentTicket, options: Mapping[str, str]) -> list[Subject]:
        """``countries=sg,my`` (a cross-border seller: one entry per venture); ``id=`` re-authorizes the
        seller whose first seller_id that is."""
        countries = [c.strip() for c in options.get("countries", "sg").split(",") if c.strip() in COUNTRIES]
        countries = countries or ["sg"]
        existing = options.get("id")
        if existing:
            chain = self.state.find_chain(self.name, existing)
            if chain is not None:
                return list(chain.subjects)
        subjects = []
        for index, country in enumerate(countries):
            seller_id = existing if existing and index == 0 else self.state.new_id(9)
            subjects.append(
                Subject(
                    seller_id,
                    "seller",
                    f"Sandbox Seller {seller_id}",
                    country,
                    {"user_id": self.state.new_id(9), "short_code": f"{country.upper()}{seller_id[-4:]}"},
                )
            )
        return subjects

    def approved_redirect(self, ticket: ConsentTicket, code: str, subjects: Sequence[Subject]) -> str:
        return with_query(ticket.redirect_uri, {"code": code, "state": ticket.state})

    def denied_redirect(self, ticket: ConsentTicket) -> str:
        # Lazada documents no denial shape; the sandbox answers the OAuth 2 way (UNCERTAIN).
        return with_query(
            ticket.redirect_uri,
            {
                "error": "access_denied",
                "error_description": "The seller denied the authorization",
                "state": ticket.state,
            },
        )

    # -- tokens ------------------------------------------------------------------------------------

    def protocol_fault(self, kind: str, op: str) -> Response | None:
        if kind == "error200":
            return error_answer("SYS_ERROR", "inner service fail", "ISP")
        if kind == "unlisted":
            return error_answer(UNLISTED_CODE, "A new kind of failure.", "ISP")
        if kind == "wrongtypes":
            return JSONResponse(
                {
                    "access_token": 50000601,
                    "refresh_token": {"v": 1},
                    "expires_in": "abc",
                    "code": "0",
                    "request_id": _request_id(),
                }
            )
        if kind == "revoked":
            if op == "token":
                return error_answer("InvalidCode", "Invalid authorization code")
            if op == "api":
                return error_answer("IllegalAccessToken", "The specified access token is invalid or expired")
            return error_answer("IllegalRefreshToken", "The specified refresh token is invalid or expired")
        return None

    def _token_answer(self, chain: Chain, list_key: str) -> JSONResponse:
        now = self.state.clock.now()
        countries = {s.region for s in chain.subjects}
        info = [
            {
                "country": s.region,
                "seller_id": s.id,
                "user_id": s.extra.get("user_id", ""),
                "short_code": s.extra.get("short_code", ""),
            }
            for s in chain.subjects
        ]
        return JSONResponse(
            {
                "access_token": chain.access_token,
                "refresh_token": chain.refresh_token,
                "expires_in": int((chain.access_expires_at - now).total_seconds()),
                "refresh_expires_in": max(0, int((chain.refresh_expires_at - now).total_seconds())),
                "country": countries.pop() if len(countries) == 1 else "cb",
                "account_id": None,
                "account": f"seller{chain.subjects[0].id}@sandbox.example",
                "account_platform": "seller_center",
                list_key: info,
                "code": "0",
                "request_id": _request_id(),
            }
        )

    async def token_create(self, request: Request) -> Response:
        fault = await self.begin("token")
        if isinstance(fault, Response):
            return fault
        try:
            params = await self.params(request)
            app_key = self.verify(params, "/auth/token/create")
            code = params.get("code", "")
            if not code:
                raise missing("code")
            try:
                _, chain = self.state.redeem_code(self.name, app_key, code)
            except SandboxRejection:
                raise LazadaError("InvalidCode", "Invalid authorization code") from None
        except LazadaError as exc:
            return error_answer(exc.code, exc.message, exc.kind)
        if fault == "lost":
            return Response("upstream trouble", status_code=500, media_type="text/plain")
        return self._token_answer(chain, "country_user_info")

    async def token_refresh(self, request: Request) -> Response:
        fault = await self.begin("refresh")
        if isinstance(fault, Response):
            return fault
        try:
            params = await self.params(request)
            app_key = self.verify(params, "/auth/token/refresh")
            token = params.get("refresh_token", "")
            if not token:
                raise missing("refresh_token")
            try:
                chain = self.state.refresh(self.name, app_key, token)
            except SandboxRejection:
                raise LazadaError("IllegalRefreshToken", "The specified refresh token is invalid or expired") from None
        except LazadaError as exc:
            return error_answer(exc.code, exc.message, exc.kind)
        if fault == "lost":
            return Response("upstream trouble", status_code=500, media_type="text/plain")
        # Lazada's refresh names the list country_user_info_list (docs/platforms.md).
        return self._token_answer(chain, "country_user_info_list")

    # -- business API ------------------------------------------------------------------------------

    async def seller_get(self, request: Request) -> Response:
        fault = await self.begin("api")
        if isinstance(fault, Response):
            return fault
        gateway = request.path_params.get("country", "sg")
        try:
            if gateway not in COUNTRIES:
                raise LazadaError("InvalidApiPath", "The specified API path is invalid")
            params = await self.params(request)
            self.verify(params, "/seller/get", await self.signed_body(request))
            token = params.get("access_token", "")
            if not token:
                raise missing("access_token")
            try:
                chain = self.state.check_access(self.name, token)
            except SandboxRejection:
                raise LazadaError("IllegalAccessToken", "The specified access token is invalid or expired") from None
            if gateway not in {s.region for s in chain.subjects}:
                # A venture's gateway knows only the sellers of that venture. Lazada documents no code for
                # a call on another venture's gateway (UNCERTAIN): the sandbox answers as for an unknown token.
                self.state.count(self.name, "wrong_gateway")
                raise LazadaError("IllegalAccessToken", "The specified access token is invalid or expired")
        except LazadaError as exc:
            return error_answer(exc.code, exc.message, exc.kind)
        self.state.count(self.name, "api")
        seller: Subject = next(s for s in chain.subjects if s.region == gateway)
        data: dict[str, Any] = {
            # What arrived besides the system parameters, so a test can see a form body got through.
            "received": {k: v for k, v in params.items() if k not in SYSTEM_PARAMS},
            "name": seller.name,
            "seller_id": int(seller.id),
            "short_code": seller.extra.get("short_code", ""),
            "location": seller.region.upper(),
            "verified": True,
        }
        return JSONResponse({"code": "0", "data": data, "request_id": _request_id()})
