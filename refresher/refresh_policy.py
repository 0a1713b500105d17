"""How one app's accounts are refreshed: its policy (:class:`AppPolicy`), the retried platform call, and the
backoff before a later sweep tries a failed account again."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from refresher.config import AppSettings
from refresher.domain import ClockSkew, RefresherError, TokenSet, TransientError
from refresher.platforms.base import Platform
from refresher.store.base import Account

# A failed account is retried on later sweeps with this backoff: the first retry soon, then doubling,
# never longer than a quarter of the app's refresh window (so several tries fit before expiry).
RETRY_BASE = dt.timedelta(minutes=1)
CONFIG_ERROR_RETRY = dt.timedelta(minutes=30)  # the operator must act; retry slowly in case they did


@dataclass(frozen=True)
class AppPolicy:
    """One app's refresh settings with the platform's defaults filled in."""

    app: str
    platform: str
    refresh_before: dt.timedelta
    attempts: int
    initial_delay: dt.timedelta
    max_delay: dt.timedelta
    timeout: dt.timedelta
    concurrency: int
    rate_limit: float
    lease_ttl: dt.timedelta

    @property
    def retry_budget(self) -> dt.timedelta:
        """Worst-case time one refresh can take with all its retries."""
        return self.attempts * self.timeout + (self.attempts - 1) * self.max_delay

    @classmethod
    def resolve(cls, app: AppSettings, platform: type[Platform], min_lease: dt.timedelta) -> AppPolicy:
        refresh_before = app.refresh_before or platform.default_refresh_before
        draft = cls(
            app=app.name,
            platform=app.platform,
            refresh_before=refresh_before,
            attempts=app.retry.attempts,
            initial_delay=app.retry.initial_delay,
            max_delay=app.retry.max_delay,
            timeout=app.timeout,
            concurrency=app.concurrency,
            rate_limit=app.rate_limit,
            lease_ttl=min_lease,
        )
        # The lease must outlive the whole retry budget, or a slow refresh could be taken over mid-call.
        lease = max(min_lease, draft.retry_budget * 1.5 + dt.timedelta(seconds=30))
        return cls(**{**draft.__dict__, "lease_ttl": lease})


async def call_with_retries(
    platform: Platform,
    policy: AppPolicy,
    limiter: AsyncLimiter,
    account: Account,
    refresh_token: str,
    tally: list[int],
    sleep: Callable[[float], Awaitable[None]],
) -> tuple[TokenSet, int]:
    """The platform's new token set and the attempts it took; ``tally[0]`` counts attempts as they go,
    so the caller still knows it when this raises."""
    skew_retried = False
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=_wait_honouring_retry_after(policy),
        # Never retry over a salvaged pair: the old refresh token is spent already.
        retry=retry_if_exception(lambda e: isinstance(e, TransientError) and getattr(e, "salvaged", None) is None),
        sleep=sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            tally[0] += 1
            await limiter.acquire()
            try:
                return await platform.refresh(account.identity, refresh_token), tally[0]
            except ClockSkew:
                if skew_retried:
                    raise
                skew_retried = True  # re-sign once with a fresh timestamp, at once
                await limiter.acquire()
                tally[0] += 1
                return await platform.refresh(account.identity, refresh_token), tally[0]
    raise AssertionError("unreachable")  # pragma: no cover


def sweep_backoff(failures: int, policy: AppPolicy) -> dt.timedelta:
    """Delay before the next sweep may retry a failed account: doubling with jitter, capped."""
    cap = max(policy.refresh_before / 4, RETRY_BASE)
    delay: dt.timedelta = min(RETRY_BASE * (2 ** min(failures - 1, 20)), cap)
    return delay * random.uniform(0.8, 1.0)


def _wait_honouring_retry_after(policy: AppPolicy) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(
        multiplier=policy.initial_delay.total_seconds(), max=policy.max_delay.total_seconds()
    )

    def wait(state: RetryCallState) -> float:
        delay = backoff(state)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RefresherError) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, policy.max_delay.total_seconds()))
        return delay

    return wait
