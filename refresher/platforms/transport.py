"""The defensive HTTP plumbing every plugin uses: one request within a deadline and a size cap, and the
reading of an answer into a JSON object or a classified error.

It is a separate object (:class:`Transport`) that a :class:`~refresher.platforms.base.Platform` holds,
not a part of the plugin class: a plugin decides *what* to send and how to read the platform's error
envelope, the transport decides how bytes travel and how a broken answer is recognised.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import http.cookiejar
import json
import re
import zlib
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from refresher.domain import MalformedAnswer, PlatformTimeout, RefresherError, TransientError
from refresher.platforms.aiohttp_transport import AiohttpTransport, Body
from refresher.platforms.wire import form_body, wire_headers, wired_netloc

# A token endpoint's answer is a few KiB; anything far larger is hostile or broken.
MAX_ANSWER_BYTES = 1 << 20
# An API call relayed by the proxy may be larger (order lists, product pages).
MAX_API_ANSWER_BYTES = 32 << 20


@dataclass(frozen=True)
class Answer:
    """A platform's HTTP answer, read with a size cap."""

    status: int
    headers: httpx.Headers
    body: bytes

    def json_object(self, platform: str) -> dict[str, Any]:
        """The body as a JSON object, or a :class:`MalformedAnswer` that says what it was instead."""
        return parse_json_object(self.body, platform, self.status, self.headers.get("content-type", ""))


def safe_excerpt(body: bytes, limit: int = 120) -> str:
    """A short printable excerpt of a body for logs, with anything token-like masked."""
    text = body[:limit].decode("utf-8", "replace")
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text)
    # Long runs of token characters look like secrets: mask them whatever key they sit under.
    return re.sub(r"[A-Za-z0-9_\-.*!]{24,}", "[redacted]", text).strip()


def parse_json_object(body: bytes, platform: str, status: int, content_type: str = "") -> dict[str, Any]:
    if not body.strip():
        raise MalformedAnswer("empty answer", platform=platform, http_status=status)
    head = body.lstrip()[:1]
    if head == b"<":
        raise MalformedAnswer(
            f"HTML instead of JSON ({safe_excerpt(body, 60)!r})", platform=platform, http_status=status
        )
    try:
        data = json.loads(body)
    except RecursionError:
        raise MalformedAnswer("JSON nested too deeply", platform=platform, http_status=status) from None
    except (ValueError, UnicodeDecodeError):
        raise MalformedAnswer(
            f"unreadable JSON ({safe_excerpt(body, 60)!r})", platform=platform, http_status=status
        ) from None
    if not isinstance(data, dict):
        raise MalformedAnswer(f"JSON {type(data).__name__} instead of an object", platform=platform, http_status=status)
    return data


def retry_after_seconds(headers: httpx.Headers, now: dt.datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), capped at one hour."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    return max(0.0, min(seconds, 3600.0))


def http_status_error(answer: Answer, platform: str) -> RefresherError | None:
    """The transient classes that HTTP status alone settles (429, 5xx); ``None`` otherwise."""
    if answer.status == 429 or answer.status >= 500:
        return TransientError(
            "rate limited" if answer.status == 429 else "platform server error",
            platform=platform,
            http_status=answer.status,
            retry_after=retry_after_seconds(answer.headers),
        )
    return None


def looks_like_api_answer(answer: Answer) -> bool:
    """A body that claims to be JSON, or an HTML page where JSON was due (a gateway's error page).

    Anything else that is not JSON with a 2xx status is a download (a label PDF, an image) and no error.
    """
    content_type = answer.headers.get("content-type", "").lower()
    return "json" in content_type or "html" in content_type or answer.body.lstrip()[:1] in (b"<", b"{", b"")


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that keeps nothing. The one client carries every shop's calls and every proxy caller's: a
    cookie one platform answer sets (a load balancer's, a session's) must never go out with the next
    shop's request. httpx's client keeps cookies unless its jar refuses them; aiohttp's jar is a dummy."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


class _NoCookieStore(httpx.Cookies):
    """httpx's cookie store over that jar, which also skips the work of offering each answer to it: httpx
    wraps every response and request in urllib's types for the jar (~5 % of a refresh's CPU in the soak)."""

    def __init__(self) -> None:
        super().__init__(_NoCookies())

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class WiredClient(httpx.AsyncClient):
    """The client :func:`make_http_client` makes: httpx's API over :class:`AiohttpTransport`, which
    :meth:`Transport.send` also calls directly (``wire``) for a request that needs nothing of httpx's.
    It keeps no cookie (:class:`_NoCookies` says why)."""

    def __init__(self, wire: AiohttpTransport, **options: Any) -> None:
        self._no_cookies = _NoCookieStore()
        super().__init__(transport=wire, **options)
        self.wire = wire

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("the platform client keeps no cookies")


def make_http_client(timeout: float = 20.0, max_connections: int = 100) -> httpx.AsyncClient:
    """The one shared client: explicit timeouts, bounded pool, raw bodies (we decompress with a cap).

    httpx's API over aiohttp's wire (:mod:`refresher.platforms.aiohttp_transport`, which says why).
    """
    return WiredClient(
        AiohttpTransport(max_connections=max_connections),
        timeout=httpx.Timeout(timeout, connect=10.0),
        headers={"user-agent": "refresher/0.1", "accept-encoding": "gzip, deflate"},
        follow_redirects=False,
        trust_env=False,
    )


class Transport:
    """Sends one platform's requests through a shared ``httpx.AsyncClient`` and reads the answers."""

    def __init__(self, platform: str, timeout: dt.timedelta, http: httpx.AsyncClient | None = None) -> None:
        self.platform = platform
        self.timeout = timeout
        self._http = http

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = make_http_client()
        return self._http

    def envelope(self, answer: Answer, what: str) -> dict[str, Any]:
        """The answer's JSON object; an unreadable body with a 429/5xx status is that status's error."""
        try:
            return answer.json_object(self.platform)
        except MalformedAnswer as exc:
            status_error = http_status_error(answer, self.platform)
            if status_error is not None:
                raise status_error from None
            exc.message = f"{what}: {exc.message}"
            # An unreadable body has no request id of its own; TikTok's gateway log id is the next best.
            exc.request_id = exc.request_id or answer.headers.get("x-tt-logid")
            raise

    def checked_json(
        self,
        answer: Answer,
        what: str,
        error_of: Callable[[dict[str, Any]], RefresherError | None],
        request_id_of: Callable[[Mapping[str, Any]], str | None],
    ) -> dict[str, Any]:
        """The answer's JSON object when it is a success, else the classified error raised.

        ``error_of`` reads the platform's own error envelope. Its verdict wins, except that a 429/5xx whose
        body is not the platform's envelope (a gateway's page) is classified by its HTTP status, so that a
        ``Retry-After`` is kept; a transient verdict of the envelope keeps the status's ``Retry-After``.
        """
        status_error = http_status_error(answer, self.platform)
        data = self.envelope(answer, what)
        error = error_of(data)
        if isinstance(error, MalformedAnswer) and status_error is not None:
            error = status_error
        if error is not None:
            if type(error) is TransientError and status_error is not None and error.retry_after is None:
                error.retry_after = status_error.retry_after
            raise error
        if status_error is not None:
            status_error.request_id = request_id_of(data)
            raise status_error
        if answer.status >= 400:
            raise MalformedAnswer(
                f"{what}: HTTP {answer.status} without an error code",
                platform=self.platform,
                http_status=answer.status,
                request_id=request_id_of(data),
            )
        return data

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = MAX_ANSWER_BYTES,
        what: str = "request",
    ) -> Answer:
        """Send one request and read the answer within the app's total timeout and a size cap.

        Every transport failure becomes a :class:`TransientError` whose message names the endpoint by
        path only: URLs may carry secrets in their query, so neither they nor httpx's own exception
        (which quotes them) ever reach a message, a log or a traceback.
        """
        total = self.timeout.total_seconds()
        name = self.platform
        client = self.http
        # The request straight onto the wire when httpx would send it exactly as given (see platforms/wire.py);
        # anything else (parameters to merge, a URL httpx must quote or normalise) through httpx.
        netloc = None
        if isinstance(client, WiredClient) and params is None and not client.cookies:
            netloc = wired_netloc(url)
        body, form = (content, False) if content is not None or not data else (form_body(data), True)
        try:
            async with asyncio.timeout(total):
                if netloc is not None:
                    assert isinstance(client, WiredClient)
                    wired = await client.wire.open(
                        method.upper(),
                        url,
                        wire_headers(client, method.upper(), netloc, body, headers, form=form),
                        body or None,
                        client.timeout.as_dict(),
                    )
                    status, answer_headers = wired.status, httpx.Headers(wired.raw_headers)
                    try:
                        raw = await _read_capped(status, answer_headers, Body(wired), max_bytes, name, what)
                    finally:
                        wired.release()
                else:
                    request = client.build_request(
                        method, url, params=_query(params), data=data, content=content, headers=headers
                    )
                    response = await client.send(request, stream=True)
                    status, answer_headers = response.status_code, response.headers
                    try:
                        raw = await _read_capped(status, answer_headers, response.aiter_raw(), max_bytes, name, what)
                    finally:
                        await response.aclose()
        except TimeoutError:
            raise PlatformTimeout(f"{what}: no complete answer within {total:g}s", platform=name) from None
        except httpx.TimeoutException:
            raise PlatformTimeout(f"{what}: timed out ({_path(url)})", platform=name) from None
        except httpx.TransportError as exc:
            message = f"{what}: connection failed ({type(exc).__name__} on {_path(url)})"
            raise TransientError(message, platform=name) from None
        encoding = answer_headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate", "br", "zstd"):
            raw = _decode_bounded(raw, encoding, max_bytes, name, what)
        return Answer(status, answer_headers, raw)


def _path(url: str) -> str:
    # Only for messages, so parsed only when one is written: the proxy's signed URLs are long, and
    # httpx parses each URL once already when it builds the request.
    return urlsplit(url).path


async def _read_capped(
    status: int, headers: httpx.Headers, chunks: AsyncIterable[bytes], max_bytes: int, platform: str, what: str
) -> bytes:
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise MalformedAnswer(
            f"{what}: answer of {declared} bytes exceeds the {max_bytes}-byte limit",
            platform=platform,
            http_status=status,
        )
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise MalformedAnswer(
                f"{what}: answer exceeds the {max_bytes}-byte limit",
                platform=platform,
                http_status=status,
            )
        parts.append(chunk)
    return b"".join(parts)


def _query(params: Sequence[tuple[str, str]] | Mapping[str, str] | None) -> httpx.QueryParams | None:
    """Query parameters in their given order (a signature may depend on it)."""
    if params is None:
        return None
    return httpx.QueryParams(list(params.items()) if isinstance(params, Mapping) else list(params))


def _decode_bounded(raw: bytes, encoding: str, max_bytes: int, platform: str, what: str) -> bytes:
    """Decompress with a cap, so a small gzip bomb cannot blow up memory."""
    if encoding not in ("gzip", "deflate"):
        raise MalformedAnswer(f"{what}: unsupported content-encoding {encoding}", platform=platform)
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        decoder = zlib.decompressobj(wbits)
        out = decoder.decompress(raw, max_bytes + 1)
    except zlib.error:
        raise MalformedAnswer(f"{what}: corrupt {encoding} body", platform=platform) from None
    if len(out) > max_bytes:
        raise MalformedAnswer(f"{what}: answer exceeds the {max_bytes}-byte limit", platform=platform)
    return out
