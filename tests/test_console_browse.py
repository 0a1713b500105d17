"""The console's store queries on SQLite and PostgreSQL: keyset pages, filters, search, token history
without tokens, alarms and the activity buckets."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from refresher.domain import AccountStatus, FakeClock, Identity, TokenSet
from refresher.store.base import Account, Alarm, AuditEntry
from refresher.store.browse import AccountQuery
from refresher.store.sql import SqlStore
from tests.support import pg_schema

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
APPS = ("a1", "a2", "a3")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    clock = FakeClock(NOW)
    if request.param == "sqlite":
        opened = SqlStore(f"sqlite:///{tmp_path / 'b.db'}", clock=clock)
        await opened.open()
        yield opened
        await opened.close()
        return
    with pg_schema() as url:
        opened = SqlStore(url, clock=clock)
        await opened.open()
        yield opened
        await opened.close()


async def fill(store: SqlStore, count: int) -> None:
    statuses = list(AccountStatus)
    for n in range(count):
        # Repeating expiries (n % 17) make ties, which only the id breaks; every 11th has no refresh end.
        tokens = TokenSet(
            f"access-{n}",
            f"refresh-{n}",
            NOW + dt.timedelta(minutes=n % 17),
            None if n % 11 == 0 else NOW + dt.timedelta(days=n % 23),
        )
        identity = Identity(f"shop:{1000 + n}", "shop", str(1000 + n), name=f"Shop Number {n}", region="SG")
        await store.import_account(APPS[n % 3], "shopee", identity, tokens, statuses[n % 3])


@pytest.mark.parametrize(("sort", "descending"), [("access", False), ("access", True), ("refresh", False)])
async def test_keyset_pages_list_every_account_once_in_order(store: SqlStore, sort: str, descending: bool) -> None:
    await fill(store, 120)
    query = AccountQuery(sort=sort, descending=descending, apps=APPS)  # type: ignore[arg-type]
    seen: list[Account] = []
    cursor, pages = None, 0
    while True:
        page = await store.browse_accounts(query, limit=7, after=cursor)
        assert page.total == 120
        seen += page.items
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len({a.id for a in seen}) == len(seen) == 120 and pages == 18
    column = "access_expires_at" if sort == "access" else "refresh_expires_at"
    dated = [(getattr(a, column), a.id) for a in seen if getattr(a, column) is not None]
    assert dated == sorted(dated, reverse=descending)
    undated = [a.id for a in seen if getattr(a, column) is None]
    assert [a.id for a in seen[len(dated) :]] == sorted(undated)  # those without the expiry come last
    assert all(a.tokens is None for a in seen)  # a listing never reads a token


async def test_filters_search_and_offset_pages(store: SqlStore) -> None:
    await fill(store, 60)
    by_app = await store.browse_accounts(AccountQuery(app="a2", status=AccountStatus.NEEDS_REAUTH, apps=APPS))
    assert by_app.total == 20 and {(a.app, a.status) for a in by_app.items} == {("a2", AccountStatus.NEEDS_REAUTH)}
    assert (await store.browse_accounts(AccountQuery(search="number 42"))).total == 1  # part of the name
    assert (await store.browse_accounts(AccountQuery(search="shop:104"))).total == 10  # key prefix
    assert (await store.browse_accounts(AccountQuery(search="1059"))).total == 1  # platform id prefix
    assert (await store.browse_accounts(AccountQuery(search="50%"))).total == 0  # LIKE wildcards are text
    # With the app list (what the console passes) ids and keys are found through the (app, key) index.
    assert (await store.browse_accounts(AccountQuery(search="shop:104", apps=APPS))).total == 10
    assert (await store.browse_accounts(AccountQuery(search="1059", apps=APPS))).total == 1
    assert (await store.browse_accounts(AccountQuery(search="105", app="a1", apps=APPS))).total == 3  # 1051, 1054, 1057
    assert (await store.browse_accounts(AccountQuery(search="SHOP number", apps=APPS))).total == 60
    first = await store.browse_accounts(AccountQuery(sort="key"), limit=25)
    third = await store.browse_accounts(AccountQuery(sort="key"), limit=25, offset=50)
    assert first.has_next and not third.has_next and len(third.items) == 10
    assert [a.key for a in first.items] == sorted(a.key for a in first.items)


async def test_history_alarms_and_activity(store: SqlStore) -> None:
    await fill(store, 3)
    identity = Identity("shop:1000", "shop", "1000", name="Shop Number 0")
    await store.import_account(
        "a1",
        "shopee",
        identity,
        TokenSet("new-access", "new-refresh", NOW + dt.timedelta(hours=4)),
        AccountStatus.ACTIVE,
    )
    (version,) = await store.token_versions("a1", "shop:1000")
    assert version.version == 1 and version.access_expires_at == NOW
    await store.put_alarm(Alarm("a1", "shop:1000", "failures", NOW - dt.timedelta(hours=1), None, None))
    await store.put_alarm(
        Alarm("a2", "shop:1001", "failures", NOW - dt.timedelta(days=9), None, NOW - dt.timedelta(days=8))
    )
    recent = await store.recent_alarms(NOW - dt.timedelta(days=7))
    assert [(a.app, a.resolved_at) for a in recent] == [("a1", None)]
    # Audit outcomes as the refresher writes them: "success", or the failure's error class.
    for minutes, outcome in (
        (5, "success"),
        (65, "success"),
        (70, "transient"),
        (80, "reauth_required"),
        (600, "transient"),
    ):
        await store.audit(AuditEntry(NOW - dt.timedelta(minutes=minutes), "a1", "shop:1000", outcome, 10))
    buckets = await store.activity(NOW - dt.timedelta(hours=3), dt.timedelta(hours=1), 3)
    assert [(b.successes, b.failures) for b in buckets] == [(0, 0), (1, 2), (1, 0)]
    # a1 holds one active account, re-authorized above (expires in 4 h): due 30 min before
    assert await store.next_due("a1", dt.timedelta(minutes=30)) == NOW + dt.timedelta(hours=3, minutes=30)
    assert await store.refresh_expiring_count("a1", NOW + dt.timedelta(days=30)) == 0  # a1's accounts: no end


async def test_end_user_and_tag_filters(store: SqlStore) -> None:
    await fill(store, 30)
    # Accounts 3, 4 and 5 belong to end user u-1; tags on a few, one with a name no JSON path could spell.
    for n in (3, 4, 5):
        await store.set_connection(APPS[n % 3], f"shop:{1000 + n}", {"id": "u-1", "email": "a@b.c"}, {})
    await store.set_connection(APPS[6 % 3], "shop:1006", {"id": "u-2"}, {"env": "prod", 'we"ird.$[0]': "x y"})
    await store.set_connection(APPS[4 % 3], "shop:1004", None, {"env": "staging"})
    await store.set_connection(APPS[7 % 3], "shop:1007", None, {"env": "prod", "note": 'café "q"'})

    async def keys(**filters: object) -> list[str]:
        for sort in ("access", "key"):  # (an expiry sort pages by OFFSET too when filtered)
            page = await store.browse_accounts(AccountQuery(apps=APPS, sort=sort, **filters), limit=50)  # type: ignore[arg-type]
            found = sorted(a.key for a in page.items)
            assert page.total == len(found) and page.next_cursor is None
        return found

    assert await keys(end_user_id="u-1") == ["shop:1003", "shop:1004", "shop:1005"]
    assert await keys(end_user_id="u-1", app=APPS[1]) == ["shop:1004"]
    assert await keys(end_user_id="nobody") == []
    assert await keys(tag=("env", "prod")) == ["shop:1006", "shop:1007"]
    assert await keys(tag=("env", None)) == ["shop:1004", "shop:1006", "shop:1007"]
    assert await keys(tag=('we"ird.$[0]', "x y")) == ["shop:1006"]
    assert await keys(tag=("env", "pro")) == []  # the whole value, not a prefix
    assert await keys(end_user_id="u-1", tag=("env", None)) == ["shop:1004"]
    assert await keys(end_user_id="u-1", search="1005") == ["shop:1005"]
    assert await keys(tag=("env", "prod"), search="Number") == ["shop:1006", "shop:1007"]
    assert await keys(tag=("note", 'café "q"')) == ["shop:1007"]  # a value JSON escapes
    assert await keys(tag=("note", "café")) == []
    # Past the last match the page is empty and the total still right (counted apart then).
    beyond = await store.browse_accounts(AccountQuery(apps=APPS, tag=("env", "prod")), limit=50, offset=50)
    assert (beyond.items, beyond.total) == ([], 2)
