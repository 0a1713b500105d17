"""The connection role of the store (migration 0006) on SQLite and PostgreSQL: end users and tags,
flow context and connected keys on a state, invitations single-use and revocable."""

from __future__ import annotations

import asyncio
import datetime as dt

from refresher.domain import FakeClock, Grant, Identity, TokenSet
from refresher.store import SqlStore
from refresher.store.base import OAuthState
from refresher.store.connection_types import Invitation


async def test_end_users_tags_states_and_invitations(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    tokens = TokenSet("at-conn-0123456789", "rt-conn-0123456789", now + dt.timedelta(hours=4), None)
    for n in (1, 2):
        await store.upsert_grant("app", "shopee", Grant(Identity(f"shop:{n}", "shop", str(n)), tokens))
    await store.set_connection("app", "shop:1", {"id": "t-1", "email": "a@b.example"}, {"plan": "pro"})
    await store.set_connection("app", "shop:1", None, {"region": "sg"})  # merges tags, keeps the end user
    assert await store.connection("app", "shop:1") == (
        {"id": "t-1", "email": "a@b.example"},
        {"plan": "pro", "region": "sg"},
    )
    assert await store.connection("app", "shop:2") == (None, {})
    assert await store.keys_matching("app", "t-1", None) == {("app", "shop:1")}
    assert await store.keys_matching(None, None, ("plan", "pro")) == {("app", "shop:1")}
    assert await store.keys_matching("app", None, ("plan", "free")) == set()

    await store.put_state(OAuthState("st-1", "app", now, now + dt.timedelta(minutes=15)))
    await store.set_state_context("st-1", {"invitation": "inv_1", "tags": {"a": "b"}})
    assert await store.state_context("st-1") == {"invitation": "inv_1", "tags": {"a": "b"}}
    assert await store.connected_keys("st-1") is None
    await store.mark_connected("st-1", ["shop:1", "shop:2"])
    assert await store.connected_keys("st-1") == ["shop:1", "shop:2"]

    once = Invitation("inv_once", "invite", "app", now, now + dt.timedelta(hours=1), single_use=True)
    await store.put_invitation(once)
    # Two racing sellers with one single-use link: exactly one wins.
    assert sorted(await asyncio.gather(store.use_invitation("inv_once"), store.use_invitation("inv_once"))) == [
        False,
        True,
    ]
    many = Invitation("inv_many", "invite", "app", now, now + dt.timedelta(hours=1), tags={"k": "v"})
    await store.put_invitation(many)
    assert await store.use_invitation("inv_many") and await store.use_invitation("inv_many")
    assert await store.revoke_invitation("inv_many") and not await store.revoke_invitation("inv_many")
    assert not await store.use_invitation("inv_many")
    found = await store.get_invitation("inv_many")
    assert found is not None and found.revoked_at == now and found.tags == {"k": "v"}
    assert {i.id for i in await store.list_invitations("app")} == {"inv_once", "inv_many"}
    clock.advance(dt.timedelta(hours=2))
    await store.put_invitation(Invitation("inv_late", "session", "app", now, now + dt.timedelta(hours=1)))
    assert not await store.use_invitation("inv_late")  # expired
    assert not await store.use_invitation("inv_none")


async def test_listing_filters_by_end_user_and_tag_in_sql_with_full_pages(store: SqlStore, clock: FakeClock) -> None:
    now = clock.now()
    tokens = TokenSet("at-filter-0123456789", "rt-filter-0123456789", now + dt.timedelta(hours=4), None)
    odd = 'team "a".b$[0]'  # a tag name that a JSON path could not carry unquoted
    for n in range(12):
        key = f"shop:{n:02d}"
        await store.upsert_grant("app", "shopee", Grant(Identity(key, "shop", str(n)), tokens))
        tags = {"plan": "pro" if n % 3 == 0 else "free", odd: "yes" if n % 2 else "no"}
        await store.set_connection("app", key, {"id": "t-1" if n < 6 else "t-2"}, tags)
    pro = [f"shop:{n:02d}" for n in range(12) if n % 3 == 0]
    # Page by page, two at a time: every page but the last is full, and together they are every match.
    pages = [await store.list(app="app", tag=("plan", "pro"), limit=2, offset=o) for o in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 0]
    assert [a.key for p in pages for a in p] == pro
    assert [a.key for a in await store.list(end_user_id="t-2", tag=(odd, "yes"))] == ["shop:07", "shop:09", "shop:11"]
    assert [a.key for a in await store.list(end_user_id="t-1", tag=("plan", "pro"), limit=1, offset=1)] == ["shop:03"]
    assert await store.list(tag=("plan", "pro'; --")) == []
    assert await store.list(tag=("missing", "")) == []
    assert await store.keys_matching("app", None, (odd, "no")) == {("app", f"shop:{n:02d}") for n in range(0, 12, 2)}
