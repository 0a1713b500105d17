"""Run the sandbox on a loopback port inside the caller's event loop (tests, ``refresher demo``)."""

from __future__ import annotations

import asyncio
import functools
import signal
import ssl
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from refresher.domain import Clock
from refresher.sandbox.apps import SANDBOX_CREDENTIALS, Lifetimes
from refresher.sandbox.core import SandboxState
from refresher.sandbox.faults import FaultPlan
from refresher.sandbox.lazada import LazadaSandbox
from refresher.sandbox.server import SandboxPlatform, build_app
from refresher.sandbox.shopee import ShopeeSandbox
from refresher.sandbox.tiktok import TikTokSandbox
from refresher.sandbox.tiktok_shop import TikTokShopSandbox
from refresher.server.http import EmbeddedServer, start_server, stop_server


def default_platforms(state: SandboxState) -> list[SandboxPlatform]:
    """The four platforms, sharing ``state``. Here, not in ``server.py``: the platform modules import
    ``server.py`` for their base class, so only a module above both may import them all."""
    return [ShopeeSandbox(state), TikTokShopSandbox(state), LazadaSandbox(state), TikTokSandbox(state)]


class SandboxServer:
    """``async with SandboxServer() as sandbox:`` — every platform on ``sandbox.url``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        lifetimes: Mapping[str, Lifetimes] | None = None,
        credentials: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
        faults: str | FaultPlan | None = None,
        auto_approve: bool = False,
        fault_delay: float = 30.0,
        seed: int | None = None,
    ) -> None:
        plan = faults if isinstance(faults, FaultPlan) else FaultPlan.parse(faults, seed=seed)
        self.state = SandboxState(
            clock=clock,
            lifetimes=lifetimes,
            credentials=credentials,
            faults=plan,
            auto_approve=auto_approve,
            fault_delay=fault_delay,
            seed=seed,
        )
        self.platforms: dict[str, SandboxPlatform] = {p.name: p for p in default_platforms(self.state)}
        self.app = build_app(self.state, list(self.platforms.values()))
        self.host, self.port = host, port
        self._server: EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def hosts(self, platform: str) -> dict[str, str]:
        """The ``hosts:`` of an app config that points platform ``platform`` at this sandbox."""
        return self.platforms[platform].hosts(self.url)

    def app_config(self, platform: str, redirect_uri: str = "http://127.0.0.1:3017/callback") -> dict[str, Any]:
        """A complete app entry for the config, with the sandbox's own credentials. The redirect URI is
        registered with the sandbox too, as on a platform's console (TikTok Shop's consent link does not
        carry one)."""
        self.state.add_app(platform, {**SANDBOX_CREDENTIALS[platform], "redirect_uri": redirect_uri})
        return {
            "platform": platform,
            "hosts": self.hosts(platform),
            "redirect_uri": redirect_uri,
            **SANDBOX_CREDENTIALS[platform],
        }

    def set_faults(self, spec: str | None, seed: int | None = None) -> None:
        self.state.faults = FaultPlan.parse(spec, seed=seed)

    async def start(self) -> SandboxServer:
        self._server, self._task, self.port = await start_server(self.app, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            await stop_server(self._server, self._task)
            self._server = self._task = None

    async def serve_until_signalled(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop: ``refresher sandbox`` and the soak's sandbox process."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await self.stop()

    async def __aenter__(self) -> SandboxServer:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def approve(self, authorize_url: str, **options: str) -> dict[str, str]:
        """Play the seller: open ``authorize_url``, press Approve (with ``options``), and return the
        query parameters the platform redirected the browser back with."""
        return await answer_consent(authorize_url, "approve", options)

    async def deny(self, authorize_url: str) -> dict[str, str]:
        return await answer_consent(authorize_url, "deny")


@functools.cache
def _tls() -> ssl.SSLContext:
    # Built once: loading the CA bundle for every consent cost more than the consent itself when tests and
    # the soak onboard thousands of grants.
    return httpx.create_ssl_context()


async def answer_consent(
    authorize_url: str, choice: str = "approve", options: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Play the seller against any running sandbox (in this process or another): open ``authorize_url``,
    press Approve or Deny (with the approve link's ``options``), and return the callback's query."""
    async with httpx.AsyncClient(timeout=10, verify=_tls()) as client:
        page = await client.get(authorize_url)
        if page.status_code in (301, 302, 303, 307):  # auto-approve
            return dict(parse_qsl(urlsplit(page.headers["location"]).query))
        page.raise_for_status()
        marker = f'id="{choice}" href="'
        start = page.text.index(marker) + len(marker)
        link = page.text[start : page.text.index('"', start)].replace("&amp;", "&")
        answer = await client.get(link, params=dict(options or {}))
        if answer.status_code not in (302, 303):
            raise RuntimeError(f"sandbox consent answered {answer.status_code}: {answer.text[:200]}")
        return dict(parse_qsl(urlsplit(answer.headers["location"]).query))
