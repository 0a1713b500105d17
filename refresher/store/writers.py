"""The queue of a process's SQLite writers, with rotated tokens first.

SQLite has one writer at a time. Left to SQLite, a blocked writer sleeps in its busy handler in growing
steps; here a process's writers wait in line instead, and a transaction that commits a freshly rotated
token goes to the head of that line: between the platform rotating a refresh token and our commit, the
new token exists only in memory, and every millisecond there is a millisecond in which a crash loses it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

URGENT = 0  # a rotated token waiting to be committed
NORMAL = 1  # everything else


class WriterQueue:
    """A lock whose waiters are served by priority, then in arrival order. One event loop."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @asynccontextmanager
    async def turn(self, priority: int = NORMAL) -> AsyncIterator[None]:
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        if not self._held and not self._waiting:
            self._held = True
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # the turn was handed over just as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)  # the lock passes straight to the next waiter
                return
        self._held = False
