"""Shopee Open Platform v2 as the sandbox speaks it (docs/platforms.md).

Endpoints, relative to the ``/shopee`` prefix (the app's ``api`` host):

* ``GET  /api/v2/shop/auth_partner`` — signed consent link; opens the consent page.
* ``POST /api/v2/auth/token/get`` — code → tokens (``shop_id`` or ``main_account_id`` in the JSON body).
* ``POST /api/v2/auth/access_token/get`` — single-use refresh per ``shop_id`` / ``merchant_id``.
* ``POST /api/v2/public/get_token_by_resend_code`` — recovery with a console "resend code".
* ``GET  /api/v2/public/get_shops_by_partner`` and ``/get_merchants_by_partner`` — the partner's
  authorized shops / merchants with ``auth_time`` and ``expire_time`` (the end of the validity the
  seller chose, ``validity_days=`` at consent, default 365), paged with ``page_size`` / ``page_no``.
  A refresh after that end is refused with ``shop_access_expired`` (``merchant_…``, ``supplier_…``).
* ``GET  /api/v2/shop/get_shop_info`` (``shop_name``, ``region``, ``status``) and
  ``/api/v2/merchant/get_merchant_info``: shop/merchant APIs, signed with token and id, checked strictly.
* ``POST /console/resend_code`` — sandbox only: what the Open Platform console's "resend code" button
  does (``{"shop_id": N}`` or ``{"merchant_id": N}`` → ``{"resend_code": …}``).

Envelope: ``{"error": "", "message": "", "request_id": …}`` plus fields; ``error`` non-empty on failure.
Whether Shopee's errors carry HTTP 4xx is undocumented: the sandbox uses 400/403, and the plugin
classifies on ``error`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from refresher.sandbox.core import Chain, ConsentTicket, SandboxRejection, Subject
from refresher.sandbox.server import base_url_of, with_query
from refresher.sandbox.shopee_api import ShopeeShopApi
from refresher.sandbox.shopee_wire import (
    AUTH_PARTNER,
    KINDS,
    MERCHANT_INFO,
    MERCHANTS_BY_PARTNER,
    REFRESH,
    RESEND,
    SHOP_INFO,
    SHOPS_BY_PARTNER,
    TOKEN_GET,
    UPDATE_STOCK,
    ShopeeError,
    envelope,
    error_answer,
    int_param,
)

# The ``unlisted`` fault's code: well formed, in no document (refresher must retry it and name it).
UNLISTED_CODE = "error_sandbox_unlisted"


class ShopeeSandbox(ShopeeShopApi):
    def hosts(self, base_url: str) -> dict[str, str]:
        return {"api": f"{base_url.rstrip('/')}{self.prefix}"}

    def routes(self) -> list[BaseRoute]:
        return [
            Route(AUTH_PARTNER, self.auth_partner, methods=["GET"]),
            Route(TOKEN_GET, self.token_get, methods=["POST"]),
            Route(REFRESH, self.refresh, methods=["POST"]),
            Route(RESEND, self.resend_token, methods=["POST"]),
            Route(SHOP_INFO, self.shop_info, methods=["GET"]),
            Route(UPDATE_STOCK, self.update_stock, methods=["POST"]),
            Route(MERCHANT_INFO, self.shop_info, methods=["GET"]),
            Route(SHOPS_BY_PARTNER, self.authed_list, methods=["GET"]),
            Route(MERCHANTS_BY_PARTNER, self.authed_list, methods=["GET"]),
            Route("/console/resend_code", self.console_resend_code, methods=["POST"]),
        ]

    # -- consent -----------------------------------------------------------------------------------

    async def auth_partner(self, request: Request) -> Response:
        fault = await self.fault("consent")
        if isinstance(fault, Response):
            return fault
        try:
            partner_id, _ = self.verify(request, AUTH_PARTNER)
        except ShopeeError as exc:
            return error_answer(exc.error, exc.message, exc.status)
        redirect = request.query_params.get("redirect", "")
        if not redirect:
            return error_answer("error_param", "Wrong parameters, detail: redirect is required.")
        ticket = self.state.open_ticket(self.name, partner_id, redirect, None, [], dict(request.query_params))
        return await self.consent(ticket, base_url_of(request))

    def subjects_for(self, ticket: ConsentTicket, options: Mapping[str, str]) -> list[Subject]:
        """``as=shop`` (default) or ``as=main`` with ``shops=N``, ``merchants=M`` and ``suppliers=K``;
        ``id=`` re-authorizes the same shop (or main account); ``validity_days=`` is the authorization
        period the seller picks (7 … 365)."""
        subjects = self._subjects(options)
        now = int(self.state.clock.now().timestamp())
        days = max(1, min(int(options.get("validity_days", "365") or 365), 365))
        for subject in subjects:
            subject.extra.update({"auth_time": now, "expire_time": now + days * 86400})
        return subjects

    def _subjects(self, options: Mapping[str, str]) -> list[Subject]:
        existing = options.get("id")
        if options.get("as", "shop") == "main":
            if existing:
                for chain in self.state.chains.values():
                    if (
                        chain.platform == self.name
                        and any(s.extra.get("main_account_id") == existing for s in chain.subjects)
                        and len(chain.subjects) > 1
                    ):
                        return list(chain.subjects)
            main_id = existing or self.state.new_id(7)
            shops = int(options.get("shops", "2"))
            merchants = int(options.get("merchants", "1"))
            subjects = [
                Subject(self.state.new_id(9), "shop", f"Sandbox Shop {i}", "SG", {"main_account_id": main_id})
                for i in range(1, shops + 1)
            ]
            subjects += [
                Subject(self.state.new_id(7), "merchant", f"Sandbox Merchant {i}", "CN", {"main_account_id": main_id})
                for i in range(1, merchants + 1)
            ]
            subjects += [
                Subject(self.state.new_id(8), "supplier", f"Sandbox Supplier {i}", "CN", {"main_account_id": main_id})
                for i in range(1, int(options.get("suppliers", "0")) + 1)
            ]
            return [Subject(s.id, s.kind, s.name, s.region, dict(s.extra)) for s in subjects]
        shop_id = existing or self.state.new_id(9)
        return [Subject(shop_id, "shop", "Sandbox Shop 1", "SG", {})]

    def approved_redirect(self, ticket: ConsentTicket, code: str, subjects: Sequence[Subject]) -> str:
        main_id = subjects[0].extra.get("main_account_id") if subjects else None
        if main_id is not None:
            return with_query(ticket.redirect_uri, {"code": code, "main_account_id": main_id})
        return with_query(ticket.redirect_uri, {"code": code, "shop_id": subjects[0].id})

    def denied_redirect(self, ticket: ConsentTicket) -> str:
        # Shopee documents no denial parameters: the browser comes back without a code.
        return ticket.redirect_uri

    # -- tokens ------------------------------------------------------------------------------------

    def protocol_fault(self, kind: str, op: str) -> Response | None:
        if kind == "error200":
            return error_answer("error_server", "Something wrong. Please try later.", 200)
        if kind == "unlisted":
            return error_answer(UNLISTED_CODE, "A new kind of failure.", 200)
        if kind == "wrongtypes":
            return envelope({"access_token": 12345, "refresh_token": ["x"], "expire_in": "abc"})
        if kind == "revoked":
            if op == "token":
                return error_answer("invalid_code", "The code is expired or used or invalid")
            if op == "api":
                return error_answer("invalid_acceess_token", "Invalid access_token.", 403)
            return error_answer("shop_no_linked", "Partner and shop has no linked")
        return None

    def _token_answer(self, chain: Chain, extra: Mapping[str, Any]) -> JSONResponse:
        remaining = int((chain.access_expires_at - self.state.clock.now()).total_seconds())
        return envelope(
            {
                "access_token": chain.access_token,
                "refresh_token": chain.refresh_token,
                "expire_in": remaining,
                **extra,
            }
        )

    @staticmethod
    def _lists(subjects: Sequence[Subject]) -> dict[str, list[int]]:
        return {
            "shop_id_list": [int(s.id) for s in subjects if s.kind == "shop"],
            "merchant_id_list": [int(s.id) for s in subjects if s.kind == "merchant"],
            # Supplier accounts of a main account (documented since 2024-11).
            "supplier_id_list": [int(s.id) for s in subjects if s.kind == "supplier"],
        }

    async def token_get(self, request: Request) -> Response:
        fault = await self.begin("token")
        if isinstance(fault, Response):
            return fault
        try:
            partner_id, _ = self.verify(request, TOKEN_GET)
            body = await self.body(request, partner_id)
            code = body.get("code")
            if not isinstance(code, str) or not code:
                raise ShopeeError("error_param", "Wrong parameters, detail: code is required.")
            has_shop, has_main = "shop_id" in body, "main_account_id" in body
            if has_shop == has_main:
                raise ShopeeError("error_param", "Wrong parameters, detail: give shop_id or main_account_id.")
            pending = self.state.codes.get(code)
            if pending is not None and pending.platform == self.name and not pending.used:
                if has_shop:
                    shop_id = str(int_param(body["shop_id"], "shop_id"))
                    if [s.id for s in pending.subjects] != [shop_id]:
                        raise ShopeeError("invalid_shop_id", "The code or shop_id is wrong")
                else:
                    main_id = str(int_param(body["main_account_id"], "main_account_id"))
                    if not pending.subjects or pending.subjects[0].extra.get("main_account_id") != main_id:
                        raise ShopeeError("invalid_main_acount_id", "The code or main_account_id is wrong")
            try:
                pending, chain = self.state.redeem_code(self.name, partner_id, code)
            except SandboxRejection:
                raise ShopeeError("invalid_code", "The code is expired or used or invalid") from None
        except ShopeeError as exc:
            return error_answer(exc.error, exc.message, exc.status)
        self._supersede(chain)
        if fault == "lost":
            return Response("upstream trouble", status_code=500, media_type="text/plain")
        extra = self._lists(chain.subjects) if "main_account_id" in body else {}
        return self._token_answer(chain, extra)

    def _supersede(self, chain: Chain) -> None:
        """A re-authorization replaces the pair the subjects had before (docs/platforms.md)."""
        ids = {s.id for s in chain.subjects}
        for other in self.state.chains.values():
            if other.platform == self.name and other.id != chain.id and ids & {s.id for s in other.subjects}:
                other.revoked = True

    async def refresh(self, request: Request) -> Response:
        fault = await self.begin("refresh")
        if isinstance(fault, Response):
            return fault
        try:
            partner_id, _ = self.verify(request, REFRESH)
            body = await self.body(request, partner_id)
            token = body.get("refresh_token")
            if not isinstance(token, str) or not token:
                raise ShopeeError("error_param", "Wrong parameters, detail: refresh_token is required.")
            given = [kind for kind in KINDS if f"{kind}_id" in body]
            if len(given) != 1:
                raise ShopeeError("error_param", "Wrong parameters, detail: give shop_id, merchant_id or supplier_id.")
            kind = given[0]
            subject_id = str(int_param(body[f"{kind}_id"], f"{kind}_id"))
            self._check_validity(subject_id, kind)
            try:
                chain = self.state.refresh_subject(self.name, partner_id, token, subject_id)
            except SandboxRejection as exc:
                raise self._refresh_rejection(exc.reason, kind) from None
        except ShopeeError as exc:
            return error_answer(exc.error, exc.message, exc.status)
        if fault == "lost":
            return Response("upstream trouble", status_code=500, media_type="text/plain")
        return self._token_answer(chain, {"partner_id": int(partner_id), f"{kind}_id": int(subject_id)})

    def _check_validity(self, subject_id: str, kind: str) -> None:
        """The authorization period the seller chose has ended: refused before anything rotates."""
        chain = self.state.find_chain(self.name, subject_id)
        subject = next((s for s in chain.subjects if s.id == subject_id), None) if chain else None
        end = subject.extra.get("expire_time") if subject is not None else None
        if isinstance(end, int) and self.state.clock.now().timestamp() >= end:
            raise ShopeeError(f"{kind}_access_expired", f"The {kind}'s authorization has expired, please re-authorize.")

    async def authed_list(self, request: Request) -> Response:
        """GetShopsByPartner / GetMerchantsByPartner: what the partner is authorized for, and until when."""
        fault = await self.begin("api")
        if isinstance(fault, Response):
            return fault
        path = request.url.path.removeprefix(self.prefix)
        kind = "shop" if path == SHOPS_BY_PARTNER else "merchant"
        try:
            partner_id, _ = self.verify(request, path)
            size = int(request.query_params.get("page_size", "100") or 100)
            page = int(request.query_params.get("page_no", "1") or 1)
        except ValueError:
            return error_answer("error_param", "Wrong parameters, detail: page_size and page_no are numbers.")
        except ShopeeError as exc:
            return error_answer(exc.error, exc.message, exc.status)
        size = max(1, min(size, 100))
        found: dict[str, Subject] = {}
        for chain in self.state.chains.values():
            if chain.platform == self.name and chain.app_id == partner_id and not chain.revoked:
                found.update({s.id: s for s in chain.subjects if s.kind == kind})
        rows = [
            {
                f"{kind}_id": int(s.id),
                "region": s.region,
                "auth_time": s.extra.get("auth_time"),
                "expire_time": s.extra.get("expire_time"),
            }
            for s in sorted(found.values(), key=lambda s: s.id)
        ]
        chunk = rows[(page - 1) * size : page * size]
        return envelope({f"authed_{kind}_list": chunk, "more": page * size < len(rows)})

    @staticmethod
    def _refresh_rejection(reason: str, kind: str) -> ShopeeError:
        if reason == "expired":
            return ShopeeError("refresh_token_expired", "Your refresh_token expired.")
        if reason == "revoked":
            return ShopeeError(f"{kind}_no_linked", "Partner and shop has no linked")
        if reason == "mismatch":
            return ShopeeError(
                f"error_{kind}_refresh_token",
                "Your refresh token is error, please check refresh token or shopid/merchant_id",
            )
        return ShopeeError("error_auth", "Invalid refresh_token.")

    async def console_resend_code(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        subject = str(body.get("shop_id") or body.get("merchant_id") or "")
        chain = self.state.find_chain(self.name, subject) if subject else None
        if chain is None:
            return JSONResponse({"error": "no such authorization"}, status_code=404)
        return JSONResponse({"resend_code": self.state.resend_code(self.name, chain).code})

    async def resend_token(self, request: Request) -> Response:
        fault = await self.begin("token")
        if isinstance(fault, Response):
            return fault
        try:
            partner_id, _ = self.verify(request, RESEND)
            try:
                data = json.loads(await request.body() or b"null")
            except ValueError:
                data = None
            code = data.get("resend_code") if isinstance(data, dict) else None
            if not isinstance(code, str) or not code:
                raise ShopeeError("error_param", "Wrong parameters, detail: resend_code is required.")
            try:
                chain = self.state.redeem_resent(self.name, partner_id, code)
            except SandboxRejection:
                raise ShopeeError("invalid_code", "The code is expired or used or invalid") from None
        except ShopeeError as exc:
            return error_answer(exc.error, exc.message, exc.status)
        self.state.count(self.name, "resend_code")
        if fault == "lost":
            return Response("upstream trouble", status_code=500, media_type="text/plain")
        extra = self._lists(chain.subjects) if len(chain.subjects) > 1 else {}
        return self._token_answer(chain, extra)
