"""Whole transactions in one thread hand-off, for the refresh path's hot statements.

Through SQLAlchemy's async layer every DBAPI call on SQLite (cursor, execute, fetch, close, BEGIN,
COMMIT) is a hand-off to aiosqlite's thread and a wake-up of the event loop: about forty per refresh,
which made the store path two thirds of a sweep's CPU (benchmarks/RESULTS.md). Here a transaction is a
plain function of a synchronous connection, and the whole of it (connect, BEGIN, statements, COMMIT)
runs in one worker thread call: one hand-off per transaction. On PostgreSQL the same holds for the
asynchronous driver's per-statement cost (a greenlet switch and an await per statement): a synchronous
psycopg connection in a thread spends its round trips with the GIL released.

The in-process writer queue still orders writers (rotated tokens first), and ``BEGIN IMMEDIATE`` with the
busy timeout still orders them across processes; both engines open the same file with the same pragmas.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.engine import Connection, Engine

from refresher.store.changes import NOTIFY_ACCOUNTS, WROTE_ACCOUNTS

T = TypeVar("T")


class SyncTransactions:
    """A small pool of threads, each running whole transactions on a synchronous engine."""

    def __init__(self, engine: Engine, *, threads: int) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="refresher-store")

    async def run(self, work: Callable[[Connection], T], *, write: bool, durable: bool = True) -> tuple[T, bool]:
        """Run ``work`` in one transaction in a worker thread; returns its result and whether it wrote
        to ``accounts`` (for the change feed; after a failure it may have). ``durable=False`` commits
        without waiting for the disk (SQLite in WAL: ``synchronous = NORMAL``; PostgreSQL:
        ``synchronous_commit = off``): the commit survives a crash of this process, but a power cut (or a
        crash of the database server) may lose it until the next durable commit, which writes it too."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._transaction, work, write, durable))

    def _transaction(self, work: Callable[[Connection], T], write: bool, durable: bool) -> tuple[T, bool]:
        with self._engine.connect() as conn:
            # SQLite: on the driver's connection itself; through SQLAlchemy the pragma would start a
            # transaction, and SQLite refuses to change the safety level inside one.
            raw = conn.connection.dbapi_connection if self._sqlite and not durable else None
            if raw is not None:
                raw.execute("PRAGMA synchronous = NORMAL")
            try:
                if write and self._sqlite:
                    conn = conn.execution_options(refresher_begin="BEGIN IMMEDIATE")
                conn.info.pop(WROTE_ACCOUNTS, None)
                with conn.begin():
                    if not durable and not self._sqlite:
                        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                    result = work(conn)
                    wrote = bool(conn.info.pop(WROTE_ACCOUNTS, False))
                    if wrote and not self._sqlite:
                        # Delivered to every LISTENing replica at commit, never for a rollback.
                        conn.execute(NOTIFY_ACCOUNTS)
                return result, wrote
            finally:
                if raw is not None:
                    raw.execute("PRAGMA synchronous = FULL")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._engine.dispose()
