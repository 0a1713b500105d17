"""The proxy's fast path (``ProxyFastPath`` in refresher/server/proxy.py) answers exactly as its FastAPI route.

One daemon, two servers over the same runtime (store, platforms, token cache, sandbox): the daemon's own,
whose app has the fast path, and a second one serving ``create_app`` of the same daemon with the fast
path taken out, so every request there goes through FastAPI's routing, dependencies and the route. Each
case is sent to both, and the answers (status, body, headers), what the platform received and the log
lines written must be the same.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest

from refresher.server.app import create_app
from refresher.server.http import start_server, stop_server
from refresher.server.proxy import MAX_REQUEST_BYTES, ProxyFastPath, fast_path_target
from tests.test_api import APP, ApiEnv, running_api
from tests.test_proxy import SHOP_INFO, Upstream, proxy_path, raw_answer
from tests.test_proxy import upstream as upstream  # the recording upstream fixture

# Answer headers that differ between any two answers (the clock, the server's own name).
VOLATILE_HEADERS = {"date", "server"}
# Body fields (at any depth) that differ between two platform answers: the sandbox's request and log ids.
VOLATILE_FIELDS = {"request_id", "log_id"}
# Log fields that differ between two calls of the same request.
VOLATILE_LOG = {"timestamp", "duration_ms"}


@dataclass
class Both:
    """The same daemon behind two servers: ``fast`` (the daemon's own app) and ``slow`` (no fast path)."""

    env: ApiEnv
    slow_port: int

    async def call(self, port: int, method: str, path: str, who: str | None, **kw: Any) -> httpx.Response:
        headers = {**(self.env.auth(who) if who else {}), **kw.pop("headers", {})}
        return await self.env.http.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, **kw)

    async def compare(self, method: str, path: str, who: str | None = "proxy", **kw: Any) -> httpx.Response:
        """The answer of the fast path, after checking FastAPI's is the same (and logged the same)."""
        assert self.env.daemon.port is not None
        before = len(self.env.read_logs())
        fast = await self.call(self.env.daemon.port, method, path, who, **dict(kw))
        fast_logs = self.env.read_logs()[before:]
        slow = await self.call(self.slow_port, method, path, who, **dict(kw))
        slow_logs = self.env.read_logs()[before + len(fast_logs) :]
        assert_same_answer(fast, slow, f"{method} {path} as {who}")
        assert _logs(fast_logs) == _logs(slow_logs), (method, path, who)
        return fast

    async def compare_raw(self, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """The same over a plain socket (a target no client library would normalise)."""
        assert self.env.daemon.port is not None
        fast = await raw_answer(self.env.daemon.port, target, headers)
        slow = await raw_answer(self.slow_port, target, headers)
        assert fast == slow, target
        return fast


def _body(response: httpx.Response) -> Any:
    try:
        data = response.json()
    except ValueError:
        return response.content
    return _stable(data)


def _stable(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _stable(v) for k, v in data.items() if k not in VOLATILE_FIELDS}
    if isinstance(data, list):
        return [_stable(v) for v in data]
    return data


def assert_same_answer(fast: httpx.Response, slow: httpx.Response, what: str) -> None:
    assert fast.status_code == slow.status_code, (what, fast.text[:300], slow.text[:300])
    assert _body(fast) == _body(slow), what
    assert _headers(fast) == _headers(slow), what


def _headers(response: httpx.Response) -> list[tuple[str, str]]:
    """The answer's headers, minus the volatile ones, with its own server's address as ``SERVER`` (a redirect)."""
    server = f"{response.url.scheme}://{response.url.netloc.decode()}"
    named = [(k, v.replace(server, "SERVER")) for k, v in response.headers.multi_items()]
    return sorted((k, v) for k, v in named if k not in VOLATILE_HEADERS)


def _logs(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k not in VOLATILE_LOG} for line in lines]


@pytest.fixture
async def both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Both]:
    async with running_api(tmp_path, capsys) as env:
        slow_app = create_app(env.daemon)
        middleware = [m for m in slow_app.user_middleware if m.cls is not ProxyFastPath]  # type: ignore[comparison-overlap]
        assert len(middleware) == len(slow_app.user_middleware) - 1  # the fast path was there, and is gone
        slow_app.user_middleware = middleware
        server, task, port = await start_server(slow_app, "127.0.0.1", 0)
        try:
            yield Both(env, port)
        finally:
            await stop_server(server, task)


def _point_at(env: ApiEnv, url: str, app: str = APP) -> None:
    platform = env.daemon.platforms[app]
    platform.app = platform.app.model_copy(update={"hosts": {**platform.app.hosts, "api": url}})


async def test_auth_refusals_and_unknown_targets_are_the_same(both: Both) -> None:
    (account,) = await both.env.onboard()
    path = proxy_path(account.key, SHOP_INFO)
    assert (await both.compare("GET", path, None)).status_code == 401
    assert (await both.compare("GET", path, None, headers={"Authorization": "Basic abc"})).status_code == 401
    assert (
        await both.compare("GET", path, None, headers={"Authorization": "Bearer not-a-token-00000"})
    ).status_code == 401
    assert (await both.compare("GET", path, None, headers={"Authorization": "bearer"})).status_code == 401
    assert (await both.compare("GET", path, "reader")).status_code == 403
    assert (await both.compare("POST", path, "reader", content=b"{}")).status_code == 403
    assert (await both.compare("GET", proxy_path(account.key, SHOP_INFO, app="nope"), "proxy")).status_code == 404
    assert (await both.compare("GET", proxy_path("shop:404404", SHOP_INFO), "proxy")).status_code == 404
    # What the fast path leaves to FastAPI is answered by FastAPI on both: a HEAD, an OPTIONS, the
    # route's prefix without the trailing part, an unknown path under /proxy.
    assert (await both.compare("HEAD", path, "proxy")).status_code == 405
    assert (await both.compare("OPTIONS", path, "proxy")).status_code == 405
    await both.compare("GET", f"/proxy/{APP}/{account.key}", "proxy", follow_redirects=False)
    assert (await both.compare("GET", f"/proxy/{APP}", "proxy")).status_code == 404
    disabled = await both.env.call("POST", f"/v1/accounts/{APP}/{quote(account.key, safe='')}/disable", "writer")
    assert disabled.status_code == 200
    assert (await both.compare("GET", path, "proxy")).status_code == 409


async def test_signed_calls_to_every_platform_are_the_same(both: Both) -> None:
    cases = [
        (APP, "GET", SHOP_INFO, {}),
        (APP, "GET", "/api/v2/merchant/get_merchant_info", {}),  # the platform's own error, relayed
        ("tts-us", "GET", "/authorization/202309/shops", {}),
        ("tts-us", "POST", "/order/202309/orders/search?page_size=20", {"json": {"order_status": "UNPAID"}}),
        ("lazada-sg", "GET", "/rest/seller/get", {"headers": {"x-refresher-country": "th"}}),
        ("tiktok-login", "GET", "/v2/user/info/?fields=open_id,display_name", {}),
    ]
    for app, method, path, kw in cases:
        options = {"countries": "sg,th"} if app == "lazada-sg" else {}
        account = (await both.env.onboard(app, **options))[0]
        answer = await both.compare(method, proxy_path(account.key, path, app=app), "proxy", **kw)
        assert answer.status_code in (200, 400), (app, path, answer.text[:300])
        assert account.tokens is not None and account.tokens.access_token not in answer.text


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
async def test_what_the_platform_receives_is_the_same(both: Both, upstream: Upstream, method: str) -> None:
    (account,) = await both.env.onboard()
    _point_at(both.env, upstream.url + "/base")
    answer = await both.compare(
        method,
        proxy_path(account.key, "/api/v2/product/update_item") + "?status=201&page_size=20&page_size=30&blank=",
        "proxy",
        content=json.dumps({"item_id": 7}) if method != "GET" else None,
        headers={
            "content-type": "application/json",
            "accept-language": "en",
            "x-request-id": "r-1",
            "cookie": "session=abc",
            "x-forwarded-for": "10.0.0.1",
            "x-refresher-country": "th",  # Lazada's own header: not forwarded to a Shopee app
        },
    )
    assert answer.status_code == 201 and answer.headers["x-platform-request-id"] == "req-42"
    fast, slow = upstream.seen
    # The signature and its timestamp change with the clock's second; everything else must not.
    for seen in (fast, slow):
        seen["query"] = [(k, v) for k, v in seen["query"] if k not in ("sign", "timestamp")]
        seen["headers"].pop("host", None)
    assert fast == slow
    assert "cookie" not in fast["headers"] and "authorization" not in fast["headers"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/../../other/x",
        "/api/%2E%2E/x",
        "/api/%252e%252e/x",
        "/api/x%3Fsign=forged",
        "/api/x%23",
        "/api/%00x",
        "/api/%0Ax",  # a newline: the route's pattern does not match it, FastAPI answers 404 on both
        "/api/" + "a" * 3000,
        "/api/x?q=" + "a" * 20000,
        "/api/x?q=" + "a" * 66000,
    ],
)
async def test_hostile_targets_are_refused_the_same(both: Both, upstream: Upstream, path: str) -> None:
    (account,) = await both.env.onboard()
    _point_at(both.env, upstream.url + "/base")
    status, _ = await both.compare_raw(f"/proxy/{APP}/{account.key}{path}", both.env.auth("proxy"))
    assert status in (400, 404)
    assert upstream.seen == []


async def test_body_limits_and_platform_failures_are_the_same(both: Both, upstream: Upstream) -> None:
    (account,) = await both.env.onboard()
    _point_at(both.env, upstream.url)
    big = b"x" * (MAX_REQUEST_BYTES + 1)
    assert (
        await both.compare("POST", proxy_path(account.key, "/api/v2/upload"), "proxy", content=big)
    ).status_code == 413
    streamed = [  # a fresh generator per server
        await both.call(
            port or 0, "POST", proxy_path(account.key, "/a"), "proxy", content=_chunks(MAX_REQUEST_BYTES + 1)
        )
        for port in (both.env.daemon.port, both.slow_port)
    ]
    assert_same_answer(streamed[0], streamed[1], "chunked, too large")
    assert streamed[0].status_code == 413 and upstream.seen == []
    assert (await both.compare("GET", proxy_path(account.key, SHOP_INFO) + "?status=503", "proxy")).status_code == 503
    _point_at(both.env, "http://127.0.0.1:9")
    unreachable = await both.compare("GET", proxy_path(account.key, SHOP_INFO), "proxy")
    assert unreachable.status_code == 502 and "platform unreachable" in unreachable.json()["detail"]


async def _chunks(size: int) -> AsyncIterator[bytes]:
    """A body without a content-length (chunked), so only the counted read can refuse it."""
    sent = 0
    while sent < size:
        chunk = b"y" * min(1 << 20, size - sent)
        sent += len(chunk)
        yield chunk


async def test_a_refresh_and_retry_is_the_same(both: Both) -> None:
    (account,) = await both.env.onboard()
    path = proxy_path(account.key, SHOP_INFO)
    answers = []
    for port in (both.env.daemon.port, both.slow_port):
        assert port is not None
        expired = await both.env.http.post(
            f"{both.env.sandbox.url}/_sandbox/expire",
            json={"platform": "shopee", "subject_id": account.identity.platform_id},
        )
        assert expired.status_code == 200
        answers.append(await both.call(port, "GET", path, "proxy"))
    fast, slow = answers
    assert fast.headers["x-refresher-retried"] == "1"
    assert_same_answer(fast, slow, "refresh and retry")


async def test_a_revoked_grant_is_answered_the_same(both: Both) -> None:
    """The first call refreshes, fails and relays the platform's refusal; the account is then not active."""
    answers = []
    for port in (both.env.daemon.port, both.slow_port):
        assert port is not None
        (account,) = await both.env.onboard()
        await both.env.http.post(
            f"{both.env.sandbox.url}/_sandbox/revoke",
            json={"platform": "shopee", "subject_id": account.identity.platform_id},
        )
        first = await both.call(port, "GET", proxy_path(account.key, SHOP_INFO), "proxy")
        again = await both.call(port, "GET", proxy_path(account.key, SHOP_INFO), "proxy")
        answers.append((first, again, account.key))
    (fast, fast_again, fast_key), (slow, slow_again, slow_key) = answers
    assert fast.status_code == 403
    assert_same_answer(fast, slow, "revoked")
    assert fast_again.status_code == slow_again.status_code == 409
    assert fast_again.json()["detail"].replace(fast_key, "K") == slow_again.json()["detail"].replace(slow_key, "K")


async def _raw(port: int, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Status and body of one request over a plain socket (the target exactly as given)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", "Content-Length: 0"]
    writer.write(("\r\n".join([*lines, *(f"{k}: {v}" for k, v in headers.items())]) + "\r\n\r\n").encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/proxy/zz/shop:1/api/v2/shop/get_shop_info"),
        ("DELETE", "/proxy/zz/b/"),
        ("PATCH", "/proxy/zz/b/c/d/e"),
        ("PUT", "/proxy/zz/b%2Fc/d"),  # decoded before routing: account "b", path "c/d"
        ("POST", "/proxy/zz/b/%2E%2E/x"),
        ("HEAD", "/proxy/zz/b/c"),
        ("OPTIONS", "/proxy/zz/b/c"),
        ("GET", "/proxy/zz/b"),
        ("GET", "/proxy/zz//c"),
        ("GET", "/proxy//b/c"),
        ("GET", "/proxy/zz/b/c%0Ad"),
        ("GET", "/proxyx/zz/b/c"),
        ("GET", "/v1/accounts/zz/shop:1/token"),
    ],
)
async def test_the_fast_path_takes_exactly_what_the_route_would_take(both: Both, method: str, target: str) -> None:
    """The fast path answers a target iff FastAPI's router hands it to the proxy route: asked of the
    server without the fast path, whose proxy route alone answers "unknown app 'zz'"."""
    status, body = await _raw(both.slow_port, method, target, both.env.auth("proxy"))
    routed = status == 404 and body == b'{"detail":"unknown app \'zz\'"}'
    scope = {"type": "http", "method": method, "path": unquote(target), "root_path": "", "headers": []}
    assert (fast_path_target(scope) is not None) == routed, (status, body[:200])
    if routed:
        assert await _raw(both.env.daemon.port or 0, method, target, both.env.auth("proxy")) == (status, body)


def test_the_fast_path_leaves_other_scopes_alone() -> None:
    assert fast_path_target({"type": "websocket", "path": "/proxy/a/b/c", "headers": []}) is None
    assert fast_path_target({"type": "lifespan"}) is None


async def test_concurrent_calls_through_the_fast_path_stay_apart(both: Both, upstream: Upstream) -> None:
    """Many calls at once, each with its own query and body: each answer is its own call's."""
    (account,) = await both.env.onboard()
    _point_at(both.env, upstream.url)
    calls = [
        both.env.call("POST", proxy_path(account.key, f"/api/v2/n{i}") + f"?i={i}", "proxy", content=f"body-{i}")
        for i in range(40)
    ]
    answers = await asyncio.gather(*calls)
    assert [a.json()["got"] for a in answers] == [f"body-{i}" for i in range(40)]
