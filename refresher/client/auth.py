"""Calling a platform's API with refresher's tokens: :class:`RefresherAuth` signs in this process,
:func:`proxy_client` goes through the daemon's signing proxy (no platform secret needed)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any
from urllib.parse import quote

import httpx

from refresher.client.source import AccessToken, TokenSource
from refresher.config import Settings
from refresher.domain import AccessTokenInvalid, Clock
from refresher.platforms.base import Answer, ApiCall, Platform


class RefresherAuth(httpx.Auth):
    """Sign requests to a platform's API for one account and add its current access token.

    ``client.get(f"{platform_api_host}/api/v2/shop/get_shop_info", auth=RefresherAuth(...))``: the request's
    path relative to the app's API host is what gets signed. On an "access token invalid" answer the cached
    token is dropped, a fresh one is fetched and the request is sent once more.
    """

    requires_response_body = True

    def __init__(
        self, settings: Settings, app: str, account: str, source: TokenSource, *, clock: Clock | None = None
    ) -> None:
        from refresher import platforms

        app_settings = settings.app(app)
        self.app = app
        self.account = account
        self.source = source
        self.platform: Platform = platforms.get(app_settings.platform)(app_settings, clock=clock or source.clock)

    def _signed(self, request: httpx.Request, token: AccessToken) -> httpx.Request:
        base = httpx.URL(self.platform.host("api"))
        path = request.url.path
        base_path = base.path.rstrip("/")
        if base_path and path.startswith(base_path + "/"):
            path = path[len(base_path) :]
        body = request.content or None
        call = ApiCall(
            method=request.method,
            path=path,
            query=tuple(httpx.QueryParams(request.url.query).multi_items()),
            body=body,
            content_type=request.headers.get("content-type"),
            headers={k: v for k, v in request.headers.items() if k.lower() in ("accept", "content-type")},
        )
        signed = self.platform.sign_call(call, token.token, token.identity)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        headers.update(signed.headers)
        return httpx.Request(
            signed.method, signed.url, headers=headers, content=signed.body, extensions=request.extensions
        )

    def _token_refused(self, response: httpx.Response) -> bool:
        answer = Answer(response.status_code, response.headers, response.content)
        return isinstance(self.platform.classify_api_answer(answer), AccessTokenInvalid)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        token = self.source.get_token_sync(self.app, self.account)
        response = yield self._signed(request, token)
        response.read()  # overriding sync_auth_flow skips httpx's own read for requires_response_body
        if self._token_refused(response):
            self.source.invalidate(self.app, self.account)
            fresh = self.source.get_token_sync(self.app, self.account)
            if fresh.token != token.token:
                yield self._signed(request, fresh)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        token = await self.source.get_token(self.app, self.account)
        response = yield self._signed(request, token)
        await response.aread()
        if self._token_refused(response):
            self.source.invalidate(self.app, self.account)
            fresh = await self.source.get_token(self.app, self.account)
            if fresh.token != token.token:
                yield self._signed(request, fresh)


def proxy_client(url: str, api_token: str, app: str, account: str, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose relative URLs go through the daemon's signing proxy.

    ``await proxy_client(url, tok, "shopee-sg", "shop:1").get("/api/v2/shop/get_shop_info")`` — no
    platform secret needed; the API token needs the ``proxy`` scope.
    """
    base = f"{url.rstrip('/')}/proxy/{quote(app, safe='')}/{quote(account, safe='')}"
    headers = {"Authorization": f"Bearer {api_token}", **kwargs.pop("headers", {})}
    return httpx.AsyncClient(base_url=base, headers=headers, **kwargs)
