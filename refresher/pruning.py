"""Keeping the store's history tables bounded: audit rows, delivered lifecycle events, resolved alarms
(with their per-channel delivery rows) and expired invitations older than ``store.audit_retention`` are
deleted after sweeps.

At most once an hour, in short batches, each its own transaction: on SQLite each holds the write lock
only briefly, so refreshes interleave. A backlog (a first start on an old table) takes a few passes
instead of one long lock; until a pass catches up, every sweep takes another.
"""

from __future__ import annotations

import datetime as dt

import structlog

from refresher.store.base import StoreError
from refresher.store.roles import Store

log = structlog.get_logger("refresher.daemon")

AUDIT_PRUNE_EVERY = dt.timedelta(hours=1)
AUDIT_PRUNE_BATCH = 500
AUDIT_PRUNE_BATCHES_PER_PASS = 20


class Pruner:
    """One per daemon: remembers when it last caught up, and never runs two passes at once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._caught_up_at: dt.datetime | None = None
        self._running = False

    async def after_sweep(self, now: dt.datetime, retention: dt.timedelta) -> int:
        """A pass if one is due; returns how many audit rows it deleted."""
        due = self._caught_up_at is None or now - self._caught_up_at >= AUDIT_PRUNE_EVERY
        if not due or self._running:  # several apps' sweeps end together: one pass is enough
            return 0
        self._running = True
        cutoff = now - retention
        removed = events = alarms_gone = links_gone = 0
        try:
            for _ in range(AUDIT_PRUNE_BATCHES_PER_PASS):
                count = await self.store.prune_audit(cutoff, limit=AUDIT_PRUNE_BATCH)
                # Delivered lifecycle events, resolved alarms (with their per-channel delivery rows) and
                # expired invitations are kept as long as the audit rows: what was said, and when.
                settled = await self.store.prune_events(cutoff, limit=AUDIT_PRUNE_BATCH)
                closed = await self.store.prune_resolved_alarms(cutoff, limit=AUDIT_PRUNE_BATCH)
                expired = await self.store.prune_invitations(cutoff, limit=AUDIT_PRUNE_BATCH)
                removed, events = removed + count, events + settled
                alarms_gone, links_gone = alarms_gone + closed, links_gone + expired
                if max(count, settled, closed, expired) < AUDIT_PRUNE_BATCH:
                    self._caught_up_at = now
                    break
        except StoreError as exc:
            log.warning("audit.prune_failed", error=str(exc))
        finally:
            self._running = False
        if removed or events or alarms_gone or links_gone:
            log.info(
                "audit.pruned",
                removed=removed,
                events=events,
                alarms=alarms_gone,
                invitations=links_gone,
                older_than=cutoff.isoformat(),
            )
        return removed
