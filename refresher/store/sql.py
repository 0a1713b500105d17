"""The token store on SQLAlchemy Core (async): SQLite by default, PostgreSQL for several replicas.

Concurrency model:
* PostgreSQL: every write transaction locks the rows it changes with ``SELECT … FOR UPDATE``;
  ``claim_due`` adds ``SKIP LOCKED`` so replicas claiming at once each take different accounts.
* SQLite ignores ``FOR UPDATE``: the driver's own transaction handling is switched off and every write
  transaction starts with ``BEGIN IMMEDIATE``, which takes the database's write lock up front, so a
  read-check-write inside it cannot interleave with another process's (``busy_timeout`` queues them).

Times come from the injected :class:`~refresher.domain.Clock`, never from the database, so simulated
time drives leases in tests and soak runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import and_, case, delete, event, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Row, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from refresher.crypto import CryptoError, TokenCipher
from refresher.domain import AccountStatus, Clock, ErrorInfo, Grant, Identity, TokenSet, as_utc
from refresher.store.base import (
    USED_STATE_MEMORY,
    Account,
    AccountNotFound,
    Alarm,
    AuditEntry,
    HistoryEntry,
    LeaseLost,
    OAuthState,
    StoreError,
)
from refresher.store.schema import accounts, alarms, audit_log, oauth_states, token_history
from refresher.store.writers import NORMAL, URGENT, WriterQueue

if TYPE_CHECKING:
    from refresher.config import StoreSettings

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same for every replica migrating the same database.
_PG_MIGRATION_LOCK = 0x7265667265736872
_SQLITE_BUSY_TIMEOUT_MS = 30_000
_MESSAGE_LIMIT = 2000

_log = structlog.get_logger("refresher.store")
# Keys dropped from a platform's raw answer before it is stored (belt and braces: the platform
# plugins already remove secrets, and token *values* are scrubbed wherever they appear).
_SECRET_KEYS = frozenset(
    {"access_token", "refresh_token", "id_token", "client_secret", "app_secret", "partner_key", "secret"}
)
_REDACTED = "[redacted]"


class _DropDriverDebug(logging.Filter):
    """aiosqlite logs every statement *with its parameters* at DEBUG: those are tokens. Drop them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_AIOSQLITE_FILTER = _DropDriverDebug()


def _silence_driver_debug() -> None:
    logger = logging.getLogger("aiosqlite")
    if _AIOSQLITE_FILTER not in logger.filters:
        logger.addFilter(_AIOSQLITE_FILTER)


def open_store(settings: StoreSettings, clock: Clock) -> SqlStore:
    """Build the store of a config (not yet connected: call :meth:`SqlStore.open`)."""
    return SqlStore(
        settings.url,
        clock=clock,
        encryption_keys=[key.get_secret_value() for key in settings.encryption_keys],
        history_versions=settings.history_versions,
        pool_size=settings.pool_size,
    )


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS).replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _parse_url(url: str) -> tuple[str, URL, Path | None]:
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


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _scrub(value: Any, secrets: frozenset[str]) -> Any:
    """``value`` without secret keys and without any known token value anywhere inside it."""
    if isinstance(value, Mapping):
        return {str(k): _scrub(v, secrets) for k, v in value.items() if str(k).lower() not in _SECRET_KEYS}
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, _REDACTED)
        return value
    return value


def _error_json(error: ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "error_class": error.error_class,
        "code": error.code,
        "message": error.message[:_MESSAGE_LIMIT],
        "request_id": error.request_id,
        "http_status": error.http_status,
    }


def _error_info(data: Any) -> ErrorInfo | None:
    if not data:
        return None
    return ErrorInfo(
        error_class=str(data.get("error_class") or "error"),
        code=data.get("code"),
        message=str(data.get("message") or ""),
        request_id=data.get("request_id"),
        http_status=data.get("http_status"),
    )


class SqlStore:
    """The :class:`~refresher.store.base.Store` on SQLite (aiosqlite) or PostgreSQL (psycopg 3)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        encryption_keys: Sequence[str] = (),
        history_versions: int = 10,
        pool_size: int = 5,
    ) -> None:
        if history_versions < 1:
            raise StoreError("store.history_versions: must be at least 1")
        self.clock = clock
        self.history_versions = history_versions
        self._backend, self._url, self._path = _parse_url(url)
        # For messages: the URL as the operator wrote it, without its password.
        self._display_url = make_url(url).render_as_string(hide_password=True)
        self._pool_size = pool_size
        try:
            self._cipher = TokenCipher(encryption_keys)
        except CryptoError as exc:
            raise StoreError(f"store.encryption_keys: {exc}") from None
        self._engine: AsyncEngine | None = None
        self._writer_queue: WriterQueue | None = None
        self._writer_queue_loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        return self._cipher.enabled

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

    async def open(self) -> None:
        await self.migrate()

    async def migrate(self) -> tuple[str | None, str]:
        """Connect (once) and apply pending migrations; returns the revisions before and after."""
        self._connect()
        try:
            async with self._tx(write=True) as conn:
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
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def ping(self) -> None:
        self._connect()
        async with self._tx() as conn:
            await conn.execute(text("SELECT 1"))

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
        else:
            engine = create_async_engine(
                self._url,
                hide_parameters=True,
                pool_size=self._pool_size,
                max_overflow=self._pool_size,
                pool_pre_ping=True,
            )
        self._engine = engine

    def _prepare_file(self) -> None:
        """Create the SQLite file 0600 before SQLite does (it would use the umask), in a 0700 dir."""
        assert self._path is not None
        directory = self._path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not os.access(directory, os.W_OK | os.X_OK):
                raise PermissionError(13, "Permission denied")
            fd = os.open(self._path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise StoreError(f"store.url: directory {directory} is not writable ({reason})") from None
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

    @asynccontextmanager
    async def _tx_unlocked(self, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
        self._connect()
        assert self._engine is not None
        try:
            async with self._engine.connect() as conn:
                if write and self._backend == "sqlite":
                    await conn.execution_options(refresher_begin="BEGIN IMMEDIATE")
                async with conn.begin():
                    yield conn
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
            raise StoreError(f"store: database error ({type(exc.orig).__name__}: {first})") from exc
        except OSError as exc:
            raise StoreError(f"store: cannot reach the database ({exc.strerror or type(exc).__name__})") from exc

    def _for_update(self, stmt: Any, *, skip_locked: bool = False) -> Any:
        if self._backend == "postgresql":
            return stmt.with_for_update(skip_locked=skip_locked)
        return stmt  # SQLite: the BEGIN IMMEDIATE of the write transaction already serializes

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self._backend == "postgresql" else sqlite.insert)(table)

    # -- encryption and mapping -----------------------------------------------------------------------

    def _enc(self, value: str | None, app: str, key: str, field: str) -> str | None:
        if value is None:
            return None
        return self._cipher.encrypt(value, app=app, account=key, field=field)

    def _dec(self, value: str | None, app: str, key: str, field: str) -> str | None:
        if value is None:
            return None
        try:
            return self._cipher.decrypt(value, app=app, account=key, field=field)
        except CryptoError as exc:
            raise StoreError(f"store: {exc}") from None

    def _tokens_from(self, row: Any, app: str, key: str) -> TokenSet | None:
        if row.access_token is None or row.refresh_token is None or row.access_expires_at is None:
            return None
        return TokenSet(
            access_token=self._dec(row.access_token, app, key, "access_token") or "",
            refresh_token=self._dec(row.refresh_token, app, key, "refresh_token") or "",
            access_expires_at=as_utc(row.access_expires_at),
            refresh_expires_at=as_utc(row.refresh_expires_at) if row.refresh_expires_at else None,
            scopes=tuple(row.scopes or ()),
            raw=dict(row.raw or {}),
        )

    def _account(self, row: Row[Any]) -> Account:
        return Account(
            id=row.id,
            app=row.app,
            platform=row.platform,
            key=row.key,
            identity=Identity(
                key=row.key,
                kind=row.kind,
                platform_id=row.platform_id,
                name=row.name,
                region=row.region,
                extra=dict(row.extra or {}),
            ),
            status=AccountStatus(row.status),
            tokens=self._tokens_from(row, row.app, row.key),
            consecutive_failures=row.consecutive_failures,
            last_success_at=row.last_success_at,
            last_attempt_at=row.last_attempt_at,
            last_error=_error_info(row.last_error),
            next_attempt_at=row.next_attempt_at,
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
            refresh_started_at=row.refresh_started_at,
            version=row.version,
            previous_refresh_token=self._dec(row.previous_refresh_token, row.app, row.key, "previous_refresh_token"),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _token_values(self, app: str, key: str, tokens: TokenSet) -> dict[str, Any]:
        secrets = frozenset({tokens.access_token, tokens.refresh_token})
        return {
            "access_token": self._enc(tokens.access_token, app, key, "access_token"),
            "refresh_token": self._enc(tokens.refresh_token, app, key, "refresh_token"),
            "access_expires_at": as_utc(tokens.access_expires_at),
            "refresh_expires_at": as_utc(tokens.refresh_expires_at) if tokens.refresh_expires_at else None,
            "scopes": list(tokens.scopes),
            "raw": _scrub(_jsonable(dict(tokens.raw)), secrets),
        }

    def _previous_refresh(self, row: Row[Any], tokens: TokenSet) -> dict[str, Any]:
        """The row's refresh token as ``previous_refresh_token`` when ``tokens`` rotate it, else nothing:
        platforms that do not rotate hand back the same refresh token, so the older "previous" stays."""
        old_refresh = self._dec(row.refresh_token, row.app, row.key, "refresh_token")
        if old_refresh is None or old_refresh == tokens.refresh_token:
            return {}
        return {"previous_refresh_token": self._enc(old_refresh, row.app, row.key, "previous_refresh_token")}

    def _row_secrets(self, row: Any) -> frozenset[str]:
        """Every token value the account row holds, in clear (to scrub them from stored text)."""
        fields = ("access_token", "refresh_token", "previous_refresh_token")
        return frozenset(s for f in fields if (s := self._dec(getattr(row, f), row.app, row.key, f)))

    async def _read(self, conn: AsyncConnection, account_id: int) -> Account:
        row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        if row is None:
            raise AccountNotFound(f"no account with id {account_id}")
        return self._account(row)

    async def _row_by_key(self, conn: AsyncConnection, app: str, key: str, *, lock: bool) -> Row[Any]:
        stmt = select(accounts).where(accounts.c.app == app, accounts.c.key == key)
        row = (await conn.execute(self._for_update(stmt) if lock else stmt)).first()
        if row is None:
            raise AccountNotFound(f"no account {key!r} in app {app!r}")
        return row

    async def _leased(self, conn: AsyncConnection, account_id: int, owner: str) -> Row[Any]:
        """The account row, locked, if ``owner`` still holds its lease; else :class:`LeaseLost`.

        A lease past its expiry that nobody has taken over is still honoured: the platform may already
        have rotated the token, and storing the new one beats losing it.
        """
        stmt = self._for_update(select(accounts).where(accounts.c.id == account_id))
        row = (await conn.execute(stmt)).first()
        if row is None:
            raise AccountNotFound(f"no account with id {account_id}")
        if row.lease_owner != owner:
            holder = "nobody" if row.lease_owner is None else "another worker"
            raise LeaseLost(f"lease on account {row.app}/{row.key} lost: it is held by {holder}")
        return row

    async def _push_history(self, conn: AsyncConnection, row: Row[Any], now: dt.datetime) -> None:
        """Copy the row's current token set to history under its current version."""
        if row.access_token is None or row.refresh_token is None or row.access_expires_at is None:
            return
        # Ciphertexts move as they are: history rows use the same (app, key, field) associated data.
        await conn.execute(
            insert(token_history).values(
                account_id=row.id,
                version=row.version,
                access_token=row.access_token,
                refresh_token=row.refresh_token,
                access_expires_at=row.access_expires_at,
                refresh_expires_at=row.refresh_expires_at,
                scopes=row.scopes or [],
                raw=row.raw or {},
                replaced_at=now,
            )
        )

    async def _prune_history(self, conn: AsyncConnection, account_id: int) -> None:
        keep = (
            select(token_history.c.id)
            .where(token_history.c.account_id == account_id)
            .order_by(token_history.c.version.desc())
            .limit(self.history_versions)
        )
        await conn.execute(
            delete(token_history).where(
                token_history.c.account_id == account_id, token_history.c.id.not_in(keep.scalar_subquery())
            )
        )

    # -- accounts ------------------------------------------------------------------------------------

    async def upsert_grant(self, app: str, platform: str, grant: Grant) -> Account:
        return await self._upsert(app, platform, grant.identity, grant.tokens, AccountStatus.ACTIVE)

    async def import_account(
        self, app: str, platform: str, identity: Identity, tokens: TokenSet, status: AccountStatus
    ) -> Account:
        return await self._upsert(app, platform, identity, tokens, status)

    async def _upsert(
        self, app: str, platform: str, identity: Identity, tokens: TokenSet, status: AccountStatus
    ) -> Account:
        # Two replicas inserting the same new account race on the unique (app, key): the loser retries
        # and then finds the row to update.
        for attempt in range(2):
            try:
                return await self._upsert_once(app, platform, identity, tokens, status)
            except StoreError as exc:
                if attempt == 0 and isinstance(exc.__cause__, IntegrityError):
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _upsert_once(
        self, app: str, platform: str, identity: Identity, tokens: TokenSet, status: AccountStatus
    ) -> Account:
        now = self.clock.now()
        key = identity.key
        secrets = frozenset({tokens.access_token, tokens.refresh_token})
        values: dict[str, Any] = {
            "platform": platform,
            "kind": identity.kind,
            "platform_id": identity.platform_id,
            "name": identity.name,
            "region": identity.region,
            "extra": _scrub(_jsonable(dict(identity.extra)), secrets),
            "status": str(status),
            **self._token_values(app, key, tokens),
            "consecutive_failures": 0,
            "last_error": None,
            "next_attempt_at": None,
            "refresh_started_at": None,
            # A new grant supersedes whatever a worker is doing with the old one: its save must fail.
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        async with self._tx(write=True, priority=URGENT) as conn:  # tokens just issued: commit first
            stmt = self._for_update(select(accounts).where(accounts.c.app == app, accounts.c.key == key))
            row = (await conn.execute(stmt)).first()
            if row is None:
                account_id = (
                    await conn.execute(
                        insert(accounts)
                        .values(app=app, key=key, version=1, created_at=now, **values)
                        .returning(accounts.c.id)
                    )
                ).scalar_one()
            else:
                account_id = row.id
                await self._push_history(conn, row, now)
                values.update(self._previous_refresh(row, tokens))
                await conn.execute(
                    update(accounts).where(accounts.c.id == row.id).values(version=row.version + 1, **values)
                )
                await self._prune_history(conn, row.id)
            return await self._read(conn, account_id)

    async def get(self, app: str, key: str) -> Account | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.app == app, accounts.c.key == key))).first()
            return None if row is None else self._account(row)

    def _filters(self, app: str | None, status: AccountStatus | None) -> list[Any]:
        filters = []
        if app is not None:
            filters.append(accounts.c.app == app)
        if status is not None:
            filters.append(accounts.c.status == str(status))
        return filters

    async def list(
        self,
        app: str | None = None,
        status: AccountStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Sequence[Account]:
        stmt = (
            select(accounts)
            .where(*self._filters(app, status))
            .order_by(accounts.c.app, accounts.c.key)
            .limit(limit)
            .offset(offset)
        )
        async with self._tx() as conn:
            return [self._account(row) for row in await conn.execute(stmt)]

    async def count(self, app: str | None = None, status: AccountStatus | None = None) -> int:
        async with self._tx() as conn:
            stmt = select(func.count()).select_from(accounts).where(*self._filters(app, status))
            return int((await conn.execute(stmt)).scalar_one())

    async def count_by_status(self, app: str) -> dict[AccountStatus, int]:
        """Accounts of ``app`` per status, every status present (zero included), in one grouped query."""
        stmt = (
            select(accounts.c.status, func.count())
            .where(accounts.c.app == app)
            .group_by(accounts.c.status)
        )
        counts = dict.fromkeys(AccountStatus, 0)
        async with self._tx() as conn:
            for status, number in await conn.execute(stmt):
                counts[AccountStatus(status)] = int(number)
        return counts

    async def set_status(self, app: str, key: str, status: AccountStatus) -> Account:
        async with self._tx(write=True) as conn:
            row = await self._row_by_key(conn, app, key, lock=True)
            await conn.execute(
                update(accounts).where(accounts.c.id == row.id).values(status=str(status), updated_at=self.clock.now())
            )
            return await self._read(conn, row.id)

    async def delete(self, app: str, key: str) -> bool:
        async with self._tx(write=True) as conn:
            ids = select(accounts.c.id).where(accounts.c.app == app, accounts.c.key == key)
            # Explicit rather than relying on ON DELETE CASCADE, which SQLite enforces only per connection.
            await conn.execute(delete(token_history).where(token_history.c.account_id.in_(ids.scalar_subquery())))
            result = await conn.execute(delete(accounts).where(accounts.c.app == app, accounts.c.key == key))
            return bool(result.rowcount)

    async def accounts_refresh_expiring(self, app: str, before: dt.datetime, limit: int = 1000) -> Sequence[Account]:
        """Active accounts of ``app`` whose refresh token expires before ``before`` (re-authorize soon)."""
        stmt = (
            select(accounts)
            .where(
                accounts.c.app == app,
                accounts.c.status == str(AccountStatus.ACTIVE),
                accounts.c.refresh_expires_at.is_not(None),
                accounts.c.refresh_expires_at < as_utc(before),
            )
            .order_by(accounts.c.refresh_expires_at, accounts.c.id)
            .limit(limit)
        )
        async with self._tx() as conn:
            return [self._account(row) for row in await conn.execute(stmt)]

    # -- leases --------------------------------------------------------------------------------------

    async def claim_due(
        self, app: str, horizon: dt.timedelta, limit: int, owner: str, lease_ttl: dt.timedelta
    ) -> Sequence[Account]:
        if limit <= 0:
            return []
        now = self.clock.now()
        c = accounts.c
        retry_due = and_(c.next_attempt_at.is_not(None), c.next_attempt_at <= now)
        # Backing off after a failure: expiry alone claims it only if the token dies before the retry.
        expiring = and_(
            c.access_expires_at < now + horizon,
            or_(c.next_attempt_at.is_(None), c.access_expires_at <= c.next_attempt_at),
        )
        free = (
            c.app == app,
            c.status == str(AccountStatus.ACTIVE),
            or_(c.lease_expires_at.is_(None), c.lease_expires_at <= now),
        )
        # Two index range scans instead of one OR: with the OR, a claim that finds fewer than ``limit``
        # due rows read every row of the app (bench_claim: ~1.5 s per idle tick at 1,000,000 accounts).
        # Soonest expiry first (index app, status, access_expires_at), then retries whose time has come
        # (index app, status, next_attempt_at); an account in both is taken once.
        soonest = select(c.id).where(*free, expiring).order_by(c.access_expires_at, c.id).limit(limit)
        async with self._tx(write=True) as conn:
            ids = list((await conn.execute(self._for_update(soonest, skip_locked=True))).scalars())
            if len(ids) < limit:
                retries = select(c.id).where(*free, retry_due).order_by(c.next_attempt_at, c.id)
                if ids:
                    retries = retries.where(c.id.not_in(ids))
                retries = retries.limit(limit - len(ids))
                ids.extend((await conn.execute(self._for_update(retries, skip_locked=True))).scalars())
            if not ids:
                return []
            await conn.execute(
                update(accounts).where(c.id.in_(ids)).values(lease_owner=owner, lease_expires_at=now + lease_ttl)
            )
            rows = await conn.execute(select(accounts).where(c.id.in_(ids)).order_by(c.access_expires_at, c.id))
            return [self._account(row) for row in rows]

    async def claim(self, app: str, key: str, owner: str, lease_ttl: dt.timedelta) -> Account | None:
        now = self.clock.now()
        async with self._tx(write=True) as conn:
            row = await self._row_by_key(conn, app, key, lock=True)
            held = row.lease_owner is not None and row.lease_expires_at is not None and row.lease_expires_at > now
            if held and row.lease_owner != owner:
                return None
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == row.id)
                .values(lease_owner=owner, lease_expires_at=now + lease_ttl)
            )
            return await self._read(conn, row.id)

    async def mark_refresh_started(self, account_id: int, owner: str) -> None:
        now = self.clock.now()
        async with self._tx(write=True) as conn:
            await self._leased(conn, account_id, owner)
            await conn.execute(
                update(accounts).where(accounts.c.id == account_id).values(refresh_started_at=now, last_attempt_at=now)
            )

    async def save_tokens(
        self, account_id: int, owner: str, tokens: TokenSet, audit: AuditEntry | None = None
    ) -> Account:
        now = self.clock.now()
        async with self._tx(write=True, priority=URGENT) as conn:  # a rotated token: commit it first
            row = await self._leased(conn, account_id, owner)
            if audit is not None:
                # In this transaction, not one of its own: one durable commit per refresh instead of two.
                await self._insert_audit(conn, audit, self._row_secrets(row))
            await self._push_history(conn, row, now)
            values: dict[str, Any] = {
                **self._token_values(row.app, row.key, tokens),
                "status": str(AccountStatus.ACTIVE),
                "consecutive_failures": 0,
                "last_error": None,
                "last_success_at": now,
                "last_attempt_at": row.last_attempt_at or now,
                "next_attempt_at": None,
                "refresh_started_at": None,
                "lease_owner": None,
                "lease_expires_at": None,
                "version": row.version + 1,
                "updated_at": now,
            }
            values.update(self._previous_refresh(row, tokens))
            await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
            await self._prune_history(conn, account_id)
            fresh = await self._read(conn, account_id)
        # Only here has the transaction committed: the caller may now log, notify and alarm.
        return fresh

    async def record_failure(
        self,
        account_id: int,
        owner: str,
        error: ErrorInfo,
        next_attempt_at: dt.datetime | None,
        status: AccountStatus | None = None,
        audit: AuditEntry | None = None,
    ) -> Account:
        now = self.clock.now()
        async with self._tx(write=True) as conn:
            row = await self._leased(conn, account_id, owner)
            if audit is not None:
                await self._insert_audit(conn, audit, self._row_secrets(row))
            values: dict[str, Any] = {
                "consecutive_failures": row.consecutive_failures + 1,
                "last_error": _scrub(_error_json(error), self._row_secrets(row)),
                "last_attempt_at": now,
                "next_attempt_at": as_utc(next_attempt_at) if next_attempt_at else None,
                "refresh_started_at": None,
                "lease_owner": None,
                "lease_expires_at": None,
                "updated_at": now,
            }
            if status is not None:
                values["status"] = str(status)
            await conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
            return await self._read(conn, account_id)

    async def release(self, account_id: int, owner: str) -> None:
        async with self._tx(write=True) as conn:
            await self._leased(conn, account_id, owner)
            await conn.execute(
                update(accounts).where(accounts.c.id == account_id).values(lease_owner=None, lease_expires_at=None)
            )

    # -- history, audit ------------------------------------------------------------------------------

    async def history(self, app: str, key: str, limit: int = 20) -> Sequence[HistoryEntry]:
        stmt = (
            select(token_history)
            .join(accounts, accounts.c.id == token_history.c.account_id)
            .where(accounts.c.app == app, accounts.c.key == key)
            .order_by(token_history.c.version.desc())
            .limit(limit)
        )
        async with self._tx() as conn:
            return [
                HistoryEntry(
                    version=row.version,
                    tokens=self._tokens_from(row, app, key) or _never(),
                    replaced_at=row.replaced_at,
                )
                for row in await conn.execute(stmt)
            ]

    async def restore(self, app: str, key: str, version: int) -> Account:
        now = self.clock.now()
        async with self._tx(write=True) as conn:
            row = await self._row_by_key(conn, app, key, lock=True)
            old = (
                await conn.execute(
                    select(token_history).where(
                        token_history.c.account_id == row.id, token_history.c.version == version
                    )
                )
            ).first()
            if old is None:
                raise StoreError(f"store: account {app}/{key} has no version {version} in its history")
            tokens = self._tokens_from(old, app, key)
            assert tokens is not None
            await self._push_history(conn, row, now)
            values: dict[str, Any] = {
                **self._token_values(app, key, tokens),
                "raw": old.raw or {},
                "version": row.version + 1,
                "refresh_started_at": None,
                "lease_owner": None,  # a worker busy with the replaced tokens must not save over these
                "lease_expires_at": None,
                "updated_at": now,
            }
            current_refresh = self._dec(row.refresh_token, app, key, "refresh_token")
            if current_refresh is not None:
                values["previous_refresh_token"] = self._enc(current_refresh, app, key, "previous_refresh_token")
            await conn.execute(update(accounts).where(accounts.c.id == row.id).values(**values))
            await self._prune_history(conn, row.id)
            return await self._read(conn, row.id)

    async def audit(self, entry: AuditEntry) -> None:
        async with self._tx(write=True) as conn:
            row = None
            if entry.message:  # only a message can carry a token to scrub
                query = select(accounts).where(accounts.c.app == entry.app, accounts.c.key == entry.account_key)
                row = (await conn.execute(query)).first()
            await self._insert_audit(conn, entry, self._row_secrets(row) if row is not None else frozenset())

    async def _insert_audit(self, conn: AsyncConnection, entry: AuditEntry, secrets: frozenset[str]) -> None:
        """Add an audit row under a savepoint: a row the database refuses is logged and skipped, and the
        transaction around it (which may hold a rotated token) goes on."""
        message = entry.message[:_MESSAGE_LIMIT] if entry.message else entry.message
        if message and secrets:
            message = _scrub(message, secrets)  # never a token in the audit table, whatever the caller wrote
        values = {
            "at": as_utc(entry.at),
            "app": entry.app,
            "account_key": entry.account_key,
            "outcome": entry.outcome[:32],
            "duration_ms": entry.duration_ms,
            "attempts": entry.attempts,
            # Cut to the columns' sizes: a platform's overlong error code must not fail the insert.
            "error_class": entry.error_class[:64] if entry.error_class else None,
            "error_code": entry.error_code[:128] if entry.error_code else None,
            "request_id": entry.request_id[:255] if entry.request_id else None,
            "message": message,
        }
        try:
            async with conn.begin_nested():
                await conn.execute(insert(audit_log).values(**values))
        except DBAPIError as exc:
            _log.error(
                "store.audit_failed", app=entry.app, account=entry.account_key, error=type(exc.orig).__name__
            )

    async def audit_log(
        self, app: str | None = None, account_key: str | None = None, limit: int = 100
    ) -> Sequence[AuditEntry]:
        stmt = select(audit_log)
        if app is not None:
            stmt = stmt.where(audit_log.c.app == app)
        if account_key is not None:
            stmt = stmt.where(audit_log.c.account_key == account_key)
        stmt = stmt.order_by(audit_log.c.at.desc(), audit_log.c.id.desc()).limit(limit)
        async with self._tx() as conn:
            return [
                AuditEntry(
                    at=row.at,
                    app=row.app,
                    account_key=row.account_key,
                    outcome=row.outcome,
                    duration_ms=row.duration_ms,
                    attempts=row.attempts,
                    error_class=row.error_class,
                    error_code=row.error_code,
                    request_id=row.request_id,
                    message=row.message,
                )
                for row in await conn.execute(stmt)
            ]

    async def prune_audit(self, older_than: dt.datetime) -> int:
        async with self._tx(write=True) as conn:
            result = await conn.execute(delete(audit_log).where(audit_log.c.at < as_utc(older_than)))
            return int(result.rowcount or 0)

    # -- alarms ----------------------------------------------------------------------------------------

    @staticmethod
    def _alarm(row: Row[Any]) -> Alarm:
        return Alarm(
            app=row.app,
            account_key=row.account_key,
            cause=row.cause,
            opened_at=row.opened_at,
            last_sent_at=row.last_sent_at,
            resolved_at=row.resolved_at,
            details=dict(row.details or {}),
            delivered_at=row.delivered_at,
        )

    async def open_alarms(self, app: str | None = None, account_key: str | None = None) -> Sequence[Alarm]:
        stmt = select(alarms).where(alarms.c.resolved_at.is_(None))
        if app is not None:
            stmt = stmt.where(alarms.c.app == app)
        if account_key is not None:
            stmt = stmt.where(alarms.c.account_key == account_key)
        async with self._tx() as conn:
            rows = await conn.execute(stmt.order_by(alarms.c.opened_at, alarms.c.app, alarms.c.account_key))
            return [self._alarm(row) for row in rows]

    async def get_alarm(self, app: str, account_key: str, cause: str) -> Alarm | None:
        stmt = select(alarms).where(alarms.c.app == app, alarms.c.account_key == account_key, alarms.c.cause == cause)
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).first()
            return None if row is None else self._alarm(row)

    async def put_alarm(self, alarm: Alarm) -> None:
        values = {
            "opened_at": as_utc(alarm.opened_at),
            "last_sent_at": as_utc(alarm.last_sent_at) if alarm.last_sent_at else None,
            "resolved_at": as_utc(alarm.resolved_at) if alarm.resolved_at else None,
            "details": _jsonable(alarm.details),
            "delivered_at": as_utc(alarm.delivered_at) if alarm.delivered_at else None,
        }
        stmt = self._insert(alarms).values(app=alarm.app, account_key=alarm.account_key, cause=alarm.cause, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["app", "account_key", "cause"], set_=values)
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def note_alarm_sent(
        self,
        app: str,
        account_key: str,
        cause: str,
        now: dt.datetime,
        quiet_since: dt.datetime,
        details: Mapping[str, Any],
        undelivered_since: dt.datetime | None = None,
    ) -> bool:
        # One conditional upsert: with replicas, the row lock (PostgreSQL) or the write lock (SQLite) makes
        # exactly one of two concurrent callers see its row come back; a read-then-write would let both send.
        now = as_utc(now)
        values = {
            "opened_at": now,
            "last_sent_at": now,
            "resolved_at": None,
            "details": _jsonable(dict(details)),
            "delivered_at": None,
        }
        may_send = [
            alarms.c.resolved_at.is_not(None),
            alarms.c.last_sent_at.is_(None),
            alarms.c.last_sent_at <= as_utc(quiet_since),
        ]
        if undelivered_since is not None:
            may_send.append(and_(alarms.c.delivered_at.is_(None), alarms.c.last_sent_at <= as_utc(undelivered_since)))
        stmt = self._insert(alarms).values(app=app, account_key=account_key, cause=cause, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["app", "account_key", "cause"],
            set_={
                # A resolved alarm that fires again is a new alarm: it opens now.
                "opened_at": case(
                    (alarms.c.resolved_at.is_not(None), stmt.excluded.opened_at), else_=alarms.c.opened_at
                ),
                "last_sent_at": stmt.excluded.last_sent_at,
                "resolved_at": None,
                "details": stmt.excluded.details,
                "delivered_at": None,
            },
            where=or_(*may_send),
        ).returning(alarms.c.app)
        async with self._tx(write=True) as conn:
            return (await conn.execute(stmt)).first() is not None

    async def mark_alarm_delivered(self, app: str, account_key: str, cause: str, sent_at: dt.datetime) -> None:
        stmt = (
            update(alarms)
            .where(
                alarms.c.app == app,
                alarms.c.account_key == account_key,
                alarms.c.cause == cause,
                alarms.c.last_sent_at == as_utc(sent_at),
                alarms.c.delivered_at.is_(None),
            )
            .values(delivered_at=self.clock.now())
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    # -- onboarding state ------------------------------------------------------------------------------

    async def put_state(self, state: OAuthState) -> None:
        now = self.clock.now()
        async with self._tx(write=True) as conn:
            # Spent states are kept a while (a replay is then named "already used"); expired unused ones
            # are useless. Clear both here rather than in a separate job.
            await conn.execute(
                delete(oauth_states).where(
                    or_(
                        and_(oauth_states.c.used_at.is_(None), oauth_states.c.expires_at <= now),
                        oauth_states.c.used_at <= now - USED_STATE_MEMORY,
                    )
                )
            )
            await conn.execute(
                insert(oauth_states).values(
                    state=state.state,
                    app=state.app,
                    created_at=as_utc(state.created_at),
                    expires_at=as_utc(state.expires_at),
                    return_to=state.return_to,
                    pkce_verifier=self._enc(state.pkce_verifier, state.app, state.state, "pkce_verifier"),
                    redirect_uri=state.redirect_uri,
                )
            )

    async def consume_state(self, state: str, app: str) -> OAuthState | None:
        now = self.clock.now()
        async with self._tx(write=True) as conn:
            # One conditional UPDATE … RETURNING: of two callbacks racing with the same state, exactly one
            # gets it. The row stays, marked used, so it can never be consumed again (used_at is not a
            # value a caller can send), and a state of another app is left untouched for its own callback.
            row = (
                await conn.execute(
                    update(oauth_states)
                    .where(
                        oauth_states.c.state == state,
                        oauth_states.c.app == app,
                        oauth_states.c.used_at.is_(None),
                        oauth_states.c.expires_at > now,
                    )
                    .values(used_at=now)
                    .returning(*oauth_states.c)
                )
            ).first()
        return None if row is None else self._state_from_row(row)

    async def find_state(self, state: str) -> OAuthState | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(oauth_states).where(oauth_states.c.state == state))).first()
        return None if row is None else self._state_from_row(row)

    def _state_from_row(self, row: Row[Any]) -> OAuthState:
        return OAuthState(
            state=row.state,
            app=row.app,
            created_at=row.created_at,
            expires_at=row.expires_at,
            return_to=row.return_to,
            pkce_verifier=self._dec(row.pkce_verifier, row.app, row.state, "pkce_verifier"),
            redirect_uri=row.redirect_uri,
            used_at=row.used_at,
        )

    # -- keys ------------------------------------------------------------------------------------------

    async def rotate_keys(self, batch: int = 500) -> int:
        if not self._cipher.enabled:
            raise StoreError("store.encryption_keys is empty: there is no key to encrypt under")
        # In batches of rows, each its own short transaction: on SQLite one transaction over the whole
        # store would hold the write lock for its whole run, and every refresh would wait behind it. Each
        # row is rewritten only if it still needs it, so a batch interrupted or raced by a refresh (which
        # already writes under the new key) is safe to run again.
        rewritten = 0
        history = select(token_history, accounts.c.app, accounts.c.key).join(
            accounts, accounts.c.id == token_history.c.account_id
        )
        for table, query, fields in (
            (accounts, select(accounts), ("access_token", "refresh_token", "previous_refresh_token")),
            (token_history, history, ("access_token", "refresh_token")),
        ):
            last = 0
            while True:
                async with self._tx(write=True) as conn:
                    page = (
                        await conn.execute(
                            self._for_update(query.where(table.c.id > last).order_by(table.c.id).limit(batch))
                        )
                    ).all()
                    for row in page:
                        changes = self._reencrypt(row, row.app, row.key, fields)
                        if changes:
                            await conn.execute(update(table).where(table.c.id == row.id).values(**changes))
                            rewritten += 1
                if len(page) < batch:
                    break
                last = page[-1].id
        async with self._tx(write=True) as conn:  # a handful of short-lived rows
            for row in (await conn.execute(select(oauth_states))).all():
                changes = self._reencrypt(row, row.app, row.state, ("pkce_verifier",))
                if changes:
                    await conn.execute(update(oauth_states).where(oauth_states.c.state == row.state).values(**changes))
                    rewritten += 1
        return rewritten

    def _reencrypt(self, row: Any, app: str, key: str, fields: Sequence[str]) -> dict[str, str]:
        changes: dict[str, str] = {}
        for field in fields:
            value = getattr(row, field)
            if value is not None and self._cipher.needs_rewrite(value):
                clear = self._dec(value, app, key, field)
                assert clear is not None
                changes[field] = self._cipher.encrypt(clear, app=app, account=key, field=field)
        return changes

    async def earliest_expiry(self, app: str) -> dt.datetime | None:
        stmt = select(func.min(accounts.c.access_expires_at)).where(
            accounts.c.app == app, accounts.c.status == str(AccountStatus.ACTIVE)
        )
        async with self._tx() as conn:
            value = (await conn.execute(stmt)).scalar_one_or_none()
        return as_utc(value) if value is not None else None


def _never() -> TokenSet:  # pragma: no cover - history rows always hold a full token set
    raise StoreError("store: a history row has no token set")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the driver: we emit BEGIN / BEGIN IMMEDIATE ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first: switching to WAL needs a lock that another process may hold right now.
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")  # a committed token survives a power cut
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get("refresher_begin", "BEGIN"))
