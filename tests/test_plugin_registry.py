"""A third party adds a platform through the entry point, without touching this package."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from refresher import platforms
from refresher.config import parse_config

PLUGIN = """
from collections.abc import Mapping
from pydantic import BaseModel, ConfigDict
from refresher.platforms.base import Platform

class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shop_key: str
    shop_secret: str

class AcmePlatform(Platform):
    name = "acme"
    credentials_model = Credentials
    default_hosts: Mapping[str, str] = {"api": "https://api.acme.example"}

    def authorize_url(self, state, redirect_uri=None, pkce=None):
        return f"{self.host('api')}/authorize?key={self.app.credential('shop_key')}&state={state}"

    async def exchange_code(self, callback_params, pkce=None, redirect_uri=None):
        return []

    async def refresh(self, identity, refresh_token):
        raise NotImplementedError

    def sign_call(self, call, access_token=None, identity=None):
        import hashlib, hmac
        from refresher.platforms.base import SignedCall
        base = call.path + "".join(k + v for k, v in sorted(call.query))
        sign = hmac.new(self.credentials.shop_secret.encode(), base.encode(), hashlib.sha256).hexdigest()
        url = f"{self.host('api')}{call.path}?sign={sign}"
        return SignedCall(call.method, url, {}, call.body, sign, self.host("api"), base)

    def classify_api_answer(self, answer):
        return None
"""


@pytest.fixture
def acme_distribution(tmp_path: Path) -> Iterator[Path]:
    """A tiny installed distribution: a module plus a dist-info that declares the entry point."""
    (tmp_path / "refresher_acme.py").write_text(PLUGIN)
    info = tmp_path / "refresher_acme-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: refresher-acme\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [refresher.platforms]
            acme = refresher_acme:AcmePlatform
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    platforms.reload()
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("refresher_acme", None)
        platforms.reload()


@pytest.mark.usefixtures("acme_distribution")
def test_third_party_platform_is_discovered_and_configurable() -> None:
    assert "acme" in platforms.available()
    cls = platforms.get("acme")
    settings = parse_config(
        "apps:\n  acme-main:\n    platform: acme\n    shop_key: k1\n    shop_secret: s3cr3t-value\n",
        file="acme.yaml",
        credential_models=platforms.credential_models(),
    )
    plugin = cls(settings.apps["acme-main"])
    assert plugin.authorize_url("xyz") == "https://api.acme.example/authorize?key=k1&state=xyz"


@pytest.mark.usefixtures("acme_distribution")
def test_unknown_credential_key_of_a_third_party_platform_is_a_config_error() -> None:
    from refresher.config import ConfigFileError

    with pytest.raises(ConfigFileError) as err:
        parse_config(
            "apps:\n  acme-main:\n    platform: acme\n    shop_key: k1\n    shop_secret: s\n    shop_secert: typo\n",
            file="acme.yaml",
            credential_models=platforms.credential_models(),
        )
    assert "apps.acme-main.shop_secert" in str(err.value)


def test_the_four_builtin_platforms_are_registered() -> None:
    assert {"shopee", "tiktok_shop", "lazada", "tiktok"} <= set(platforms.available())


@pytest.mark.usefixtures("acme_distribution")
def test_refresher_sign_works_for_a_third_party_platform(tmp_path: Path) -> None:
    """``refresher sign`` runs the plugin's own sign_call: a new platform gets the debugger for free."""
    import hashlib
    import hmac
    import json

    from click.testing import CliRunner

    from refresher.cli import main

    config = tmp_path / "acme.yaml"
    config.write_text("apps:\n  acme-main:\n    platform: acme\n    shop_key: k1\n    shop_secret: s3cr3t-value\n")
    result = CliRunner().invoke(main, ["sign", "-c", str(config), "acme-main", "/orders?b=2&a=1"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["base_string"] == "/ordersa1b2"
    assert out["sign"] == hmac.new(b"s3cr3t-value", b"/ordersa1b2", hashlib.sha256).hexdigest()
