"""Whole SQLite transactions in one thread hand-off, for the refresh path's hot statements.

Through SQLAlchemy's async layer every DBAPI call on SQLite (cursor, execute, fetch, close, BEGIN,
COMMIT) is a hand-off to aiosqlite's thread and a wake-up of the event loop: about forty per refresh,
which made the store path two thirds of a sweep's CPU (benchmarks/RESULTS.md). Here a transaction is a
plain function of a synchronous connection, and the whole of it (connect, BEGIN, statements, COMMIT)
runs in one worker thread call: one hand-off per transaction. The function is the same one PostgreSQL
runs with ``AsyncConnection.run_sync``, so each transaction is written once.

The in-process writer queue still orders writers (rotated tokens first), and ``BEGIN IMMEDIATE`` with the
busy timeout still orders them across processes; both engines open the same file with the same pragmas.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

from refresher.store.changes import WROTE_ACCOUNTS

T = TypeVar("T")


class SqliteTransactions:
    """A small pool of threads, each running whole transactions against one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int,
        busy_timeout_s: float,
        on_connect: Callable[[Any, Any], None],
        on_begin: Callable[[Connection], None],
        on_execute: Callable[..., None],
    ) -> None:
        self._engine: Engine = create_engine(
            f"sqlite+pysqlite:///{path}",
            hide_parameters=True,  # bound parameters are tokens: keep them out of exceptions
            pool_size=threads,
            max_overflow=0,
            connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
        )
        event.listen(self._engine, "connect", on_connect)
        event.listen(self._engine, "begin", on_begin)
        event.listen(self._engine, "after_cursor_execute", on_execute)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="refresher-sqlite")

    async def run(self, work: Callable[[Connection], T], *, write: bool, durable: bool = True) -> tuple[T, bool]:
        """Run ``work`` in one transaction in a worker thread; returns its result and whether it wrote
        to ``accounts`` (for the change feed; after a failure it may have). ``durable=False`` commits
        without waiting for the disk (WAL, ``synchronous = NORMAL``): the commit survives a crash of this
        process but not a power cut until the next durable commit, which writes it to disk too."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._transaction, work, write, durable))

    def _transaction(self, work: Callable[[Connection], T], write: bool, durable: bool) -> tuple[T, bool]:
        with self._engine.connect() as conn:
            # On the driver's connection itself: through SQLAlchemy the pragma would start a transaction,
            # and SQLite refuses to change the safety level inside one.
            raw = conn.connection.dbapi_connection
            assert raw is not None
            if not durable:
                raw.execute("PRAGMA synchronous = NORMAL")
            try:
                if write:
                    conn = conn.execution_options(refresher_begin="BEGIN IMMEDIATE")
                conn.info.pop(WROTE_ACCOUNTS, None)
                with conn.begin():
                    result = work(conn)
                return result, bool(conn.info.pop(WROTE_ACCOUNTS, False))
            finally:
                if not durable:
                    raw.execute("PRAGMA synchronous = FULL")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._engine.dispose()
