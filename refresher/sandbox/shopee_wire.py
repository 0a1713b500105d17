"""Shopee's wire as the sandbox checks it: paths, the error envelope, and the signature every call carries
(partner_id, timestamp, sign; with access_token and shop_id / merchant_id on shop APIs)."""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from refresher.platforms.signing import shopee_sign
from refresher.sandbox.server import SandboxPlatform

AUTH_PARTNER = "/api/v2/shop/auth_partner"
TOKEN_GET = "/api/v2/auth/token/get"
REFRESH = "/api/v2/auth/access_token/get"
RESEND = "/api/v2/public/get_token_by_resend_code"
SHOP_INFO = "/api/v2/shop/get_shop_info"
MERCHANT_INFO = "/api/v2/merchant/get_merchant_info"
SHOPS_BY_PARTNER = "/api/v2/public/get_shops_by_partner"
MERCHANTS_BY_PARTNER = "/api/v2/public/get_merchants_by_partner"
KINDS = ("shop", "merchant", "supplier")
UPDATE_STOCK = "/api/v2/product/update_stock"  # a shop POST with a JSON body (not part of Shopee's sign)

TIMESTAMP_WINDOW = 300  # seconds, either way (docs/platforms.md)


class ShopeeError(Exception):
    """A Shopee error answer, raised inside a handler and rendered as the envelope."""

    def __init__(self, error: str, message: str, status: int = 400) -> None:
        super().__init__(error)
        self.error, self.message, self.status = error, message, status


def _request_id() -> str:
    return secrets.token_hex(16)


def envelope(fields: Mapping[str, Any]) -> JSONResponse:
    return JSONResponse({**fields, "error": "", "message": "", "request_id": _request_id()})


def error_answer(error: str, message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, "request_id": _request_id()}, status_code=status)


def int_param(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShopeeError("error_param", f"Wrong parameters, detail: {name} must be an integer.")
    return value


class ShopeeWire(SandboxPlatform):
    """The checks every Shopee endpoint of the sandbox starts with."""

    name = "shopee"
    prefix = "/shopee"

    def verify(self, request: Request, path: str, access_token: str | None = None) -> tuple[str, int]:
        """Check partner_id, timestamp and sign of a call; returns (partner_id, timestamp)."""
        query = request.query_params
        partner_id = query.get("partner_id", "")
        if not partner_id:
            raise ShopeeError("error_param", "There is no partner_id in query.")
        secret = self.state.secret(self.name, partner_id)
        if secret is None:
            raise ShopeeError("error_param", "Invalid partner_id.")
        raw_ts = query.get("timestamp", "")
        if not raw_ts:
            raise ShopeeError("error_param", "no timestamp")
        if not raw_ts.isdigit():
            raise ShopeeError("error_param", "Invalid timestamp")
        sign = query.get("sign", "")
        if not sign:
            raise ShopeeError("error_param", "There is no sign in query.")
        shop_id = query.get("shop_id") if access_token is not None else None
        merchant_id = query.get("merchant_id") if access_token is not None and shop_id is None else None
        expected = shopee_sign(secret, partner_id, path, raw_ts, access_token, shop_id, merchant_id)
        if not hmac.compare_digest(expected, sign):
            self.state.count(self.name, "bad_sign")
            raise ShopeeError("error_sign", "Wrong sign.", 403)
        now = self.state.clock.now().timestamp()
        if abs(now - int(raw_ts)) > TIMESTAMP_WINDOW:
            self.state.count(self.name, "bad_timestamp")
            raise ShopeeError("error_param", "Invalid timestamp")
        return partner_id, int(raw_ts)

    async def body(self, request: Request, partner_id: str) -> dict[str, Any]:
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError:
            raise ShopeeError("error_param", "Wrong parameters, detail: invalid json body.") from None
        if not isinstance(data, dict):
            raise ShopeeError("error_param", "Wrong parameters, detail: body must be an object.")
        if int_param(data.get("partner_id"), "partner_id") != int(partner_id):
            raise ShopeeError("error_param", "Invalid partner_id.")
        return data
