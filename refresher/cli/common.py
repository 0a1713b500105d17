"""Shared CLI plumbing: the root group, config loading and the one-line error policy."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from refresher import platforms
from refresher.config import ConfigFileError, LoggingSettings, Settings, load_config

if TYPE_CHECKING:
    from refresher.store.roles import Store

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

EXIT_USAGE = 2


def default_config_path() -> str:
    return os.environ.get("REFRESHER_CONFIG") or "refresher.yaml"


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line to stderr and exit without a traceback."""
    click.echo(f"refresher: {message}", err=True)
    sys.exit(code)


def load_settings(path: str | None) -> Settings:
    """Load and validate the config; every problem is one line, then exit 2."""
    file = Path(path or default_config_path())
    if path is None and not file.exists():
        fail(
            f"{file}: no such file (pass -c FILE or set REFRESHER_CONFIG; "
            "`refresher demo` runs on built-in defaults without one)"
        )
    try:
        return load_config(
            file, credential_models=platforms.credential_models(), access_lifetimes=platforms.access_lifetimes()
        )
    except ConfigFileError as exc:
        for problem in exc.problems:
            click.echo(f"refresher: {problem}", err=True)
        sys.exit(EXIT_USAGE)


def with_store(
    settings: Settings, work: Callable[[Store], Awaitable[T]], *, migrate: bool = True, create: bool = False
) -> T:
    """Run ``work`` on the config's store (opened, so migrated, unless ``migrate`` is false), closed after.

    Only a command that is meant to create the store passes ``create``: for the others a SQLite file that
    does not exist is a mistyped path (one line, exit 2), not a new empty store."""
    from refresher.domain import SystemClock
    from refresher.store import open_store

    async def run() -> T:
        store = open_store(settings.store, SystemClock(), create=create)
        try:
            if migrate:
                await store.open()
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def log_to_terminal(settings: Settings) -> None:
    """Logs for a person at a terminal: redacted, on stderr (stdout carries what scripts read), and only
    from warnings up, unless the config asks for debug."""
    from refresher.logging import configure_logging

    level = "debug" if settings.logging.level == "debug" else "warning"
    configure_logging(LoggingSettings(level=level, format="console"), secrets=settings.secrets())


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    metavar="FILE",
    default=None,
    help="Config file (default: $REFRESHER_CONFIG, then ./refresher.yaml).",
)


def friendly_errors(func: F) -> F:
    """Turn expected failures into one-line messages; a KeyboardInterrupt exits 130 quietly."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from refresher.domain import RefresherError, UnknownApp
        from refresher.store.base import AccountNotFound, StoreError

        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("refresher: interrupted", err=True)
            sys.exit(130)
        except (UnknownApp, AccountNotFound) as exc:  # a mistyped app or account name: exit 2
            fail(exc.message)
        except (ConfigFileError, StoreError):
            raise  # the operator's settings: the group says it in one line, exit 2
        except RefresherError as exc:
            fail(f"{exc.error_class}: {exc}", 1)

    return wrapper  # type: ignore[return-value]


class _Main(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        # Click prints usage errors itself with exit code 2; keep that, but make sure nothing else
        # escapes as a traceback without at least one clear line.
        try:
            return super().main(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - last resort: one line for the user, never a traceback
            from refresher.config import ConfigFileError as _CFE

            if isinstance(exc, _CFE):
                fail(str(exc).splitlines()[0])
            from refresher.store.base import StoreError

            if isinstance(exc, StoreError):
                # An unreachable or unwritable store is the operator's setting to fix, like a bad config:
                # one line, exit 2 (StoreError messages name the driver error, never the URL's password).
                fail(str(exc).splitlines()[0] if str(exc) else f"store: {type(exc).__name__}")
            fail(f"unexpected error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 1)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="refresher", prog_name="refresher")
def main() -> None:
    """refresher keeps the OAuth tokens of e-commerce platforms alive."""
