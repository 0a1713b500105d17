"""``refresher check-config``: validate a config file and show what its schedules guarantee."""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from refresher import platforms
from refresher.cli.common import config_option, load_settings, main
from refresher.config import Settings, format_duration

if TYPE_CHECKING:
    from refresher.scheduler import ScheduleMargin


def config_warnings(settings: Settings, margins: Sequence[ScheduleMargin]) -> list[str]:
    """Problems that do not stop the daemon but will hurt: unsafe schedules, plain-http redirects."""
    warnings: list[str] = []
    for margin in margins:
        if not margin.safe:
            warnings.append(
                f"apps.{margin.app}.schedule: ticks up to {format_duration(margin.max_gap)} apart plus a retry "
                f"budget of {format_duration(margin.retry_budget)} exceed refresh_before "
                f"{format_duration(margin.refresh_before)}: a token could expire unrefreshed; tick more often "
                "or widen refresh_before"
            )
        elif not margin.crash_safe:
            warnings.append(
                f"apps.{margin.app}: a worker that dies holding a lease no successor recognises keeps the "
                f"account for the lease ({format_duration(margin.lease_ttl)}: store.lease_ttl, at least 1.5 x "
                f"the retry budget + 30s), longer than refresh_before {format_duration(margin.refresh_before)} "
                "allows: after such a crash a token could expire unrefreshed; widen refresh_before"
            )
    for name, app in settings.apps.items():
        if app.redirect_uri and not _safe_redirect(app.redirect_uri):
            warnings.append(
                f"apps.{name}.redirect_uri: plain http on a non-loopback host; the authorization code would "
                "travel unencrypted — use https"
            )
    if settings.server.enabled and not _is_loopback(settings.server.host) and not settings.server.api_tokens:
        warnings.append("server.host: listening beyond loopback without server.api_tokens")
    return warnings


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _safe_redirect(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme == "https" or _is_loopback(parts.hostname or "")


@main.command("check-config")
@config_option
@click.option("--strict", is_flag=True, help="Exit 1 when there are warnings.")
def check_config(config_path: str | None, strict: bool) -> None:
    """Validate a config file: exit 0 when it is usable, 2 (one line per problem) when not.

    Also prints, for each app, the worst-case margin its schedule leaves before a token could expire.
    """
    from refresher.scheduler import schedule_margins

    settings = load_settings(config_path)
    click.echo(f"{settings.source}: OK ({len(settings.apps)} app{'s' if len(settings.apps) != 1 else ''})")
    margins = schedule_margins(settings, platforms.available(), dt.datetime.now(dt.UTC))
    for margin in margins:
        click.echo(
            f"  {margin.app}: schedule {margin.schedule}, refresh_before {format_duration(margin.refresh_before)}, "
            f"worst-case margin {format_duration(margin.margin) if margin.safe else 'NONE'}, "
            f"after a crash {format_duration(margin.crash_margin) if margin.crash_safe else 'NONE'} "
            f"(lease {format_duration(margin.lease_ttl)})"
        )
    warnings = config_warnings(settings, margins)
    for warning in warnings:
        click.echo(f"warning: {settings.source}: {warning}", err=True)
    if strict and warnings:
        sys.exit(1)
