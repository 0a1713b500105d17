"""The soak's split of revoked grants (harness.revoked_but_not_yet_due): a revoked account whose token is not yet in
its refresh window owes no alarm (the daemon has had no reason to call), one inside its window does.

The deadline test in test_soak.py sees this split only when its short run happens to revoke a grant that
is not yet due; here both sides are set up on purpose, with the real daemon, store and sandbox.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from refresher import platforms
from refresher.config import parse_config
from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.logging import configure_logging
from refresher.sandbox import SandboxServer
from tests.soak.harness import revoked_but_not_yet_due
from tests.support import consent_and_store


async def test_a_revoked_account_is_quiet_until_its_token_enters_the_refresh_window(tmp_path: Path) -> None:
    clock = FakeClock(dt.datetime(2026, 3, 2, tzinfo=dt.UTC))
    async with SandboxServer(clock=clock, seed=3) as sandbox:
        document = {
            "store": {"url": f"sqlite:///{tmp_path / 'due.db'}"},
            "server": {"enabled": False},
            "logging": {"level": "warning", "format": "json"},
            "apps": {"shop": {**sandbox.app_config("tiktok_shop"), "refresh_before": "1d"}},
        }
        settings = parse_config(
            yaml.safe_dump(document), file="due.yaml", credential_models=platforms.credential_models()
        )
        configure_logging(settings.logging)
        daemon = Daemon(settings, clock=clock)
        await daemon.start(schedule=False)
        try:
            (account,) = await consent_and_store(daemon, sandbox, "shop")
            assert account.tokens is not None
            revoked = {("shop", account.key)}
            window_opens = account.tokens.access_expires_at - dt.timedelta(days=1)

            clock.set(window_opens - dt.timedelta(minutes=1))
            assert await revoked_but_not_yet_due(daemon, revoked) == revoked  # not yet due: nothing to notice

            clock.set(window_opens + dt.timedelta(minutes=1))
            assert await revoked_but_not_yet_due(daemon, revoked) == set()  # due: the daemon owes an alarm
        finally:
            await daemon.stop(grace=5)
