"""When a Shopee authorization ends: the period the seller chose (7 days to a year) is the chain's hard
end, past any refresh token's 30 days. GetShopsByPartner / GetMerchantsByPartner list every authorized
shop / merchant of the partner with its ``expire_time``; the list is read once for all accounts of an
app and kept a day (it moves only when a seller re-authorizes)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

SHOPS_BY_PARTNER_PATH = "/api/v2/public/get_shops_by_partner"
MERCHANTS_BY_PARTNER_PATH = "/api/v2/public/get_merchants_by_partner"
# How long a read list is trusted, and how soon it is read again when an id is missing from it (a
# grant made a moment ago).
AUTHORIZATION_CHECK_EVERY = dt.timedelta(days=1)
LIST_RETRY = dt.timedelta(minutes=10)
MAX_PAGES = 1000  # 100 per page: up to 100,000 authorized shops

FetchPage = Callable[[str, int], Awaitable[dict[str, Any]]]


class AuthorizationEnds:
    """``expire_time`` (epoch seconds) by shop or merchant id, read through ``fetch(path, page_no)``."""

    def __init__(self, fetch: FetchPage, now: Callable[[], dt.datetime]) -> None:
        self._fetch = fetch
        self._now = now
        self._lists: dict[str, tuple[dt.datetime, dict[str, int]]] = {}
        self._lock = asyncio.Lock()  # many accounts refreshing at once read the list once

    async def ends(self, kind: str, wanted: set[str]) -> dict[str, int] | None:
        """The ends of ``kind`` (``shop`` or ``merchant``; ``None`` for a kind without a list). Raises the
        platform's error when the list cannot be read."""
        path = {"shop": SHOPS_BY_PARTNER_PATH, "merchant": MERCHANTS_BY_PARTNER_PATH}.get(kind)
        if path is None:
            return None
        async with self._lock:
            cached = self._lists.get(kind)
            if cached is not None:
                age = self._now() - cached[0]
                if age < AUTHORIZATION_CHECK_EVERY and (wanted <= cached[1].keys() or age < LIST_RETRY):
                    return cached[1]
            found: dict[str, int] = {}
            for page in range(1, MAX_PAGES + 1):
                data = await self._fetch(path, page)
                rows = data.get(f"authed_{kind}_list")
                for row in rows if isinstance(rows, list) else []:
                    end = row.get("expire_time") if isinstance(row, dict) else None
                    if isinstance(end, int) and not isinstance(end, bool) and end > 0:
                        found[str(row.get(f"{kind}_id"))] = end
                if not data.get("more"):
                    break
            self._lists[kind] = (self._now(), found)
            return found
