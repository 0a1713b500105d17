"""The wire under platform calls (refresher/platforms/aiohttp_transport.py), against a raw socket server.

What it must keep from httpx's own transport: the request exactly as httpx built it (a signature covers
the query), one send per request whatever the connection does, bodies as they came (the platform
transport decompresses them with a cap), and errors as httpx's exceptions whose text names no URL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from refresher.domain import TransientError
from refresher.platforms.transport import Transport, make_http_client

SECRET = "sig-secret-value-6c1d9e2f"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A TCP server on a free port; ``received`` collects each request's head as it arrived."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer, received)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.close()
        await server.wait_closed()


async def answer(body: bytes, headers: str = "content-type: application/json") -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: list[bytes]) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            received.append(head)
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            if length:
                await reader.readexactly(length)
            writer.write(f"HTTP/1.1 200 OK\r\n{headers}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()

    return handler


async def test_the_request_target_arrives_exactly_as_httpx_built_it() -> None:
    async with raw_server(await answer(b"{}")) as (url, received), make_http_client() as client:
        # Percent-escapes of unreserved characters, a plus, an encoded slash and non-ASCII: a re-quoting
        # layer would change some of them and break a signature computed over the query.
        target = "/api/v2/x?a=%7Eb&c=d%2Fe&f=g+h&i=%C3%A9&sign=" + SECRET
        request = client.build_request("GET", url + target)
        response = await client.send(request)
        assert response.status_code == 200
        line = received[0].split(b"\r\n")[0].decode()
        assert line == f"GET {request.url.raw_path.decode()} HTTP/1.1"
        headers = [h.split(b":")[0].lower() for h in received[0].split(b"\r\n")[1:] if h]
        assert headers.count(b"user-agent") == 1 and headers.count(b"accept-encoding") == 1


async def test_a_compressed_answer_comes_back_as_sent() -> None:
    body = gzip.compress(b'{"ok": true}')
    handler = await answer(body, "content-type: application/json\r\ncontent-encoding: gzip")
    async with raw_server(handler) as (url, _), make_http_client() as client:
        transport = Transport("shopee", dt.timedelta(seconds=5), client)
        got = await transport.send("GET", url + "/x")
        assert got.json_object("shopee") == {"ok": True}  # the platform transport decoded it, with its cap
        streamed = await client.send(client.build_request("GET", url + "/x"), stream=True)
        assert b"".join([chunk async for chunk in streamed.aiter_raw()]) == body  # not decompressed on the way
        await streamed.aclose()


async def test_a_cookie_an_answer_sets_never_goes_out_with_a_later_request() -> None:
    """One shared client carries every shop's calls (and the proxy's callers'): a cookie one answer sets
    must not ride along with the next shop's request, whichever layer (httpx's client, aiohttp) keeps it."""
    setting = "content-type: application/json\r\nset-cookie: session=shop-one-session; Path=/"
    async with raw_server(await answer(b"{}", setting)) as (url, received), make_http_client() as client:
        transport = Transport("shopee", dt.timedelta(seconds=5), client)
        await transport.send("GET", url + "/api/v2/shop/get_shop_info?shop_id=1")
        await transport.send("GET", url + "/api/v2/shop/get_shop_info?shop_id=2")
        await client.get(url + "/x")  # the proxy's way: the client itself
        assert len(received) == 3
        assert all(b"cookie" not in head.lower().replace(b"set-cookie", b"") for head in received), received[1:]
        assert not client.cookies


async def test_a_connection_closed_without_answer_is_sent_once_even_when_reused() -> None:
    calls = 0

    async def first_answers_then_closes(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: list[bytes]
    ) -> None:
        nonlocal calls
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            received.append(head)
            calls += 1
            if calls > 1:
                return  # read the request, answer nothing, close: did the platform act on it? unknown
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    async with raw_server(first_answers_then_closes) as (url, received), make_http_client() as client:
        transport = Transport("tiktok_shop", dt.timedelta(seconds=5), client)
        await transport.send("GET", url + "/token/refresh?refresh_token=" + SECRET)
        with pytest.raises(TransientError) as caught:
            await transport.send("GET", url + "/token/refresh?refresh_token=" + SECRET)
        assert len(received) == 2  # never a third: a resend would spend the refresh token twice
        assert SECRET not in str(caught.value) and "/token/refresh" in str(caught.value)


async def test_errors_are_httpx_errors_that_name_no_url() -> None:
    async with raw_server(await answer(b"{}")) as (url, _):
        port = int(url.rsplit(":", 1)[1])
    async with make_http_client() as client:  # the server is gone: nothing listens on that port
        with pytest.raises(httpx.ConnectError) as caught:
            await client.get(f"http://127.0.0.1:{port}/x?access_token={SECRET}")
        assert SECRET not in str(caught.value)
        transport = Transport("lazada", dt.timedelta(seconds=5), client)
        with pytest.raises(TransientError) as failed:
            await transport.send("GET", f"http://127.0.0.1:{port}/rest/auth?sign={SECRET}")
        assert SECRET not in str(failed.value) and "connection failed" in str(failed.value)
