"""Operator actions on one account that the token API and the console share: each stores its lifecycle
event (docs/events.md) in the same transaction as the change, then wakes the event deliverer."""

from __future__ import annotations

from refresher.domain import AccountStatus
from refresher.server.runtime import Runtime
from refresher.store.base import Account


async def set_status(runtime: Runtime, app: str, key: str, status: AccountStatus) -> Account:
    """Disable or enable; ``account.disabled`` commits with a disable (none if nothing changed).

    Raises :class:`~refresher.store.base.AccountNotFound`."""
    event = await runtime.lifecycle.disabled_event(app, key) if status == AccountStatus.DISABLED else None
    saved = await runtime.store.set_status(app, key, status, event=event)
    runtime.lifecycle.wake()
    return saved


async def delete(runtime: Runtime, app: str, key: str) -> bool:
    """Forget the account and its tokens; ``account.deleted`` commits with the deletion. False if unknown."""
    event = await runtime.lifecycle.deleted_event(app, key)  # read before the row goes
    deleted = await runtime.store.delete(app, key, event=event)
    runtime.lifecycle.wake()
    return deleted
