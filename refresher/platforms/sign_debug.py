"""Sign one exact request the way an app would, and show the work: what ``refresher sign`` prints.

Users meet "invalid sign" answers; this lets them compare their own signature with ours for the same URL.
The timestamp in the URL is used when present, so the output is reproducible.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from refresher.config import AppSettings
from refresher.platforms.signing import (
    lazada_sign,
    shopee_base_string,
    shopee_sign,
    tiktok_shop_sign,
)


class SignError(ValueError):
    pass


def _relative_path(path: str, marker: str | None) -> str:
    """The signed path: from ``marker`` on (so a sandbox or proxy prefix in front does not count)."""
    if marker and marker in path:
        return path[path.index(marker) :]
    return path


def sign_url(
    app: AppSettings,
    method: str,
    url: str,
    body: str | None = None,
    now: float | None = None,
    *,
    as_is: bool = False,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """The signature of ``url`` for ``app`` and the signed request, as a JSON-ready dict.

    Missing system parameters (app key, timestamp, sign method) are added unless ``as_is``: then exactly
    the URL's parameters are signed, which is what reproducing someone else's signature needs.
    """
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise SignError(f"not an absolute URL: {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    method = method.upper()
    headers: dict[str, str] = {}
    if app.platform == "shopee":
        partner_id = str(app.credential("partner_id"))
        timestamp = params.get("timestamp") or str(int(now if now is not None else time.time()))
        path = _relative_path(parts.path, "/api/v2/")
        access_token = params.get("access_token")
        shop_id, merchant_id = params.get("shop_id"), params.get("merchant_id")
        try:
            base = shopee_base_string(partner_id, path, timestamp, access_token, shop_id, merchant_id)
        except ValueError as exc:
            raise SignError(str(exc)) from None
        sign = shopee_sign(
            str(app.credential("partner_key")), partner_id, path, timestamp, access_token, shop_id, merchant_id
        )
        params.update({"partner_id": partner_id, "timestamp": timestamp, "sign": sign})
        explained: dict[str, Any] = {"base_string": base.replace(access_token or "\0", "<access_token>")}
    elif app.platform == "tiktok_shop":
        if not as_is:
            params.setdefault("app_key", str(app.credential("app_key")))
            params.setdefault("timestamp", str(int(now if now is not None else time.time())))
        path = parts.path
        api_root = urlsplit(app.hosts.get("api") or app.base_url or "").path.rstrip("/")
        if api_root and path.startswith(api_root + "/"):
            path = path[len(api_root) :]
        sign = tiktok_shop_sign(str(app.credential("app_secret")), path, list(params.items()), body, content_type)
        params["sign"] = sign
        if body:
            headers["content-type"] = content_type
        if "access_token" in params:
            headers["x-tts-access-token"] = params.pop("access_token")
        explained = {"path": path, "signed_params": sorted(k for k in params if k not in ("sign", "access_token"))}
    elif app.platform == "lazada":
        path = _relative_path(parts.path, "/rest/")
        path = path[len("/rest") :] if path.startswith("/rest/") else path
        if not as_is:
            params.setdefault("app_key", str(app.credential("app_key")))
            params.setdefault("sign_method", "sha256")
            params.setdefault("timestamp", str(int((now if now is not None else time.time()) * 1000)))
        try:
            sign = lazada_sign(str(app.credential("app_secret")), path, params)
        except ValueError as exc:
            raise SignError(str(exc)) from None
        params["sign"] = sign
        explained = {"api_path": path, "signed_params": sorted(k for k in params if k != "sign")}
    else:
        raise SignError(f"{app.platform} requests are not signed (only Shopee, TikTok Shop and Lazada sign calls)")
    signed_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(list(params.items())), ""))
    return {
        "app": app.name,
        "platform": app.platform,
        "sign": sign,
        **explained,
        "request": {"method": method, "url": signed_url, "headers": headers, "body": body},
    }
