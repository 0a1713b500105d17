"""``refresher check-config``."""

from __future__ import annotations

import click

from refresher.cli.common import config_option, load_settings, main


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate a config file: exit 0 when it is usable, 2 (one line per problem) when not."""
    settings = load_settings(config_path)
    click.echo(f"{settings.source}: OK ({len(settings.apps)} app{'s' if len(settings.apps) != 1 else ''})")
