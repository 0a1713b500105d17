"""A hostile platform: a raw asyncio TCP server that answers token calls with bytes no real platform
should send, and the corpus of those answers for each of the four platforms.

A raw socket (not an ASGI app) is the point: a slow drip, a reset mid-body, broken chunked framing or a
lying ``content-length`` cannot be produced through a well-behaved HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import gzip
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from refresher.domain import (
    ConfigError,
    MalformedAnswer,
    RefresherError,
    RefreshTokenRejected,
    TransientError,
)

Writer = asyncio.StreamWriter
Respond = Callable[[Writer], Awaitable[None]]

# Secrets a leak check looks for. Realistic lengths: platform tokens are 32+ characters.
APP_SECRETS: dict[str, dict[str, Any]] = {
    "shopee": {"partner_id": 2001234, "partner_key": "hostile-shopee-partner-key-5f3a9c1e7b"},
    "tiktok_shop": {"app_key": "6abc1hostile", "app_secret": "hostile-tts-app-secret-0d9e8f7a6b5c"},
    "lazada": {"app_key": "120001", "app_secret": "hostile-lazada-app-secret-4c3b2a1f0e"},
    "tiktok": {"client_key": "awhostileclient1", "client_secret": "hostile-tiktok-client-secret-9a8b7c"},
}
OLD_REFRESH_TOKEN = "ROLD-hostile-refresh-token-31f0c8a2d9e47b65"
NEW_ACCESS_TOKEN = "ANEW-hostile-access-token-77aa01bc92de3f40"
NEW_REFRESH_TOKEN = "RNEW-hostile-refresh-token-c4d5e6f708192a3b"
AUTH_CODE = "CODE-hostile-authorization-code-0a1b2c3d4e5f"
PLATFORMS = ("shopee", "tiktok_shop", "lazada", "tiktok")


def secrets_of(platform: str) -> list[str]:
    creds = APP_SECRETS[platform]
    secret = creds.get("partner_key") or creds.get("app_secret") or creds.get("client_secret")
    return [str(secret), OLD_REFRESH_TOKEN, NEW_ACCESS_TOKEN, NEW_REFRESH_TOKEN, AUTH_CODE]


# ------------------------------------------------------------------------------------------- server


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HostileServer:
    """Answers every request with ``respond`` (a coroutine that writes raw bytes), and records it."""

    respond: Respond | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
            self.received.append(Received(method, target, headers, body))
            if self.respond is not None:
                await self.respond(writer)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client gave up first, which is the point of most cases
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


# ----------------------------------------------------------------------------------- responders


def http(
    status: int,
    body: bytes = b"",
    *,
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
    length: int | None = None,
    reason: str = "X",
) -> Respond:
    """A complete HTTP/1.1 answer with ``connection: close``; ``length`` may lie about the body."""

    async def respond(writer: Writer) -> None:
        lines = [f"HTTP/1.1 {status} {reason}"]
        if content_type:
            lines.append(f"content-type: {content_type}")
        if status not in (204, 304):
            lines.append(f"content-length: {len(body) if length is None else length}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append("connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    return respond


def json_answer(status: int, document: Any, **kwargs: Any) -> Respond:
    return http(status, json.dumps(document).encode(), **kwargs)


def raw(data: bytes) -> Respond:
    async def respond(writer: Writer) -> None:
        writer.write(data)
        await writer.drain()

    return respond


def drip(body_start: bytes = b'{"code":', interval: float = 1.0, in_headers: bool = False) -> Respond:
    """One byte a second: the total timeout must end it, not the per-read timeout."""

    async def respond(writer: Writer) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        if not in_headers:
            head += b"content-length: 100000\r\n\r\n"
        writer.write(head)
        await writer.drain()
        payload = b"x-slow: " if in_headers else body_start
        while True:
            for byte in payload:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(interval)
            payload = b"0"

    return respond


def reset_mid_body() -> Respond:
    async def respond(writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4000\r\n\r\n")
        writer.write(b'{"access_token": "' + b"a" * 500)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        # SO_LINGER 0: close sends an RST instead of a FIN, a real "connection reset by peer".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return respond


def truncated_chunked() -> Respond:
    async def respond(writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b'10\r\n{"code":0,"data"\r\n')  # and no terminating 0-chunk
        await writer.drain()

    return respond


def huge(declared: bool) -> Respond:
    """50 MB of JSON-ish bytes, with or without a content-length, streamed in 64 KiB writes."""
    total = 50 * 1024 * 1024
    chunk = b"[" * 65536

    async def respond(writer: Writer) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        head += f"content-length: {total}\r\n\r\n".encode() if declared else b"connection: close\r\n\r\n"
        writer.write(head)
        sent = 0
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)

    return respond


@functools.cache
def _bomb() -> bytes:
    # 50 MB of spaces inside a valid JSON start compress to ~50 KB; the cap must stop the inflation.
    return gzip.compress(b'{"a":"' + b" " * (50 * 1024 * 1024) + b'"}', compresslevel=6)


def gzip_bomb() -> Respond:
    return http(200, _bomb(), headers={"content-encoding": "gzip"})


def redirect_to(location: str) -> Respond:
    return http(301, b"", content_type="text/html", headers={"location": location})


def retry_after_date(seconds: int) -> str:
    # The plugins compute Retry-After dates against the wall clock (HTTP dates are wall-clock times).
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


HTML_LOGIN = (
    b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><form action='/login'>"
    b"<input name='password' type='password'></form></body></html>"
)


# ------------------------------------------------------------------------------ the platforms' shapes

# Where the token fields sit and what each platform's success looks like.
TOKEN_FIELDS = {
    "shopee": ("access_token", "refresh_token", "expire_in"),
    "tiktok_shop": ("access_token", "refresh_token", "access_token_expire_in"),
    "lazada": ("access_token", "refresh_token", "expires_in"),
    "tiktok": ("access_token", "refresh_token", "expires_in"),
}


def success(platform: str, now: int, **changes: Any) -> dict[str, Any]:
    """A well-formed success answer; ``changes`` replace token fields (``...`` removes one)."""
    fields: dict[str, Any]
    if platform == "shopee":
        fields = {"access_token": NEW_ACCESS_TOKEN, "refresh_token": NEW_REFRESH_TOKEN, "expire_in": 14400}
    elif platform == "tiktok_shop":
        fields = {
            "access_token": NEW_ACCESS_TOKEN,
            "refresh_token": NEW_REFRESH_TOKEN,
            "access_token_expire_in": now + 7 * 86400,
            "refresh_token_expire_in": now + 60 * 86400,
            "open_id": "hostile-open-id",
            "seller_name": "Hostile",
            "granted_scopes": ["seller.authorization.info"],
        }
    elif platform == "lazada":
        fields = {
            "access_token": NEW_ACCESS_TOKEN,
            "refresh_token": NEW_REFRESH_TOKEN,
            "expires_in": 2592000,
            "refresh_expires_in": 15552000,
            "account": "seller@example.com",
            "country": "sg",
            "country_user_info": [{"country": "sg", "seller_id": "1001", "user_id": "2002", "short_code": "SG1"}],
        }
    else:
        fields = {
            "access_token": NEW_ACCESS_TOKEN,
            "refresh_token": NEW_REFRESH_TOKEN,
            "expires_in": 7200,
            "refresh_expires_in": 31536000,
            "open_id": "hostile-open-id",
            "scope": "user.info.basic",
            "token_type": "Bearer",
        }
    for key, value in changes.items():
        if value is ...:
            fields.pop(key, None)
        else:
            fields[key] = value
    return wrap(platform, fields)


def wrap(platform: str, fields: dict[str, Any]) -> dict[str, Any]:
    if platform == "shopee":
        return {"error": "", "message": "", "request_id": "rid-hostile", "partner_id": 2001234, **fields}
    if platform == "tiktok_shop":
        return {"code": 0, "message": "success", "request_id": "rid-hostile", "data": fields}
    if platform == "lazada":
        return {"code": "0", "request_id": "rid-hostile", **fields}
    return {**fields, "log_id": "rid-hostile"}


def error_envelope(platform: str, kind: str, message: str = "") -> dict[str, Any]:
    """The platform's own error envelope for a kind: rejected, config, busy, unknown."""
    codes: dict[str, dict[str, str | int]] = {
        "shopee": {
            "rejected": "error_shop_refresh_token",
            "config": "error_sign",
            "busy": "error_busy",
            "unknown": "error_never_seen_before",
        },
        "tiktok_shop": {"rejected": 36004005, "config": 106001, "busy": 36009003, "unknown": 99999999},
        "lazada": {
            "rejected": "IllegalRefreshToken",
            "config": "IncompleteSignature",
            "busy": "ApiCallLimit",
            "unknown": "SomethingNew",
        },
        "tiktok": {
            "rejected": "invalid_grant",
            "config": "invalid_client",
            "busy": "temporarily_unavailable",
            "unknown": "never_seen_before",
        },
    }
    code = codes[platform][kind]
    text = message or f"{kind} answer"
    if platform == "shopee":
        return {"error": code, "message": text, "request_id": "rid-hostile"}
    if platform == "tiktok_shop":
        return {"code": code, "message": text, "request_id": "rid-hostile", "data": None}
    if platform == "lazada":
        return {"code": code, "type": "ISV", "message": text, "request_id": "rid-hostile"}
    return {"error": code, "error_description": text, "log_id": "rid-hostile"}


# ------------------------------------------------------------------------------------------ corpus

ACCEPTED = None  # the answer is odd but usable: the new tokens must be kept, not dropped


@dataclass(frozen=True)
class Case:
    name: str
    respond: Respond
    expect: type[RefresherError] | None  # the error class the plugin must raise (or ACCEPTED)
    exact: bool = False  # True: a TransientError that must not be a MalformedAnswer (or the reverse)
    retry_after: tuple[float, float] | None = None  # bounds for error.retry_after
    redirect: bool = False  # the case redirects to a second listener that must stay untouched


WRONG_TYPES: tuple[Any, ...] = (12345, 1.5, True, [], {}, ["a"], {"v": "x"})
BAD_SECONDS: tuple[Any, ...] = ("soon", "12h", True, [], {}, -5, 10**15, float("nan"), float("inf"))


def corpus(platform: str, now: int, elsewhere: str) -> list[Case]:
    """At least 30 bad answers for ``platform`` (``now``: epoch seconds of the plugin's clock)."""
    access_key, refresh_key, expiry_key = TOKEN_FIELDS[platform]
    cases = [
        Case("slow-drip-body", drip(), TransientError),
        Case("slow-drip-headers", drip(in_headers=True), TransientError),
        Case("reset-mid-body", reset_mid_body(), TransientError, exact=True),
        Case("close-without-answer", raw(b""), TransientError, exact=True),
        Case("not-http", raw(b"SSH-2.0-OpenSSH_9.6\r\n"), TransientError, exact=True),
        Case("truncated-chunked", truncated_chunked(), TransientError),
        Case("short-content-length", http(200, b'{"code":0}', length=400), TransientError, exact=True),
        Case("body-50mb-declared", huge(declared=True), MalformedAnswer),
        Case("body-50mb-streamed", huge(declared=False), MalformedAnswer),
        Case("gzip-bomb", gzip_bomb(), MalformedAnswer),
        Case(
            "corrupt-gzip", http(200, b"\x1f\x8b\x08\x00garbage", headers={"content-encoding": "gzip"}), MalformedAnswer
        ),
        Case(
            "brotli-unsupported", http(200, b"\x0b\x02\x80{}\x03", headers={"content-encoding": "br"}), MalformedAnswer
        ),
        Case("nested-100k", http(200, b"[" * 100_000 + b"]" * 100_000), MalformedAnswer),
        Case("nested-100k-objects", http(200, b'{"a":' * 100_000 + b"1" + b"}" * 100_000), MalformedAnswer),
        Case("invalid-utf8", http(200, b'{"access_token": "\xff\xfe\xc3\x28"}'), MalformedAnswer),
        Case("truncated-json", http(200, json.dumps(success(platform, now)).encode()[:-7]), MalformedAnswer),
        Case("json-array", http(200, b"[1,2,3]"), MalformedAnswer),
        Case("json-null", http(200, b"null"), MalformedAnswer),
        Case("json-string", http(200, b'"ok"'), MalformedAnswer),
        Case("plain-text", http(200, b"OK", content_type="text/plain"), MalformedAnswer),
        Case("html-login-200", http(200, HTML_LOGIN, content_type="text/html"), MalformedAnswer),
        Case("empty-200", http(200, b""), MalformedAnswer),
        Case("whitespace-200", http(200, b" \r\n\t "), MalformedAnswer),
        Case("no-content-204", http(204, content_type=None), MalformedAnswer),
        Case("redirect-301", redirect_to(f"{elsewhere}/login?next=/token"), MalformedAnswer, redirect=True),
        Case(
            "redirect-302-json",
            http(302, b"{}", headers={"location": f"{elsewhere}/x"}),
            MalformedAnswer,
            redirect=True,
        ),
        Case("html-401", http(401, HTML_LOGIN, content_type="text/html"), MalformedAnswer),
        Case("html-403", http(403, b"<html>Forbidden</html>", content_type="text/html"), MalformedAnswer),
        Case("empty-404", http(404, b""), MalformedAnswer),
        Case("json-404-not-envelope", http(404, b'{"detail":"Not Found"}'), MalformedAnswer),
        Case(
            "html-500",
            http(500, b"<html>Internal Server Error</html>", content_type="text/html"),
            TransientError,
            exact=True,
        ),
        Case("empty-502", http(502, b""), TransientError, exact=True),
        Case(
            "html-503",
            http(503, b"<html>Service Unavailable</html>", content_type="text/html"),
            TransientError,
            exact=True,
        ),
        Case("gateway-504", http(504, b"upstream timed out", content_type="text/plain"), TransientError, exact=True),
        Case("429-no-retry-after", http(429, b""), TransientError, exact=True),
        Case(
            "429-retry-after-seconds",
            http(429, b"", headers={"retry-after": "7"}),
            TransientError,
            exact=True,
            retry_after=(7, 7),
        ),
        Case(
            "429-retry-after-date",
            lambda w: http(429, b"", headers={"retry-after": retry_after_date(30)})(w),
            TransientError,
            exact=True,
            retry_after=(20, 31),
        ),
        Case(
            "429-retry-after-garbage", http(429, b"", headers={"retry-after": "soon-ish"}), TransientError, exact=True
        ),
        Case(
            "error200-unknown-code", json_answer(200, error_envelope(platform, "unknown")), TransientError, exact=True
        ),
        Case("error200-busy", json_answer(200, error_envelope(platform, "busy")), TransientError, exact=True),
        Case("error200-rejected", json_answer(200, error_envelope(platform, "rejected")), RefreshTokenRejected),
        Case("error200-config", json_answer(200, error_envelope(platform, "config")), ConfigError),
        Case("error400-rejected", json_answer(400, error_envelope(platform, "rejected")), RefreshTokenRejected),
        Case("error500-unknown", json_answer(500, error_envelope(platform, "unknown")), TransientError, exact=True),
        # The platform quotes our secrets back in its message: none of them may reach the error.
        Case(
            "error-echoes-secrets",
            json_answer(200, error_envelope(platform, "rejected", " ".join(secrets_of(platform)))),
            RefreshTokenRejected,
        ),
        Case(
            "null-tokens",
            json_answer(200, success(platform, now, **{access_key: None, refresh_key: None})),
            MalformedAnswer,
        ),
        Case(
            "empty-tokens",
            json_answer(200, success(platform, now, **{access_key: "", refresh_key: ""})),
            MalformedAnswer,
        ),
        Case("no-fields", json_answer(200, wrap(platform, {})), MalformedAnswer),
        # 1e999 parses to infinity in Python's json module: a number no expiry can be.
        Case(
            "infinite-expiry",
            http(200, json.dumps(success(platform, now, **{expiry_key: "@X@"})).replace('"@X@"', "1e999").encode()),
            MalformedAnswer,
        ),
    ]
    for key in (access_key, refresh_key, expiry_key):
        cases.append(Case(f"missing-{key}", json_answer(200, success(platform, now, **{key: ...})), MalformedAnswer))
    for key in (access_key, refresh_key):
        for index, value in enumerate(WRONG_TYPES):
            cases.append(
                Case(
                    f"wrong-type-{key}-{index}-{type(value).__name__}",
                    json_answer(200, success(platform, now, **{key: value})),
                    MalformedAnswer,
                )
            )
    for index, value in enumerate(BAD_SECONDS):
        cases.append(
            Case(
                f"bad-{expiry_key}-{index}-{value!r}"[:60],
                http(200, json.dumps(success(platform, now, **{expiry_key: value})).encode()),
                MalformedAnswer,
            )
        )
    # A zero lifetime: Shopee and TikTok Shop document it as impossible; Lazada/TikTok get a token due now.
    cases.append(
        Case(
            "zero-expiry",
            json_answer(200, success(platform, now, **{expiry_key: 0})),
            MalformedAnswer if platform in ("shopee", "tiktok_shop") else ACCEPTED,
        )
    )
    # Odd but usable: the platform already rotated, so dropping these tokens would lose the grant.
    if platform == "tiktok_shop":
        cases.append(
            Case(
                "absolute-expiry-in-the-past",
                json_answer(200, success(platform, now, access_token_expire_in=now - 86400)),
                ACCEPTED,
            )
        )
        cases.append(
            Case(
                "relative-seconds-instead-of-absolute",
                json_answer(200, success(platform, now, access_token_expire_in=7 * 86400)),
                ACCEPTED,
            )
        )
    else:
        cases.append(
            Case(
                "expiry-as-numeric-string",
                json_answer(200, success(platform, now, **{expiry_key: "3600"})),
                ACCEPTED if platform != "shopee" else MalformedAnswer,
            )
        )
    cases.append(
        Case(
            "wrong-content-type-valid-body",
            http(200, json.dumps(success(platform, now)).encode(), content_type="text/html"),
            ACCEPTED,
        )
    )
    cases.append(
        Case(
            "unknown-extra-fields",
            json_answer(200, {**success(platform, now), "zzz": {"deep": [1, 2, {"x": None}]}}),
            ACCEPTED,
        )
    )
    return cases
