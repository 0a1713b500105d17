"""Whether any account may have changed since a reader last looked: what makes a cache of accounts safe.

:meth:`ChangeFeed.token` is a value that changes whenever a committed transaction may have changed a row
of ``accounts``, or ``None`` when that cannot be known right now (then nothing may be cached):

* this process's own commits: every statement that writes ``accounts`` marks its transaction (an engine
  event, so every write path counts, including ones added later), and the commit bumps a counter;
* other processes on the same SQLite file: ``PRAGMA data_version`` on a connection of our own, which
  changes whenever another connection committed (microseconds: it reads the WAL index in shared memory);
* other replicas on PostgreSQL: each transaction that wrote ``accounts`` sends ``NOTIFY`` (delivered at
  its commit, never for a rollback) and a ``LISTEN`` connection bumps an epoch for each notification.
  While that connection is down the token is ``None``; a reconnect bumps the epoch (notifications sent
  meanwhile are lost).

Coarse on purpose: any write to any account changes the token (the feed does not know which rows a
statement touched), so a cache built on it is exact and empties itself while a sweep saves tokens.
Only an UPDATE of lease and timing columns alone (:data:`BOOKKEEPING`) does not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Connection

log = structlog.get_logger("refresher.store")

CHANNEL = "refresher_accounts"
# Sent by a transaction that wrote accounts, before its commit (delivered at the commit, never on rollback).
NOTIFY_ACCOUNTS = text(f"SELECT pg_notify('{CHANNEL}', '')")
# Columns no token read depends on: the lease and the scheduler's timing. An UPDATE of these alone (a
# claim, the mark before a platform call, a release) changes nothing a cached account hands out, so it
# neither invalidates nor sends a NOTIFY (on PostgreSQL a sweep would otherwise pay one round trip more
# for each of them).
BOOKKEEPING = frozenset({"lease_owner", "lease_expires_at", "refresh_started_at", "next_attempt_at", "last_attempt_at"})
WROTE_ACCOUNTS = "refresher.wrote_accounts"  # key in the connection's info dict
RECONNECT_DELAY = 1.0


def mark_account_writes(
    conn: Connection, _cursor: Any, _statement: str, _parameters: Any, context: Any, _executemany: bool
) -> None:
    """Engine event (``after_cursor_execute``): flag the transaction when a statement wrote ``accounts``."""
    if context is None or not (context.isupdate or context.isinsert or context.isdelete):
        return
    if counts_as_account_write(getattr(context.compiled, "statement", None)):
        conn.info[WROTE_ACCOUNTS] = True


def counts_as_account_write(statement: Any) -> bool:
    """Whether executing ``statement`` (an INSERT, UPDATE or DELETE) may change what a token read sees:
    it writes ``accounts``, and is not an UPDATE of :data:`BOOKKEEPING` columns alone."""
    if getattr(getattr(statement, "table", None), "name", None) != "accounts":
        return False
    return not (getattr(statement, "is_update", False) and _bookkeeping_only(statement))


def _bookkeeping_only(statement: Any) -> bool:
    # The columns an ``update().values(...)`` sets; anything else (values given at execution, an
    # unfamiliar statement) counts as a change.
    try:
        names = {getattr(column, "key", column) for column in statement._values or ()}
    except (AttributeError, TypeError):
        return False
    return bool(names) and names <= BOOKKEEPING


class ChangeFeed:
    """The change token of one store (see the module docstring)."""

    def __init__(self, backend: str, sqlite_path: Path | None, pg_conninfo: str | None) -> None:
        self._backend = backend
        self._path = sqlite_path
        self._conninfo = pg_conninfo
        self.generation = 0  # this process's committed writes to accounts
        self._check: sqlite3.Connection | None = None
        self._epoch = 0  # PostgreSQL: notifications seen, plus one per (re)connect
        self._listening = False
        self.listener_pid: int | None = None  # the LISTEN session's backend pid (tests end it on purpose)
        self._listener: asyncio.Task[None] | None = None
        self._listener_loop: asyncio.AbstractEventLoop | None = None

    def committed(self) -> None:
        """A transaction of this process that wrote accounts ended (committed, or its outcome unknown)."""
        self.generation += 1

    def token(self) -> tuple[int, int] | None:
        if self._backend == "sqlite":
            version = self._data_version()
            return None if version is None else (self.generation, version)
        self._ensure_listener()
        return (self.generation, self._epoch) if self._listening else None

    def _data_version(self) -> int | None:
        try:
            if self._check is None:
                assert self._path is not None
                # Used from the event loop thread only; busy_timeout 0: never wait on the loop, a busy
                # file just means "unknown" (the caller reads the store instead).
                self._check = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
            return int(self._check.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            self._close_check()
            return None

    def _close_check(self) -> None:
        if self._check is not None:
            with contextlib.suppress(sqlite3.Error):
                self._check.close()
            self._check = None

    def _ensure_listener(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop (a synchronous caller): no token, nothing cached
            return
        if self._listener is None or self._listener.done() or self._listener_loop is not loop:
            # A store used from a new event loop (tests run one per test) listens again from there.
            self._listening = False
            self._epoch += 1
            self._listener, self._listener_loop = loop.create_task(self._listen()), loop

    async def _listen(self) -> None:
        import psycopg

        assert self._conninfo is not None
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listener_pid = conn.info.backend_pid
                    self._epoch += 1  # whatever was sent while we were not listening is lost
                    self._listening = True
                    async for _notice in conn.notifies():
                        self._epoch += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: not listening, retry
                log.warning("store.listen_failed", error=type(exc).__name__)
            finally:
                self._listening = False
                self._epoch += 1
            await asyncio.sleep(RECONNECT_DELAY)

    async def close(self) -> None:
        self._close_check()
        if self._listener is not None and self._listener_loop is asyncio.get_running_loop():
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        self._listener = None
        self._listening = False
