"""Handing out a token: the one judgement the token API, the Python client and the CLI share.

A token read never hands out a token that will not work. :func:`judge` says why an account's token is
refused (``needs_reauth``, ``disabled``, ``expired``, ``no_token``) or ``None`` when it may be given out.
:class:`ReadRefresher` refreshes a token that expires within the read margin before it is handed out:
single-flight per account inside a process (one platform call however many readers wait), and across
processes through the store's lease (a reader that finds the account leased waits for the holder's
result instead of refreshing again).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import time
from dataclasses import dataclass

from refresher.domain import AccountStatus
from refresher.refresh import Refresher
from refresher.store.base import Account, AccountNotFound, LeaseLost

# The default read margin is the app's refresh_before, but never more than this: a 1-day refresh_before
# must not make every read of a 2-day token a refresh.
MAX_DEFAULT_MARGIN = dt.timedelta(minutes=5)
WAIT_FOR_OTHERS = 30.0  # how long a reader waits for another process's refresh of the same account
POLL = 0.1


class Refusal(enum.StrEnum):
    """Why a token is not handed out (the ``reason`` of a 409, and of the client's ``TokenRefused``)."""

    NEEDS_REAUTH = "needs_reauth"
    DISABLED = "disabled"
    EXPIRED = "expired"
    NO_TOKEN = "no_token"


def judge(account: Account, now: dt.datetime) -> Refusal | None:
    """Why ``account``'s access token must not be handed out at ``now``, or ``None``."""
    if account.status == AccountStatus.NEEDS_REAUTH:
        return Refusal.NEEDS_REAUTH
    if account.status == AccountStatus.DISABLED:
        return Refusal.DISABLED
    if account.tokens is None:
        return Refusal.NO_TOKEN
    if account.tokens.access_expires_at <= now:
        return Refusal.EXPIRED
    return None


def refusal_message(account: Account, reason: Refusal) -> str:
    where = f"account {account.key!r} of app {account.app!r}"
    if reason is Refusal.NEEDS_REAUTH:
        return f"{where} needs re-authorization by the seller"
    if reason is Refusal.DISABLED:
        return f"{where} is disabled"
    if reason is Refusal.NO_TOKEN:
        return f"{where} holds no token"
    expired = account.tokens.access_expires_at.isoformat() if account.tokens else "?"
    return f"the access token of {where} expired at {expired}"


@dataclass(frozen=True)
class ReadMargin:
    """How close to expiry a read refreshes first: ``fixed`` when configured, else per app."""

    fixed: dt.timedelta | None = None

    def of(self, refresh_before: dt.timedelta) -> dt.timedelta:
        return self.fixed if self.fixed is not None else min(refresh_before, MAX_DEFAULT_MARGIN)


class ReadRefresher:
    """Refresh-on-read for one daemon: :meth:`fresh` returns the account with a token good for the margin."""

    def __init__(self, refresher: Refresher, margin: ReadMargin | None = None) -> None:
        self.refresher = refresher
        self.margin = margin or ReadMargin()
        self._inflight: dict[tuple[str, str], asyncio.Task[Account]] = {}

    def _margin(self, app: str) -> dt.timedelta | None:
        policy = self.refresher.policies.get(app)
        return None if policy is None else self.margin.of(policy.refresh_before)

    def _expiring(self, account: Account, margin: dt.timedelta) -> bool:
        tokens = account.tokens
        return (
            account.status == AccountStatus.ACTIVE
            and tokens is not None
            and tokens.access_expires_at - margin <= self.refresher.clock.now()
        )

    async def fresh(self, account: Account) -> Account:
        """``account`` as it should be handed out: refreshed first when its token is inside the margin
        (an app without a loaded plugin is never refreshed here). Never raises for platform trouble: the
        caller judges the account it gets back."""
        margin = self._margin(account.app)
        if margin is None or not self._expiring(account, margin):
            return account
        key = (account.app, account.key)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh(account.app, account.key, margin))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shield: one reader giving up (its client went away) must not cancel the refresh the others await.
        return await asyncio.shield(task)

    async def _refresh(self, app: str, key: str, margin: dt.timedelta) -> Account:
        refresher, store = self.refresher, self.refresher.store
        policy = refresher.policies[app]
        deadline = time.monotonic() + WAIT_FOR_OTHERS
        while True:
            current = await store.get(app, key)
            if current is None:
                raise AccountNotFound(f"unknown account {key!r} of app {app!r}")
            if not self._expiring(current, margin):
                return current  # refreshed meanwhile (by a sweep, or another process's reader)
            now = refresher.clock.now()
            leased = current.lease_owner is not None and (current.lease_expires_at or now) > now
            # A lease held, even by this process (a sweep shares our owner id), means a refresh is under
            # way: wait for its result rather than claim (a claim by the same owner would succeed).
            claimed = None if leased else await store.claim(app, key, refresher.owner, policy.lease_ttl)
            if claimed is not None:
                if not self._expiring(claimed, margin):
                    # Another process refreshed it between our read and our claim: nothing to do.
                    with contextlib.suppress(LeaseLost):
                        await store.release(claimed.id, refresher.owner)
                    return claimed
                return (await refresher.refresh_leased(claimed)).account
            if time.monotonic() >= deadline:
                return current
            await asyncio.sleep(POLL)
