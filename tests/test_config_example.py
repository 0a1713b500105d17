"""config.example.yaml: complete, valid with the environment it documents, and safe in its errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from refresher import platforms
from refresher.config import (
    AlertSettings,
    ApiToken,
    AppriseChannel,
    AppSettings,
    ConfigFileError,
    HookSettings,
    LoggingSettings,
    RetrySettings,
    ServerSettings,
    StoreSettings,
    WebhookChannel,
    load_config,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"
PLATFORM_APPS = {
    "shopee-sg": "shopee",
    "tiktok-shop-us": "tiktok_shop",
    "lazada-sg": "lazada",
    "tiktok-login": "tiktok",
}


def documented_env() -> dict[str, str]:
    """The ``#   export NAME=value`` lines at the top of the example: the file's own promise."""
    found = dict(re.findall(r"^#\s+export\s+([A-Z_][A-Z0-9_]*)=(\S+)", EXAMPLE.read_text(), re.M))
    assert found, "config.example.yaml lists no example environment variables"
    return found


def test_example_loads_with_the_documented_environment() -> None:
    settings = load_config(EXAMPLE, env=documented_env())
    assert {name: app.platform for name, app in settings.apps.items()} == PLATFORM_APPS
    # Safe defaults: local-only server, a local SQLite file, tokens encrypted when the key is given.
    assert settings.server.host == "127.0.0.1"
    assert settings.store.url.startswith("sqlite:///")
    assert len(settings.store.encryption_keys) == 1
    assert settings.server.connect_requires_auth is True
    assert [t.scopes for t in settings.server.api_tokens] == [["tokens:read", "accounts:read"]]
    assert {c.name for c in settings.alerts.channels} == {"ops-webhook", "slack"}
    # Every documented variable reaches the settings, so none of them is silently unused.
    seen = " ".join(settings.secrets()) + " " + str(settings.model_dump())
    unused = [name for name, value in documented_env().items() if value not in seen]
    assert not unused, f"documented but unused: {unused}"


def _documented_keys(model: type[BaseModel], skip: set[str]) -> set[str]:
    return {name for name in model.model_fields if name not in skip}


@pytest.mark.parametrize(
    ("model", "skip"),
    [
        (StoreSettings, set()),
        (ServerSettings, set()),
        (ApiToken, set()),
        (AlertSettings, set()),
        (WebhookChannel, set()),
        (AppriseChannel, set()),
        (LoggingSettings, set()),
        (RetrySettings, set()),
        (HookSettings, set()),
        (AppSettings, {"name", "credentials"}),
    ],
)
def test_every_option_is_in_the_example(model: type[BaseModel], skip: set[str]) -> None:
    """A new option in config.py fails here until the example documents it (set or commented out)."""
    text = EXAMPLE.read_text()
    missing = [
        key
        for key in _documented_keys(model, skip)
        if not re.search(rf"^\s*(#\s*)?(-\s+)?{re.escape(key)}:", text, re.M)
    ]
    assert not missing, f"{model.__name__} options missing from config.example.yaml: {missing}"


def test_an_unset_variable_is_named_with_its_line() -> None:
    env = documented_env()
    del env["LAZADA_APP_SECRET"]
    with pytest.raises(ConfigFileError) as info:
        load_config(EXAMPLE, env=env)
    (problem,) = info.value.problems
    line = next(i for i, text in enumerate(EXAMPLE.read_text().splitlines(), 1) if "${LAZADA_APP_SECRET}" in text)
    assert str(problem) == (
        f"{EXAMPLE}:{line}: apps.lazada-sg.app_secret: environment variable LAZADA_APP_SECRET is not set"
    )


def test_errors_never_carry_the_secret() -> None:
    env = documented_env()
    short_secret = "tooShort-7f3a9"  # < 16 characters: rejected, and must not be echoed
    env["REFRESHER_API_TOKEN"] = short_secret
    with pytest.raises(ConfigFileError) as info:
        load_config(EXAMPLE, env=env)
    message = str(info.value)
    assert "server.api_tokens.0.secret: must be at least 16 characters" in message
    assert short_secret not in message
    assert all(short_secret not in repr(p) for p in info.value.problems)


def test_credentials_pass_the_platform_models() -> None:
    settings = load_config(EXAMPLE, env=documented_env(), credential_models=platforms.credential_models())
    assert settings.apps["shopee-sg"].credential("partner_id") == 2001234
    assert settings.apps["tiktok-login"].credential("desktop") is False
    assert settings.apps["tiktok-shop-us"].credential("app_secret") == "change-me-tiktok-shop-secret"


def test_every_credential_key_of_the_plugins_is_in_the_example() -> None:
    settings = load_config(EXAMPLE, env=documented_env(), credential_models=platforms.credential_models())
    for name, platform in PLATFORM_APPS.items():
        model = platforms.credential_models()[platform]
        given = set(settings.apps[name].credentials.model_fields_set)
        assert given == set(model.model_fields), f"{name}: {set(model.model_fields) - given} not shown"


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "refresher"
    return [str(script)] if script.exists() else [sys.executable, "-m", "refresher"]


def _run_check_config(env: dict[str, str], config: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    return subprocess.run(
        [*_cli(), "check-config", "-c", str(config)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_cli_passes_on_the_example() -> None:
    result = _run_check_config(documented_env(), EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{EXAMPLE}: OK (4 apps)"


def test_check_config_cli_names_a_missing_variable_in_one_line() -> None:
    env: dict[str, Any] = documented_env()
    secret = env.pop("SHOPEE_PARTNER_KEY")
    result = _run_check_config(env, EXAMPLE)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "apps.shopee-sg.partner_key: environment variable SHOPEE_PARTNER_KEY is not set" in lines[0]
    assert "Traceback" not in result.stderr and secret not in result.stderr + result.stdout


def example_keys() -> set[str]:
    """Every key config.example.yaml sets or shows commented out, except the names of its example apps."""
    text = EXAMPLE.read_text()
    found: set[str] = set()

    def walk(node: Any, parent: str | None) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if parent != "apps":
                    found.add(str(key))
                walk(value, str(key))
        elif isinstance(node, list):
            for item in node:
                walk(item, parent)

    walk(yaml.safe_load(text), None)
    found.update(re.findall(r"^\s*#\s*([a-z_]+):(?:\s|$)", text, re.M))
    return found


def test_every_key_of_the_example_is_explained_in_the_configuration_reference() -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text()
    keys = example_keys()
    assert {"return_to_allowlist", "connect_requires_auth", "enabled", "state_ttl", "pool_size", "on_success"} <= keys
    missing = sorted(key for key in keys if f"`{key}`" not in reference)
    assert not missing, f"keys of config.example.yaml not explained in docs/configuration.md: {missing}"
