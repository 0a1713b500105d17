"""The soak's split of revoked grants (harness.revoked_but_not_yet_due): a revoked account whose token is not yet in
its refresh window owes no alarm (the daemon has had no reason to call), one inside its window does.

The deadline test in test_soak.py sees this split only when its short run happens to revoke a grant that
is not yet due; here both sides are set up on purpose, with the real daemon, store and sandbox.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from refresher.domain import FakeClock
from refresher.sandbox import SandboxServer
from tests.soak.harness import revoked_but_not_yet_due
from tests.support import consent_and_store, started_daemon


async def test_a_revoked_account_is_quiet_until_its_token_enters_the_refresh_window(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2026, 3, 2, tzinfo=dt.UTC))
    async with SandboxServer(clock=clock, seed=3) as sandbox:
        document = {
            "store": {"url": f"sqlite:///{tmp_path / 'due.db'}"},
            "server": {"enabled": False},
            "logging": {"level": "warning", "format": "json"},
            "apps": {"shop": {**sandbox.app_config("tiktok_shop"), "refresh_before": "1d"}},
        }
        async with started_daemon(document, clock, "due.yaml") as daemon:
            (account,) = await consent_and_store(daemon, sandbox, "shop")
            assert account.tokens is not None
            revoked = {("shop", account.key)}
            window_opens = account.tokens.access_expires_at - dt.timedelta(days=1)

            clock.set(window_opens - dt.timedelta(minutes=1))
            assert await revoked_but_not_yet_due(daemon, revoked) == revoked  # not yet due: nothing to notice

            clock.set(window_opens + dt.timedelta(minutes=1))
            assert await revoked_but_not_yet_due(daemon, revoked) == set()  # due: the daemon owes an alarm
