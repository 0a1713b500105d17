"""A read-through cache of accounts (decrypted tokens included) for the token API and the proxy.

A hit costs a dictionary lookup and the store's change token (:meth:`ChangeTracking.change_token`):
an entry is used only while the token is the one it was read under, so a refresh, disable, delete or
re-authorization committed by this process, by another process on the same SQLite file or by another
replica on PostgreSQL (LISTEN/NOTIFY) is seen by the next read. The token is taken *before* the store
read, so a change committed while a miss was being read leaves an entry that is already stale.

Only the account is cached, never the judgement: the 409 reasons and the refresh-on-read margin are
decided on every read against the clock (:mod:`refresher.token_read`). ``max_age`` bounds an entry's
life as well (belt and braces: a notification lost between a replica's commit and our reconnect).
Bounded (least recently used out), never caches a missing account, and concurrent misses of one
account share one store read.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from refresher.store.base import Account
from refresher.store.roles import AccountLookup, ChangeTracking

DEFAULT_SIZE = 10_000
DEFAULT_MAX_AGE = 30.0


@dataclass(frozen=True)
class _Entry:
    account: Account
    token: tuple[int, int]
    stored_at: float


class TokenCache:
    """Accounts by (app, key), valid while the store's change token stays what it was when read."""

    def __init__(self, store: AccountLookup, *, size: int = DEFAULT_SIZE, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.store = store
        self.size = size
        self.max_age = max_age
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._inflight: dict[tuple[str, str, tuple[int, int]], asyncio.Future[Account | None]] = {}
        self.hits = 0
        self.misses = 0

    def _token(self) -> tuple[int, int] | None:
        if self.size <= 0 or not isinstance(self.store, ChangeTracking):
            return None
        return self.store.change_token()

    async def get(self, app: str, key: str) -> Account | None:
        """The account as the store has it now (from memory when nothing changed since it was read)."""
        token = self._token()
        if token is None:
            self._entries.clear()
            return await self.store.get(app, key)
        now = time.monotonic()
        entry = self._entries.get((app, key))
        if entry is not None and entry.token == token and now - entry.stored_at < self.max_age:
            self._entries.move_to_end((app, key))
            self.hits += 1
            return entry.account
        self.misses += 1
        flight = (app, key, token)
        pending = self._inflight.get(flight)
        if pending is not None:  # another reader is already reading this account under the same token
            return await asyncio.shield(pending)
        future: asyncio.Future[Account | None] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            account = await self.store.get(app, key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a reader-less failure must not warn at garbage collection
            raise
        finally:
            self._inflight.pop(flight, None)
        future.set_result(account)
        if account is None:
            self._entries.pop((app, key), None)
        else:
            self._entries[(app, key)] = _Entry(account, token, now)
            self._entries.move_to_end((app, key))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return account

    def clear(self) -> None:
        self._entries.clear()


_caches: weakref.WeakKeyDictionary[Any, TokenCache] = weakref.WeakKeyDictionary()


def cache_for(store: AccountLookup, *, size: int = DEFAULT_SIZE, max_age: float = DEFAULT_MAX_AGE) -> TokenCache:
    """The one cache of ``store`` in this process (its size and age follow the settings passed now)."""
    cache = _caches.get(store)
    if cache is None:
        cache = _caches[store] = TokenCache(store, size=size, max_age=max_age)
    cache.size, cache.max_age = size, max_age
    return cache
