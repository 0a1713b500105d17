"""TikTok Login Kit v2's wire protocol for the sandbox (docs/platforms.md).

* consent: ``GET /v2/auth/authorize/?client_key&scope&response_type=code&redirect_uri&state`` (+ PKCE).
* tokens: ``POST /v2/oauth/token/`` (form) answering flat JSON with relative ``expires_in`` /
  ``refresh_expires_in``; errors ``{error, error_description, log_id}``. PKCE is checked at token time
  the way the app is registered: desktop apps (``desktop: true`` in the app entry) with the hex SHA-256
  challenge, web apps with RFC 7636 S256. A mismatch answers ``invalid_request`` "Code verifier or
  code challenge is invalid." as observed.
* ``POST /v2/oauth/revoke/`` and ``GET /v2/user/info/?fields=…`` (bearer token; API v2 envelope
  ``{data, error: {code, message, log_id}}``).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from refresher.platforms.signing import pkce_challenge_hex, pkce_challenge_s256
from refresher.sandbox.core import Chain, ConsentTicket, SandboxRejection, Subject
from refresher.sandbox.server import SandboxPlatform, base_url_of, with_query


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (parsed here: Starlette's own parser needs python-multipart)."""
    body = (await request.body()).decode("utf-8", "replace")
    return dict(parse_qsl(body, keep_blank_values=True))


# The "wrongtypes" fault: every field present, none of the documented type.
WRONG_TYPES: dict[str, Any] = {
    "access_token": 123456789,
    "expires_in": "abc",
    "open_id": 42,
    "refresh_expires_in": "later",
    "refresh_token": None,
    "scope": ["user.info.basic"],
    "token_type": "Bearer",
}

# The ``unlisted`` fault's code: well formed, in no document (refresher must retry it and name it).
UNLISTED_CODE = "sandbox_unlisted_failure"

USER_FIELDS = {"open_id", "union_id", "avatar_url", "avatar_url_100", "avatar_large_url", "display_name"}


class TikTokSandbox(SandboxPlatform):
    name = "tiktok"
    prefix = "/tiktok"

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v2/auth/authorize/", self.authorize, methods=["GET"]),
            Route("/v2/oauth/token/", self.token, methods=["POST"]),
            Route("/v2/oauth/revoke/", self.revoke, methods=["POST"]),
            Route("/v2/user/info/", self.user_info, methods=["GET"]),
        ]

    # -- helpers -------------------------------------------------------------------------------------

    def log_id(self) -> str:
        return f"{self.state.clock.now():%Y%m%d%H%M%S}{secrets.token_hex(10).upper()}"

    def oauth_error(self, error: str, description: str, status: int = 400) -> JSONResponse:
        return JSONResponse(
            {"error": error, "error_description": description, "log_id": self.log_id()}, status_code=status
        )

    def api_answer(self, data: Any, code: str = "ok", message: str = "", status: int = 200) -> JSONResponse:
        error = {"code": code, "message": message, "log_id": self.log_id()}
        return JSONResponse({"data": data if data is not None else {}, "error": error}, status_code=status)

    def desktop(self, client_key: str) -> bool:
        return bool(self.state.app_details.get(self.name, {}).get(client_key, {}).get("desktop", False))

    def pkce_encoding(self, client_key: str) -> str:
        """How the app's PKCE challenge is checked: its ``pkce`` setting, else hex for desktop apps
        (documented). A web app's guide has no PKCE; one that sends a challenge anyway has it checked as
        RFC 7636 base64url (UNCERTAIN: what TikTok does with it is undocumented)."""
        chosen = self.state.app_details.get(self.name, {}).get(client_key, {}).get("pkce")
        return str(chosen) if chosen else ("hex" if self.desktop(client_key) else "s256")

    # -- consent -------------------------------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        fault = await self.fault("consent")
        if isinstance(fault, Response):
            return fault
        params = request.query_params
        client_key = params.get("client_key", "")
        if not client_key or self.state.secret(self.name, client_key) is None:
            return HTMLResponse("<p>Something went wrong: client_key is invalid.</p>", status_code=400)
        redirect = params.get("redirect_uri", "")
        if not redirect:
            return HTMLResponse("<p>Something went wrong: redirect_uri is missing.</p>", status_code=400)
        if params.get("response_type") != "code":
            return HTMLResponse("<p>Something went wrong: response_type must be code.</p>", status_code=400)
        if self.desktop(client_key) and not params.get("code_challenge"):
            # The desktop guide requires PKCE (code_challenge, code_challenge_method=S256).
            return HTMLResponse("<p>Something went wrong: code_challenge is required.</p>", status_code=400)
        scopes = [s for s in params.get("scope", "").split(",") if s] or ["user.info.basic"]
        ticket = self.state.open_ticket(self.name, client_key, redirect, params.get("state"), scopes, dict(params))
        return await self.consent(ticket, base_url_of(request))

    def code_challenge(self, ticket: ConsentTicket) -> str | None:
        return ticket.params.get("code_challenge") or None

    def subjects_for(self, ticket: ConsentTicket, options: Mapping[str, str]) -> list[Subject]:
        existing = options.get("id")
        if existing:
            chain = self.state.find_chain(self.name, existing)
            if chain is not None:
                return [Subject(s.id, s.kind, s.name, s.region, dict(s.extra)) for s in chain.subjects]
        open_id = existing or f"-000{secrets.token_hex(12)}"
        number = self.state.new_id(4)
        extra = {
            "union_id": f"uid{secrets.token_hex(10)}",
            "avatar_url": f"https://p16-sign.tiktokcdn.com/sandbox/{number}.jpeg",
        }
        return [Subject(open_id, "user", f"Sandbox User {number}", "", extra)]

    def approved_redirect(self, ticket: ConsentTicket, code: str, subjects: Sequence[Subject]) -> str:
        return with_query(ticket.redirect_uri, {"code": code, "scopes": ",".join(ticket.scopes), "state": ticket.state})

    def denied_redirect(self, ticket: ConsentTicket) -> str:
        return with_query(
            ticket.redirect_uri,
            {"error": "access_denied", "error_description": "The user denied the request", "state": ticket.state},
        )

    # -- tokens --------------------------------------------------------------------------------------

    def token_body(self, chain: Chain) -> dict[str, Any]:
        now = self.state.clock.now()
        body: dict[str, Any] = {
            "access_token": chain.access_token,
            "expires_in": max(0, int((chain.access_expires_at - now).total_seconds())),
            "open_id": chain.subjects[0].id,
            "refresh_expires_in": max(0, int((chain.refresh_expires_at - now).total_seconds())),
            "refresh_token": chain.refresh_token,
            "scope": ",".join(chain.scopes),
            "token_type": "Bearer",
        }
        return body

    def _client(self, form: Mapping[str, str]) -> tuple[str, Response | None]:
        client_key = form.get("client_key", "")
        secret = self.state.secret(self.name, client_key) if client_key else None
        given = form.get("client_secret", "")
        if secret is None or not hmac.compare_digest(given.encode(), secret.encode()):
            self.state.count(self.name, "bad_client")
            return client_key, self.oauth_error("invalid_client", "Client key or secret is invalid.", 401)
        return client_key, None

    async def token(self, request: Request) -> Response:
        form = await read_form(request)
        grant_type = form.get("grant_type", "")
        op = "refresh" if grant_type == "refresh_token" else "token"
        fault = await self.fault(op)
        if isinstance(fault, Response):
            return fault
        client_key, refused = self._client(form)
        if refused is not None:
            return refused
        if fault == "error200":
            return self.oauth_error("server_error", "Internal server error, please retry.", 200)
        if fault == "unlisted":
            return self.oauth_error(UNLISTED_CODE, "A new kind of failure.")
        if fault == "revoked":
            return self.oauth_error("invalid_grant", "Authorization has been revoked by the user.")
        if fault == "wrongtypes":  # answered without redeeming or rotating, so the fault stays a one-off
            return JSONResponse(WRONG_TYPES)
        if grant_type == "authorization_code":
            result = self._redeem(client_key, form)
        elif grant_type == "refresh_token":
            result = self._refresh(client_key, form)
        else:
            return self.oauth_error("unsupported_grant_type", "The grant type is not supported.")
        if isinstance(result, Response):
            return result
        if fault == "lost":
            return PlainTextResponse("upstream trouble", status_code=500)
        return JSONResponse(self.token_body(result))

    def _redeem(self, client_key: str, form: Mapping[str, str]) -> Chain | Response:
        code = form.get("code", "")
        pending = self.state.codes.get(code)
        if pending is not None and pending.platform == self.name and not pending.used:
            if pending.redirect_uri and form.get("redirect_uri") != pending.redirect_uri:
                return self.oauth_error("invalid_grant", "Redirect URI does not match the authorization request.")
            if pending.code_challenge is not None:
                verifier = form.get("code_verifier", "")
                hexed = self.pkce_encoding(client_key) == "hex"
                challenge = pkce_challenge_hex(verifier) if hexed else pkce_challenge_s256(verifier)
                if not verifier or not hmac.compare_digest(challenge, pending.code_challenge):
                    self.state.count(self.name, "pkce_mismatch")
                    return self.oauth_error("invalid_request", "Code verifier or code challenge is invalid.")
        try:
            _, chain = self.state.redeem_code(self.name, client_key, code)
        except SandboxRejection:
            return self.oauth_error("invalid_grant", "Authorization code is expired or invalid.")
        return chain

    def _refresh(self, client_key: str, form: Mapping[str, str]) -> Chain | Response:
        try:
            return self.state.refresh(self.name, client_key, form.get("refresh_token", ""))
        except SandboxRejection:
            return self.oauth_error("invalid_grant", "Refresh token is invalid or expired.")

    async def revoke(self, request: Request) -> Response:
        form = await read_form(request)
        _, refused = self._client(form)
        if refused is not None:
            return refused
        try:
            chain = self.state.check_access(self.name, form.get("token", ""))
        except SandboxRejection:
            return self.oauth_error("invalid_request", "The token is invalid or expired.")
        self.state.revoke(self.name, chain_id=chain.id)
        self.state.count(self.name, "revoked")
        return JSONResponse({})

    # -- API -----------------------------------------------------------------------------------------

    async def user_info(self, request: Request) -> Response:
        fault = await self.fault("api")
        if isinstance(fault, Response):
            return fault
        if fault == "error200":
            return self.api_answer({}, "internal_error", "Something went wrong. Please try again later.", 200)
        if fault == "unlisted":
            return self.api_answer({}, UNLISTED_CODE, "A new kind of failure.", 400)
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if fault == "revoked":
            return self.api_answer({}, "access_token_invalid", "The access token is invalid or not found.", 401)
        try:
            chain = self.state.check_access(self.name, token)
        except SandboxRejection:
            self.state.count(self.name, "access_rejected")
            return self.api_answer({}, "access_token_invalid", "The access token is invalid or not found.", 401)
        fields = [f for f in request.query_params.get("fields", "").split(",") if f]
        unknown = [f for f in fields if f not in USER_FIELDS]
        if not fields or unknown:
            return self.api_answer({}, "invalid_params", "The fields parameter is missing or invalid.", 400)
        if "user.info.basic" not in chain.scopes:
            return self.api_answer({}, "scope_not_authorized", "The user did not authorize user.info.basic.", 401)
        self.state.count(self.name, "api")
        subject = chain.subjects[0]
        profile = {
            "open_id": subject.id,
            "union_id": subject.extra.get("union_id", ""),
            "avatar_url": subject.extra.get("avatar_url", ""),
            "avatar_url_100": subject.extra.get("avatar_url", ""),
            "avatar_large_url": subject.extra.get("avatar_url", ""),
            "display_name": subject.name,
        }
        if fault == "wrongtypes":
            return self.api_answer({"user": "abc"})
        if fault == "lost":
            return PlainTextResponse("upstream trouble", status_code=500)
        return self.api_answer({"user": {f: profile[f] for f in fields}})
