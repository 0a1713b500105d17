"""Server-rendered pages: one Jinja2 environment (autoescaped) for the console and the seller pages.

Every page answers with the same protective headers: no caching (pages show account state and, on the
callback, follow a URL that carried a code), no Referer, no framing, and a Content-Security-Policy that
allows only this server's own script and style files (no inline script), plus images over https for a
configured logo.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from refresher import platforms
from refresher.config import format_duration
from refresher.platforms import UnknownPlatform

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def platform_name(platform: str) -> str:
    """How a person calls the platform: the plugin's ``display_name``, or its name title-cased."""
    try:
        declared = platforms.get(platform).display_name
    except UnknownPlatform:
        declared = ""
    return declared or platform.replace("_", " ").title()


def when(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """``2026-12-02 14:05 UTC`` (times in the console are UTC, as in the logs)."""
    if value is None:
        return "—"
    return f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


def relative(value: dt.datetime | None, now: dt.datetime) -> str:
    """``in 3h 20m`` / ``5m ago``."""
    if value is None:
        return ""
    delta = value - now
    if abs(delta) < dt.timedelta(seconds=1):
        return "now"
    text = format_duration(abs(delta))
    return f"in {text}" if delta > dt.timedelta(0) else f"{text} ago"


def url_key(key: str) -> str:
    """An account key as one path segment of a console URL."""
    return quote(key, safe="")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html", "svg"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, url_key=url_key, platform_name=platform_name)
    env.globals.update(relative=relative, platform_name=platform_name)
    return env


ENV = _environment()


def render(request: Request | None, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    """``template`` (a path under ``templates/``) filled with ``context``, with the page headers."""
    text = ENV.get_template(template).render(request=request, **context)
    return HTMLResponse(text, status_code=status, headers=dict(PAGE_HEADERS))
