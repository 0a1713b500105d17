"""The platform plugin contract and the defensive HTTP plumbing every plugin shares.

A plugin is a :class:`Platform` subclass registered under the entry-point group
``refresher.platforms``. One instance serves one configured app: it holds the app's credentials, the
shared ``httpx.AsyncClient`` and the clock. A plugin knows nothing of the store or the scheduler: it turns
credentials and tokens into HTTP calls and the answers back into domain values or classified errors.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel

from refresher.config import AppSettings
from refresher.domain import (
    Clock,
    Grant,
    Identity,
    MalformedAnswer,
    PlatformTimeout,
    RefresherError,
    SystemClock,
    TokenSet,
    TransientError,
)

# A token endpoint's answer is a few KiB; anything far larger is hostile or broken.
MAX_ANSWER_BYTES = 1 << 20
# An API call relayed by the proxy may be larger (order lists, product pages).
MAX_API_ANSWER_BYTES = 32 << 20


@dataclass(frozen=True)
class PKCE:
    verifier: str = field(repr=False)
    challenge: str
    method: str = "S256"


@dataclass(frozen=True)
class ApiCall:
    """An API call as a caller describes it, before the platform's auth is added."""

    method: str
    path: str  # platform path, e.g. /api/v2/shop/get_shop_info or /order/202309/orders/search
    query: Sequence[tuple[str, str]] = ()
    body: bytes | None = None
    content_type: str | None = None
    timestamp: int | None = None  # use this timestamp instead of the clock (debugging a sign)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SignedCall:
    """The call as it goes on the wire."""

    method: str
    url: str = field(repr=False)  # may carry an access token in its query
    headers: Mapping[str, str] = field(repr=False)
    body: bytes | None
    sign: str
    base_url: str


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


# ----------------------------------------------------------------------------------------- values


def as_text(data: Mapping[str, Any], key: str, platform: str, *, required: bool = True) -> str | None:
    """A field that must be a non-empty string (numbers are accepted and turned into text)."""
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise MalformedAnswer(f"answer lacks {key}", platform=platform)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedAnswer(f"{key} has the wrong type ({type(value).__name__})", platform=platform)
    return str(value)


def as_token(data: Mapping[str, Any], key: str, platform: str, request_id: str | None = None) -> str:
    """A token must be a non-empty string: a number or an object in its place is a broken answer."""
    value = data.get(key)
    if value is None or value == "":
        raise MalformedAnswer(f"answer lacks {key}", platform=platform, request_id=request_id)
    if not isinstance(value, str):
        raise MalformedAnswer(
            f"{key} has the wrong type ({type(value).__name__})", platform=platform, request_id=request_id
        )
    return value


def as_seconds(data: Mapping[str, Any], key: str, platform: str, *, required: bool = True) -> int | None:
    """A count of seconds or an epoch time given as a number or a numeric string (Lazada's docs use both)."""
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise MalformedAnswer(f"answer lacks {key}", platform=platform)
        return None
    if isinstance(value, bool):
        raise MalformedAnswer(f"{key} has the wrong type (bool)", platform=platform)
    if isinstance(value, str):
        if not re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
            raise MalformedAnswer(f"{key} is not a number", platform=platform)
        value = float(value)
    if not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
        raise MalformedAnswer(f"{key} has the wrong type ({type(value).__name__})", platform=platform)
    if value < 0 or value > 10**11:
        raise MalformedAnswer(f"{key} is out of range", platform=platform)
    return int(value)


# How long salvaged tokens are trusted: short, so the next sweep refreshes them with a proper answer.
SALVAGED_LIFETIME = dt.timedelta(minutes=10)


def salvage(error: MalformedAnswer, data: Mapping[str, Any], now: dt.datetime) -> MalformedAnswer:
    """Attach the new tokens of a flawed success answer to its error, if both tokens are there.

    A platform that rotates has invalidated the old refresh token the moment it answered: dropping the
    new pair because, say, ``expires_in`` was a word, would cost a re-authorization by the seller.
    """
    access, refresh = data.get("access_token"), data.get("refresh_token")
    if isinstance(access, str) and access and isinstance(refresh, str) and refresh:
        error.salvaged = TokenSet(
            access_token=access,
            refresh_token=refresh,
            access_expires_at=now + SALVAGED_LIFETIME,
            refresh_expires_at=None,
            raw={"salvaged_because": error.message},
        )
    return error


# ----------------------------------------------------------------------------------------- plugin


class Platform(ABC):
    """One platform's protocol, bound to one app's credentials."""

    #: entry-point name (``shopee``, ``tiktok_shop`` …)
    name: ClassVar[str]
    #: pydantic model of the app's credential keys (``extra="forbid"`` so typos are errors)
    credentials_model: ClassVar[type[BaseModel]]
    #: role → production URL; ``base_url`` of the app replaces them all, ``hosts`` one by one
    default_hosts: ClassVar[Mapping[str, str]]
    #: default cron schedule and refresh window, from the platform's lifetimes (platforms.md)
    default_schedule: ClassVar[str] = "*/10 * * * *"
    default_refresh_before: ClassVar[dt.timedelta] = dt.timedelta(hours=1)
    #: how long the code in a callback stays usable, for messages and the sandbox
    code_lifetime: ClassVar[dt.timedelta] = dt.timedelta(minutes=10)
    supports_pkce: ClassVar[bool] = False
    #: query parameters of the callback that are secrets (never logged)
    secret_callback_params: ClassVar[frozenset[str]] = frozenset({"code"})

    def __init__(
        self,
        app: AppSettings,
        http: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self.clock: Clock = clock or SystemClock()
        self._http = http

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = make_http_client()
        return self._http

    def host(self, role: str) -> str:
        """The URL for a host role: the app's per-role override, else its ``base_url``, else production."""
        if role in self.app.hosts:
            return self.app.hosts[role].rstrip("/")
        if self.app.base_url:
            return self.app.base_url.rstrip("/")
        return self.default_hosts[role].rstrip("/")

    def now(self) -> dt.datetime:
        return self.clock.now()

    def timestamp(self) -> int:
        return int(self.now().timestamp())

    # -- the contract ------------------------------------------------------------------------------

    @abstractmethod
    def authorize_url(self, state: str, redirect_uri: str | None = None, pkce: PKCE | None = None) -> str:
        """The URL a seller opens to grant access."""

    @abstractmethod
    async def exchange_code(
        self, callback_params: Mapping[str, str], pkce: PKCE | None = None, redirect_uri: str | None = None
    ) -> list[Grant]:
        """Turn the callback's parameters (``code`` and friends) into one grant per account."""

    @abstractmethod
    async def refresh(self, identity: Identity, refresh_token: str) -> TokenSet:
        """Exchange a refresh token for a new token set (the new refresh token replaces the old)."""

    @abstractmethod
    def sign_call(self, call: ApiCall, access_token: str | None = None, identity: Identity | None = None) -> SignedCall:
        """Add the app's credentials, the access token and the signature to an API call."""

    @abstractmethod
    def classify_api_answer(self, answer: Answer) -> RefresherError | None:
        """Classify a business API answer: ``None`` when it is a success (or not an auth matter).

        Returns :class:`~refresher.domain.AccessTokenInvalid` when the access token was refused, so the
        proxy can refresh once and retry once.
        """

    def callback_error(self, callback_params: Mapping[str, str]) -> RefresherError | None:
        """The platform's own denial in a callback (``error=access_denied`` and variants), if any."""
        from refresher.domain import AuthorizationDenied

        error = callback_params.get("error")
        if error:
            description = callback_params.get("error_description", "")
            return AuthorizationDenied(
                f"authorization declined on the platform ({error}{': ' + description[:120] if description else ''})",
                code=error,
                platform=self.name,
            )
        return None

    def pkce_pair(self) -> PKCE | None:
        """A fresh PKCE pair when the platform uses PKCE for this app, else ``None``."""
        return None

    def token_set(self, data: Mapping[str, Any], parse: Callable[[Mapping[str, Any]], TokenSet]) -> TokenSet:
        """``parse(data)``; when it finds the answer flawed, the error carries any new pair (see :func:`salvage`)."""
        try:
            return parse(data)
        except MalformedAnswer as exc:
            raise salvage(exc, data, self.now()) from None  # keep a new pair the platform already issued

    # -- HTTP --------------------------------------------------------------------------------------

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
        ``Retry-After`` is kept.
        """
        status_error = http_status_error(answer, self.name)
        try:
            data = answer.json_object(self.name)
        except MalformedAnswer as exc:
            if status_error is not None:
                raise status_error from None
            exc.message = f"{what}: {exc.message}"
            raise
        error = error_of(data)
        if isinstance(error, MalformedAnswer) and status_error is not None:
            error = status_error
        if error is not None:
            raise error
        if status_error is not None:
            status_error.request_id = request_id_of(data)
            raise status_error
        if answer.status >= 400:
            raise MalformedAnswer(
                f"{what}: HTTP {answer.status} without an error code",
                platform=self.name,
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
        json_body: Any = None,
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
        path = httpx.URL(url).path
        total = self.app.timeout.total_seconds()
        try:
            async with asyncio.timeout(total):
                request = self.http.build_request(
                    method, url, params=_query(params), data=data, json=json_body, content=content, headers=headers
                )
                response = await self.http.send(request, stream=True)
                try:
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise MalformedAnswer(
                            f"{what}: answer of {declared} bytes exceeds the {max_bytes}-byte limit",
                            platform=self.name,
                            http_status=response.status_code,
                        )
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_raw():
                        size += len(chunk)
                        if size > max_bytes:
                            raise MalformedAnswer(
                                f"{what}: answer exceeds the {max_bytes}-byte limit",
                                platform=self.name,
                                http_status=response.status_code,
                            )
                        chunks.append(chunk)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise PlatformTimeout(f"{what}: no complete answer within {total:g}s", platform=self.name) from None
        except httpx.TimeoutException:
            raise PlatformTimeout(f"{what}: timed out ({path})", platform=self.name) from None
        except httpx.TransportError as exc:
            raise TransientError(
                f"{what}: connection failed ({type(exc).__name__} on {path})", platform=self.name
            ) from None
        raw = b"".join(chunks)
        encoding = response.headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate", "br", "zstd"):
            raw = _decode_bounded(raw, encoding, max_bytes, self.name, what)
        return Answer(response.status_code, response.headers, raw)


def _query(params: Sequence[tuple[str, str]] | Mapping[str, str] | None) -> httpx.QueryParams | None:
    """Query parameters in their given order (a signature may depend on it)."""
    if params is None:
        return None
    return httpx.QueryParams(list(params.items()) if isinstance(params, Mapping) else list(params))


def _decode_bounded(raw: bytes, encoding: str, max_bytes: int, platform: str, what: str) -> bytes:
    """Decompress with a cap, so a small gzip bomb cannot blow up memory."""
    import zlib

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


def looks_like_api_answer(answer: Answer) -> bool:
    """A body that claims to be JSON, or an HTML page where JSON was due (a gateway's error page).

    Anything else that is not JSON with a 2xx status is a download (a label PDF, an image) and no error.
    """
    content_type = answer.headers.get("content-type", "").lower()
    return "json" in content_type or "html" in content_type or answer.body.lstrip()[:1] in (b"<", b"{", b"")


def make_http_client(timeout: float = 20.0, max_connections: int = 100) -> httpx.AsyncClient:
    """The one shared client: explicit timeouts, bounded pool, raw bodies (we decompress with a cap)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"user-agent": "refresher/0.1", "accept-encoding": "gzip, deflate"},
        follow_redirects=False,
        trust_env=False,
    )
