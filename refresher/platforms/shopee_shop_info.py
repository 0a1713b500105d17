"""Shopee shop names: ``GET /api/v2/shop/get_shop_info`` (``shop_name``, ``region``, ``status``), a shop
API signed with ``partner_id + path + timestamp + access_token + shop_id`` (docs/platforms.md).

A Shopee grant names no shop (the token answer carries ids only), so the console and the seller's
"connected" page would say "Shopee shop 14701711". The plugin reads each shop's info right after the
token exchange and once a day with the authorization check, and stores the name and region in the
identity (``status`` in ``extra["shop_status"]`` when it is not ``NORMAL``).

Reading it is a courtesy, never a condition: any failure keeps the identity as it was (the grant is
stored all the same) and logs one warning with the error class and our own safe message, never the
URL (which carries the access token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import structlog

from refresher.domain import Grant, Identity, MalformedAnswer, RefresherError
from refresher.platforms.base import ApiCall, Platform  # (the plugin by its base: shopee.py imports us)

log = structlog.get_logger("refresher.platforms.shopee")

SHOP_INFO_PATH = "/api/v2/shop/get_shop_info"
# Shops of one main-account grant read at once: a grant may list dozens, the seller's page waits on them.
CONCURRENCY = 4


async def shop_info(platform: Platform, identity: Identity, access_token: str) -> dict[str, Any]:
    """The shop's ``get_shop_info`` answer (raises the classified error when Shopee refuses)."""
    signed = platform.sign_call(ApiCall("GET", SHOP_INFO_PATH), access_token, identity)
    answer = await platform.transport.send("GET", signed.url, headers=signed.headers, what="shop info")
    refused = platform.classify_api_answer(answer)
    if refused is not None:
        raise refused
    return answer.json_object(platform.name)


def _named(identity: Identity, data: dict[str, Any]) -> Identity:
    name, region, status = data.get("shop_name"), data.get("region"), data.get("status")
    if not isinstance(name, str) or not name.strip():
        raise MalformedAnswer("get_shop_info answered without a shop_name", platform="shopee")
    extra = {k: v for k, v in identity.extra.items() if k != "shop_status"}
    if isinstance(status, str) and status and status != "NORMAL":
        extra["shop_status"] = status  # BANNED, FROZEN …: worth seeing on the account page
    region = region.strip().upper() if isinstance(region, str) and region.strip() else identity.region
    return replace(identity, name=name.strip()[:255], region=region, extra=extra)


async def with_shop_info(platform: Platform, identity: Identity, access_token: str) -> Identity:
    """``identity`` with its shop's name and region, or unchanged when it is no shop or the call fails."""
    if identity.kind != "shop":
        return identity
    try:
        return _named(identity, await shop_info(platform, identity, access_token))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a name is never worth a grant or a refresh
        log.warning(
            "shopee.shop_info_unread",
            app=platform.app.name,
            shop_id=identity.platform_id,
            error_class=type(exc).__name__,
            # Only our own errors carry a message known to be safe; others may quote the signed URL.
            error=str(exc) if isinstance(exc, RefresherError) else None,
        )
        return identity


async def with_shop_names(platform: Platform, grants: Sequence[Grant]) -> list[Grant]:
    """The grants with each shop's name and region read (a few at a time), in the same order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(grant: Grant) -> Grant:
        async with gate:
            identity = await with_shop_info(platform, grant.identity, grant.tokens.access_token)
        return grant if identity is grant.identity else replace(grant, identity=identity)

    return list(await asyncio.gather(*(one(g) for g in grants)))
