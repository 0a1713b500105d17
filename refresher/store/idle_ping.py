"""Ping a pooled PostgreSQL connection before use only when it has sat idle a while.

``pool_pre_ping`` pings on every checkout. On the refresh path that was one round trip per transaction,
three per refresh (the mark, the save, the alarms read): ~1 ms of a sweep's ~10 ms per refresh on
PostgreSQL (benchmarks/RESULTS.md). What a ping guards against — a server restart, a failover, a proxy's
idle timeout — happens to connections that sat unused, not to one handed back milliseconds ago in a
sweep. So the refresh path's engine pings a connection only after :data:`IDLE_BEFORE_PING` seconds in the
pool. A connection that dies within that moment fails its transaction like any store outage: a save is
tried again until it lands (``refresh_leases``), and SQLAlchemy drops every connection of the pool that
is older than the failure, so the retry gets a fresh one.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

IDLE_BEFORE_PING = 2.0  # seconds


def ping_when_idle(engine: Engine) -> None:
    """Install the idle-only ping on ``engine`` (created with ``pool_pre_ping=False``)."""

    def checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["refresher_idle_since"] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("refresher_idle_since")
        if since is None or time.monotonic() - since < IDLE_BEFORE_PING:
            return  # brand new, or back in the pool only a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool's documented answer: this connection is discarded and the checkout retried.
            raise DisconnectionError("a pooled connection failed its ping after sitting idle") from exc

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)
