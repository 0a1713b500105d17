"""Helpers of the onboarding tests: a daemon wired to the sandbox, and a "browser" that follows redirects."""

from __future__ import annotations

import html
import re
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from refresher import platforms
from refresher.config import Settings, parse_config
from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.sandbox import SANDBOX_CREDENTIALS, SandboxServer

PLATFORMS = ("shopee", "tiktok_shop", "lazada", "tiktok")
ADMIN_TOKEN = "admin-token-for-onboarding-tests-0001"
INVITE_SECRET = "invite-secret-for-onboarding-tests-01"
ALLOWED_RETURN = "https://erp.example.com/oauth/done"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def register_redirect(sandbox: SandboxServer, platform: str, uri: str) -> None:
    """What an operator does in the platform's console: register the app's callback URL (TikTok Shop
    sends the browser there; its consent link carries no redirect URI)."""
    sandbox.state.add_app(platform, {**SANDBOX_CREDENTIALS[platform], "redirect_uri": uri})


def config_text(sandbox: SandboxServer, port: int, db: Path, *, redirect: str = "web", **server: Any) -> str:
    """A YAML config with one app per platform (named like the platform) pointing at ``sandbox``."""
    apps = {}
    for name in PLATFORMS:
        uri = f"http://127.0.0.1:{port}/callback/{name}" if redirect == "web" else f"http://127.0.0.1:{port}/callback"
        apps[name] = {**sandbox.app_config(name, redirect_uri=uri), "timeout": "5s"}
        register_redirect(sandbox, name, uri)
    document = {
        "store": {"url": f"sqlite:///{db}"},
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "admin_token": ADMIN_TOKEN,
            "invite_secret": INVITE_SECRET,
            "return_to_allowlist": ["https://erp.example.com/oauth/"],
            **server,
        },
        "logging": {"level": "debug", "format": "json"},
        "apps": apps,
    }
    return yaml.safe_dump(document)


def settings_from(text: str) -> Settings:
    return parse_config(text, file="test.yaml", credential_models=platforms.credential_models())


@asynccontextmanager
async def running_daemon(sandbox: SandboxServer, clock: FakeClock, db: Path, **server: Any) -> AsyncIterator[Daemon]:
    port = free_port()
    daemon = Daemon(settings_from(config_text(sandbox, port, db, **server)), clock=clock)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop(grace=1)


@dataclass
class Visit:
    """What a browser went through: every URL it was sent to, and the page it ended on."""

    final: httpx.Response
    urls: list[str] = field(default_factory=list)

    @property
    def callback_url(self) -> str:
        return next(u for u in reversed(self.urls) if "/callback" in urlsplit(u).path)

    @property
    def outcome(self) -> str | None:
        found = re.search(r'data-outcome="([^"]+)"', self.final.text)
        return found.group(1) if found else None


async def browse(
    client: httpx.AsyncClient,
    url: str,
    *,
    choice: str | None = "approve",
    options: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    stop_at: str | None = None,
) -> Visit:
    """Follow redirects like a browser; press Continue on the connect page, and on the sandbox's consent
    page click ``choice`` (with ``options``).

    ``stop_at``: return the redirect response whose target path starts with this, without following it.
    """
    visit = Visit(final=await client.get(url, headers=headers), urls=[url])
    for _ in range(12):
        response = visit.final
        if response.is_redirect:
            target = response.headers["location"]
            if stop_at and urlsplit(target).path.startswith(stop_at):
                visit.urls.append(target)
                return visit
            visit.urls.append(target)
            visit.final = await client.get(target)
            continue
        landing = re.search(r'id="continue" href="([^"]+)"', response.text)
        if landing is not None:  # our connect page: "Continue to <platform>"
            target = str(response.url.join(html.unescape(landing.group(1))))
            visit.urls.append(target)
            visit.final = await client.get(target)
            continue
        marker = re.search(rf'id="{choice}" href="([^"]+)"', response.text) if choice else None
        if marker is None:
            return visit
        link = html.unescape(marker.group(1))
        visit.urls.append(link)
        visit.final = await client.get(link, params=dict(options or {}))
        choice = None  # one click per page
    raise AssertionError(f"too many redirects: {visit.urls}")
