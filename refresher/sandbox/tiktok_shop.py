"""TikTok Shop's wire protocol for the sandbox (docs/platforms.md).

* consent: ``/open/authorize?service_id=…&state=…`` and the legacy ``/oauth/authorize?app_key=…&state=…``.
  The real platform redirects to the URL registered in Partner Center; the sandbox uses the app's
  ``redirect_uri`` from its config entry, else a ``redirect_uri`` query parameter (a sandbox-only
  extension for hand-made links), else :data:`DEFAULT_REDIRECT` (what ``SandboxServer.app_config`` uses).
* tokens: unsigned ``GET /api/v2/token/get`` and ``/api/v2/token/refresh`` with the app secret in the
  query; a POST answers ``404 page not found`` as observed. Errors come back with HTTP 200 in the
  ``{code, message, request_id, data}`` envelope; both expiries are absolute Unix times.
* API: signed ``GET /authorization/202309/shops`` with the token in ``x-tts-access-token``; the
  timestamp must lie in ``[now - 300 s, now + 30 s]``. ``POST /order/202309/orders/search`` is
  shop-scoped: its ``shop_cipher`` must be one of the seller's shops' current ciphers (106013 when
  missing, 101000 when it does not fit; :meth:`TikTokShopSandbox.rotate_ciphers` changes them).
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from refresher.platforms.signing import tiktok_shop_sign
from refresher.sandbox.core import Chain, ConsentTicket, SandboxRejection, Subject
from refresher.sandbox.server import SandboxPlatform, base_url_of, with_query

# A signed POST with a JSON body (the body is part of the signature): the proxy's and client's proof.
ORDER_SEARCH = "/order/202309/orders/search"

DEFAULT_REDIRECT = "http://127.0.0.1:3017/callback"
DEFAULT_SCOPES = ["seller.authorization.info", "seller.shop.info", "seller.order.info"]
# The "wrongtypes" fault: every field present, none of the documented type.
WRONG_TYPES: dict[str, Any] = {
    "access_token": 123456789,
    "access_token_expire_in": "abc",
    "refresh_token": ["not", "a", "string"],
    "refresh_token_expire_in": "soon",
    "open_id": None,
    "granted_scopes": "seller.shop.info",
}
# The ``unlisted`` fault's code: well formed, in no document (refresher must retry it and name it).
UNLISTED_CODE = 99990001
TIMESTAMP_PAST = 300
TIMESTAMP_FUTURE = 30


class TikTokShopSandbox(SandboxPlatform):
    name = "tiktok_shop"
    prefix = "/tiktok-shop"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/open/authorize", self.authorize, methods=["GET"]),
            Route("/oauth/authorize", self.authorize_legacy, methods=["GET"]),
            Route("/api/v2/token/get", self.token_get, methods=["GET", "POST"]),
            Route("/api/v2/token/refresh", self.token_refresh, methods=["GET", "POST"]),
            Route("/authorization/202309/shops", self.shops, methods=["GET"]),
            Route(ORDER_SEARCH, self.order_search, methods=["POST"]),
        ]

    # -- helpers -------------------------------------------------------------------------------------

    def request_id(self) -> str:
        return f"{self.state.clock.now():%Y%m%d%H%M%S}{secrets.token_hex(10).upper()}"

    def envelope(self, code: int, message: str, data: Any = None, status: int = 200) -> JSONResponse:
        body = {"code": code, "message": message, "request_id": self.request_id(), "data": data or {}}
        return JSONResponse(body, status_code=status)

    def details(self, app_key: str) -> Mapping[str, Any]:
        return self.state.app_details.get(self.name, {}).get(app_key, {})

    def app_for_service(self, service_id: str) -> str | None:
        for app_key, details in self.state.app_details.get(self.name, {}).items():
            if str(details.get("service_id", "")) == service_id:
                return app_key
        return None

    # -- consent -------------------------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        fault = await self.fault("consent")
        if isinstance(fault, Response):
            return fault
        service_id = request.query_params.get("service_id", "")
        app_key = self.app_for_service(service_id) if service_id else None
        if app_key is None:
            return HTMLResponse("<p>Invalid service_id: this service does not exist.</p>", status_code=400)
        return await self._open(request, app_key)

    async def authorize_legacy(self, request: Request) -> Response:
        fault = await self.fault("consent")
        if isinstance(fault, Response):
            return fault
        app_key = request.query_params.get("app_key", "")
        if not app_key or self.state.secret(self.name, app_key) is None:
            return HTMLResponse("<p>Invalid app_key.</p>", status_code=400)
        return await self._open(request, app_key)

    async def _open(self, request: Request, app_key: str) -> Response:
        redirect = (
            request.query_params.get("redirect_uri")
            or str(self.details(app_key).get("redirect_uri") or "")
            or DEFAULT_REDIRECT
        )
        ticket = self.state.open_ticket(
            self.name,
            app_key,
            redirect,
            request.query_params.get("state"),
            list(DEFAULT_SCOPES),
            dict(request.query_params),
        )
        return await self.consent(ticket, base_url_of(request))

    def subjects_for(self, ticket: ConsentTicket, options: Mapping[str, str]) -> list[Subject]:
        existing = options.get("id")
        if existing:
            chain = self.state.find_chain(self.name, existing)
            if chain is not None:
                return [Subject(s.id, s.kind, s.name, s.region, dict(s.extra)) for s in chain.subjects]
        open_id = existing or self.state.new_id(19)
        region = options.get("region", "SG").upper()
        count = max(1, min(int(options.get("shops", "1") or 1), 50))
        shops = []
        for number in range(1, count + 1):
            shops.append(
                {
                    "id": self.state.new_id(19),
                    "name": f"Sandbox Shop {number}",
                    "region": region,
                    "seller_type": "CROSS_BORDER" if count > 1 else "LOCAL",
                    "cipher": f"ROW_{secrets.token_urlsafe(18)}",
                    "code": f"{region}LC{self.state.new_id(6)}",
                }
            )
        name = f"Sandbox Seller {open_id[-4:]}"
        return [Subject(open_id, "seller", name, region, {"shops": shops, "user_type": 0})]

    def approved_redirect(self, ticket: ConsentTicket, code: str, subjects: Sequence[Subject]) -> str:
        return with_query(
            ticket.redirect_uri, {"app_key": ticket.app_id, "code": code, "locale": "en", "state": ticket.state}
        )

    def denied_redirect(self, ticket: ConsentTicket) -> str:
        # Documented as code=null&error=auth_denied (docs/platforms.md).
        return with_query(ticket.redirect_uri, {"code": "null", "error": "auth_denied", "state": ticket.state})

    # -- tokens --------------------------------------------------------------------------------------

    def _check_app(self, request: Request) -> tuple[str, Response | None]:
        params = request.query_params
        app_key = params.get("app_key", "")
        secret = self.state.secret(self.name, app_key) if app_key else None
        if secret is None:
            self.state.count(self.name, "unknown_app")
            return app_key, self.envelope(36009004, "Invalid credentials. Invalid app_key.")
        if not hmac.compare_digest(params.get("app_secret", "").encode(), secret.encode()):
            # 36004003 "invalid app_key or app_secret", as listed in docs/platforms.md
            self.state.count(self.name, "bad_secret")
            return app_key, self.envelope(36004003, "invalid app_key or app_secret")
        return app_key, None

    def token_data(self, chain: Chain) -> dict[str, Any]:
        subject = chain.subjects[0]
        data: dict[str, Any] = {
            "access_token": chain.access_token,
            "access_token_expire_in": int(chain.access_expires_at.timestamp()),
            "refresh_token": chain.refresh_token,
            "refresh_token_expire_in": int(chain.refresh_expires_at.timestamp()),
            "open_id": subject.id,
            "seller_name": subject.name,
            "seller_base_region": subject.region,
            "user_type": subject.extra.get("user_type", 0),
            "granted_scopes": chain.scopes,
        }
        return data

    async def token_get(self, request: Request) -> Response:
        if request.method != "GET":
            return PlainTextResponse("404 page not found", status_code=404)
        fault = await self.fault("token")
        if isinstance(fault, Response):
            return fault
        app_key, refused = self._check_app(request)
        if refused is not None:
            return refused
        params = request.query_params
        if params.get("grant_type") != "authorized_code":
            return self.envelope(36009004, "Invalid request. grant_type must be authorized_code.")
        if fault == "revoked":
            return self.envelope(36004004, "invalid auth code")
        if fault == "error200":
            return self.envelope(36009003, "Internal error. Please try again")
        if fault == "unlisted":
            return self.envelope(UNLISTED_CODE, "A new kind of failure.")
        if fault == "wrongtypes":  # answered without redeeming, so the fault stays a one-off
            return self.envelope(0, "success", WRONG_TYPES)
        try:
            _, chain = self.state.redeem_code(self.name, app_key, params.get("auth_code", ""))
        except SandboxRejection:
            return self.envelope(36004004, "invalid auth code")
        if fault == "lost":
            return PlainTextResponse("upstream trouble", status_code=500)
        return self.envelope(0, "success", self.token_data(chain))

    async def token_refresh(self, request: Request) -> Response:
        if request.method != "GET":
            return PlainTextResponse("404 page not found", status_code=404)
        fault = await self.fault("refresh")
        if isinstance(fault, Response):
            return fault
        app_key, refused = self._check_app(request)
        if refused is not None:
            return refused
        params = request.query_params
        if params.get("grant_type") != "refresh_token":
            return self.envelope(36009004, "Invalid request. grant_type must be refresh_token.")
        if fault == "revoked":
            return self.envelope(36004005, "can not find related auth record")
        if fault == "error200":
            return self.envelope(36009003, "Internal error. Please try again")
        if fault == "unlisted":
            return self.envelope(UNLISTED_CODE, "A new kind of failure.")
        if fault == "wrongtypes":  # answered without rotating, so the fault stays a one-off
            return self.envelope(0, "success", WRONG_TYPES)
        try:
            chain = self.state.refresh(self.name, app_key, params.get("refresh_token", ""))
        except SandboxRejection as rejection:
            if rejection.reason == "expired":
                return self.envelope(36004001, "rt has expired")
            return self.envelope(36004005, "can not find related auth record")
        if fault == "lost":
            return PlainTextResponse("upstream trouble", status_code=500)
        return self.envelope(0, "success", self.token_data(chain))

    # -- business API --------------------------------------------------------------------------------

    async def verify_signed(self, request: Request) -> Chain | Response:
        """Check app_key, timestamp window, signature and access token like the Open API gateway."""
        params = request.query_params
        app_key = params.get("app_key", "")
        secret = self.state.secret(self.name, app_key) if app_key else None
        if secret is None:
            return self.envelope(36009004, "Invalid credentials. Invalid app_key.", status=401)
        stamp = params.get("timestamp", "")
        now = int(self.state.clock.now().timestamp())
        if not stamp.isdigit() or not now - TIMESTAMP_PAST <= int(stamp) <= now + TIMESTAMP_FUTURE:
            self.state.count(self.name, "timestamp_error")
            return self.envelope(36009004, "Invalid timestamp. The timestamp is outside the allowed window.")
        given = params.get("sign", "")
        if not given:
            return self.envelope(36009004, "Missing credentials. The 'sign' query parameter is missing.", status=401)
        path = request.url.path.removeprefix(self.prefix)
        body = await request.body()
        content_type = request.headers.get("content-type")
        expected = tiktok_shop_sign(secret, path, params.multi_items(), body or None, content_type)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self.state.count(self.name, "sign_error")
            return self.envelope(106001, "Invalid credentials. The 'sign' query parameter is invalid.", status=401)
        token = request.headers.get("x-tts-access-token", "")
        if not token:
            return self.envelope(36009004, "Missing credentials. The x-tts-access-token header is missing.", status=401)
        try:
            return self.state.check_access(self.name, token)
        except SandboxRejection as rejection:
            self.state.count(self.name, "access_rejected")
            if rejection.reason == "revoked":
                return self.envelope(
                    105001, "access token is invalid; detail: your token has been deauthorized", status=401
                )
            if rejection.reason == "expired":
                return self.envelope(
                    105002,
                    "Expired credentials. The access_token or x-tts-access-token header has expired.",
                    status=401,
                )
            return self.envelope(36009004, "Invalid credentials. The x-tts-access-token header is invalid.", status=401)

    async def shops(self, request: Request) -> Response:
        fault = await self.fault("api")
        if isinstance(fault, Response):
            return fault
        if fault == "error200":
            return self.envelope(36009003, "Internal error. Please try again")
        if fault == "unlisted":
            return self.envelope(UNLISTED_CODE, "A new kind of failure.")
        if fault == "revoked":
            return self.envelope(
                105001, "access token is invalid; detail: your token has been deauthorized", status=401
            )
        found = await self.verify_signed(request)
        if isinstance(found, Response):
            return found
        self.state.count(self.name, "api")
        shops = [shop for subject in found.subjects for shop in subject.extra.get("shops", [])]
        if fault == "wrongtypes":
            return self.envelope(0, "Success", {"shops": "abc"})
        if fault == "lost":
            return PlainTextResponse("upstream trouble", status_code=500)
        return self.envelope(0, "Success", {"shops": shops})

    def rotate_ciphers(self, open_id: str) -> None:
        """Give every shop of a seller a new cipher (the platform may change them at any time)."""
        chain = self.state.find_chain(self.name, open_id)
        if chain is None:
            raise KeyError(open_id)
        for subject in chain.subjects:
            for shop in subject.extra.get("shops", []):
                shop["cipher"] = f"ROW_{secrets.token_urlsafe(18)}"

    async def order_search(self, request: Request) -> Response:
        """Search Orders: a signed POST whose JSON body is signed too; echoes the body it verified."""
        fault = await self.fault("api")
        if isinstance(fault, Response):
            return fault
        if fault == "unlisted":
            return self.envelope(UNLISTED_CODE, "A new kind of failure.")
        found = await self.verify_signed(request)
        if isinstance(found, Response):
            return found
        # A shop-scoped API: the cipher names one of this seller's shops, as it is now (ciphers change).
        cipher = request.query_params.get("shop_cipher", "")
        shops = [shop for subject in found.subjects for shop in subject.extra.get("shops", [])]
        if not cipher:
            self.state.count(self.name, "missing_cipher")
            return self.envelope(106013, "shop_cipher is required for this API")
        shop = next((shop for shop in shops if shop.get("cipher") == cipher), None)
        if shop is None:
            self.state.count(self.name, "wrong_cipher")
            return self.envelope(101000, "The shop_cipher does not match the access token")
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            # No code for a broken body is documented; 36009004 is the documented "invalid request" family.
            return self.envelope(36009004, "Invalid request. The request body is not valid JSON.", status=400)
        self.state.count(self.name, "api")
        return self.envelope(0, "Success", {"orders": [], "total_count": 0, "shop_id": shop["id"], "echo": body})
