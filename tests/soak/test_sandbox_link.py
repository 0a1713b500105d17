"""The soak's sandbox link (tests/soak/sandbox_link.py): the sandbox in a process of its own lives in the
simulated time the harness sends it, and the admin calls the harness relies on work across processes."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest
import yaml

from refresher import platforms
from refresher.config import parse_config
from refresher.domain import FakeClock, RefresherError
from tests.soak.sandbox_link import SandboxLink

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("own_process", [True, False], ids=["child process", "this process"])
async def test_the_sandbox_lives_in_the_time_it_is_sent_and_obeys_the_admin_calls(own_process: bool) -> None:
    async with (
        SandboxLink(START, seed=3, fault_delay=2.2, own_process=own_process) as link,
        httpx.AsyncClient() as http,
    ):
        later = START + dt.timedelta(days=10)
        await link.set_clock(later)
        settings = parse_config(
            yaml.safe_dump({"apps": {"tiktok": link.app_config("tiktok")}}),
            file="link.yaml",
            credential_models=platforms.credential_models(),
        )
        plugin = platforms.get("tiktok")(settings.apps["tiktok"], http=http, clock=FakeClock(later))
        pkce = plugin.pkce_pair()
        params = await link.approve(plugin.authorize_url("s", plugin.app.redirect_uri, pkce))
        [grant] = await plugin.exchange_code(params, pkce, plugin.app.redirect_uri)
        [chain] = await link.chains()
        # Issued at the time sent (TikTok: 2 h access tokens), not at the sandbox's start.
        assert dt.datetime.fromisoformat(chain["access_expires_at"]) - later == dt.timedelta(hours=2)
        assert grant.tokens.access_expires_at - later == dt.timedelta(hours=2)

        assert await link.revoke_holder_of("tiktok", grant.tokens.refresh_token)
        assert not await link.revoke_holder_of("tiktok", "no-such-token")
        assert [c["revoked"] for c in await link.chains()] == [True]
        with pytest.raises(RefresherError):
            await plugin.refresh(grant.identity, grant.tokens.refresh_token)
        counters = await link.counters()
        assert counters.get("tiktok.refresh") == 1 and "tiktok.rotated" not in counters, counters
        assert (link.cpu_seconds() is not None) == own_process
