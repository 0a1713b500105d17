"""Config loading: interpolation, secret files, one-line errors with key paths and line numbers."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from refresher.config import (
    ConfigFileError,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from refresher.config.models import Settings


class FakeCreds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    app_key: str
    app_secret: SecretStr


MODELS = {"fake": FakeCreds}


def parse(text: str, env: dict[str, str] | None = None, **kw: Any) -> Settings:
    return parse_config(textwrap.dedent(text), file="cfg.yaml", env=env or {}, credential_models=MODELS, **kw)


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigFileError) as info:
        parse(text, env)
    return [str(p) for p in info.value.problems]


def test_minimal_app_with_env_and_defaults() -> None:
    settings = parse(
        """
        apps:
          shop-a:
            platform: fake
            app_key: "123"
            app_secret: ${SECRET}
            base_url: ${BASE:-http://127.0.0.1:8780/fake}
        """,
        {"SECRET": "s3cr3t-value"},
    )
    app = settings.app("shop-a")
    assert app.name == "shop-a"
    assert app.credential("app_secret") == "s3cr3t-value"
    assert app.base_url == "http://127.0.0.1:8780/fake"
    assert "s3cr3t-value" in settings.secrets()
    assert "s3cr3t-value" not in repr(settings)


def test_unset_variable_is_named_with_line() -> None:
    lines = problems(
        """
        apps:
          shop-a:
            platform: fake
            app_key: "1"
            app_secret: ${SHOP_SECRET}
        """
    )
    assert lines == ["cfg.yaml:6: apps.shop-a.app_secret: environment variable SHOP_SECRET is not set"]


def test_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("from-a-file\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "apps:\n  a:\n    platform: fake\n    app_key: k\n    app_secret_file: secret.txt\n", encoding="utf-8"
    )
    settings = load_config(cfg, env={}, credential_models=MODELS)
    assert settings.app("a").credential("app_secret") == "from-a-file"


def test_secret_file_missing_and_both_given(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "apps:\n  a:\n    platform: fake\n    app_key: k\n    app_secret_file: /nonexistent/x\n"
        "  b:\n    platform: fake\n    app_key: k\n    app_secret: x\n    app_secret_file: y\n"
    )
    with pytest.raises(ConfigFileError) as info:
        load_config(cfg, env={}, credential_models=MODELS)
    text = str(info.value)
    assert f"{cfg}:5: apps.a.app_secret_file: cannot read /nonexistent/x" in text
    assert "apps.b.app_secret_file: give app_secret or app_secret_file, not both" in text


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "apps:\n  a:\n    platform: fake\n    app_key: 123\n    app_secret: x\n",
            "cfg.yaml:4: apps.a.app_key: expected text; quote",
        ),
        (
            "apps:\n  a:\n    platform: fake\n    app_key: k\n    app_secret: x\n    colour: red\n",
            "cfg.yaml:6: apps.a.colour: unknown key",
        ),
        ("apps:\n  a:\n    platform: nope\n", "cfg.yaml:3: apps.a.platform: unknown platform 'nope'"),
        ("apps:\n  a:\n    platform: fake\n    app_secret: x\n", "apps.a.app_key: is required"),
        ("store:\n  url: mysql://x\n", "cfg.yaml:2: store.url: must start with sqlite:/// or postgresql://"),
        (
            "apps:\n  a:\n    platform: fake\n    app_key: k\n    app_secret: x\n    schedule: every day\n",
            "apps.a.schedule: 'every day' is not a cron",
        ),
        (
            "apps:\n  a:\n    platform: fake\n    app_key: k\n    app_secret: x\n    schedule: '61 * * * *'\n",
            "apps.a.schedule:",
        ),
        (
            "apps:\n  a:\n    platform: fake\n    app_key: k\n    app_secret: x\n    refresh_before: soon\n",
            "apps.a.refresh_before: 'soon' is not a duration",
        ),
        ("apps:\n  A B:\n    platform: fake\n", "apps: app name 'A B' must be lowercase"),
        (
            "apps:\n  a: {platform: fake}\n  a: {platform: fake}\n",
            "cfg.yaml:3: apps.a: duplicate key (first defined on line 2)",
        ),
        ("apps: [1, 2\n", "cfg.yaml:2: invalid YAML"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("alerts:\n  channels:\n    - type: pager\n      name: x\n", "alerts.channels.0"),
        (
            "server:\n  api_tokens:\n    - name: erp\n      secret: short\n",
            "server.api_tokens.0.secret: must be at least 16 characters",
        ),
        (
            "apps:\n  a:\n    platform: fake\n    app_key: k\n    app_secret: x\n    timezone: Mars/Olympus\n",
            "unknown time zone",
        ),
    ],
)
def test_bad_configs_give_one_clear_line(yaml_text: str, expected: str) -> None:
    lines = problems(yaml_text)
    assert lines, "expected at least one problem"
    assert all("\n" not in line for line in lines)
    assert any(expected in line for line in lines), lines


def test_error_never_contains_the_secret() -> None:
    lines = problems(
        "apps:\n  a:\n    platform: fake\n    app_key: 7\n    app_secret: super-secret-value-123\n    junk: 1\n"
    )
    assert not any("super-secret-value-123" in line for line in lines)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("1h30m", 5400), ("7d", 604800), (45, 45), ("2.5", 2.5), ("500ms", 0.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "5x", "m5", "-3s", True, "1h 2q"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration() -> None:
    assert format_duration(dt.timedelta(days=2, hours=3, minutes=4)) == "2d3h"
    assert format_duration(dt.timedelta(seconds=-300)) == "-5m"


def test_dollar_escape() -> None:
    settings = parse("apps:\n  a:\n    platform: fake\n    app_key: k\n    app_secret: p$$w${X:-d}\n")
    assert settings.app("a").credential("app_secret") == "p$wd"


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("logging:\n  format: console\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("logging:\n  format: fancy\n")
    ok = subprocess.run(
        [sys.executable, "-m", "refresher", "check-config", "-c", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    ko = subprocess.run(
        [sys.executable, "-m", "refresher", "check-config", "-c", str(bad)], capture_output=True, text=True
    )
    assert ko.returncode == 2
    assert "Traceback" not in ko.stderr
    assert f"{bad}:2: logging.format:" in ko.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "refresher", "check-config", "-c", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "none.yaml: no such file" in missing.stderr


# ------------------------------------------------------------------ checks across keys (issue 12.15, 17.7)

FAKE_APP = """
    apps:
      shop:
        platform: fake
        app_key: k
        app_secret: s
"""


def test_web_redirect_must_reach_the_apps_callback_but_a_loopback_one_may_differ() -> None:
    assert problems(FAKE_APP + "        redirect_uri: https://erp.example.com/cb\n") == [
        "cfg.yaml:7: apps.shop.redirect_uri: must end in /callback/shop (the route that receives the code), "
        "e.g. https://refresher.example.com/callback/shop; only a loopback http:// URL may differ (the desktop flow)"
    ]
    for ok in ("https://erp.example.com/refresher/callback/shop", "http://127.0.0.1:8080/cb", "http://localhost/x"):
        assert parse(FAKE_APP + f"        redirect_uri: {ok}\n").apps["shop"].redirect_uri == ok
    # A loopback host over https is no desktop listener: the web rule holds.
    assert problems(FAKE_APP + "        redirect_uri: https://127.0.0.1/cb\n")


def test_refresh_before_must_be_shorter_than_the_access_lifetime() -> None:
    lifetimes = {"fake": dt.timedelta(hours=4)}
    text = FAKE_APP + "        refresh_before: 4h\n"
    with pytest.raises(ConfigFileError) as info:
        parse(text, access_lifetimes=lifetimes)
    assert [str(p) for p in info.value.problems] == [
        "cfg.yaml:7: apps.shop.refresh_before: 4h is not shorter than a fake access token's lifetime (4h): "
        "every token would be refreshed on every tick"
    ]
    assert parse(FAKE_APP + "        refresh_before: 3h59m\n", access_lifetimes=lifetimes)
    assert parse(text)  # without the platforms' lifetimes there is nothing to compare with


def test_the_shipped_platform_defaults_pass_their_own_lifetime_check() -> None:
    from refresher import platforms

    lifetimes = platforms.access_lifetimes()
    assert set(lifetimes) >= {"shopee", "lazada", "tiktok_shop", "tiktok"}
    for name, cls in platforms.available().items():
        if name in lifetimes:
            assert cls.default_refresh_before < lifetimes[name], name


@pytest.mark.parametrize("key", ["admin_token", "invite_secret"])
def test_admin_token_and_invite_secret_are_as_long_as_api_tokens(key: str) -> None:
    assert problems(f"server:\n  {key}: short-secret-15\n") == [
        f"cfg.yaml:2: server.{key}: must be at least 16 characters"
    ]
    assert parse(f"server:\n  {key}: sixteen-chars-ok\n")


def test_public_url_needs_a_scheme() -> None:
    assert problems("server:\n  public_url: refresher.example.com\n") == [
        "cfg.yaml:2: server.public_url: must be an http:// or https:// URL"
    ]


def test_duplicate_channel_names_and_unknown_apprise_schemes() -> None:
    secret = "T0/B0/apprise-secret-never-shown"
    found = problems(
        f"""
        alerts:
          channels:
            - {{type: apprise, name: chat, url: "slak://{secret}"}}
            - {{type: apprise, name: chat, url: "slack://{secret}"}}
            - {{type: apprise, name: other, url: "no scheme {secret}"}}
        """
    )
    assert found == [
        "cfg.yaml:5: alerts.channels.1.name: duplicate channel name 'chat' (also channel 0)",
        "cfg.yaml:4: alerts.channels.0.url: unknown apprise scheme 'slak' (e.g. slack://, tgram://, mailto://, "
        "wecombot://; see the apprise documentation)",
        "cfg.yaml:6: alerts.channels.2.url: unknown apprise scheme (none) (e.g. slack://, tgram://, mailto://, "
        "wecombot://; see the apprise documentation)",
    ]
    assert all(secret not in line for line in found)


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_an_empty_file_is_refused(text: str) -> None:
    assert problems(text) == ["cfg.yaml:1: the file is empty (no settings in it)"]
