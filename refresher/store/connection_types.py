"""The connection role of the store (see :mod:`refresher.store.connections`): its protocol and values."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Invitation:
    """A stored invitation: ``kind`` ``invite`` (an operator's link), ``reauth`` (bound to an account) or
    ``session`` (a connect session created through the API)."""

    id: str
    kind: str
    app: str
    created_at: dt.datetime
    expires_at: dt.datetime
    single_use: bool = False
    account_key: str | None = None
    end_user: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    return_to: str | None = None
    used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


class ConnectionStore(Protocol):
    """End users, tags, flow context and stored invitations."""

    async def set_state_context(self, state: str, context: Mapping[str, Any]) -> None: ...

    async def state_context(self, state: str) -> dict[str, Any] | None: ...

    async def mark_connected(self, state: str, keys: Sequence[str]) -> None:
        """Remember the account keys a completed callback stored (a reload then says "already connected")."""

    async def connected_keys(self, state: str) -> list[str] | None: ...

    async def set_connection(
        self, app: str, key: str, end_user: Mapping[str, Any] | None, tags: Mapping[str, str]
    ) -> None:
        """Store the integrator's end user (``None`` keeps the one stored) and merge ``tags`` in."""

    async def connection(self, app: str, key: str) -> tuple[dict[str, Any] | None, dict[str, str]]: ...

    async def keys_matching(
        self, app: str | None, end_user_id: str | None, tag: tuple[str, str] | None
    ) -> set[tuple[str, str]]:
        """(app, key) of the accounts with this end user id and/or this tag."""

    async def put_invitation(self, invitation: Invitation) -> None: ...

    async def get_invitation(self, invitation_id: str) -> Invitation | None: ...

    async def use_invitation(self, invitation_id: str) -> bool:
        """Mark a live, unrevoked invitation used, atomically; False when it cannot be used (any more)."""

    async def revoke_invitation(self, invitation_id: str) -> bool: ...

    async def list_invitations(self, app: str | None = None) -> Sequence[Invitation]: ...

    async def prune_invitations(self, older_than: dt.datetime, limit: int = 500) -> int:
        """Forget up to ``limit`` invitations that expired before ``older_than``; returns how many."""
