"""Refresh one account, and sweep an app: call the platform with retries, persist first, then tell others.

The order of things on success is the whole point of this module:
1. the account is leased (``claim_due`` / ``claim``) and re-read under the lease;
2. ``mark_refresh_started`` commits, so a crash between the platform rotating the token and our commit is
   recognisable on restart (``Account.refresh_started_at`` still set);
3. the platform call, retried with backoff for transient errors only;
4. ``save_tokens`` commits the new token set, clears failures and releases the lease in one transaction
   (asked again and again while the store fails: the new tokens are the only ones that work);
5. only then logs, metrics, hooks and alarms run (listeners), and none of them can undo step 4.

Beside it: :mod:`refresher.refresh_policy` (an app's policy, the retried platform call, the sweep backoff),
:mod:`refresher.refresh_leases` (saving through a failing store, giving leases back) and
:mod:`refresher.refresh_events` (the outcome vocabulary, results and the listeners' event).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import structlog
from aiolimiter import AsyncLimiter

from refresher.config import Settings
from refresher.domain import (
    AccountStatus,
    Clock,
    ConfigError,
    MalformedAnswer,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    TokenSet,
    UnknownApp,
)
from refresher.platforms.base import Platform
from refresher.redaction import register_secrets
from refresher.refresh_events import Outcome, RefreshEvent, RefreshResult, SweepResult
from refresher.refresh_leases import LeaseKeeper, StoreTrouble
from refresher.refresh_policy import CONFIG_ERROR_RETRY, AppPolicy, call_with_retries, sweep_backoff
from refresher.store.base import Account, AccountNotFound, AuditEntry, LeaseLost, StoreError
from refresher.store.roles import RefreshStore

log = structlog.get_logger("refresher.refresh")


class RefreshListener(Protocol):
    """Told about every settled refresh, after its outcome committed (alarms, hooks, metrics)."""

    async def __call__(self, event: RefreshEvent, account: Account, tokens: TokenSet | None) -> None: ...


Sleep = Callable[[float], Awaitable[None]]


class Refresher:
    """Refreshes accounts of every configured app against their platforms, under store leases."""

    def __init__(
        self,
        settings: Settings,
        store: RefreshStore,
        platforms: Mapping[str, Platform],
        clock: Clock,
        owner: str,
        *,
        listeners: Sequence[RefreshListener] = (),
        sleep: Sleep = asyncio.sleep,
        batch_size: int | None = None,
        on_store: StoreTrouble | None = None,
    ) -> None:
        self.store = store
        self.platforms = dict(platforms)
        self.clock = clock
        self.owner = owner
        self.listeners = list(listeners)
        self._sleep = sleep
        self._batch_size = batch_size
        self.leases = LeaseKeeper(store, owner, sleep=sleep, on_store=on_store)
        self._stopping = asyncio.Event()
        self.policies: dict[str, AppPolicy] = {}
        self._limiters: dict[str, AsyncLimiter] = {}
        self.apply_settings(settings)

    def apply_settings(self, settings: Settings) -> None:
        """(Re)build per-app policies; used at start and on a config reload."""
        self.settings = settings
        policies = {}
        for name, app in settings.apps.items():
            if name in self.platforms:
                policies[name] = AppPolicy.resolve(app, type(self.platforms[name]), settings.store.lease_ttl)
        self.policies = policies
        self._limiters = {name: AsyncLimiter(policy.rate_limit, 1.0) for name, policy in policies.items()}

    def stop(self) -> None:
        """Stop claiming new work; in-flight refreshes finish (or are released by the daemon)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- sweeps ----------------------------------------------------------------------------------------

    async def sweep(self, app: str) -> SweepResult:
        """Claim every due account of ``app`` in batches and refresh them with bounded concurrency."""
        policy = self.policies[app]
        result = SweepResult(app)
        batch = self._batch_size or max(policy.concurrency * 4, 16)
        seen: set[int] = set()
        await self.leases.release_stranded(app)
        while not self.stopping:
            claimed = await self.store.claim_due(app, policy.refresh_before, batch, self.owner, policy.lease_ttl)
            # An account claimed twice in one sweep is one whose fresh token is already inside the window
            # (a platform lifetime shorter than refresh_before): refreshing it again now would loop.
            again = [a for a in claimed if a.id in seen]
            for account in again:
                await self.leases.release(account)
            claimed = [a for a in claimed if a.id not in seen]
            seen.update(a.id for a in claimed)
            if not claimed:
                break
            result.claimed += len(claimed)
            outcomes = await self._run_bounded(claimed, policy.concurrency)
            for outcome in outcomes:
                result.results.append(outcome)
                if outcome.outcome == Outcome.SUCCESS:
                    result.succeeded += 1
                elif outcome.outcome == Outcome.FAILURE:
                    result.failed += 1
                else:
                    result.skipped += 1
            if len(claimed) < batch:
                break
        return result

    async def _run_bounded(self, accounts: Sequence[Account], concurrency: int) -> list[RefreshResult]:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(account: Account) -> RefreshResult:
            try:
                async with semaphore:
                    if self.stopping:
                        await self.leases.release(account)
                        return RefreshResult(account, Outcome.SKIPPED)
                    return await self.refresh_leased(account)
            except StoreError as exc:
                # Whatever step the store refused (a settle, a release, a re-read), this claimed account is
                # not left leased by a sweep that went on: give its lease back, or let it expire and alarm.
                log.error("refresh.store_failed", app=account.app, account=account.key, error=str(exc))
                self.leases.store_trouble(exc)
                await self.leases.release_hard(account)
                return RefreshResult(account, Outcome.FAILURE)

        return list(await asyncio.gather(*(one(a) for a in accounts)))

    async def refresh_now(self, app: str, key: str, *, wait: float = 60.0) -> RefreshResult:
        """Refresh one account now, whatever its expiry. If another worker holds its lease, wait for that
        worker to finish (up to ``wait`` seconds) and report what it stored instead of refreshing twice."""
        policy = self.policies.get(app)
        if policy is None:
            raise UnknownApp(f"unknown app {app!r}")
        deadline = time.monotonic() + wait
        account = await self.store.get(app, key)
        if account is None:
            raise AccountNotFound(f"unknown account {key!r} of app {app!r}")
        while True:
            claimed = await self.store.claim(app, key, self.owner, policy.lease_ttl)
            if claimed is not None:
                return await self.refresh_leased(claimed)
            if time.monotonic() >= deadline:
                current = await self.store.get(app, key)
                return RefreshResult(current or account, Outcome.BUSY)
            await asyncio.sleep(0.2)
            current = await self.store.get(app, key)
            if current is not None and current.version != account.version and current.lease_owner is None:
                # Another worker refreshed it while we waited: that is the refresh the caller wanted.
                return RefreshResult(current, Outcome.SUCCESS)

    # -- one account -----------------------------------------------------------------------------------

    async def refresh_leased(self, account: Account) -> RefreshResult:
        """Refresh an account whose lease this worker holds. Never raises for platform trouble."""
        policy = self.policies.get(account.app)
        platform = self.platforms.get(account.app)
        if policy is None or platform is None or account.tokens is None:
            await self.leases.release(account)
            return RefreshResult(account, Outcome.SKIPPED)
        if account.status != AccountStatus.ACTIVE:
            await self.leases.release(account)
            return RefreshResult(account, Outcome.SKIPPED)

        unsettled = account.refresh_started_at is not None
        if unsettled:
            # A previous refresh went out and never settled (the process died, or its lease expired
            # mid-call). The platform may have rotated the token without our commit; the refresh below
            # tells: it works (nothing was lost) or is rejected (the grant needs the seller).
            log.warning(
                "refresh.unsettled_previous_attempt",
                app=account.app,
                account=account.key,
                started_at=account.refresh_started_at.isoformat() if account.refresh_started_at else None,
            )
        started = time.monotonic()
        refresh_token = account.tokens.refresh_token
        register_secrets([account.tokens.access_token, refresh_token])
        try:
            await self.store.mark_refresh_started(account.id, self.owner)
        except LeaseLost:
            return RefreshResult(account, Outcome.SKIPPED)
        except StoreError as exc:
            # Nothing went to the platform yet, so giving the lease back loses nothing: the next sweep
            # claims the account again (a lease kept until it expired let the token expire unnoticed).
            log.error("refresh.not_started", app=account.app, account=account.key, error=str(exc))
            self.leases.store_trouble(exc)
            await self.leases.release_hard(account)
            return RefreshResult(account, Outcome.FAILURE, None, 0, _ms(started))
        self.leases.store_trouble(None)

        tally = [0]  # attempts made so far, still readable when the call raises (audit, logs, alarms)
        try:
            tokens, attempts = await call_with_retries(
                platform, policy, self._limiters[policy.app], account, refresh_token, tally, self._sleep
            )
        except MalformedAnswer as exc:
            if exc.salvaged is None:
                return await self._settle_failure(account, policy, exc, tally[0], started, unsettled)
            # The platform issued a new pair in a flawed answer: it has most likely rotated, so the new
            # pair is the only one that works. Keep it with a short expiry; the next sweep refreshes it.
            tokens, attempts = exc.salvaged, tally[0]
            log.warning(
                "refresh.salvaged",
                app=account.app,
                account=account.key,
                reason=exc.message,
                request_id=exc.request_id,
                detail="new tokens kept with a short expiry; the next sweep refreshes them",
            )
        except RefresherError as exc:
            return await self._settle_failure(account, policy, exc, tally[0], started, unsettled)
        except asyncio.CancelledError:
            # Shutdown mid-call: the outcome is unknown, so leave refresh_started_at set and let the lease
            # expire; a later sweep settles it.
            raise

        register_secrets([tokens.access_token, tokens.refresh_token])
        duration = _ms(started)
        try:
            saved = await self.leases.save_new_tokens(
                account, tokens, self._audit_entry(account, "success", duration, attempts, None)
            )
        except AccountNotFound:
            log.warning("refresh.account_deleted_during_refresh", app=account.app, account=account.key)
            return RefreshResult(account, Outcome.SKIPPED, None, attempts, _ms(started))
        except LeaseLost:
            # Our lease expired during the call and someone else holds the account now. The new token
            # is the only valid one if the platform rotated: try once to commit it over theirs would race,
            # so log loudly; the other worker's refresh will be rejected and settle via the re-read path.
            log.error("refresh.lease_lost_after_success", app=account.app, account=account.key)
            return RefreshResult(account, Outcome.FAILURE, None, attempts, _ms(started))
        log.info(
            "refresh",
            app=saved.app,
            account=saved.key,
            outcome="success",
            duration_ms=duration,
            attempts=attempts,
            access_expires_at=tokens.access_expires_at.isoformat(),
            rotated=tokens.refresh_token != refresh_token,
        )
        saved = await self._keep_identity_current(platform, saved, tokens)
        await self._notify(saved, "success", None, attempts, duration, tokens)
        return RefreshResult(saved, Outcome.SUCCESS, None, attempts, duration)

    async def _keep_identity_current(self, platform: Platform, account: Account, tokens: TokenSet) -> Account:
        """After the new tokens are committed, store what the platform now says about the account
        (``Platform.updated_identity``: a seller's shops, regional identities …). It never
        costs the refresh: a failure is logged and the old identity stays."""
        try:
            identity = await platform.updated_identity(account.identity, tokens)
            if identity is None or identity == account.identity:
                return account
            updated = await self.store.update_identity(account.app, account.key, identity)
        except (RefresherError, StoreError) as exc:
            log.warning("refresh.identity_not_updated", app=account.app, account=account.key, error=str(exc))
            return account
        return updated or account

    async def _settle_failure(
        self,
        account: Account,
        policy: AppPolicy,
        error: RefresherError,
        attempts: int,
        started: float,
        unsettled: bool,
    ) -> RefreshResult:
        now = self.clock.now()
        if isinstance(error, RefreshTokenRejected):
            # Re-read: if the stored token moved on, another worker refreshed it and all is well.
            current = await self.store.get(account.app, account.key)
            if current is not None and current.version != account.version:
                log.info("refresh.superseded", app=account.app, account=account.key)
                await self.leases.release(account)
                return RefreshResult(current, Outcome.SKIPPED, None, attempts, _ms(started))
            if unsettled:
                error = RefreshTokenRejected(
                    "refresh token rejected after an unsettled earlier attempt: the platform most likely "
                    "rotated it in a call whose answer was lost (crash or network); the seller must "
                    "re-authorize" + _lost_token_hint(self.platforms.get(account.app)),
                    code=error.code,
                    request_id=error.request_id,
                    platform=error.platform,
                    http_status=error.http_status,
                )

        status: AccountStatus | None = None
        next_attempt: dt.datetime | None
        if isinstance(error, ReauthRequired):
            status = AccountStatus.NEEDS_REAUTH
            next_attempt = None
        elif isinstance(error, ConfigError):
            next_attempt = now + CONFIG_ERROR_RETRY
        else:
            next_attempt = now + sweep_backoff(account.consecutive_failures + 1, policy)
        duration = _ms(started)
        audit = self._audit_entry(account, error.error_class, duration, attempts, error)
        try:
            saved = await self.store.record_failure(account.id, self.owner, error.info(), next_attempt, status, audit)
        except LeaseLost:
            log.warning("refresh.lease_lost_on_failure", app=account.app, account=account.key)
            return RefreshResult(account, Outcome.FAILURE, error, attempts, _ms(started))
        log.warning(
            "refresh",
            app=saved.app,
            account=saved.key,
            outcome="failure",
            duration_ms=duration,
            attempts=attempts,
            error_class=error.error_class,
            error_code=error.code,
            request_id=error.request_id,
            http_status=error.http_status,
            error=error.message,
            consecutive_failures=saved.consecutive_failures,
            next_attempt_at=next_attempt.isoformat() if next_attempt else None,
            status=str(saved.status),
        )
        await self._notify(saved, "failure", error, attempts, duration, None)
        return RefreshResult(saved, Outcome.FAILURE, error, attempts, duration)

    def _audit_entry(
        self, account: Account, outcome: str, duration: int, attempts: int, error: RefresherError | None
    ) -> AuditEntry:
        """The audit row of a settled refresh; the store writes it in the same transaction as the outcome."""
        return AuditEntry(
            at=self.clock.now(),
            app=account.app,
            account_key=account.key,
            outcome=outcome,
            duration_ms=duration,
            attempts=attempts,
            error_class=error.error_class if error else None,
            error_code=error.code if error else None,
            request_id=error.request_id if error else None,
            message=error.message[:300] if error else None,
        )

    async def _notify(
        self,
        account: Account,
        outcome: str,
        error: RefresherError | None,
        attempts: int,
        duration: int,
        tokens: TokenSet | None,
    ) -> None:
        event = RefreshEvent(
            app=account.app,
            platform=account.platform,
            account_key=account.key,
            account_name=account.identity.name,
            outcome=outcome,
            error=error.info() if error else None,
            consecutive_failures=account.consecutive_failures,
            status=account.status,
            access_expires_at=account.tokens.access_expires_at if account.tokens else None,
            refresh_expires_at=account.tokens.refresh_expires_at if account.tokens else None,
            at=self.clock.now(),
            attempts=attempts,
            duration_ms=duration,
        )
        for listener in self.listeners:
            try:
                await listener(event, account, tokens)
            except Exception:
                log.exception("refresh.listener_failed", app=account.app, account=account.key)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _lost_token_hint(platform: Platform | None) -> str:
    """The platform's own way back to a lost refresh token, if it has one (see ``Platform.lost_token_hint``)."""
    return platform.lost_token_hint if platform is not None else ""
