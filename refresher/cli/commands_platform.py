"""``refresher sign``: sign one exact request as an app would, to debug "invalid sign" answers."""

from __future__ import annotations

import json

import click

from refresher.cli.common import config_option, fail, friendly_errors, load_settings, main


@main.command("sign")
@config_option
@click.argument("app")
@click.argument("url")
@click.option("--method", "-X", default="GET", show_default=True)
@click.option("--body", default=None, metavar="JSON", help="Request body exactly as it will be sent.")
@click.option("--content-type", default="application/json", show_default=True)
@click.option("--as-is", is_flag=True, help="Sign exactly the URL's parameters; add no app key or timestamp.")
@friendly_errors
def sign(
    config_path: str | None, app: str, url: str, method: str, body: str | None, content_type: str, as_is: bool
) -> None:
    """Print, as JSON, the signature and the signed request of URL as APP would send it.

    The timestamp in the URL is used if present; the access token in it, if any, is signed but the
    output shows it only where the request itself carries it.
    """
    from refresher.platforms.sign_debug import SignError, sign_url

    settings = load_settings(config_path)
    app_settings = settings.app(app)  # unknown app → one line naming the configured ones
    if body is not None and content_type.startswith("application/json"):
        try:
            json.loads(body)
        except ValueError as exc:
            fail(f"--body: not JSON ({exc.args[0].split(':')[0]})")
    try:
        click.echo(
            json.dumps(
                sign_url(app_settings, method, url, body, as_is=as_is, content_type=content_type),
                indent=2,
                ensure_ascii=False,
            )
        )
    except SignError as exc:
        fail(str(exc))
