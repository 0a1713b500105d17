"""Onboarding from the command line: ``auth-url``, ``exchange`` and ``invite`` (``authorize``: commands_authorize).

These run without the daemon: they open the store themselves. The flow is :mod:`refresher.onboarding`,
the same code the web routes use. Nothing printed here ever contains a token or an authorization code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

import click

from refresher.cli.common import (
    config_option,
    fail,
    friendly_errors,
    load_settings,
    log_to_terminal,
    main,
    with_store,
)
from refresher.config import Settings, format_duration, parse_duration
from refresher.domain import Clock, SystemClock
from refresher.platforms.base import Platform
from refresher.store.base import Account, StoreError
from refresher.store.roles import Store

EXIT_GRANTED = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 3
EXIT_CANCELLED = 130
DEFAULT_PORT = 3017


def say(message: str) -> None:
    """A progress line on stdout (click flushes, so a parent process reading a pipe sees it at once)."""
    click.echo(message)


def print_accounts(accounts: Sequence[Account], now: dt.datetime) -> None:
    from refresher.server.onboarding import describe_account

    for account in accounts:
        rows = dict(describe_account(account, now))
        say(f"  {rows.pop('account')} ({account.key})")
        for key, value in rows.items():
            say(f"    {key}: {value}")


@contextlib.asynccontextmanager
async def opened_app(settings: Settings, app_name: str, clock: Clock) -> AsyncIterator[tuple[Store, Platform]]:
    """The store and the app's plugin, closed again whatever happens."""
    from refresher import platforms as registry
    from refresher.platforms.base import make_http_client
    from refresher.store import open_store

    app = settings.app(app_name)
    http = make_http_client(timeout=app.timeout.total_seconds())
    store = open_store(settings.store, clock)
    try:
        await store.open()
        yield store, registry.get(app.platform)(app, http=http, clock=clock)
    finally:
        with contextlib.suppress(Exception):
            await store.close()
        await http.aclose()


def settings_for(config_path: str | None, app: str) -> Settings:
    """The validated config, the app checked, and logs set up for a person at a terminal (on stderr:
    stdout carries the URL and the progress lines scripts read)."""
    settings = load_settings(config_path)
    settings.app(app)  # unknown app → one line naming the configured ones
    log_to_terminal(settings)
    return settings


def run_flow(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except StoreError as exc:
        fail(f"token store: {exc}", EXIT_FAILED)


# ---------------------------------------------------------------------------------------- auth-url


@main.command("auth-url")
@config_option
@click.argument("app")
@click.option("--state", default=None, help="Use this state instead of a random one.")
@click.option("--redirect-uri", default=None, help="Override the app's redirect_uri (must be registered).")
@friendly_errors
def auth_url(config_path: str | None, app: str, state: str | None, redirect_uri: str | None) -> None:
    """Print an authorization URL for APP and store its state (use it with `refresher exchange`)."""
    from refresher.onboarding import begin

    settings = settings_for(config_path, app)

    async def run() -> int:
        clock = SystemClock()
        async with opened_app(settings, app, clock) as (store, platform):
            url, stored = await begin(
                app,
                platform,
                store,
                clock,
                state=state,
                redirect_uri=redirect_uri,
                ttl=settings.server.state_ttl,
            )
        say(url)
        click.echo(f"state stored; it expires at {stored.expires_at:%Y-%m-%d %H:%M:%S} UTC", err=True)
        return 0

    sys.exit(run_flow(run()))


# ---------------------------------------------------------------------------------------- exchange


@main.command("exchange")
@config_option
@click.argument("app")
@click.argument("callback", required=False)
@click.option("--code", default=None, help="The authorization code alone (instead of CALLBACK).")
@click.option(
    "--param",
    "extra",
    multiple=True,
    metavar="NAME=VALUE",
    help="Another parameter that came with the code, as the platform named it (e.g. shop_id=123). Repeatable.",
)
# Shorthands for --param shop_id=N / main_account_id=N, kept for the scripts that used them.
@click.option("--shop-id", default=None, hidden=True)
@click.option("--main-account-id", default=None, hidden=True)
@friendly_errors
def exchange(
    config_path: str | None,
    app: str,
    callback: str | None,
    code: str | None,
    extra: tuple[str, ...],
    shop_id: str | None,
    main_account_id: str | None,
) -> None:
    """Complete a flow by hand: CALLBACK is the URL the platform redirected to (or its query string), whose
    state is checked against one `refresher auth-url` stored; or give `--code` (and, with `--param`, the
    other parameters the platform's redirect carried, such as a shop id) to exchange a code you obtained
    some other way."""
    from refresher.onboarding import complete, parse_callback

    settings = settings_for(config_path, app)
    if (callback is None) == (code is None):
        fail("give either CALLBACK (the redirect URL) or --code CODE")
    if extra and code is None:
        fail("--param goes with --code (a CALLBACK carries its own parameters)")
    if code is not None:
        params = {"code": code}
        shorthands = {"shop_id": shop_id, "main_account_id": main_account_id}
        params.update({name: value for name, value in shorthands.items() if value is not None})
        for item in extra:
            name, sep, value = item.partition("=")
            if not sep or not name or name in params:
                fail(f"--param {item!r}: give NAME=VALUE, once per name (code is --code)")
            params[name] = value
    else:
        params = parse_callback(callback or "")
        if not params:
            fail("CALLBACK: no query parameters found (paste the whole redirect URL, quoted)")

    async def run() -> int:
        clock = SystemClock()
        async with opened_app(settings, app, clock) as (store, platform):
            if code is None:
                accounts = await complete(app, platform, store, clock, params)
            else:
                # No state to check: the operator vouches for the code. PKCE apps need the verifier that
                # only a stored state holds, so they must go through auth-url + CALLBACK.
                if platform.supports_pkce:
                    fail(f"{app} uses PKCE: run `refresher auth-url {app}`, then `refresher exchange {app} CALLBACK`")
                grants = await platform.exchange_code(params, None, platform.app.redirect_uri)
                accounts = [await store.upsert_grant(app, platform.name, grant) for grant in grants]
        say(f"granted: {len(accounts)} account(s) of app {app} stored")
        print_accounts(accounts, clock.now())
        return 0

    sys.exit(run_flow(run()))


# ------------------------------------------------------------------------------------------ invite


@main.command("invite")
@config_option
@click.argument("app")
@click.argument("invitation_id", required=False, metavar="[ID]")
@click.option("--ttl", default="7d", show_default=True, help="How long the link works (e.g. 2h, 7d).")
@click.option("--single-use", is_flag=True, help="The link starts one authorization only.")
@click.option("--end-user", default=None, help="Your end user / tenant id, stored on the accounts it connects.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag for the accounts it connects.")
@click.option("--account", default=None, metavar="KEY", help="Only re-authorize this account (in place).")
@friendly_errors
def invite(
    config_path: str | None,
    app: str,
    invitation_id: str | None,
    ttl: str,
    single_use: bool,
    end_user: str | None,
    tags: tuple[str, ...],
    account: str | None,
) -> None:
    """Print an invitation URL a seller can open to authorize APP without the admin token.

    Every invitation is stored, so it can be revoked alone: `refresher invite revoke ID` (the id is
    printed with the link). With --account the link re-authorizes that one account. An app named
    "revoke" cannot be invited this way.
    """
    from refresher.invites import MAX_TTL, invite_url, make_invite, new_invitation_id
    from refresher.store.connection_types import Invitation

    if app == "revoke":
        _revoke(config_path, invitation_id)
        return
    if invitation_id is not None:
        fail(f"unexpected argument {invitation_id!r} (did you mean: refresher invite revoke ID?)")
    settings = settings_for(config_path, app)
    try:
        lifetime = parse_duration(ttl)
    except (ValueError, OverflowError) as exc:  # OverflowError: more days than a timedelta holds
        fail(f"--ttl: {exc if isinstance(exc, ValueError) else f'{ttl!r} is too long'}")
    if lifetime > MAX_TTL:
        fail(f"--ttl: {ttl!r} is too long; an invitation works for at most {MAX_TTL.days} days")
    tag_map: dict[str, str] = {}
    for item in tags:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--tag: {item!r} is not KEY=VALUE")
        tag_map[name] = value
    server = settings.server
    if server.invite_secret is None:
        fail(f"{settings.source}: server.invite_secret is not set (invitations are signed with it)")
    if not server.public_url:
        fail(f"{settings.source}: server.public_url is not set (the link must point at this server)")
    clock = SystemClock()
    now = clock.now()
    stored = Invitation(
        id=new_invitation_id(),
        kind="invite" if account is None else "reauth",
        app=app,
        created_at=now,
        expires_at=now + lifetime,
        single_use=single_use,
        account_key=account,
        end_user={"id": end_user} if end_user else None,
        tags=tag_map,
    )

    async def put(store: Store) -> bool:
        if account is not None and await store.get(app, account) is None:
            return False
        await store.put_invitation(stored)
        return True

    if not with_store(settings, put, create=account is None):
        fail(f"no account {account!r} in app {app!r} (refresher accounts list {app})", 1)
    secret = server.invite_secret.get_secret_value()
    token = make_invite(app, lifetime, secret=secret, clock=clock, account=account, invitation=stored.id)
    say(invite_url(server.public_url, app, token, account, invitation=stored.id))
    once = ", single use" if single_use else ""
    click.echo(
        f"id {stored.id}: valid for {format_duration(lifetime)} (until {now + lifetime:%Y-%m-%d %H:%M} UTC){once}",
        err=True,
    )


def _revoke(config_path: str | None, invitation_id: str | None) -> None:
    if not invitation_id:
        fail("refresher invite revoke ID: give the invitation's id (printed with its link)")
    settings, wanted = load_settings(config_path), invitation_id
    if not with_store(settings, lambda store: store.revoke_invitation(wanted)):
        fail(f"no invitation {invitation_id!r} that is not revoked already", 1)
    say(f"invitation {invitation_id} revoked")
