"""One account from the command line, as the API offers it: ``history``, ``events``, ``disable``,
``enable``, ``delete``; and the machine-readable account record of ``status --json`` and
``accounts list --json``.

Account keys may begin with ``-`` (a TikTok ``open_id`` can): these commands take them without ``--``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from refresher.alerts.lifecycle import LifecycleEvents
from refresher.cli.common import config_option, fail, friendly_errors, load_settings, main, with_store
from refresher.config import Settings
from refresher.domain import AccountStatus
from refresher.store.base import Account, AuditEntry, HistoryEntry
from refresher.store.roles import Store

# Unknown "options" are arguments here: an account key such as "-Xb3k" is not a flag.
KEY_ARGS: dict[str, Any] = {"ignore_unknown_options": True}
EXIT_UNAVAILABLE = 1


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def account_record(account: Account) -> dict[str, Any]:
    """The stable JSON schema of one account (snake_case keys, ISO-8601 UTC times, numbers as numbers)."""
    error = account.last_error
    return {
        "app": account.app,
        "platform": account.platform,
        "key": account.key,
        "name": account.identity.name,
        "kind": account.identity.kind,
        "platform_id": account.identity.platform_id,
        "region": account.identity.region,
        "status": str(account.status),
        "access_expires_at": iso(account.access_expires_at),
        "refresh_expires_at": iso(account.refresh_expires_at),
        "consecutive_failures": account.consecutive_failures,
        "last_success_at": iso(account.last_success_at),
        "last_attempt_at": iso(account.last_attempt_at),
        "next_attempt_at": iso(account.next_attempt_at),
        "last_error": None
        if error is None
        else {"error_class": error.error_class, "code": error.code, "message": error.message},
        "version": account.version,
        "created_at": iso(account.created_at),
        "updated_at": iso(account.updated_at),
    }


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _known(app: str, config_path: str | None) -> Settings:
    """The settings, once APP is known to be one of them."""
    settings = load_settings(config_path)
    settings.app(app)  # unknown app → one line naming the configured ones (exit 2)
    return settings


@main.command("history", context_settings=KEY_ARGS)
@config_option
@click.argument("app")
@click.argument("account")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def history(config_path: str | None, app: str, account: str, limit: int, as_json: bool) -> None:
    """Earlier token versions of ACCOUNT and their expiries (never the tokens)."""
    settings = _known(app, config_path)

    async def read(store: Store) -> tuple[Account | None, list[HistoryEntry]]:
        return await store.get(app, account), list(await store.history(app, account, limit=limit))

    found, entries = with_store(settings, read)
    if found is None:
        fail(f"unknown account {account!r} of app {app!r}", EXIT_UNAVAILABLE)
    rows = [
        {
            "version": e.version,
            "access_expires_at": iso(e.tokens.access_expires_at),
            "refresh_expires_at": iso(e.tokens.refresh_expires_at),
            "replaced_at": iso(e.replaced_at),
        }
        for e in entries
    ]
    if as_json:
        echo_json({"app": app, "account": found.key, "current_version": found.version, "items": rows})
        return
    click.echo(f"{app} {found.key}: version {found.version} now")
    for row in rows:
        click.echo(f"  v{row['version']}  replaced {row['replaced_at']}  access until {row['access_expires_at']}")


def audit_record(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": iso(entry.at),
        "outcome": entry.outcome,
        "duration_ms": entry.duration_ms,
        "attempts": entry.attempts,
        "error_class": entry.error_class,
        "error_code": entry.error_code,
        "request_id": entry.request_id,
        "message": entry.message,
    }


@main.command("events", context_settings=KEY_ARGS)
@config_option
@click.argument("app")
@click.argument("account")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def events(config_path: str | None, app: str, account: str, limit: int, as_json: bool) -> None:
    """The audit log of ACCOUNT: every refresh attempt, its outcome and error, newest first."""
    settings = _known(app, config_path)

    async def read(store: Store) -> tuple[Account | None, list[AuditEntry]]:
        return await store.get(app, account), list(await store.audit_log(app, account, limit=limit))

    found, entries = with_store(settings, read)
    if found is None:
        fail(f"unknown account {account!r} of app {app!r}", EXIT_UNAVAILABLE)
    rows = [audit_record(e) for e in entries]
    if as_json:
        echo_json({"app": app, "account": found.key, "items": rows})
        return
    for row in rows:
        error = f"  {row['error_class']} {row['error_code'] or ''} {row['message'] or ''}".rstrip()
        line = f"{row['at']}  {row['outcome']:<16} {row['attempts']} attempt(s) {row['duration_ms']} ms"
        click.echo(line + (error if row["error_class"] else ""))
    if not rows:
        click.echo(f"no events for {found.key} yet", err=True)


def _set_status(config_path: str | None, app: str, account: str, status: AccountStatus) -> None:
    settings = _known(app, config_path)

    async def run(store: Store) -> Account:
        # account.disabled goes to the integrator as from the API: stored with the change, sent by the daemon.
        event = await _events(store).disabled_event(app, account) if status == AccountStatus.DISABLED else None
        return await store.set_status(app, account, status, event=event)

    saved = with_store(settings, run)
    click.echo(f"{app} {saved.key}: {saved.status}")


def _events(store: Store) -> LifecycleEvents:
    from refresher.domain import SystemClock

    return LifecycleEvents(clock=SystemClock(), store=store)


@main.command("disable", context_settings=KEY_ARGS)
@config_option
@click.argument("app")
@click.argument("account")
@friendly_errors
def disable(config_path: str | None, app: str, account: str) -> None:
    """Stop refreshing ACCOUNT (its token is kept; `enable` resumes)."""
    _set_status(config_path, app, account, AccountStatus.DISABLED)


@main.command("enable", context_settings=KEY_ARGS)
@config_option
@click.argument("app")
@click.argument("account")
@friendly_errors
def enable(config_path: str | None, app: str, account: str) -> None:
    """Refresh ACCOUNT again."""
    _set_status(config_path, app, account, AccountStatus.ACTIVE)


@main.command("delete", context_settings=KEY_ARGS)
@config_option
@click.argument("app")
@click.argument("account")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@friendly_errors
def delete(config_path: str | None, app: str, account: str, yes: bool) -> None:
    """Forget ACCOUNT and its tokens (the seller must authorize again to bring it back)."""
    settings = _known(app, config_path)
    if not yes:
        click.confirm(f"delete {account} of {app} and its tokens?", abort=True, err=True)

    async def run(store: Store) -> bool:
        return await store.delete(app, account, event=await _events(store).deleted_event(app, account))

    if not with_store(settings, run):
        fail(f"unknown account {account!r} of app {app!r}", EXIT_UNAVAILABLE)
    click.echo(f"{app} {account}: deleted")


@main.command("restore", context_settings=KEY_ARGS)
@config_option
@click.argument("app")
@click.argument("account")
@click.option(
    "--version", "version", type=click.IntRange(1), default=None, help="Token version (default: the last one)."
)
@friendly_errors
def restore(config_path: str | None, app: str, account: str, version: int | None) -> None:
    """Make an earlier token set of ACCOUNT current again (see `refresher history`), e.g. after a
    refresh whose new tokens the platform never honoured."""
    settings = _known(app, config_path)

    async def run(store: Store) -> Account | None:
        wanted = version
        if wanted is None:
            entries = list(await store.history(app, account, limit=1))
            if not entries:
                return None
            wanted = entries[0].version
        return await store.restore(app, account, wanted)

    saved = with_store(settings, run)
    if saved is None:
        fail(f"account {account!r} of app {app!r} has no earlier token version", EXIT_UNAVAILABLE)
    click.echo(f"{app} {saved.key}: restored, now version {saved.version}")
