"""``refresher run``, ``status`` and ``refresh``: the daemon and a look at (or a push on) what it keeps."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import Sequence

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
from refresher.config import Settings, format_duration
from refresher.domain import AccountStatus, SystemClock
from refresher.store.base import Account


@main.command("run")
@config_option
@friendly_errors
def run(config_path: str | None) -> None:
    """Run the daemon: keep every account of every app fresh until SIGTERM (SIGHUP reloads the config)."""
    from refresher.daemon import Daemon, PortUnavailable
    from refresher.logging import configure_logging

    settings = load_settings(config_path)
    configure_logging(settings.logging, secrets=settings.secrets())
    daemon = Daemon(settings, config_path=settings.source)
    try:
        code = asyncio.run(daemon.run())
    except PortUnavailable as exc:  # the port is checked before anything starts: one line, exit 2
        fail(f"{settings.source}: {exc}")
    sys.exit(code)


def status_rows(accounts: Sequence[Account], now: dt.datetime) -> list[list[str]]:
    """One row per account: what an operator needs to know at a glance, never a token."""

    def until(when: dt.datetime | None) -> str:
        if when is None:
            return "-"
        left = when - now
        return format_duration(left) if left.total_seconds() >= 0 else f"expired {format_duration(-left)} ago"

    def ago(when: dt.datetime | None) -> str:
        return "never" if when is None else f"{format_duration(max(now - when, dt.timedelta(0)))} ago"

    rows = []
    for account in accounts:
        error = account.last_error
        rows.append(
            [
                account.app,
                account.key,
                account.identity.name or "",
                str(account.status),
                until(account.access_expires_at),
                until(account.refresh_expires_at),
                ago(account.last_success_at),
                str(account.consecutive_failures),
                f"{error.error_class}: {error.code or ''} {error.message[:60]}".strip() if error else "",
            ]
        )
    return rows


STATUS_HEADERS = [
    "app",
    "account",
    "name",
    "status",
    "access expires in",
    "refresh expires in",
    "last refreshed",
    "failures",
    "last error",
]


def print_status(rows: list[list[str]]) -> None:
    """The status table for people; ``--json`` has its own stable schema (commands_accounts)."""
    from rich.console import Console
    from rich.table import Table

    # Logs and CI: as wide as the table needs, never squeezed; a terminal wraps the longest lines itself.
    console = Console() if sys.stdout.isatty() else Console(width=1000)
    table = Table(title=None, show_lines=False)
    for index, header in enumerate(STATUS_HEADERS):
        if header in ("name", "last error"):
            table.add_column(header, overflow="fold")
        else:
            # App and account are what an operator copies into the next command: never cut or wrapped
            # (nor the short columns); the name and the last error give way instead.
            widest = max((len(row[index]) for row in rows), default=0)
            table.add_column(header, min_width=max(widest, 6))
    for row in rows:
        style = {"needs_reauth": "red", "disabled": "dim"}.get(row[3], "")
        table.add_row(*row, style=style)
    console.print(table, crop=False)


@main.command("status")
@config_option
@click.option("--app", default=None, help="Only this app.")
@click.option(
    "--status",
    "status_filter",
    type=click.Choice([s.value for s in AccountStatus]),
    default=None,
    help="Only this status.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def status(config_path: str | None, app: str | None, status_filter: str | None, as_json: bool) -> None:
    """Every account with its status and expiries (reads the store; the daemon need not run)."""
    settings = load_settings(config_path)
    if app is not None:
        settings.app(app)  # unknown app → one line naming the configured ones
    wanted = AccountStatus(status_filter) if status_filter else None
    # No token is shown, so none is decrypted: status works even with a wrong store.encryption_keys.
    accounts = list(with_store(settings, lambda store: store.list(app=app, status=wanted, limit=10_000, secrets=False)))
    if as_json:
        # The stable machine schema (snake_case, ISO-8601 times, numbers as numbers), as accounts list --json.
        from refresher.cli.commands_accounts import account_record, echo_json

        echo_json([account_record(a) for a in accounts])
        return
    print_status(status_rows(accounts, SystemClock().now()))
    if not accounts:
        click.echo("no accounts yet: onboard one with `refresher authorize APP`", err=True)


@main.command("refresh")
@config_option
@click.argument("app")
@click.argument("account", required=False)
@click.option("--all", "every", is_flag=True, help="Refresh every active account of APP now.")
@friendly_errors
def refresh(config_path: str | None, app: str, account: str | None, every: bool) -> None:
    """Refresh ACCOUNT of APP now (or --all), whatever its expiry; waits for the result.

    Safe while the daemon runs: the account's lease makes sure only one of them refreshes it.
    """
    settings = load_settings(config_path)
    settings.app(app)  # unknown app → one line naming the configured ones
    if not account and not every:
        fail("name an ACCOUNT or pass --all")
    log_to_terminal(settings)  # the refresh path logs: redacted, on stderr, not amid the result lines
    ok = asyncio.run(_refresh(settings, app, account, every))
    sys.exit(0 if ok else 1)


async def _refresh(settings: Settings, app: str, account: str | None, every: bool) -> bool:
    from refresher.daemon import build_platforms, default_owner
    from refresher.platforms.base import make_http_client
    from refresher.refresh import Refresher
    from refresher.store import open_store

    clock = SystemClock()
    store = open_store(settings.store, clock)
    await store.open()
    http = make_http_client()
    try:
        platforms = build_platforms(settings, http, clock)
        refresher = Refresher(settings, store, platforms, clock, f"cli-{default_owner()}")
        keys = (
            [a.key for a in await store.list(app=app, status=AccountStatus.ACTIVE, limit=100_000)]
            if every
            else [account or ""]
        )
        ok = True
        for key in keys:
            result = await refresher.refresh_now(app, key)
            line = f"{app} {key}: {result.outcome.value}"
            if result.error is not None:
                line += f" ({result.error.error_class}: {result.error})"
                ok = False
            elif result.account.tokens is not None:
                line += f", access token expires {result.account.tokens.access_expires_at.isoformat()}"
            click.echo(line)
        return ok
    finally:
        await http.aclose()
        await store.close()
