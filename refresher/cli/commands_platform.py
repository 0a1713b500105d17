"""``refresher sign``: sign one exact request as an app would, to debug "invalid sign" answers.

It runs the plugin's own ``sign_call``, the code the proxy runs, so what it prints is what the proxy
sends; nothing here knows any platform.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import click

from refresher.cli.common import config_option, fail, friendly_errors, load_settings, main, with_store


@main.command("sign")
@config_option
@click.argument("app")
@click.argument("target", nargs=-1, required=True, metavar="[ACCOUNT] PATH_OR_URL")
@click.option("--method", "-X", default="GET", show_default=True)
@click.option("--body", default=None, metavar="TEXT", help="Request body exactly as it will be sent.")
@click.option("--content-type", default="application/json", show_default=True)
@click.option(
    "--header",
    "-H",
    "header_lines",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="A request header as the proxy would get it, for a plugin that reads one (e.g. x-refresher-country: my).",
)
@friendly_errors
def sign(
    config_path: str | None,
    app: str,
    target: tuple[str, ...],
    method: str,
    body: str | None,
    content_type: str,
    header_lines: tuple[str, ...],
) -> None:
    """Print, as JSON, the signature, the text it covers and the signed request of PATH_OR_URL as APP
    (and its ACCOUNT, whose identity and access token come from the store) would send it.

    PATH_OR_URL is a full URL or a bare API path such as /api/v2/shop/get_shop_info?shop_id=1. A
    ``timestamp`` in it is used (so the output is reproducible), an ``access_token`` in it is signed.
    """
    from refresher import platforms
    from refresher.domain import Identity, RefresherError
    from refresher.platforms.base import ApiCall

    if len(target) > 2:
        fail("expected APP [ACCOUNT] PATH_OR_URL")
    account, where = (target[0], target[1]) if len(target) == 2 else (None, target[0])
    settings = load_settings(config_path)
    app_settings = settings.app(app)  # unknown app → one line naming the configured ones
    platform = platforms.get(app_settings.platform)(app_settings)
    if body is not None and content_type.startswith("application/json"):
        try:
            json.loads(body)
        except ValueError as exc:
            fail(f"--body: not JSON ({exc.args[0].split(':')[0]})")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            fail(f"--header: expected 'NAME: VALUE', got {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    parts = urlsplit(where)
    if not (parts.scheme and parts.netloc) and not where.startswith("/"):
        fail(f"PATH_OR_URL must be an absolute URL or a path starting with '/': {where[:80]!r}")
    path = parts.path or "/"
    # A URL of the app's API host may carry its base path (Lazada's /rest, a sandbox prefix): the
    # signed path starts after it.
    root = urlsplit(platform.host("api")).path.rstrip("/")
    if root and path.startswith(root + "/"):
        path = path[len(root) :]
    query = parse_qsl(parts.query, keep_blank_values=True)
    given_token = next((v for k, v in query if k == "access_token"), None)
    query = [(k, v) for k, v in query if k != "access_token"]
    stamp = next((v for k, v in query if k == "timestamp"), None)

    identity: Identity | None = platform.identity_from_query(query)
    stored_token: str | None = None
    if account is not None:
        found = with_store(settings, lambda store: store.get(app, account))
        if found is None:
            fail(f"no account {account!r} in app {app!r}")
        identity = found.identity
        stored_token = found.tokens.access_token if found.tokens is not None else None
    token = given_token if given_token is not None else stored_token

    call = ApiCall(
        method=method.upper(),
        path=path,
        query=tuple(query),
        body=body.encode("utf-8", "surrogateescape") if body is not None else None,
        content_type=content_type if body is not None else None,
        timestamp=int(stamp) if stamp and stamp.isdigit() else None,
        headers=headers,
    )
    try:
        signed = platform.sign_call(call, token, identity)
    except RefresherError as exc:
        fail(exc.message)
    if not signed.sign:
        fail(f"{app_settings.platform} requests are not signed (the access token alone authorizes them)")
    for warning in platform.sign_warnings(call, token, identity):
        click.echo(f"refresher: warning: {warning}", err=True)

    def shown(text: str) -> str:
        # A token read from the store is not printed; one the user gave is theirs already.
        return text.replace(stored_token, "<access_token>") if stored_token and given_token is None else text

    out: dict[str, Any] = {
        "app": app_settings.name,
        "platform": app_settings.platform,
        "account": account,
        "sign": signed.sign,
        "base_string": signed.base_string,
        "request": {
            "method": signed.method,
            "url": shown(signed.url),
            "headers": {k: shown(v) for k, v in signed.headers.items()},
            "body": signed.body.decode("utf-8", "replace") if signed.body is not None else None,
        },
    }
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


@main.command("recover")
@config_option
@click.argument("app")
@click.argument("account")
@friendly_errors
def recover(config_path: str | None, app: str, account: str) -> None:
    """Recover ACCOUNT whose refresh token was lost, with a one-time code read from stdin (Shopee: the
    "resend code" of the Open Platform console's authorization page, valid 10 minutes, live apps only).

    The code is read from the terminal without echo (or from a pipe), never from the command line,
    where other users could see it in the process list.
    """
    from refresher import platforms
    from refresher.domain import AccountStatus, RefresherError
    from refresher.redaction import register_secrets
    from refresher.store.roles import Store

    settings = load_settings(config_path)
    app_settings = settings.app(app)
    platform = platforms.get(app_settings.platform)(app_settings)
    if not platform.supports_recovery_code:
        fail(f"{app_settings.platform} has no recovery code: the seller must re-authorize ({app!r} {account!r})")
    found = with_store(settings, lambda store: store.get(app, account))
    if found is None:
        fail(f"no account {account!r} in app {app!r}")
    typed: str = click.prompt("recovery code", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline()
    code = typed.strip()
    if not code:
        fail("no recovery code given on stdin")
    register_secrets([code])

    async def work(store: Store) -> None:
        try:
            tokens = await platform.recover_with_code(found.identity, code)
        finally:
            await platform.http.aclose()
        register_secrets([tokens.access_token, tokens.refresh_token])
        await store.import_account(app, app_settings.platform, found.identity, tokens, AccountStatus.ACTIVE)

    try:
        with_store(settings, work)
    except RefresherError as exc:
        fail(f"recovery refused: {exc.message}", 1)
    click.echo(f"{app}/{account}: recovered, tokens stored, account active")
