"""Platform plugins, found through the ``refresher.platforms`` entry-point group.

A third party adds a platform by shipping a distribution that declares::

    [project.entry-points."refresher.platforms"]
    shopify = "refresher_shopify:ShopifyPlatform"
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points

from pydantic import BaseModel

from refresher.domain import ConfigError
from refresher.platforms.base import Platform

ENTRY_POINT_GROUP = "refresher.platforms"


class UnknownPlatform(ConfigError):
    """No plugin of that name is installed, or it failed to load (the message says why)."""


_broken: dict[str, str] = {}


@cache
def _discover() -> dict[str, type[Platform]]:
    found: dict[str, type[Platform]] = {}
    _broken.clear()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue  # first distribution wins; duplicates are a packaging mistake
        # One broken third-party plugin must not take the built-in platforms down with it: remember why
        # it failed and say so when (and only when) an app asks for it.
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of someone else's code
            _broken[ep.name] = f"{ep.value} failed to load: {type(exc).__name__}: {str(exc)[:200]}"
            continue
        if not (isinstance(cls, type) and issubclass(cls, Platform)):
            _broken[ep.name] = f"{ep.value} is not a refresher Platform subclass"
            continue
        found[ep.name] = cls
    return found


def available() -> dict[str, type[Platform]]:
    """Every installed platform plugin by name."""
    return dict(_discover())


def reload() -> None:
    """Forget the discovered plugins (after installing one at run time, and in tests)."""
    _discover.cache_clear()


def get(name: str) -> type[Platform]:
    plugins = _discover()
    try:
        return plugins[name]
    except KeyError:
        if name in _broken:
            raise UnknownPlatform(f"platform {name!r}: {_broken[name]}") from None
        known = ", ".join(sorted(plugins)) or "none"
        raise UnknownPlatform(f"unknown platform {name!r} (installed: {known})") from None


def credential_models() -> Mapping[str, type[BaseModel]]:
    """What :func:`refresher.config.load_config` needs to validate each app's credential keys."""
    return {name: cls.credentials_model for name, cls in _discover().items()}


def access_lifetimes() -> Mapping[str, dt.timedelta]:
    """Each platform's documented access-token lifetime, for the config's refresh_before check."""
    return {name: cls.access_lifetime for name, cls in _discover().items() if cls.access_lifetime is not None}
