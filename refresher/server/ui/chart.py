"""The overview's activity chart: refreshes and failures per time bucket as SVG bar geometry.

The numbers come from the audit table (:meth:`refresher.store.browse.SqlBrowse.activity`); this module
only turns them into rectangles, so the template draws them with no JavaScript.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from refresher.store.browse import ActivityBucket

WIDTH = 720
HEIGHT = 160
AXIS = 18  # pixels under the bars for the time labels

RANGES = {"24h": (dt.timedelta(hours=1), 24), "7d": (dt.timedelta(hours=6), 28)}


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    ok_y: float
    ok_height: float
    fail_y: float
    fail_height: float
    label: str  # the bucket's start and counts, for the tooltip
    tick: str | None  # a time label under some bars


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: Sequence[Bar]
    peak: int
    successes: int
    failures: int


def build(buckets: Sequence[ActivityBucket], bucket: dt.timedelta) -> Chart:
    peak = max((b.successes + b.failures for b in buckets), default=0)
    plot = HEIGHT - AXIS
    step = WIDTH / max(len(buckets), 1)
    scale = plot / peak if peak else 0.0
    every = max(len(buckets) // 6, 1)
    bars = []
    for n, b in enumerate(buckets):
        ok_h = b.successes * scale
        fail_h = b.failures * scale
        fmt = "%H:%M" if bucket < dt.timedelta(hours=6) else "%a %H:%M"
        bars.append(
            Bar(
                x=round(n * step + 1, 1),
                width=round(max(step - 2, 1), 1),
                ok_y=round(plot - ok_h, 1),
                ok_height=round(ok_h, 1),
                fail_y=round(plot - ok_h - fail_h, 1),
                fail_height=round(fail_h, 1),
                label=f"{b.start:%Y-%m-%d %H:%M} UTC: {b.successes} refreshed, {b.failures} failed",
                tick=f"{b.start:{fmt}}" if n % every == 0 else None,
            )
        )
    return Chart(
        WIDTH,
        HEIGHT,
        bars,
        peak,
        sum(b.successes for b in buckets),
        sum(b.failures for b in buckets),
    )
