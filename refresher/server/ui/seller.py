"""The pages a seller sees (connect landing, granted, refusals): one look, readable on a phone.

They carry their stylesheet inline (allowed by its hash in the Content-Security-Policy, no script at
all), so they look the same when the desktop flow serves them from a bare loopback server.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fastapi.responses import HTMLResponse

from refresher.config import Settings
from refresher.server.ui.render import ENV, PAGE_HEADERS, STATIC, platform_name
from refresher.store.base import Account

CSS = (STATIC / "style.css").read_text(encoding="utf-8")
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")
HEADERS = {
    **PAGE_HEADERS,
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src https: data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}

REGIONS = {
    "SG": "Singapore", "MY": "Malaysia", "TH": "Thailand", "VN": "Vietnam", "PH": "Philippines",
    "ID": "Indonesia", "TW": "Taiwan", "BR": "Brazil", "MX": "Mexico", "CO": "Colombia", "CL": "Chile",
    "US": "United States", "GB": "United Kingdom", "UK": "United Kingdom", "SA": "Saudi Arabia",
    "JP": "Japan", "ES": "Spain", "IE": "Ireland", "DE": "Germany", "FR": "France", "IT": "Italy",
}  # fmt: skip


@dataclass(frozen=True)
class Brand:
    """Who is asking: ``display_name`` and ``logo_url`` of the app, else of the server."""

    display_name: str | None = None
    logo_url: str | None = None


def brand_of(settings: Settings, app: str | None) -> Brand:
    server = settings.server
    found = settings.apps.get(app) if app else None
    return Brand(
        (found.display_name if found else None) or server.display_name,
        (found.logo_url if found else None) or server.logo_url,
    )


def region_name(code: str | None) -> str | None:
    if not code:
        return None
    return REGIONS.get(code.upper(), code.upper())


def render_seller(
    template: str, title: str, outcome: str, status: int, brand: Brand | None, **context: object
) -> HTMLResponse:
    brand = brand or Brand()
    text = ENV.get_template(template).render(
        title=title,
        outcome=outcome,
        css=CSS,
        display_name=brand.display_name,
        logo_url=brand.logo_url,
        **context,
    )
    return HTMLResponse(text, status_code=status, headers=dict(HEADERS))


def message(
    title: str,
    outcome: str,
    lines: Iterable[str],
    status: int,
    brand: Brand | None = None,
    *,
    details: Iterable[str] = (),
) -> HTMLResponse:
    """A short page in plain words; ``details`` (small print) is what the operator may ask for."""
    return render_seller(
        "seller/message.html",
        title,
        outcome,
        status,
        brand,
        lines=list(lines),
        details=list(details),
        bad=status >= 400,
    )


def shop_line(account: Account) -> dict[str, str | None]:
    """An account as a seller knows it: the shop's (or user's) name and where it sells; never an
    internal app name, key format or token expiry."""
    identity = account.identity
    platform = platform_name(account.platform)
    kinds = {"shop": "shop", "merchant": "merchant account", "seller": "seller account", "user": "account"}
    name = identity.name or f"{platform} {kinds.get(identity.kind, identity.kind)} {identity.platform_id}"
    places: list[str] = []
    extra = identity.extra if isinstance(identity.extra, dict) else {}
    shops = [s for s in extra.get("shops") or [] if isinstance(s, dict)]
    countries = extra.get("countries")
    if shops:
        places = [
            f"{s.get('name') or 'shop ' + str(s.get('id'))} ({region_name(s.get('region')) or '?'})" for s in shops
        ]
    elif isinstance(countries, dict) and countries:
        places = [region_name(str(c)) or str(c) for c in sorted(countries)]
    elif identity.region:
        places = [region_name(identity.region) or identity.region]
    return {"key": account.key, "name": name, "where": ", ".join(p for p in places if p) or None}


def granted(
    accounts: Sequence[Account], brand: Brand | None, *, again: bool = False, platform: str | None = None
) -> HTMLResponse:
    who = (brand.display_name if brand else None) or "The service"
    where = platform_name(platform or (accounts[0].platform if accounts else ""))
    count = len(accounts)
    these = f"this {where} account" if count == 1 else f"these {where} accounts"
    lead = f"{who} can now work with {these}:"
    if again:
        lead = f"This authorization was already completed. {who} is connected to:"
    title = "Already connected" if again else "You're connected"
    return render_seller(
        "seller/granted.html", title, "already_connected" if again else "granted", 200, brand,
        lead=lead, shops=[shop_line(a) for a in accounts],
    )  # fmt: skip
