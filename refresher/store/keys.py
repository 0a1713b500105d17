"""Key rotation: re-encrypt every stored secret under the first of ``store.encryption_keys``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update

from refresher.store.base import StoreError
from refresher.store.core import StoreCore
from refresher.store.schema import accounts, oauth_states, token_history


class SqlKeys(StoreCore):
    async def rotate_keys(self, batch: int = 500) -> int:
        if not self._codec.cipher.enabled:
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
            if value is not None and self._codec.cipher.needs_rewrite(value):
                clear = self._codec.decrypt(value, app, key, field)
                assert clear is not None
                changes[field] = self._codec.cipher.encrypt(clear, app=app, account=key, field=field)
        return changes
