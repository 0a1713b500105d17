"""The database under the store: engine creation, transactions, SQLite write locking and migrations.

Concurrency model:
* PostgreSQL: every write transaction locks the rows it changes with ``SELECT … FOR UPDATE``;
  ``claim_due`` adds ``SKIP LOCKED`` so replicas claiming at once each take different accounts.
* SQLite ignores ``FOR UPDATE``: the driver's own transaction handling is switched off and every write
  transaction starts with ``BEGIN IMMEDIATE``, which takes the database's write lock up front, so a
  read-check-write inside it cannot interleave with another process's (``busy_timeout`` queues them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from refresher.store.base import StoreError
from refresher.store.changes import NOTIFY_ACCOUNTS, WROTE_ACCOUNTS, ChangeFeed, mark_account_writes
from refresher.store.idle_ping import ping_when_idle
from refresher.store.sync_tx import SyncTransactions
from refresher.store.writers import NORMAL, WriterQueue

T = TypeVar("T")

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same for every replica migrating the same database.
_PG_MIGRATION_LOCK = 0x7265667265736872
_SQLITE_BUSY_TIMEOUT_MS = 30_000
# Alembic keeps the running migration in module globals (``alembic.context``, ``alembic.op``): two
# migrations interleaving on one event loop (several stores opened together in one process) would run
# each other's operations. One at a time per loop; replicas in other processes are serialized by the
# database (BEGIN IMMEDIATE, pg_advisory_xact_lock).
_MIGRATION_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _migration_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _MIGRATION_LOCKS.get(loop)
    if lock is None:
        lock = _MIGRATION_LOCKS[loop] = asyncio.Lock()
    return lock


class _DropDriverDebug(logging.Filter):
    """aiosqlite logs every statement *with its parameters* at DEBUG: those are tokens. Drop them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_AIOSQLITE_FILTER = _DropDriverDebug()


def _silence_driver_debug() -> None:
    logger = logging.getLogger("aiosqlite")
    if _AIOSQLITE_FILTER not in logger.filters:
        logger.addFilter(_AIOSQLITE_FILTER)


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def parse_url(url: str) -> tuple[str, URL, Path | None]:
    """(backend, async URL, SQLite file) of a ``store.url``."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError("store.url: not a database URL (expected sqlite:///PATH or postgresql://…)") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return "postgresql", parsed.set(drivername="postgresql+psycopg"), None
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise StoreError(
                "store.url: an in-memory SQLite database loses every token at exit; give a file path "
                "(sqlite:///var/lib/refresher/tokens.db)"
            )
        path = Path(database).expanduser().absolute()
        return "sqlite", parsed.set(drivername="sqlite+aiosqlite", database=str(path)), path
    raise StoreError(f"store.url: unsupported database {backend!r} (use sqlite:///PATH or postgresql://…)")


class SqlDatabase:
    """One database (SQLite file or PostgreSQL), connected on first use; every statement runs in :meth:`_tx`."""

    def __init__(self, url: str, *, pool_size: int = 5, create: bool = True) -> None:
        self._backend, self._url, self._path = parse_url(url)
        # False for commands that only read: a mistyped SQLite path is then an error, not a new empty store.
        self._create = create
        # For messages: the URL as the operator wrote it, without its password.
        self._display_url = make_url(url).render_as_string(hide_password=True)
        self._pool_size = pool_size
        self._engine: AsyncEngine | None = None
        self._sync_tx: SyncTransactions | None = None
        self._writer_queue: WriterQueue | None = None
        self._writer_queue_loop: asyncio.AbstractEventLoop | None = None
        conninfo = None if self._path else self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.changes = ChangeFeed(self._backend, self._path, conninfo)

    def change_token(self) -> tuple[int, int] | None:
        """Changes whenever an account may have changed (see :mod:`refresher.store.changes`); None: unknown."""
        return self.changes.token()

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._backend

    @property
    def safe_url(self) -> str:
        return self._display_url

    @property
    def path(self) -> Path | None:
        """The SQLite file, or ``None`` on PostgreSQL."""
        return self._path

    async def migrate(self) -> tuple[str | None, str]:
        """Connect (once) and apply pending migrations; returns the revisions before and after."""
        self._connect()
        try:
            async with _migration_lock(), self._tx(write=True) as conn:
                if self._backend == "postgresql":
                    # Replicas starting together must not both create the tables.
                    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                result: tuple[str | None, str] = await conn.run_sync(self._upgrade)
        finally:
            self._tighten_file_modes()
        return result

    def _upgrade(self, connection: Connection) -> tuple[str | None, str]:
        config = alembic_config()
        config.attributes["connection"] = connection
        script = ScriptDirectory.from_config(config)
        current = MigrationContext.configure(connection).get_current_heads()
        known = {rev.revision for rev in script.walk_revisions()}
        unknown = [rev for rev in current if rev not in known]
        if unknown:
            raise StoreError(
                f"store: the database {self.safe_url} has schema revision {', '.join(unknown)}, which this "
                "refresher does not know (written by a newer version?); upgrade refresher"
            )
        command.upgrade(config, "head")
        head = script.get_current_head()
        assert head is not None
        return (current[0] if current else None), head

    async def current_revision(self) -> str | None:
        self._connect()
        async with self._tx() as conn:
            heads: tuple[str, ...] = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_heads())
        return heads[0] if heads else None

    async def close(self) -> None:
        await self.changes.close()
        if self._sync_tx is not None:
            await asyncio.to_thread(self._sync_tx.close)  # waits for a transaction still in a thread
            self._sync_tx = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def ping(self, *, write: bool = False) -> None:
        self._connect()
        if not write:
            async with self._tx() as conn:
                await conn.execute(text("SELECT 1"))
            return
        # A write probe: on SQLite a write transaction takes the write lock at BEGIN (so a store locked
        # past its busy timeout fails here); PostgreSQL says whether this session may write at all (a
        # standby after a failover, default_transaction_read_only).
        async with self._tx(write=True) as conn:
            if self._backend == "sqlite":
                await conn.execute(text("SELECT 1"))
            elif (await conn.execute(text("SELECT current_setting('transaction_read_only')"))).scalar() == "on":
                raise StoreError("the store is read-only: transactions cannot write")

    def _connect(self) -> None:
        if self._engine is not None:
            return
        if self._backend == "sqlite":
            _silence_driver_debug()
            self._prepare_file()
            engine = create_async_engine(
                self._url,
                hide_parameters=True,  # bound parameters are tokens: keep them out of exceptions
                pool_size=self._pool_size,
                connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000},
            )
            event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
            event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
            sync_engine = create_engine(
                self._url.set(drivername="sqlite+pysqlite"),
                hide_parameters=True,
                pool_size=self._pool_size,
                max_overflow=0,
                connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            )
            event.listen(sync_engine, "connect", _sqlite_on_connect)
            event.listen(sync_engine, "begin", _sqlite_on_begin)
        else:
            engine = create_async_engine(
                self._url,
                hide_parameters=True,
                pool_size=self._pool_size,
                max_overflow=self._pool_size,
                pool_pre_ping=True,
            )
            sync_engine = create_engine(self._url, hide_parameters=True, pool_size=self._pool_size, max_overflow=0)
            ping_when_idle(sync_engine)  # not on every checkout: the refresh path makes three per refresh
        event.listen(engine.sync_engine, "after_cursor_execute", mark_account_writes)
        event.listen(sync_engine, "after_cursor_execute", mark_account_writes)
        self._engine = engine
        # The refresh path's transactions: whole, in one thread hand-off each (see store/sync_tx.py).
        self._sync_tx = SyncTransactions(sync_engine, threads=self._pool_size)

    def _prepare_file(self) -> None:
        """Create the SQLite file 0600 before SQLite does (it would use the umask), in a 0700 dir."""
        assert self._path is not None
        directory = self._path.parent
        if not self._create and not self._path.exists():
            raise StoreError(
                f"store.url: no database at {self._path} (is the path right? `refresher run` or "
                "`refresher migrate` creates it)"
            )
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
            fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise StoreError(f"store.url: directory {directory} is not writable ({reason})") from None
        _switch_to_wal(self._path)
        self._tighten_file_modes()

    def _tighten_file_modes(self) -> None:
        # SQLite creates -wal and -shm with the database file's mode; this also fixes files that an
        # older version or another tool created with looser modes.
        if self._path is None:
            return
        for suffix in ("", "-wal", "-shm"):
            file = Path(f"{self._path}{suffix}")
            try:
                if file.exists() and file.stat().st_mode & 0o077:
                    file.chmod(0o600)
            except OSError:
                pass  # not ours to change (another user's file): SQLite will say if it cannot use it

    def _writers(self) -> WriterQueue:
        """This process's SQLite writers queue here (see :mod:`refresher.store.writers`)."""
        loop = asyncio.get_running_loop()
        if self._writer_queue is None or self._writer_queue_loop is not loop:
            self._writer_queue, self._writer_queue_loop = WriterQueue(), loop
        return self._writer_queue

    @asynccontextmanager
    async def _tx(self, *, write: bool = False, priority: int = NORMAL) -> AsyncIterator[AsyncConnection]:
        """One transaction; on SQLite a write transaction takes the write lock at BEGIN."""
        if write and self._backend == "sqlite":
            async with self._writers().turn(priority), self._tx_unlocked(write=True) as conn:
                yield conn
            return
        async with self._tx_unlocked(write=write) as conn:
            yield conn

    async def _run_tx(
        self, work: Callable[[Connection], T], *, write: bool = False, priority: int = NORMAL, durable: bool = True
    ) -> T:
        """``work`` (a function of a synchronous connection) in one transaction, in one thread hand-off
        (:mod:`refresher.store.sync_tx`). ``durable=False`` is for bookkeeping whose loss in a power cut
        costs nothing but a hint (the mark before a platform call): its commit does not wait for the disk;
        a crash of this process still keeps it."""
        self._connect()
        assert self._sync_tx is not None
        wrote = True  # after a failure, whether it wrote is unknown: the change feed assumes it did
        try:
            with _store_errors():
                if write and self._backend == "sqlite":
                    async with self._writers().turn(priority):
                        result, wrote = await self._sync_tx.run(work, write=True, durable=durable)
                else:
                    result, wrote = await self._sync_tx.run(work, write=write, durable=durable)
        finally:
            if wrote:
                self.changes.committed()
        return result

    @asynccontextmanager
    async def _tx_unlocked(self, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
        self._connect()
        assert self._engine is not None
        with _store_errors():
            async with self._engine.connect() as conn:
                if write and self._backend == "sqlite":
                    await conn.execution_options(refresher_begin="BEGIN IMMEDIATE")
                conn.info.pop(WROTE_ACCOUNTS, None)
                try:
                    async with conn.begin():
                        yield conn
                        if self._backend == "postgresql" and conn.info.get(WROTE_ACCOUNTS):
                            # Delivered to every LISTENing replica at commit, never for a rollback.
                            await conn.execute(NOTIFY_ACCOUNTS)
                finally:
                    if conn.info.pop(WROTE_ACCOUNTS, False):
                        self.changes.committed()  # after the commit: a read from now on sees it

    def _for_update(self, stmt: Any, *, skip_locked: bool = False) -> Any:
        if self._backend == "postgresql":
            return stmt.with_for_update(skip_locked=skip_locked)
        return stmt  # SQLite: the BEGIN IMMEDIATE of the write transaction already serializes

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self._backend == "postgresql" else sqlite.insert)(table)


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """The driver's errors as :class:`StoreError`, first line only (no statement, no parameters)."""
    try:
        yield
    except DBAPIError as exc:
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
        raise StoreError(f"store: database error ({type(exc.orig).__name__}: {first})") from exc
    except OSError as exc:
        raise StoreError(f"store: cannot reach the database ({exc.strerror or type(exc).__name__})") from exc


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the driver: we emit BEGIN / BEGIN IMMEDIATE ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        # No journal_mode here: WAL is a property of the file, set once by _switch_to_wal before the
        # first connection. Setting it on every new pooled connection could fail with "database is
        # locked" while another process holds the file.
        cursor.execute("PRAGMA synchronous = FULL")  # a committed token survives a power cut
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _switch_to_wal(path: Path) -> None:
    """Put the SQLite file in WAL mode (it stays so); retried while another process holds the file.

    SQLite answers "database is locked" to a journal-mode change at once, without waiting out the busy
    timeout, when waiting could deadlock: several replicas or commands opening a new store together.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.01
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=_SQLITE_BUSY_TIMEOUT_MS / 1000)) as db:
                mode = db.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    db.execute("PRAGMA journal_mode = WAL")
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise StoreError(f"store: cannot open the SQLite file {path} ({exc})") from None
            if time.monotonic() >= deadline:
                raise StoreError(f"store: the SQLite file {path} stayed locked for 30 s ({exc})") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get("refresher_begin", "BEGIN"))
