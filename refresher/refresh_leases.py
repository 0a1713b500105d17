"""The refresh worker's side of the store's leases: committing tokens a platform just issued through a
failing store, and giving leases back — at once, through a failing store, or later once it recovers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from refresher.domain import TokenSet
from refresher.store.base import Account, AccountNotFound, AuditEntry, LeaseLost, StoreError
from refresher.store.roles import RefreshStore

log = structlog.get_logger("refresher.refresh")

# A store that refuses freshly issued tokens is asked again after 0.2 s, doubling up to 5 s, until it
# takes them.
SAVE_RETRY_FIRST = 0.2
SAVE_RETRY_MAX = 5.0
# A lease that could not be given back because the store failed is asked for again this many times
# (0.2 s, then doubling): after that it is left to expire, and the daemon alarms if the token expires first.
RELEASE_ATTEMPTS = 4

StoreTrouble = Callable[[StoreError | None], None]  # told of each store failure, and None on each success


class LeaseKeeper:
    """Saves and releases for one worker (``owner``); remembers the leases a failing store would not take back."""

    def __init__(
        self,
        store: RefreshStore,
        owner: str,
        *,
        sleep: Callable[[float], Awaitable[None]],
        on_store: StoreTrouble | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self._sleep = sleep
        self._on_store = on_store
        self._stranded: dict[int, Account] = {}  # by account id

    async def save_new_tokens(self, account: Account, tokens: TokenSet, audit: AuditEntry) -> Account:
        """Commit tokens the platform just issued. The platform has most likely rotated: these are the only
        tokens that work, so a store that fails (database down, locked longer than its busy timeout, a
        failover) is tried again, without end, until it takes them or another worker holds the account.
        The lease stays ours meanwhile: an expired lease nobody took over is still honoured on save."""
        delay, failures = SAVE_RETRY_FIRST, 0
        try:
            while True:
                try:
                    saved = await self.store.save_tokens(account.id, self.owner, tokens, audit)
                except (LeaseLost, AccountNotFound):
                    raise
                except StoreError as exc:
                    failures += 1
                    log.error(
                        "refresh.save_failed",
                        app=account.app,
                        account=account.key,
                        error=str(exc),
                        failures=failures,
                        detail=f"new tokens kept in memory; trying again in {delay:g}s",
                    )
                else:
                    if failures:
                        log.warning("refresh.save_recovered", app=account.app, account=account.key, failures=failures)
                    return saved
                await self._sleep(delay)
                delay = min(delay * 2, SAVE_RETRY_MAX)
        except asyncio.CancelledError:
            if failures:
                # Shut down while the store was still failing: the new tokens go with this process. On
                # restart the account is probed (refresh_started_at is set) and alarmed if they are missed.
                log.error("refresh.save_abandoned", app=account.app, account=account.key, failures=failures)
            raise

    async def release(self, account: Account) -> None:
        with contextlib.suppress(LeaseLost):  # someone else's now: nothing of ours to release
            await self.store.release(account.id, self.owner)

    async def release_hard(self, account: Account) -> bool:
        """Give a lease back through a failing store: asked again RELEASE_ATTEMPTS times; True when done."""
        delay = SAVE_RETRY_FIRST
        for attempt in range(1, RELEASE_ATTEMPTS + 1):
            try:
                await self.release(account)
            except AccountNotFound:
                return True  # deleted meanwhile: no lease left to give back
            except StoreError as exc:
                self.store_trouble(exc)
                if attempt == RELEASE_ATTEMPTS:
                    log.error(
                        "refresh.lease_stranded",
                        app=account.app,
                        account=account.key,
                        error=str(exc),
                        detail="the lease expires by itself; an alarm is raised if the token expires first",
                    )
                    self._stranded[account.id] = account
                    return False
                await self._sleep(delay)
                delay = min(delay * 2, SAVE_RETRY_MAX)
            else:
                self.store_trouble(None)
                return True
        return False  # pragma: no cover - the loop returns

    async def release_stranded(self, app: str) -> None:
        """Give back, once the store takes writes again, the leases it refused to take back before, so
        their accounts need not wait for the lease to expire."""
        for account in [a for a in self._stranded.values() if a.app == app]:
            try:
                await self.release(account)
            except AccountNotFound:
                pass
            except StoreError as exc:
                self.store_trouble(exc)
                return  # still failing: the claim below will say so too
            del self._stranded[account.id]
            log.info("refresh.lease_released_late", app=app, account=account.key)

    def store_trouble(self, error: StoreError | None) -> None:
        if self._on_store is not None:
            self._on_store(error)
