"""httpx's client API over aiohttp's connection handling: the wire under every platform call.

Why: httpx's own transport (httpcore over anyio) cost ~3 ms of CPU per request on this project's machines,
more than the whole refresh call of the Node peer we measure against (benchmarks/RESULTS.md, sweep); the
same request through aiohttp costs ~0.3 ms, and through httpx's client with this transport ~0.7 ms. So
the rest of refresher (plugins, proxy, tests) keeps httpx's ``Request``/``Response`` and exceptions, and
only the bytes travel through aiohttp.

What this layer promises, beyond moving bytes:

* The URL goes out exactly as httpx built it (``encoded=True``): a signature covers the query, and
  re-quoting it on the way would break it.
* Nothing is added or removed on the way: no environment proxies, no redirects, no decompression (the
  platform transport decompresses with a size cap), no cookies kept between calls, and never a second
  send of a request that may have reached the platform.
* Every aiohttp failure becomes the matching httpx exception, with a message that names the failure's
  kind only: aiohttp's own messages quote the URL, and URLs carry tokens and signatures.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import aiohttp
import httpx
from yarl import URL


@contextmanager
def _as_httpx_errors(request: httpx.Request | None) -> Iterator[None]:
    """aiohttp's exceptions as httpx's, most specific first, without their text (it quotes the URL)."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError:
        raise httpx.ConnectTimeout("connect timeout", request=request) from None
    except (aiohttp.ServerTimeoutError, TimeoutError):
        # A read that outlived its timeout (aiohttp raises TimeoutError subclasses for both).
        raise httpx.ReadTimeout("read timeout", request=request) from None
    except aiohttp.ClientConnectorError:
        raise httpx.ConnectError("connection refused or unreachable", request=request) from None
    except aiohttp.ServerDisconnectedError:
        raise httpx.RemoteProtocolError("server disconnected", request=request) from None
    except aiohttp.ClientPayloadError:
        raise httpx.ReadError("truncated or malformed body", request=request) from None
    except aiohttp.ClientResponseError:
        # aiohttp's parser refused the status line or headers.
        raise httpx.RemoteProtocolError("malformed HTTP answer", request=request) from None
    except aiohttp.InvalidURL:
        raise httpx.InvalidURL("invalid URL") from None
    except aiohttp.ClientOSError as exc:
        raise httpx.ReadError(f"socket error {exc.errno}", request=request) from None
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(type(exc).__name__, request=request) from None


@functools.lru_cache(maxsize=64)
def _client_timeout(pool: float | None, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
    """httpx's timeouts as aiohttp's (a frozen object, so one per set of values is shared by every call)."""
    return aiohttp.ClientTimeout(total=None, connect=pool, sock_connect=connect, sock_read=read)


class Body(httpx.AsyncByteStream):
    """An answer's body as it arrives; closing it hands the connection back to the pool."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request | None = None) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # A body read to its end returns the connection for reuse; one left unread closes it.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that sends through one pooled ``aiohttp.ClientSession``.

    The session is made on first use inside the running event loop (aiohttp binds it to that loop), and
    made again if a later call runs on another loop (tests and CLI commands run several in turn).
    """

    def __init__(self, max_connections: int = 100, keepalive_seconds: float = 15.0) -> None:
        self._max_connections = max_connections
        self._keepalive = keepalive_seconds
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_for(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        if self._session is None or self._loop is not loop or self._session.closed:
            if self._ssl is None:
                # httpx's own verification settings (certifi's bundle), not the system's.
                self._ssl = httpx.create_ssl_context(trust_env=False)
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
                # httpx sends its own headers; aiohttp must not add a second user-agent or accept.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
            # aiohttp sends an idempotent request (GET) a second time when a reused connection closes
            # without an answer. For a refresh that is the one thing never to do: the first may have
            # rotated the token, and the second would reuse the old one. aiohttp's own test client
            # turns it off the same way; the check makes an upgrade that renames it fail loudly.
            if not hasattr(self._session, "_retry_connection"):
                raise RuntimeError("aiohttp no longer has ClientSession._retry_connection; see aiohttp_transport.py")
            self._session._retry_connection = False
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        timeouts = request.extensions.get("timeout", {})
        response = await self.open(request.method, str(request.url), headers, body or None, timeouts, request)
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode("latin-1")},
        )

    async def open(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request as given (``url`` already in its final, encoded form) and return the answer
        with its body unread: the one place bytes leave through aiohttp, for httpx's API above and for
        :meth:`refresher.platforms.transport.Transport.send`, which calls it directly."""
        session = self._session_for(asyncio.get_running_loop())
        with _as_httpx_errors(request):
            return await session.request(
                method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=_client_timeout(timeouts.get("pool"), timeouts.get("connect"), timeouts.get("read")),
            )

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
