"""Store commands: ``migrate``, ``rotate-key``, ``accounts export`` and ``accounts import``."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

# commands_tokens defines the "accounts" group; export and import join it.
from refresher.cli.commands_tokens import accounts
from refresher.cli.common import config_option, fail, friendly_errors, load_settings, main, with_store
from refresher.config import Settings
from refresher.domain import AccountStatus, Identity, TokenSet
from refresher.store.roles import Store

T = TypeVar("T")

EXPORT_FORMAT = "refresher.accounts/v1"


@main.command("migrate")
@config_option
@friendly_errors
def migrate(config_path: str | None) -> None:
    """Apply pending schema migrations to the token store (the daemon also does this on start)."""
    settings = load_settings(config_path)

    async def work(store: Store) -> tuple[str | None, str, str]:
        before, after = await store.migrate()
        return before, after, store.safe_url

    before, after, store_url = with_store(settings, work, migrate=False, create=True)
    if before == after:
        click.echo(f"{store_url}: schema already at revision {after}")
    else:
        click.echo(f"{store_url}: schema migrated from {before or 'empty'} to revision {after}")


@main.command("rotate-key")
@config_option
@friendly_errors
def rotate_key(config_path: str | None) -> None:
    """Re-encrypt every stored token under the first of store.encryption_keys.

    Put the new key first and keep the old ones after it until this has run on the store.
    """
    settings = load_settings(config_path)
    if not settings.store.encryption_keys:
        fail("store.encryption_keys is empty: add the new key first (keep the old ones after it)")

    async def work(store: Store) -> int:
        return await store.rotate_keys()

    count = with_store(settings, work)
    click.echo(f"re-encrypted {count} stored value set(s) under the first key")


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@accounts.command("export")
@config_option
@click.option("--app", "app", default=None, help="Only this app's accounts.")
@click.option(
    "-o", "--output", "output", required=True, metavar="FILE", help="Where to write (- for stdout). Holds tokens."
)
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True)
@friendly_errors
def export_accounts(config_path: str | None, app: str | None, output: str, fmt: str) -> None:
    """Write the current accounts and tokens as JSON (for tools that read a token file)."""
    settings = load_settings(config_path)

    async def work(store: Store) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = await store.list(app=app, limit=500, offset=offset)
            for a in page:
                t = a.tokens
                rows.append(
                    {
                        "app": a.app,
                        "platform": a.platform,
                        "key": a.key,
                        "kind": a.identity.kind,
                        "platform_id": a.identity.platform_id,
                        "name": a.identity.name,
                        "region": a.identity.region,
                        "extra": dict(a.identity.extra),
                        "status": str(a.status),
                        "access_token": t.access_token if t else None,
                        "refresh_token": t.refresh_token if t else None,
                        "access_expires_at": _iso(t.access_expires_at) if t else None,
                        "refresh_expires_at": _iso(t.refresh_expires_at) if t else None,
                        "scopes": list(t.scopes) if t else [],
                    }
                )
            if len(page) < 500:
                return rows
            offset += 500

    rows = with_store(settings, work)
    text = json.dumps({"format": EXPORT_FORMAT, "accounts": rows}, indent=2, ensure_ascii=False) + "\n"
    if output == "-":
        sys.stdout.write(text)
    else:
        # The file holds live tokens: create it readable by its owner only, before writing a byte.
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            fail(f"{output}: cannot write ({exc.strerror})", 1)
        click.echo(f"exported {len(rows)} account(s) to {output}", err=True)


def _parse_time(entry: Mapping[str, Any], field: str, where: str, *, required: bool) -> dt.datetime | None:
    value = entry.get(field)
    if value is None:
        if required:
            raise ValueError(f"{where}: missing {field!r}")
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value, dt.UTC)
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{where}: {field} is not an ISO 8601 time or epoch seconds") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{where}: {field} has no time zone (add Z or +00:00)")
    return parsed.astimezone(dt.UTC)


def _text(entry: Mapping[str, Any], field: str, where: str) -> str:
    value = entry.get(field)
    if not isinstance(value, str) or not value:
        # Never echo the value: it may be a token.
        raise ValueError(f"{where}: {field!r} must be a non-empty string")
    return value


def parse_import(data: Any, settings: Settings, file: str) -> list[tuple[str, str, Identity, TokenSet, AccountStatus]]:
    """Validate an import document; raises ValueError with one line naming the file and entry."""
    entries = data.get("accounts") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{file}: expected a list of accounts (or {{'accounts': [...]}})")
    parsed = []
    for index, entry in enumerate(entries, start=1):
        where = f"{file}: account {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping")
        app = _text(entry, "app", where)
        known = settings.apps.get(app)
        platform = entry.get("platform") or (known.platform if known else None)
        if not isinstance(platform, str) or not platform:
            raise ValueError(f"{where}: 'platform' is missing and app {app!r} is not in the config")
        if known is not None and known.platform != platform:
            raise ValueError(f"{where}: platform {platform!r} differs from app {app!r} ({known.platform})")
        key = _text(entry, "key", where)
        status_text = entry.get("status", "active")
        try:
            status = AccountStatus(status_text)
        except ValueError:
            raise ValueError(f"{where}: status must be one of {', '.join(s.value for s in AccountStatus)}") from None
        access_expires = _parse_time(entry, "access_expires_at", where, required=True)
        assert access_expires is not None
        identity = Identity(
            key=key,
            kind=str(entry.get("kind") or (key.split(":", 1)[0] if ":" in key else "account")),
            platform_id=str(entry.get("platform_id") or key.split(":")[-1]),
            name=entry.get("name"),
            region=entry.get("region"),
            extra=dict(entry.get("extra") or {}),
        )
        tokens = TokenSet(
            access_token=_text(entry, "access_token", where),
            refresh_token=_text(entry, "refresh_token", where),
            access_expires_at=access_expires,
            refresh_expires_at=_parse_time(entry, "refresh_expires_at", where, required=False),
            scopes=tuple(str(s) for s in entry.get("scopes") or ()),
        )
        parsed.append((app, platform, identity, tokens, status))
    return parsed


@accounts.command("import")
@config_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@friendly_errors
def import_accounts(config_path: str | None, file: Path) -> None:
    """Bring accounts with existing tokens in (e.g. from another tool, or an ``accounts export`` file).

    An account that exists already (same app and key) is updated in place; its old tokens go to history.
    """
    settings = load_settings(config_path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"{file}: no such file")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{file}: cannot read ({getattr(exc, 'strerror', None) or 'not UTF-8 text'})")
    except json.JSONDecodeError as exc:
        fail(f"{file}:{exc.lineno}: invalid JSON ({exc.msg})")
    try:
        entries = parse_import(data, settings, str(file))
    except ValueError as exc:
        fail(str(exc))

    async def work(store: Store) -> int:
        for app, platform, identity, tokens, status in entries:
            await store.import_account(app, platform, identity, tokens, status)
        return len(entries)

    count = with_store(settings, work, create=True)
    click.echo(f"imported {count} account(s) from {file}")
