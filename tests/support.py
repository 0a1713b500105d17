"""Small helpers shared by the end-to-end tests: configs that point at a running sandbox."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import yaml

from refresher import platforms
from refresher.config import AppSettings, Settings, parse_config
from refresher.domain import RefresherError

PLATFORMS = ("shopee", "tiktok_shop", "lazada", "tiktok")

# One business-API call per platform that the sandbox answers only with a valid signature and token.
ECHO_CALLS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "shopee": ("/api/v2/shop/get_shop_info", []),
    "tiktok_shop": ("/authorization/202309/shops", []),
    "lazada": ("/seller/get", []),
    "tiktok": ("/v2/user/info/", [("fields", "open_id,union_id,avatar_url,display_name")]),
}


def settings_for(sandbox: Any, apps: dict[str, str] | None = None, **top: Any) -> Settings:
    """Settings with one app per platform (named like the platform) pointing at ``sandbox``."""
    chosen = apps or {p: p for p in PLATFORMS}
    document: dict[str, Any] = {"apps": {}}
    for name, platform in chosen.items():
        document["apps"][name] = {**sandbox.app_config(platform), "timeout": "2s"}
    for key, value in top.items():
        if key == "app_overrides":
            for name in document["apps"]:
                document["apps"][name].update(value)
        else:
            document[key] = value
    return parse_config(yaml.safe_dump(document), file="test.yaml", credential_models=platforms.credential_models())


def app_for(sandbox: Any, platform: str, **overrides: Any) -> AppSettings:
    settings = (
        settings_for(sandbox, {platform: platform}, app_overrides=overrides)
        if overrides
        else settings_for(sandbox, {platform: platform})
    )
    return settings.apps[platform]


def error_texts(error: BaseException) -> list[str]:
    """Every text an error offers to a log or a user: str, repr and, for ours, the stored summary."""
    texts = [str(error), repr(error)]
    if isinstance(error, RefresherError):
        texts.append(repr(error.info()))
    return texts


def assert_no_secret(texts: Iterable[str], secrets: Iterable[str], where: str) -> None:
    """Fail when a secret appears in a text, without echoing it: a failing run's output must not leak it.

    (A bare ``assert secret not in text`` would print both, through pytest's assertion rewriting.)
    """
    secrets = list(secrets)
    for text in texts:
        for secret in secrets:
            at = text.find(secret)
            if at >= 0:
                excerpt = text[max(at - 100, 0) : at + len(secret) + 100]
                for other in secrets:
                    if other:
                        excerpt = excerpt.replace(other, "<secret>")
                pytest.fail(f"a secret leaked into {where}: …{excerpt!r}…")
