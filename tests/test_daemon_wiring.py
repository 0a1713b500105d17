"""The daemon builds its parts once, in order (issue 12.4): the plugins, then the refresher that uses them;
per-app policies are resolved once at start, not built from ``{}`` and patched in later."""

from __future__ import annotations

from pathlib import Path

import pytest

from refresher import platforms
from refresher.config import parse_config
from refresher.daemon import Daemon
from refresher.refresh import Refresher
from refresher.refresh_policy import AppPolicy


def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    text = (
        f"store:\n  url: sqlite:///{tmp_path / 'tokens.db'}\nserver:\n  enabled: false\napps:\n"
        "  shop-sg:\n    platform: shopee\n    partner_id: 1000001\n    partner_key: k-0123456789abcdef\n"
        "  shop-my:\n    platform: shopee\n    partner_id: 1000002\n    partner_key: k-0123456789abcdef\n"
    )
    return parse_config(text, credential_models=platforms.credential_models())


async def test_plugins_and_policies_exist_from_construction_and_are_resolved_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved: list[str] = []
    applied: list[int] = []
    original_resolve = AppPolicy.resolve.__func__  # type: ignore[attr-defined]
    original_apply = Refresher.apply_settings

    def counting_resolve(cls, app, platform, lease_ttl):  # type: ignore[no-untyped-def]
        resolved.append(app.name)
        return original_resolve(cls, app, platform, lease_ttl)

    def counting_apply(self, new):  # type: ignore[no-untyped-def]
        applied.append(1)
        return original_apply(self, new)

    monkeypatch.setattr(AppPolicy, "resolve", classmethod(counting_resolve))
    monkeypatch.setattr(Refresher, "apply_settings", counting_apply)

    daemon = Daemon(settings(tmp_path))
    # Built, not patched in later: the refresher holds the daemon's own plugins with their policies.
    assert set(daemon.refresher.platforms) == {"shop-sg", "shop-my"}
    assert all(daemon.refresher.platforms[n] is daemon.platforms[n] for n in daemon.platforms)
    assert set(daemon.refresher.policies) == {"shop-sg", "shop-my"}
    await daemon.start(schedule=False)
    try:
        assert len(applied) == 1, applied
        assert sorted(resolved) == ["shop-my", "shop-sg"], resolved
    finally:
        await daemon.stop()
