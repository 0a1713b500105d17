"""``Transport.send`` puts a request straight on the aiohttp wire exactly as httpx would have sent it.

The shared client (``make_http_client``) lets ``Transport.send`` skip httpx's request building and URL
parser for a URL httpx would leave as it is (refresher/platforms/wire.py, ``wired_netloc``). Two
things are held here: that check agrees with httpx's own parser (a URL taken is one httpx sends
unchanged, with the same Host), and each request arrives byte for byte as through httpx: the same
request line, headers in the same order and body, sent once to a raw socket server by a client that
takes the direct route and by one configured the same that goes through httpx.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import string
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refresher.platforms.aiohttp_transport import AiohttpTransport
from refresher.platforms.transport import Answer, Transport, WiredClient, make_http_client
from refresher.platforms.wire import wired_netloc

PLAIN = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"


def _httpx_sends(url: str) -> tuple[str, str]:
    parsed = httpx.URL(url)
    return str(parsed), parsed.netloc.decode()


@settings(max_examples=400, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.sampled_from(["127.0.0.1", "partner.shopeemobile.com", "a-b.example", "10.0.0.255", "localhost"]),
    port=st.one_of(st.none(), st.integers(min_value=1, max_value=65535)),
    segments=st.lists(st.text(PLAIN + "%/", max_size=12), min_size=1, max_size=5),
    query=st.one_of(st.none(), st.text(PLAIN + "%/?=&", max_size=40)),
)
def test_a_url_taken_for_the_wire_is_one_httpx_sends_unchanged(
    scheme: str, host: str, port: int | None, segments: list[str], query: str | None
) -> None:
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}/{'/'.join(segments)}"
    url += "" if query is None else f"?{query}"
    netloc = wired_netloc(url)
    if netloc is not None:
        assert _httpx_sends(url) == (url, netloc)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/api/v2/shop/get_shop_info?partner_id=1&sign=ab12&access_token=x-y_z.~",
        "https://open-api.tiktokglobalshop.com/order/202309/orders/search?page_size=20&shop_cipher=GCP_x",
        "http://h/x/%2E%2E/y?q=%7E%2F",
        "http://h:8080/a:b@c/!$&'()*+,;=?a/b?c=d",
        "http://h/x?",
    ],
)
def test_signed_urls_as_the_plugins_build_them_are_taken(url: str) -> None:
    netloc = wired_netloc(url)
    assert netloc is not None
    assert _httpx_sends(url) == (url, netloc)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:80/x",  # httpx drops the default port
        "https://h:443/x",
        "http://h:08080/x",
        "http://Host/x",  # httpx lower-cases the host
        "HTTP://h/x",
        "http://999.1.1.1/x",  # httpx refuses it
        "http://h/a/../b",  # httpx removes dot segments
        "http://h/a/./b",
        "http://h/a/..",
        "http://h/sku one",  # httpx quotes these
        "http://h/x?q=a b",
        "http://h/x?q=é",
        'http://h/x?q="',
        "http://h/x?q=[1]",
        "http://h/x%zz",
        "http://h/x#frag",
        "http://h",
        "http://h?x=1",
        "http://user@h/x",
        "http://h/x?q=" + "a" * 66000,  # httpx refuses it as too long: the route that raises is httpx's
        "http://h/x\n",
    ],
)
def test_what_httpx_would_change_or_refuse_goes_through_httpx(url: str) -> None:
    assert wired_netloc(url) is None


# ------------------------------------------------------------------- the same bytes on the wire


@asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A raw HTTP/1.1 server: records each request's head and body, answers with a cookie and a body."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next((int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length) if length else b""
                received.append(head + body)
                answer = b'{"ok": true, "n": %d}' % len(received)
                writer.write(
                    b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nx-request-id: r-7\r\n"
                    b"set-cookie: session=s%d; Path=/\r\ncontent-length: %d\r\n\r\n"
                    % (len(received), len(answer))
                    + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", received
    finally:
        server.close()
        await server.wait_closed()


def _httpx_route_client() -> httpx.AsyncClient:
    """Configured as make_http_client's, but not a WiredClient: Transport.send goes through httpx."""
    wired = make_http_client()
    assert isinstance(wired, WiredClient)
    return httpx.AsyncClient(
        transport=AiohttpTransport(),
        timeout=wired.timeout,
        headers=wired.headers,
        cookies=wired.cookies.jar,
        follow_redirects=False,
        trust_env=False,
    )


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v2/shop/get_shop_info?partner_id=1&timestamp=2&access_token=tok&shop_id=3&sign=ab", {}),
    ("get", "/lower/case/method", {}),
    ("POST", "/order/202309/orders/search?page_size=20", {"content": b'{"a": 1}'}),
    ("POST", "/empty-post", {}),
    ("PUT", "/empty-body", {"content": b""}),
    ("PATCH", "/x", {"content": b"abc", "headers": {"content-type": "text/plain", "Accept": "application/json"}}),
    ("DELETE", "/x?y=1", {"headers": {"x-request-id": "abc", "user-agent": "caller/1"}}),
    ("POST", "/given-length", {"content": b"abc", "headers": {"content-length": "3"}}),
    ("GET", "/given-host", {"headers": {"host": "platform.example"}}),
    ("POST", "/form", {"data": {"k": "v w", "é": "ü&=+", "n": 3, "t": True, "f": False, "none": None}}),
    ("POST", "/form-list", {"data": {"a": ["1", "2"], "b": ("x",)}}),
    ("POST", "/form-typed", {"data": {"k": "v"}, "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
    ("POST", "/form-and-content", {"data": {"k": "v"}, "content": b"raw"}),  # content wins, as in httpx
    ("POST", "/empty-form", {"data": {}}),
    ("GET", "/sku one", {}),  # not plain: httpx quotes it, on both
    ("GET", "/q", {"params": [("b", "2"), ("a", "1")]}),  # parameters to merge: httpx, on both
]


async def _answers(client: httpx.AsyncClient, base: str) -> list[Answer]:
    transport = Transport("shopee", dt.timedelta(seconds=10), client)
    return [await transport.send(method, base + path, **dict(kw)) for method, path, kw in REQUESTS]


async def test_each_request_arrives_byte_for_byte_as_through_httpx() -> None:
    async with recording_server() as (base, direct_seen), make_http_client() as wired:
        direct = await _answers(wired, base)
        assert not wired.cookies  # the answers' cookies were not kept
    async with recording_server() as (other_base, httpx_seen), _httpx_route_client() as plain:
        through_httpx = await _answers(plain, other_base)
    port, other_port = base.rsplit(":", 1)[1].encode(), other_base.rsplit(":", 1)[1].encode()
    assert len(direct_seen) == len(httpx_seen) == len(REQUESTS)
    for (method, path, _), seen, expected in zip(REQUESTS, direct_seen, httpx_seen, strict=True):
        assert seen == expected.replace(b"127.0.0.1:" + other_port, b"127.0.0.1:" + port), (method, path)
        assert b"cookie:" not in seen.lower()  # no Set-Cookie of an earlier answer rides along
    for got, want in zip(direct, through_httpx, strict=True):
        assert (got.status, got.headers.multi_items(), got.body) == (want.status, want.headers.multi_items(), want.body)
    assert direct[0].status == 201 and direct[0].headers["x-request-id"] == "r-7"


def test_the_requests_above_take_the_route_they_are_meant_to() -> None:
    """The comparison above is only worth something if most of its requests took the direct route."""
    taken = [wired_netloc("http://127.0.0.1:1" + path) is not None and "params" not in kw for _, path, kw in REQUESTS]
    assert taken == [True] * 14 + [False] * 2
