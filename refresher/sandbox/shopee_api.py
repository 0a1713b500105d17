"""Shopee's shop and merchant APIs in the sandbox (what a proxied or signed call reaches): shop info, and a
signed shop POST with a JSON body. Checked as strictly as the authorization endpoints."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from refresher.sandbox.core import SandboxRejection
from refresher.sandbox.shopee_wire import (
    MERCHANT_INFO,
    SHOP_INFO,
    UPDATE_STOCK,
    ShopeeError,
    ShopeeWire,
    envelope,
    error_answer,
)


class ShopeeShopApi(ShopeeWire):
    async def shop_info(self, request: Request) -> Response:
        fault = await self.begin("api")
        if isinstance(fault, Response):
            return fault
        merchant = request.url.path.endswith(MERCHANT_INFO)
        kind = "merchant" if merchant else "shop"
        access_token = request.query_params.get("access_token", "")
        subject_id = request.query_params.get(f"{kind}_id", "")
        try:
            if not access_token or not subject_id:
                raise ShopeeError("error_param", f"Wrong parameters, detail: access_token and {kind}_id are required.")
            self.verify(request, MERCHANT_INFO if merchant else SHOP_INFO, access_token)
            try:
                chain = self.state.check_access(self.name, access_token)
            except SandboxRejection:
                raise ShopeeError("invalid_acceess_token", "Invalid access_token.", 403) from None
            subject = next((s for s in chain.subjects if s.id == subject_id and s.kind == kind), None)
            if subject is None:
                raise ShopeeError("error_auth", "Invalid access_token.", 403)
        except ShopeeError as exc:
            return error_answer(exc.error, exc.message, exc.status)
        self.state.count(self.name, "api")
        if merchant:
            return envelope({"merchant_name": subject.name, "merchant_region": subject.region})
        return envelope({"shop_name": subject.name, "region": subject.region, "status": "NORMAL"})

    async def update_stock(self, request: Request) -> Response:
        """A signed shop POST with a JSON body; echoes the body it received."""
        fault = await self.begin("api")
        if isinstance(fault, Response):
            return fault
        access_token = request.query_params.get("access_token", "")
        shop_id = request.query_params.get("shop_id", "")
        try:
            if not access_token or not shop_id:
                raise ShopeeError("error_param", "Wrong parameters, detail: access_token and shop_id are required.")
            self.verify(request, UPDATE_STOCK, access_token)
            try:
                chain = self.state.check_access(self.name, access_token)
            except SandboxRejection:
                raise ShopeeError("invalid_acceess_token", "Invalid access_token.", 403) from None
            if not any(s.id == shop_id and s.kind == "shop" for s in chain.subjects):
                raise ShopeeError("error_auth", "Invalid access_token.", 403)
            try:
                body = json.loads(await request.body() or b"")
            except ValueError:
                raise ShopeeError("error_param", "Wrong parameters, detail: body is not JSON.") from None
        except ShopeeError as exc:
            return error_answer(exc.error, exc.message, exc.status)
        self.state.count(self.name, "api")
        return envelope({"echo": body, "success_list": [], "failure_list": []})
