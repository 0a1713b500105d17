"""Alarm channels: a signed JSON webhook (httpx) and every chat or mail service apprise knows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

import httpx
import structlog

from refresher import config
from refresher.alerts.dispatcher import DeliveryError
from refresher.alerts.events import AlarmMessage
from refresher.alerts.signing import signature_headers
from refresher.domain import Clock, SystemClock
from refresher.redaction import register_secrets

log = structlog.get_logger("refresher.alerts")


@runtime_checkable
class Channel(Protocol):
    """Where alarms go. ``send`` raises on failure (the dispatcher retries); it never logs the target."""

    name: str

    async def send(self, message: AlarmMessage) -> None: ...


def encode_json(payload: Any) -> bytes:
    """The exact bytes that are signed and sent (compact, stable key order)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


async def post_signed(
    what: str,
    url: str,
    payload: Any,
    *,
    secret: str | None,
    time_limit: float,
    clock: Clock,
    headers: dict[str, str] | None = None,
) -> None:
    """POST JSON with the refresher signature headers; raise :class:`DeliveryError` unless 2xx.

    A fresh client per call: alarms and hooks are rare, and a channel rebuilt on reload then owns no
    connection pool that would need closing. Errors name ``what`` only: the URL may carry a secret.
    """
    body = encode_json(payload)
    all_headers = {
        **(headers or {}),
        "Content-Type": "application/json",
        "User-Agent": "refresher/0.1",
        **signature_headers(secret, body, clock.now()),
    }
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(time_limit), follow_redirects=False, trust_env=False) as client,
            # httpx's timeout is per read; this bounds a receiver that trickles bytes forever.
            asyncio.timeout(time_limit + 1),
        ):
            response = await client.post(url, content=body, headers=all_headers)
    except TimeoutError:
        raise DeliveryError(f"{what}: no answer within {time_limit:g}s") from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{what}: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"{what}: HTTP {response.status_code}")


class WebhookChannel:
    """POSTs the alarm as JSON, signed with HMAC-SHA256 when the channel has a secret."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        secret: str | None = None,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._url = url
        self._secret = secret
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._clock: Clock = clock or SystemClock()

    def __repr__(self) -> str:
        return f"WebhookChannel(name={self.name!r})"

    async def send(self, message: AlarmMessage) -> None:
        await self.post(message.as_json())

    async def post(self, payload: Any, headers: dict[str, str] | None = None) -> None:
        """POST any JSON payload signed like an alarm (lifecycle events use this too)."""
        await post_signed(
            f"webhook {self.name}",
            self._url,
            payload,
            secret=self._secret,
            time_limit=self._timeout,
            clock=self._clock,
            headers={**self._headers, **(headers or {})},
        )


class AppriseChannel:
    """Any apprise URL (Slack, DingTalk, Feishu/Lark, WeCom ``wecombot://``, Telegram ``tgram://``, mail …).

    apprise is blocking (requests), so it runs in a small thread pool of its own with a timeout; a
    thread that hangs past the timeout is abandoned, not waited for.
    """

    def __init__(self, name: str, url: str, *, timeout: float = 30.0) -> None:
        self.name = name
        self._url = url
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"AppriseChannel(name={self.name!r})"

    async def send(self, message: AlarmMessage) -> None:
        title, body = message.title(), message.text()
        try:
            loop = asyncio.get_running_loop()
            call = loop.run_in_executor(_apprise_pool(), self._notify, title, body)
            ok = await asyncio.wait_for(call, self._timeout)
        except TimeoutError:
            raise DeliveryError(f"apprise {self.name}: no answer within {self._timeout:g}s") from None
        except DeliveryError:
            raise
        except Exception as exc:  # noqa: BLE001 - apprise plugins raise anything; never quote them
            raise DeliveryError(f"apprise {self.name}: {type(exc).__name__}") from None
        if not ok:
            raise DeliveryError(f"apprise {self.name}: the service refused or could not be reached")

    def _notify(self, title: str, body: str) -> bool:
        import apprise

        sender = apprise.Apprise()
        if not sender.add(self._url):
            raise DeliveryError(f"apprise {self.name}: the URL is not one apprise understands")
        return bool(sender.notify(title=title, body=body))


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _apprise_pool() -> concurrent.futures.ThreadPoolExecutor:
    """apprise's own threads, apart from the loop's default executor.

    A notify that hangs past its timeout keeps its thread; in the default executor enough of those would
    starve ``getaddrinfo`` (which asyncio runs there) and so every platform call of the daemon.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="apprise")
        return _POOL


# Random-looking: 8+ characters, no dot (host names have dots), both letters and digits (words do not).
_TOKENISH = re.compile(r"^(?=[^.]*\d)(?=[^.]*[A-Za-z])[^.]{8,}$")


def url_secrets(url: str, *, path_tokens: bool = True) -> list[str]:
    """The parts of a service URL that are probably credentials, for the log redactor.

    Chat URLs carry their tokens as user info, path segments, query values, even the "host"
    (``slack://TokenA/TokenB/TokenC``); only random-looking parts are taken, so that ordinary words
    of a path do not vanish from every log line.
    """
    found = [url]
    try:
        parts = urlsplit(url)
    except ValueError:
        return found
    found += [p for p in (parts.username, parts.password) if p]
    if path_tokens:
        host = parts.netloc.rsplit("@", 1)[-1].split(":", 1)[0]
        candidates = [host, *parts.path.split("/")]
        found += [c for c in candidates if _TOKENISH.match(c)]
    found += [v for _, v in parse_qsl(parts.query) if v]
    return found


_AUTH_HEADER = re.compile(r"(?i)auth|token|key|secret|sign|cookie|pass")


def channel_problems(settings: config.AlertSettings) -> list[str]:
    """One line per channel that can never deliver (for ``check-config`` and the daemon's start-up log).

    Lines name the key path and the channel, never the URL (chat URLs embed their tokens).
    """
    problems = []
    for index, item in enumerate(settings.channels):
        where = f"alerts.channels.{index}.url"
        if isinstance(item, config.WebhookChannel):
            if not re.match(r"^https?://[^\s/]+", item.url):
                problems.append(f"{where}: channel {item.name!r} needs an http:// or https:// URL")
        elif not _apprise_accepts(item.url.get_secret_value()):
            problems.append(
                f"{where}: apprise does not understand the URL of channel {item.name!r} "
                "(unknown service or malformed; WeCom robots are wecombot://, Telegram is tgram://)"
            )
    return problems


def _apprise_accepts(url: str) -> bool:
    import apprise

    # Parsing only: add() builds the service object from the URL without any network call.
    return bool(apprise.Apprise().add(url))


def build_channels(settings: config.AlertSettings, *, clock: Clock | None = None) -> list[Channel]:
    """One channel object per usable configured channel (their secrets are registered for redaction).

    A channel that can never deliver is left out with one error line naming it, rather than failing
    every alarm later, or refusing to start the refreshing that matters more than the alarms.
    """
    problems = channel_problems(settings)
    for problem in problems:
        log.error("alert.channel_unusable", problem=problem)
    broken = {problem.split(":", 1)[0] for problem in problems}
    channels: list[Channel] = []
    for index, item in enumerate(settings.channels):
        # Secrets are registered even for a broken channel: its URL may still reach a log.
        usable = f"alerts.channels.{index}.url" not in broken
        if isinstance(item, config.WebhookChannel):
            secret = item.secret.get_secret_value() if item.secret else None
            auth_headers = [v for k, v in item.headers.items() if _AUTH_HEADER.search(k)]
            register_secrets([secret, *url_secrets(item.url), *auth_headers])
            if usable:
                channels.append(
                    WebhookChannel(
                        item.name,
                        item.url,
                        secret=secret,
                        timeout=item.timeout.total_seconds(),
                        headers=item.headers,
                        clock=clock,
                    )
                )
        else:
            url = item.url.get_secret_value()
            register_secrets(url_secrets(url))
            if usable:
                channels.append(AppriseChannel(item.name, url))
    return channels
