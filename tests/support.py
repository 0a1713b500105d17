"""Small helpers shared by the end-to-end tests: configs that point at a running sandbox, and throwaway
schemas and databases on the real PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import psycopg
import pytest
import yaml

from refresher import platforms
from refresher.config import AppSettings, Settings, parse_config
from refresher.daemon import Daemon
from refresher.domain import Clock, RefresherError
from refresher.logging import configure_logging
from refresher.store import SqlStore

PLATFORMS = ("shopee", "tiktok_shop", "lazada", "tiktok")

PG_URL = os.environ.get("REFRESHER_TEST_PG_URL") or "postgresql://postgres@127.0.0.1:5432/test"


def pg_unreachable() -> str | None:
    """Why the test PostgreSQL cannot be used, or ``None``."""
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_URL} cannot be reached ({type(exc).__name__}); set REFRESHER_TEST_PG_URL"


def with_search_path(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def pg_schema(prefix: str = "refresher_test") -> Iterator[str]:
    """A fresh schema in the test database (skips the test without PostgreSQL); yields a store URL whose
    tables live only there, and drops the schema after."""
    reason = pg_unreachable()
    if reason:
        pytest.skip(reason)
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(PG_URL, schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.contextmanager
def pg_database(prefix: str = "refresher_db") -> Iterator[str]:
    """A database of its own (for several processes or engines; skips without PostgreSQL), dropped after."""
    reason = pg_unreachable()
    if reason:
        pytest.skip(reason)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# One business-API call per platform that the sandbox answers only with a valid signature and token.
ECHO_CALLS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "shopee": ("/api/v2/shop/get_shop_info", []),
    "tiktok_shop": ("/authorization/202309/shops", []),
    "lazada": ("/seller/get", []),
    "tiktok": ("/v2/user/info/", [("fields", "open_id,union_id,avatar_url,display_name")]),
}


Fake = TypeVar("Fake")


@contextlib.asynccontextmanager
async def store_or_fake(url: str | None, clock: Clock, fake: Callable[[], Fake]) -> AsyncIterator[Fake | SqlStore]:
    """For a role's contract test over the ``role_url`` fixture: the in-memory stand-in ``fake()`` when
    ``url`` is ``None``, otherwise the real store on ``url``, migrated, open, and closed afterwards."""
    if url is None:
        yield fake()
        return
    store = SqlStore(url, clock=clock)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def settings_for(sandbox: Any, apps: dict[str, str] | None = None, **top: Any) -> Settings:
    """Settings with one app per platform (named like the platform) pointing at ``sandbox``."""
    chosen = apps or {p: p for p in PLATFORMS}
    document: dict[str, Any] = {"apps": {}}
    for name, platform in chosen.items():
        document["apps"][name] = {**sandbox.app_config(platform), "timeout": "2s"}
    for key, value in top.items():
        if key == "app_overrides":
            for name in document["apps"]:
                document["apps"][name].update(value)
        else:
            document[key] = value
    return parse_config(yaml.safe_dump(document), file="test.yaml", credential_models=platforms.credential_models())


async def consent_and_store(daemon: Any, sandbox: Any, app: str, **options: str) -> list[Any]:
    """A seller approves ``app`` on the sandbox's consent page (with the approve link's ``options``);
    every account the grant covers is stored, as the daemon's callback would store it."""
    plugin = daemon.platforms[app]
    pkce = plugin.pkce_pair()
    params = await sandbox.approve(plugin.authorize_url("test-state", plugin.app.redirect_uri, pkce), **options)
    return [
        await daemon.store.upsert_grant(app, plugin.app.platform, grant)
        for grant in await plugin.exchange_code(params, pkce, plugin.app.redirect_uri)
    ]


@contextlib.asynccontextmanager
async def started_daemon(document: dict[str, Any], clock: Clock, file: str = "test.yaml") -> AsyncIterator[Daemon]:
    """A daemon started on the config ``document`` (without its scheduler: the test drives the ticks),
    stopped on the way out."""
    settings = parse_config(yaml.safe_dump(document), file=file, credential_models=platforms.credential_models())
    configure_logging(settings.logging)
    daemon = Daemon(settings, clock=clock)
    await daemon.start(schedule=False)
    try:
        yield daemon
    finally:
        await daemon.stop(grace=5)


def app_for(sandbox: Any, platform: str, **overrides: Any) -> AppSettings:
    settings = (
        settings_for(sandbox, {platform: platform}, app_overrides=overrides)
        if overrides
        else settings_for(sandbox, {platform: platform})
    )
    return settings.apps[platform]


def error_texts(error: BaseException) -> list[str]:
    """Every text an error offers to a log or a user: str, repr and, for ours, the stored summary."""
    texts = [str(error), repr(error)]
    if isinstance(error, RefresherError):
        texts.append(repr(error.info()))
    return texts


def assert_no_secret(texts: Iterable[str], secrets: Iterable[str], where: str) -> None:
    """Fail when a secret appears in a text, without echoing it: a failing run's output must not leak it.

    (A bare ``assert secret not in text`` would print both, through pytest's assertion rewriting.)
    """
    secrets = list(secrets)
    for text in texts:
        for secret in secrets:
            at = text.find(secret)
            if at >= 0:
                excerpt = text[max(at - 100, 0) : at + len(secret) + 100]
                for other in secrets:
                    if other:
                        excerpt = excerpt.replace(other, "<secret>")
                pytest.fail(f"a secret leaked into {where}: …{excerpt!r}…")


class Answering:
    """A real HTTP server in a thread answering every POST with ``status`` (a webhook that accepts or
    refuses); counts the requests it took."""

    def __init__(self, status: int) -> None:
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.hits += 1
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
