"""Read-only queries of the operator console: filtered pages of accounts, token history without tokens,
recent alarms and refresh activity per time bucket.

Nothing here reads a token column: listings decode rows with ``secrets=False`` and history selects only
the expiry columns, so the console works (and shows nothing secret) whatever the encryption keys say.
Every listing is ordered by indexed columns with the row id as tie-breaker, and paged with LIMIT/OFFSET.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Integer, and_, case, cast, func, literal, or_, select, tuple_, union, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from refresher.domain import AccountStatus, as_utc
from refresher.store.alarms import alarm_from_row
from refresher.store.base import Account, Alarm
from refresher.store.core import StoreCore
from refresher.store.schema import UTCDateTime, accounts, alarms, audit_log, token_history

SortKey = Literal["access", "refresh", "key", "failures"]
SEARCH_CAP = 1000  # a search lists at most this many matches ("1,000+")
# Key formats of the built-in plugins besides the bare platform id ("shop:123", "merchant:456"), so a
# search for an id finds those keys through the index too.
KEY_KINDS = ("shop", "merchant")
# Tag names SQLite may read with a quoted JSON path label (no quote or backslash to escape).
SIMPLE_TAG_NAME = re.compile(r"[\w.\-]{1,64}")
# Tag values JSON writes verbatim between quotes (printable ASCII without quote or backslash).
PLAIN_TAG_VALUE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]*")
_SORT_COLUMNS = {
    "access": accounts.c.access_expires_at,
    "refresh": accounts.c.refresh_expires_at,
    "key": accounts.c.key,
    "failures": accounts.c.consecutive_failures,
}


@dataclass(frozen=True)
class AccountQuery:
    """What the accounts page asks for; every field optional."""

    app: str | None = None
    platform: str | None = None
    status: AccountStatus | None = None
    search: str | None = None  # key or platform id prefix, or part of the shop / user name
    sort: SortKey = "access"
    descending: bool = False
    # The apps to list when ``app`` is not given (the configured ones): an expiry-sorted listing reads
    # each app's and status's slice of the (app, status, expiry) indexes and merges them.
    apps: tuple[str, ...] = ()
    # The integrator's end user and a tag (migration 0006): ``tag`` is (key, value), or (key, None) for
    # any value. Either one pages by LIMIT/OFFSET: an end user's accounts come from their index.
    end_user_id: str | None = None
    tag: tuple[str, str | None] | None = None


@dataclass(frozen=True)
class AccountPage:
    items: Sequence[Account]
    total: int
    offset: int
    limit: int
    next_cursor: str | None = None  # keyset listings: where the next page starts
    capped: bool = False  # a search found more than SEARCH_CAP accounts: ``total`` is that cap

    @property
    def has_next(self) -> bool:
        if self.next_cursor is not None:
            return True
        return self.offset + len(self.items) < self.total


@dataclass(frozen=True)
class TokenVersion:
    """One earlier token set of an account: its version and expiries, never the tokens."""

    version: int
    access_expires_at: dt.datetime
    refresh_expires_at: dt.datetime | None
    replaced_at: dt.datetime


@dataclass(frozen=True)
class ActivityBucket:
    start: dt.datetime
    successes: int
    failures: int


def _decode_cursor(cursor: str | None, column: Any) -> tuple[int, dt.datetime | None, int]:
    """``phase~iso-time~id`` -> its parts; anything unreadable starts from the beginning."""
    if not cursor:
        return 0, None, 0
    try:
        phase, value, last_id = cursor.split("~")
        return int(phase) % 2, as_utc(dt.datetime.fromisoformat(value)) if value else None, int(last_id)
    except (ValueError, IndexError):
        return 0, None, 0


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SqlBrowse(StoreCore):
    """The console's queries, on the same engine and transactions as the rest of the SQL store."""

    def _account_filters(self, query: AccountQuery) -> list[ColumnElement[bool]]:
        filters: list[ColumnElement[bool]] = []
        if query.app:
            filters.append(accounts.c.app == query.app)
        if query.platform:
            filters.append(accounts.c.platform == query.platform)
        if query.status is not None:
            filters.append(accounts.c.status == str(query.status))
        if query.end_user_id:
            filters.append(accounts.c.end_user_id == query.end_user_id)  # indexed
        if query.tag is not None:
            filters.append(self._tag_filter(*query.tag))
        return filters

    def _tag_filter(self, name: str, value: str | None) -> ColumnElement[bool]:
        """Accounts whose ``tags`` hold ``name`` (with ``value``): a scan, there is no index on tags."""
        if self.backend == "sqlite" and SIMPLE_TAG_NAME.fullmatch(name):
            path = func.json_extract(accounts.c.tags, f'$."{name}"')  # a third faster than json_each
            if value is None:
                return path.is_not(None)
            if PLAIN_TAG_VALUE.fullmatch(value):
                # Such a value is stored as itself in quotes whatever the JSON encoder: a cheap text test
                # skips parsing the rows that cannot match (a third of the time again).
                return and_(func.instr(accounts.c.tags, f'"{value}"') > 0, path == value)
            return path == value
        if self.backend == "sqlite":
            # json_each, not a JSON path: any character of a tag's name is matched literally.
            each = func.json_each(accounts.c.tags).table_valued("key", "value")
            match = [each.c.key == name] + ([each.c.value == value] if value is not None else [])
            return select(literal(1)).select_from(each).where(*match).exists()
        text = accounts.c.tags[name].as_string()  # PostgreSQL: tags ->> name, the name a bound value
        found: ColumnElement[bool] = text == value if value is not None else text.is_not(None)
        return found

    async def browse_accounts(
        self, query: AccountQuery, *, limit: int = 50, offset: int = 0, after: str | None = None
    ) -> AccountPage:
        """One page of accounts (no tokens read) and how many match in all.

        Sorted by an expiry without a search, pages are keyset pages (``after`` is the previous page's
        ``next_cursor``), each read from the indexes whatever its depth; otherwise LIMIT/OFFSET."""
        filters = self._account_filters(query)
        count = select(func.count()).select_from(accounts).where(*filters)
        text = (query.search or "").strip()
        keyset = query.sort in ("access", "refresh") and not text and not query.end_user_id and query.tag is None
        capped = False
        async with self._tx() as conn:
            if text:
                matches = await self._search_ids(conn, query, text, filters)
                capped = len(matches) > SEARCH_CAP
                filters = [accounts.c.id.in_(sorted(matches)[: SEARCH_CAP + 1])]
                count = select(func.count()).select_from(accounts).where(*filters)
            counted: int | None = None
            if keyset:
                page_ids, cursor = await self._keyset_ids(conn, query, limit, after)
            else:
                column = _SORT_COLUMNS[query.sort]
                order = [column.desc(), accounts.c.id.desc()] if query.descending else [column, accounts.c.id]
                # Order and skip over narrow (sort key, id) pairs, then read the page's rows by id.
                ids = select(accounts.c.id).where(*filters).order_by(*order).limit(limit).offset(max(offset, 0))
                if query.tag is not None and not text:  # a tag scans the table: count in the same pass
                    ids = ids.add_columns(func.count().over().label("total"))
                picked = list(await conn.execute(ids))
                page_ids, cursor = [row.id for row in picked], None
                counted = int(picked[0].total) if picked and "total" in picked[0]._fields else None
            found = {row.id: row for row in await conn.execute(select(accounts).where(accounts.c.id.in_(page_ids)))}
            total = counted if counted is not None else int((await conn.execute(count)).scalar_one())
        rows = [self._codec.account(found[i], secrets=False) for i in page_ids if i in found]
        total = min(total, SEARCH_CAP) if capped else total
        return AccountPage(rows, total, 0 if keyset else offset, limit, next_cursor=cursor, capped=capped)

    async def _search_ids(
        self, conn: AsyncConnection, query: AccountQuery, text: str, filters: list[ColumnElement[bool]]
    ) -> set[int]:
        """Accounts whose key or platform id starts with ``text`` (read from the (app, key) index), or, when
        ``text`` has a letter and is not a key, whose name contains it (a scan); at most SEARCH_CAP + 1."""
        prefixes = [text] if ":" in text else [text, *(f"{kind}:{text}" for kind in KEY_KINDS)]
        # Without the app list (a caller that knows no config) one statement over every app, unindexed.
        apps: list[str | None] = [query.app] if query.app else [*query.apps] or [None]
        parts = []
        for app in apps:
            for prefix in prefixes:
                if self.backend == "sqlite":  # a range on the unique (app, key) index; LIKE could not use it
                    match = and_(accounts.c.key >= prefix, accounts.c.key < prefix + "\U0010ffff")
                else:
                    match = accounts.c.key.startswith(prefix, autoescape=True)
                parts.append(
                    select(accounts.c.id)
                    .where(*([accounts.c.app == app] if app else []), match, *filters)
                    .limit(SEARCH_CAP + 1)
                )
        if ":" not in text and any(c.isalpha() for c in text):
            pattern = "%" + _like_escape(text) + "%"
            # SQLite's LIKE ignores ASCII case; PostgreSQL needs ILIKE.
            named = (
                accounts.c.name.like(pattern, escape="\\")
                if self.backend == "sqlite"
                else accounts.c.name.ilike(pattern, escape="\\")
            )
            parts.append(select(accounts.c.id).where(named, *filters).limit(SEARCH_CAP + 1))
        # One round trip: every part (each an index range, or the name scan) in one UNION.
        merged = union(*(select(part.subquery()) for part in parts)).subquery()
        rows = await conn.execute(select(merged.c[0]).limit(SEARCH_CAP + 1))
        return {row[0] for row in rows}

    async def _keyset_ids(
        self, conn: AsyncConnection, query: AccountQuery, limit: int, after: str | None
    ) -> tuple[list[int], str | None]:
        """Ids of the next ``limit`` accounts by (expiry, id): the first ``limit`` of every (app, status)
        slice after the cursor, merged; accounts without that expiry come last, by id."""
        column = _SORT_COLUMNS[query.sort]
        desc = query.descending
        phase, value, last_id = _decode_cursor(after, column)
        apps = [query.app] if query.app else list(query.apps)
        statuses = [str(query.status)] if query.status is not None else [str(s) for s in AccountStatus]
        extra = [accounts.c.platform == query.platform] if query.platform else []
        picked: list[tuple[int, Any, int]] = []  # (phase, value, id)
        if phase == 0:
            # One statement: each slice's first ``limit`` rows (an index range each), merged by the database.
            slices = []
            for app in apps:
                for status in statuses:
                    stmt = select(column.label("v"), accounts.c.id.label("i")).where(
                        accounts.c.app == app, accounts.c.status == status, column.is_not(None), *extra
                    )
                    if value is not None:
                        key = tuple_(column, accounts.c.id)
                        stmt = stmt.where(key < tuple_(value, last_id) if desc else key > tuple_(value, last_id))
                    order = [column.desc(), accounts.c.id.desc()] if desc else [column, accounts.c.id]
                    slices.append(select(stmt.order_by(*order).limit(limit).subquery()))
            if slices:
                merged = union_all(*slices).subquery()
                outer = [merged.c.v.desc(), merged.c.i.desc()] if desc else [merged.c.v, merged.c.i]
                top = select(merged.c.v, merged.c.i).order_by(*outer).limit(limit)
                picked = [(0, as_utc(v) if isinstance(v, dt.datetime) else v, i) for v, i in await conn.execute(top)]
            last_id = 0
        if len(picked) < limit:  # then those without the expiry, by id
            nulls: list[int] = []
            for app in apps:
                for status in statuses:
                    stmt = select(accounts.c.id).where(
                        accounts.c.app == app, accounts.c.status == status, column.is_(None), *extra
                    )
                    stmt = stmt.where(accounts.c.id > last_id).order_by(accounts.c.id).limit(limit)
                    nulls += [r[0] for r in await conn.execute(stmt)]
            picked += [(1, None, i) for i in sorted(nulls)[: limit - len(picked)]]
        if len(picked) < limit:
            return [i for _, _, i in picked], None
        p, v, i = picked[-1]
        return [i for _, _, i in picked], f"{p}~{v.isoformat() if v is not None else ''}~{i}"

    async def account_summary(self, app: str, key: str) -> Account | None:
        """One account without its tokens (the console's account page)."""
        async with self._tx() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.app == app, accounts.c.key == key))).first()
        return None if row is None else self._codec.account(row, secrets=False)

    async def token_versions(self, app: str, key: str, limit: int = 20) -> Sequence[TokenVersion]:
        stmt = (
            select(
                token_history.c.version,
                token_history.c.access_expires_at,
                token_history.c.refresh_expires_at,
                token_history.c.replaced_at,
            )
            .join(accounts, accounts.c.id == token_history.c.account_id)
            .where(accounts.c.app == app, accounts.c.key == key)
            .order_by(token_history.c.version.desc())
            .limit(limit)
        )
        async with self._tx() as conn:
            return [TokenVersion(*row) for row in await conn.execute(stmt)]

    async def recent_alarms(
        self, since: dt.datetime, *, app: str | None = None, account_key: str | None = None, limit: int = 200
    ) -> Sequence[Alarm]:
        """Open alarms, and alarms resolved after ``since``; open ones first, newest first."""
        stmt = select(alarms).where(or_(alarms.c.resolved_at.is_(None), alarms.c.resolved_at >= as_utc(since)))
        if app is not None:
            stmt = stmt.where(alarms.c.app == app)
        if account_key is not None:
            stmt = stmt.where(alarms.c.account_key == account_key)
        is_resolved = case((alarms.c.resolved_at.is_(None), 0), else_=1)
        stmt = stmt.order_by(is_resolved, alarms.c.opened_at.desc()).limit(limit)
        async with self._tx() as conn:
            return [alarm_from_row(row) for row in await conn.execute(stmt)]

    async def next_due(self, app: str, horizon: dt.timedelta) -> dt.datetime | None:
        """When the app's next refresh is due: the earliest active expiry minus its refresh window, or an
        earlier retry."""
        active = and_(accounts.c.app == app, accounts.c.status == str(AccountStatus.ACTIVE))
        expiry = select(func.min(accounts.c.access_expires_at)).where(active)
        retry = select(func.min(accounts.c.next_attempt_at)).where(active)
        async with self._tx() as conn:
            first_expiry = (await conn.execute(expiry)).scalar_one_or_none()
            first_retry = (await conn.execute(retry)).scalar_one_or_none()
        candidates = [as_utc(first_expiry) - horizon] if first_expiry is not None else []
        if first_retry is not None:
            candidates.append(as_utc(first_retry))
        return min(candidates) if candidates else None

    async def refresh_expiring_count(self, app: str, before: dt.datetime) -> int:
        stmt = select(func.count()).where(
            accounts.c.app == app,
            accounts.c.status == str(AccountStatus.ACTIVE),
            accounts.c.refresh_expires_at.is_not(None),
            accounts.c.refresh_expires_at < as_utc(before),
        )
        async with self._tx() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def activity(self, since: dt.datetime, bucket: dt.timedelta, buckets: int) -> Sequence[ActivityBucket]:
        """Settled refreshes per time bucket from ``since`` on (successes, failures), counted in the database
        over the audit table's index on ``at``; every bucket present, zeros included."""
        since = as_utc(since)
        seconds = bucket.total_seconds()
        if self.backend == "sqlite":
            # Times are stored as naive UTC text that julianday reads as UTC; rows are at or after
            # ``since``, so truncating the cast is flooring.
            origin = since.replace(tzinfo=None).isoformat(" ")
            offset = (func.julianday(audit_log.c.at) - func.julianday(origin)) * 86400
            index = cast(offset / seconds, Integer)
        else:
            offset = func.extract("epoch", audit_log.c.at - literal(since, UTCDateTime()))
            index = cast(func.floor(offset / seconds), Integer)
        # A failed refresh's audit outcome is its error class (transient, reauth_required ...), never
        # "failure": every row that is not a success is one.
        success = func.sum(case((audit_log.c.outcome == "success", 1), else_=0))
        failure = func.sum(case((audit_log.c.outcome != "success", 1), else_=0))
        stmt = (
            select(index.label("n"), success, failure)
            .where(audit_log.c.at >= since, audit_log.c.at < since + bucket * buckets)
            .group_by("n")
        )
        found: dict[int, tuple[int, int]] = {}
        async with self._tx() as conn:
            for n, ok, failed in await conn.execute(stmt):
                if n is not None and 0 <= int(n) < buckets:
                    found[int(n)] = (int(ok or 0), int(failed or 0))
        return [ActivityBucket(since + bucket * n, *found.get(n, (0, 0))) for n in range(buckets)]
