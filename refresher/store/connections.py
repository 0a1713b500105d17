"""Connections for integrators (migration 0006): an account's end user and tags, what an onboarding
flow carries from its connect session or invitation to the accounts it creates, what a completed
callback connected, and the invitations that are single-use or revocable one by one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, insert, select, update

from refresher.domain import as_utc
from refresher.store.connection_types import Invitation
from refresher.store.core import StoreCore
from refresher.store.schema import accounts, invitations, oauth_states


def tag_filter(backend: str, name: str, value: str) -> ColumnElement[bool]:
    """Accounts whose tag ``name`` is ``value``, in SQL (tags are a JSON object of strings): ``->>`` on
    PostgreSQL; on SQLite ``json_each``, which takes any key as a bound value (a JSON path would need the
    key quoted into it)."""
    if backend == "postgresql":
        text: ColumnElement[str] = accounts.c.tags[name].as_string()
        return text == value
    each = func.json_each(accounts.c.tags).table_valued("key", "value")
    return exists(select(1).select_from(each).where(each.c.key == name, each.c.value == value))


def connection_filters(backend: str, end_user_id: str | None, tag: tuple[str, str] | None) -> list[ColumnElement[bool]]:
    filters = []
    if end_user_id is not None:
        filters.append(accounts.c.end_user_id == end_user_id)  # indexed
    if tag is not None:
        filters.append(tag_filter(backend, *tag))
    return filters


def _tags(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


class SqlConnections(StoreCore):
    async def set_state_context(self, state: str, context: Mapping[str, Any]) -> None:
        async with self._tx(write=True) as conn:
            await conn.execute(update(oauth_states).where(oauth_states.c.state == state).values(context=dict(context)))

    async def state_context(self, state: str) -> dict[str, Any] | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(oauth_states.c.context).where(oauth_states.c.state == state))).first()
        return None if row is None or row.context is None else dict(row.context)

    async def mark_connected(self, state: str, keys: Sequence[str]) -> None:
        async with self._tx(write=True) as conn:
            await conn.execute(update(oauth_states).where(oauth_states.c.state == state).values(connected=list(keys)))

    async def connected_keys(self, state: str) -> list[str] | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(oauth_states.c.connected).where(oauth_states.c.state == state))).first()
        return None if row is None or row.connected is None else [str(k) for k in row.connected]

    async def set_connection(
        self, app: str, key: str, end_user: Mapping[str, Any] | None, tags: Mapping[str, str]
    ) -> None:
        where = (accounts.c.app == app, accounts.c.key == key)
        async with self._tx(write=True) as conn:
            row = (await conn.execute(select(accounts.c.tags).where(*where))).first()
            if row is None:
                return
            values: dict[str, Any] = {"tags": {**_tags(row.tags), **_tags(tags)}}
            if end_user is not None:
                values["end_user"] = dict(end_user)
                values["end_user_id"] = str(end_user["id"])
            await conn.execute(update(accounts).where(*where).values(**values))

    async def connection(self, app: str, key: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    select(accounts.c.end_user, accounts.c.tags).where(accounts.c.app == app, accounts.c.key == key)
                )
            ).first()
        if row is None:
            return None, {}
        return (dict(row.end_user) if row.end_user else None), _tags(row.tags)

    async def keys_matching(
        self, app: str | None, end_user_id: str | None, tag: tuple[str, str] | None
    ) -> set[tuple[str, str]]:
        stmt = select(accounts.c.app, accounts.c.key).where(*connection_filters(self.backend, end_user_id, tag))
        if app is not None:
            stmt = stmt.where(accounts.c.app == app)
        async with self._tx() as conn:
            return {(row.app, row.key) for row in await conn.execute(stmt)}

    async def put_invitation(self, invitation: Invitation) -> None:
        async with self._tx(write=True) as conn:
            await conn.execute(
                insert(invitations).values(
                    id=invitation.id,
                    kind=invitation.kind,
                    app=invitation.app,
                    account_key=invitation.account_key,
                    end_user=invitation.end_user,
                    tags=dict(invitation.tags) or None,
                    return_to=invitation.return_to,
                    single_use=invitation.single_use,
                    created_at=as_utc(invitation.created_at),
                    expires_at=as_utc(invitation.expires_at),
                )
            )

    async def get_invitation(self, invitation_id: str) -> Invitation | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(invitations).where(invitations.c.id == invitation_id))).first()
        return None if row is None else _invitation(row)

    async def use_invitation(self, invitation_id: str) -> bool:
        now = self.clock.now()
        async with self._tx(write=True) as conn:
            found = (await conn.execute(select(invitations).where(invitations.c.id == invitation_id))).first()
            if found is None or found.revoked_at is not None or found.expires_at <= now:
                return False
            if not found.single_use:
                return True
            # One conditional UPDATE: of two sellers racing with one single-use link, exactly one wins.
            done = await conn.execute(
                update(invitations)
                .where(invitations.c.id == invitation_id, invitations.c.used_at.is_(None))
                .values(used_at=now)
            )
            return bool(done.rowcount)

    async def revoke_invitation(self, invitation_id: str) -> bool:
        async with self._tx(write=True) as conn:
            done = await conn.execute(
                update(invitations)
                .where(invitations.c.id == invitation_id, invitations.c.revoked_at.is_(None))
                .values(revoked_at=self.clock.now())
            )
            return bool(done.rowcount)

    async def list_invitations(self, app: str | None = None) -> Sequence[Invitation]:
        stmt = select(invitations).order_by(invitations.c.created_at.desc())
        if app is not None:
            stmt = stmt.where(invitations.c.app == app)
        async with self._tx() as conn:
            return [_invitation(row) for row in await conn.execute(stmt)]

    async def prune_invitations(self, older_than: dt.datetime, limit: int = 500) -> int:
        c = invitations.c
        oldest = select(c.id).where(c.expires_at < as_utc(older_than)).order_by(c.expires_at).limit(limit)
        async with self._tx(write=True) as conn:
            result = await conn.execute(delete(invitations).where(c.id.in_(oldest.scalar_subquery())))
            return int(result.rowcount or 0)


def _invitation(row: Any) -> Invitation:
    return Invitation(
        id=row.id,
        kind=row.kind,
        app=row.app,
        created_at=row.created_at,
        expires_at=row.expires_at,
        single_use=bool(row.single_use),
        account_key=row.account_key,
        end_user=dict(row.end_user) if row.end_user else None,
        tags=_tags(row.tags),
        return_to=row.return_to,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
    )
