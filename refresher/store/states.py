"""OAuth ``state`` values of onboarding flows: single use, expiring, remembered a while after use."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Row

from refresher.domain import as_utc
from refresher.store.base import USED_STATE_MEMORY, OAuthState
from refresher.store.core import StoreCore
from refresher.store.schema import oauth_states


class SqlStates(StoreCore):
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
                    pkce_verifier=self._codec.encrypt(state.pkce_verifier, state.app, state.state, "pkce_verifier"),
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
            pkce_verifier=self._codec.decrypt(row.pkce_verifier, row.app, row.state, "pkce_verifier"),
            redirect_uri=row.redirect_uri,
            used_at=row.used_at,
        )
