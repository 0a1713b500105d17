"""Checks across keys, run once the file has parsed: what each key accepts alone but the whole cannot use.

Each finding is a :class:`ConfigProblem` naming the key and its line. Values that may be secret (channel
URLs, tokens) are never quoted: only an apprise URL's scheme is, which names a service, not a credential.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from pydantic import SecretStr

from refresher.config.durations import format_duration
from refresher.config.errors import ConfigProblem
from refresher.config.models import AppriseChannel, Settings

LineOf = Callable[[Sequence[str]], int | None]

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def cross_field_problems(
    settings: Settings,
    line_of: LineOf,
    file: str,
    access_lifetimes: Mapping[str, dt.timedelta] | None = None,
) -> list[ConfigProblem]:
    """Every cross-key problem of ``settings``; ``access_lifetimes`` (platform → shortest documented
    access-token lifetime) enables the refresh_before check."""
    problems: list[ConfigProblem] = []

    def problem(path: Sequence[str], message: str) -> None:
        problems.append(ConfigProblem(file, ".".join(path), line_of(path), message))

    for name, app in settings.apps.items():
        uri = app.redirect_uri
        if uri is not None and not _is_loopback_http(uri) and not urlsplit(uri).path.endswith(f"/callback/{name}"):
            # Only the desktop flow listens on a loopback URL of its own; a web app's code must reach the
            # server's callback route for this app, or onboarding ends on a page that is not there.
            problem(
                ("apps", name, "redirect_uri"),
                f"must end in /callback/{name} (the route that receives the code), e.g. "
                f"https://refresher.example.com/callback/{name}; only a loopback http:// URL may differ "
                "(the desktop flow)",
            )
        lifetime = (access_lifetimes or {}).get(app.platform)
        if lifetime is not None and app.refresh_before is not None and app.refresh_before >= lifetime:
            problem(
                ("apps", name, "refresh_before"),
                f"{format_duration(app.refresh_before)} is not shorter than a {app.platform} access token's "
                f"lifetime ({format_duration(lifetime)}): every token would be refreshed on every tick",
            )

    first_use: dict[str, int] = {}
    for index, channel in enumerate(settings.alerts.channels):
        path = ("alerts", "channels", str(index), "name")
        if channel.name in first_use:
            problem(path, f"duplicate channel name {channel.name!r} (also channel {first_use[channel.name]})")
        first_use.setdefault(channel.name, index)

    apprise = [(i, c) for i, c in enumerate(settings.alerts.channels) if isinstance(c, AppriseChannel)]
    if apprise:
        known = _apprise_schemes()
        for index, channel in apprise:
            scheme = _scheme(channel.url)
            if scheme is None or scheme not in known:
                shown = f"{scheme!r}" if scheme is not None and len(scheme) <= 20 else "(none)"
                problem(
                    ("alerts", "channels", str(index), "url"),
                    f"unknown apprise scheme {shown} (e.g. slack://, tgram://, mailto://, wecombot://; "
                    "see the apprise documentation)",
                )
    return problems


def _is_loopback_http(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK


def _scheme(url: SecretStr) -> str | None:
    text = url.get_secret_value()
    scheme, sep, _rest = text.partition("://")
    return scheme.lower() if sep and scheme.replace("+", "").replace("-", "").isalnum() else None


def _apprise_schemes() -> set[str]:
    # Imported here: loading every apprise plugin takes a second, paid only by files with apprise channels.
    from apprise import NotificationManager

    return {str(s).lower() for s in NotificationManager().schemas()}  # type: ignore[no-untyped-call]


# Store settings the open store was built with: a reload cannot apply them (lease_ttl and audit_retention
# are read at each sweep, so they may change).
_STORE_FIXED = ("url", "encryption_keys", "pool_size", "history_versions")


def reload_problem(old: Settings, new: Settings) -> str | None:
    """Why a valid new config must still not replace the running one on SIGHUP, or None.

    Each case is what a truncated or half-written file looks like, and applying it would quietly stop the
    daemon's work (no app swept, the admin token refused) or point it at another store mid-run.
    """
    if old.apps and not new.apps:
        return "the new file defines no apps (truncated?); refusing to stop every app - restart to do that"
    if old.server.admin_token is not None and new.server.admin_token is None:
        return "the new file has no server.admin_token (truncated?); removing it needs a restart"
    for name in _STORE_FIXED:
        if getattr(old.store, name) != getattr(new.store, name):
            return f"store.{name} cannot change without a restart"
    return None
