"""Token commands: ``refresher token APP ACCOUNT`` for shell scripts, ``refresher accounts list``.

Both read the store named in the config directly (no daemon needed). ``token`` prints nothing but the
token and a newline, so ``$(refresher token shopee-sg shop:1)`` works; every problem is one line on stderr
and a non-zero exit, so a script never sends an empty or expired token by mistake.
"""

from __future__ import annotations

import click

from refresher.cli.common import config_option, fail, friendly_errors, load_settings, main, with_store
from refresher.domain import AccountStatus, SystemClock
from refresher.store.base import Account
from refresher.token_read import Refusal, judge, refusal_message

EXIT_UNAVAILABLE = 1


@main.command("token", context_settings={"ignore_unknown_options": True})  # keys may begin with "-"
@config_option
@click.argument("app")
@click.argument("account")
@click.option(
    "--refresh-token",
    "want_refresh",
    is_flag=True,
    help="Print the refresh token instead of the access token (handle with care).",
)
@click.option("--allow-expired", is_flag=True, help="Print the access token even when it has expired.")
@friendly_errors
def token(config_path: str | None, app: str, account: str, want_refresh: bool, allow_expired: bool) -> None:
    """Print the current access token of ACCOUNT in APP (for shell scripts)."""
    settings = load_settings(config_path)
    settings.app(app)  # unknown app → one line naming the configured ones

    found: Account | None = with_store(settings, lambda store: store.get(app, account))
    if found is None:
        fail(f"unknown account {account!r} of app {app!r} (see: refresher accounts list --app {app})", EXIT_UNAVAILABLE)
    if found.tokens is None:
        fail(f"account {account!r} of app {app!r} holds no token", EXIT_UNAVAILABLE)
    if want_refresh:
        click.echo(found.tokens.refresh_token)
        return
    # The token API's judgement (its 409), so a script never gets a token the API would refuse.
    reason = judge(found, SystemClock().now())
    if reason is Refusal.EXPIRED and not allow_expired:
        fail(f"{refusal_message(found, reason)} (is the daemon running?) [{reason}]", EXIT_UNAVAILABLE)
    if reason is not None and reason is not Refusal.EXPIRED:
        fail(f"{refusal_message(found, reason)} [{reason}]", EXIT_UNAVAILABLE)
    click.echo(found.tokens.access_token)


@main.group("accounts")
def accounts() -> None:
    """Inspect the accounts in the store."""


@accounts.command("list")
@config_option
@click.option("--app", default=None, help="Only this app's accounts.")
@click.option("--status", type=click.Choice([s.value for s in AccountStatus]), default=None, help="Only this status.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (a JSON array, stable schema).")
@friendly_errors
def accounts_list(config_path: str | None, app: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List accounts with their status and expiries (never their tokens)."""
    from rich.console import Console
    from rich.table import Table

    settings = load_settings(config_path)
    if app is not None:
        settings.app(app)
    wanted = AccountStatus(status) if status else None
    rows = with_store(settings, lambda store: store.list(app=app, status=wanted, limit=limit, secrets=False))
    if as_json:
        from refresher.cli.commands_accounts import account_record, echo_json

        echo_json([account_record(row) for row in rows])
        return
    table = Table("app", "account", "name", "status", "access expires", "refresh expires", "failures", "last error")
    for row in rows:
        table.add_row(
            row.app,
            row.key,
            row.identity.name or "",
            str(row.status),
            row.access_expires_at.strftime("%Y-%m-%d %H:%M:%SZ") if row.access_expires_at else "",
            row.refresh_expires_at.strftime("%Y-%m-%d %H:%M:%SZ") if row.refresh_expires_at else "",
            str(row.consecutive_failures),
            (row.last_error.message[:60] if row.last_error else ""),
        )
    Console(width=160).print(table)
