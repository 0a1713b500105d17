"""Where tokens are read from: :class:`TokenSource` (the token API or the store), cached; :func:`get_token`."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from refresher.domain import (
    Clock,
    ConfigError,
    Identity,
    RefresherError,
    SystemClock,
    TransientError,
)
from refresher.store.roles import AccountLookup
from refresher.token_read import ReadRefresher, judge, refusal_message

MIN_MARGIN = dt.timedelta(seconds=60)
MARGIN_FRACTION = 0.1
CACHE_SIZE = 1024


class TokenUnavailable(RefresherError):
    """The token could not be had: unknown account, no token, or the account is not active."""

    error_class = "token_unavailable"


class TokenRefused(TokenUnavailable):
    """The account's token would not work: ``reason`` is ``needs_reauth``, ``disabled``, ``expired`` or
    ``no_token``; ``status`` the account's status; ``reauth_url`` a signed link the seller can open (or
    ``None``). The token API says the same with a 409."""

    error_class = "token_refused"

    def __init__(self, message: str, *, status: str | None, reason: str, reauth_url: str | None = None) -> None:
        super().__init__(message, code=reason, http_status=409)
        self.status = status
        self.reason = reason
        self.reauth_url = reauth_url


@dataclass(frozen=True)
class AccessToken:
    """A current access token and who it belongs to."""

    app: str
    account: str
    token: str = field(repr=False)
    expires_at: dt.datetime
    identity: Identity
    fetched_at: dt.datetime

    def stale_at(self) -> dt.datetime:
        """When a cached copy should be replaced: well before expiry, so a call in flight still works."""
        left = self.expires_at - self.fetched_at
        return self.expires_at - max(MIN_MARGIN, left * MARGIN_FRACTION)


def _identity_from(data: dict[str, Any]) -> Identity:
    return Identity(
        key=str(data["key"]),
        kind=str(data["kind"]),
        platform_id=str(data["platform_id"]),
        name=data.get("name"),
        region=data.get("region"),
        extra=dict(data.get("extra") or {}),
    )


def _parse_time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class TokenSource:
    """Current access tokens, from the token API or straight from a store, with a cache.

    Build one with :meth:`from_api` or :meth:`from_store`. ``get_token`` is the async way in;
    ``get_token_sync`` works only for the API source (a store is asynchronous).
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        api_token: str | None = None,
        store: AccountLookup | None = None,
        clock: Clock | None = None,
        timeout: float = 10.0,
        cache_size: int = CACHE_SIZE,
        reader: ReadRefresher | None = None,
    ) -> None:
        if (url is None) == (store is None):
            raise ValueError("give either url (token API) or store, not both or neither")
        if url is not None and not api_token:
            raise ValueError("the token API needs api_token (a token with the tokens:read scope)")
        self.url = url.rstrip("/") if url else None
        self._api_token = api_token
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self._timeout = timeout
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], AccessToken] = OrderedDict()
        self._lock = threading.Lock()  # the cache is shared by the sync and async flows
        self._reader = reader
        # Single-flight: readers of one account wait for the fetch already under way (async: a task per
        # account and event loop; sync: a lock per account).
        self._fetching: dict[tuple[int, str, str], asyncio.Task[AccessToken]] = {}
        self._sync_locks: dict[tuple[str, str], threading.Lock] = {}
        self._async_http: httpx.AsyncClient | None = None
        self._sync_http: httpx.Client | None = None

    @classmethod
    def from_api(
        cls,
        url: str,
        api_token: str,
        *,
        clock: Clock | None = None,
        timeout: float = 10.0,
        cache_size: int = CACHE_SIZE,
    ) -> TokenSource:
        """Read tokens from a running daemon's token API (``GET /v1/accounts/{app}/{key}/token``); at most
        ``cache_size`` accounts' tokens are cached (least recently used go first)."""
        return cls(url=url, api_token=api_token, clock=clock, timeout=timeout, cache_size=cache_size)

    @classmethod
    def from_store(
        cls, store: AccountLookup, *, clock: Clock | None = None, reader: ReadRefresher | None = None
    ) -> TokenSource:
        """Read tokens straight from an opened store (same process or same database as the daemon); with
        ``reader`` (the daemon's refresher in a :class:`~refresher.token_read.ReadRefresher`) a token
        inside the read margin is refreshed first, as the token API does."""
        return cls(store=store, clock=clock or (reader.refresher.clock if reader else None), reader=reader)

    # -- cache --------------------------------------------------------------------------------------

    def _cached(self, app: str, account: str) -> AccessToken | None:
        with self._lock:
            hit = self._cache.get((app, account))
            if hit is not None:
                self._cache.move_to_end((app, account))
        if hit is not None and self.clock.now() < hit.stale_at():
            return hit
        return None

    def _remember(self, token: AccessToken) -> AccessToken:
        with self._lock:
            self._cache[(token.app, token.account)] = token
            self._cache.move_to_end((token.app, token.account))
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return token

    def invalidate(self, app: str, account: str) -> None:
        """Forget a cached token (the platform refused it)."""
        with self._lock:
            self._cache.pop((app, account), None)

    # -- reading --------------------------------------------------------------------------------------

    async def get_token(self, app: str, account: str) -> AccessToken:
        """The current access token of ``account`` in ``app`` (cached until shortly before expiry)."""
        hit = self._cached(app, account)
        if hit is not None:
            return hit
        key = (id(asyncio.get_running_loop()), app, account)
        task = self._fetching.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch(app, account))
            self._fetching[key] = task
            task.add_done_callback(lambda _t: self._fetching.pop(key, None))
        return await asyncio.shield(task)

    async def _fetch(self, app: str, account: str) -> AccessToken:
        if self.store is not None:
            return self._remember(await self._from_store(app, account))
        if self._async_http is None:
            self._async_http = httpx.AsyncClient(timeout=self._timeout, trust_env=False)
        try:
            response = await self._async_http.get(self._token_url(app, account), headers=self._headers())
        except httpx.TransportError as exc:
            raise TransientError(f"token API unreachable ({type(exc).__name__})") from None
        return self._remember(self._parse(response, app, account))

    def get_token_sync(self, app: str, account: str) -> AccessToken:
        """Blocking :meth:`get_token` for the token API source."""
        hit = self._cached(app, account)
        if hit is not None:
            return hit
        if self.store is not None:
            raise TypeError("a store-backed TokenSource is asynchronous: use await get_token(...)")
        with self._lock:
            one = self._sync_locks.setdefault((app, account), threading.Lock())
        with one:  # the first thread fetches; the others find its answer in the cache
            hit = self._cached(app, account)
            return hit if hit is not None else self._fetch_sync(app, account)

    def _fetch_sync(self, app: str, account: str) -> AccessToken:
        if self._sync_http is None:
            self._sync_http = httpx.Client(timeout=self._timeout, trust_env=False)
        try:
            response = self._sync_http.get(self._token_url(app, account), headers=self._headers())
        except httpx.TransportError as exc:
            raise TransientError(f"token API unreachable ({type(exc).__name__})") from None
        return self._remember(self._parse(response, app, account))

    async def _from_store(self, app: str, account: str) -> AccessToken:
        assert self.store is not None
        found = await self.store.get(app, account)
        if found is None:
            raise TokenUnavailable(f"unknown account {account!r} of app {app!r}")
        if self._reader is not None:
            found = await self._reader.fresh(found)
        reason = judge(found, self.clock.now())
        if reason is not None or found.tokens is None:
            assert reason is not None
            raise TokenRefused(refusal_message(found, reason), status=str(found.status), reason=str(reason))
        return AccessToken(
            app=app,
            account=account,
            token=found.tokens.access_token,
            expires_at=found.tokens.access_expires_at,
            identity=found.identity,
            fetched_at=self.clock.now(),
        )

    def _token_url(self, app: str, account: str) -> str:
        # Keys hold ':' and may hold '/': encode everything so the path has exactly the segments we mean.
        return f"{self.url}/v1/accounts/{quote(app, safe='')}/{quote(account, safe='')}/token"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_token}", "Accept": "application/json"}

    def _parse(self, response: httpx.Response, app: str, account: str) -> AccessToken:
        if response.status_code != 200:
            detail, body = "", None
            try:
                body = response.json()
                if isinstance(body, dict) and isinstance(body.get("detail"), str):
                    detail = ": " + body["detail"][:200]
            except ValueError:
                pass
            where = f"account {account!r} of app {app!r}"
            if response.status_code in (401, 403):
                raise ConfigError(
                    f"token API refused the API token for {where}{detail}", http_status=response.status_code
                )
            if response.status_code >= 500:
                raise TransientError(f"token API failed for {where}{detail}", http_status=response.status_code)
            if response.status_code == 409 and isinstance(body, dict) and "reason" in body:
                raise TokenRefused(
                    str(body.get("detail") or f"no working token for {where}")[:300],
                    status=body.get("status"),
                    reason=str(body["reason"]),
                    reauth_url=body.get("reauth_url"),
                )
            raise TokenUnavailable(f"no token for {where}{detail}", http_status=response.status_code)
        data = response.json()
        return AccessToken(
            app=app,
            account=account,
            token=data["access_token"],
            expires_at=_parse_time(data["access_expires_at"]),
            identity=_identity_from(data["identity"]),
            fetched_at=self.clock.now(),
        )

    async def aclose(self) -> None:
        if self._async_http is not None:
            await self._async_http.aclose()
            self._async_http = None
        self.close()

    def close(self) -> None:
        if self._sync_http is not None:
            self._sync_http.close()
            self._sync_http = None


_default_source: TokenSource | None = None


async def get_token(app: str, account: str, *, source: TokenSource | None = None) -> str:
    """The current access token as text.

    Without ``source``, reads the token API at ``$REFRESHER_URL`` with the API token in
    ``$REFRESHER_API_TOKEN`` (one shared, cached source per process).
    """
    global _default_source
    if source is None:
        if _default_source is None:
            url, api_token = os.environ.get("REFRESHER_URL"), os.environ.get("REFRESHER_API_TOKEN")
            if not url or not api_token:
                raise ConfigError("set REFRESHER_URL and REFRESHER_API_TOKEN, or pass source=TokenSource(...)")
            _default_source = TokenSource.from_api(url, api_token)
        source = _default_source
    return (await source.get_token(app, account)).token
