"""The token API (issue 6) against a real running daemon, a real SQLite file and the sandbox platform.

The fixtures here (``api_env``) are shared with test_proxy.py, test_client.py and test_schemathesis.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import structlog
import yaml

from refresher import platforms
from refresher.config import LoggingSettings, Settings, parse_config
from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.logging import configure_logging
from refresher.redaction import forget_secrets
from refresher.sandbox import SANDBOX_CREDENTIALS, SandboxServer
from refresher.store.base import Account
from tests.support import assert_no_secret

# Every API token the daemon knows, by name: (secret, scopes). Secrets are ≥ 16 characters (config rule).
TOKENS: dict[str, tuple[str, list[str]]] = {
    "reader": ("reader-secret-4f1c9a7e2b", ["tokens:read", "accounts:read"]),
    "full": ("full-secret-88aa77bb66cc", ["tokens:read", "tokens:read_refresh", "accounts:read"]),
    "writer": ("writer-secret-0d9e8f7a6b", ["accounts:write"]),
    "refresher": ("refresher-secret-13579bd", ["refresh"]),
    "proxy": ("proxy-secret-2468ace0ff11", ["proxy"]),
}
ADMIN_SECRET = "admin-secret-a1b2c3d4e5f6a7b8"
APP = "shopee-sg"


def api_secrets() -> list[str]:
    return [ADMIN_SECRET, *(secret for secret, _ in TOKENS.values())]


def app_secrets() -> list[str]:
    """The secret halves of every sandbox app (partner_id / app_key / client_key are public ids)."""
    secret_keys = ("partner_key", "app_secret", "client_secret")
    return [str(v) for creds in SANDBOX_CREDENTIALS.values() for k, v in creds.items() if k in secret_keys]


ALL_PLATFORMS = ("shopee", "tiktok_shop", "lazada", "tiktok")


def build_settings(sandbox: SandboxServer, db: Path, apps: tuple[str, ...] = ALL_PLATFORMS) -> Settings:
    available = platforms.available()
    config: dict[str, Any] = {
        "store": {"url": f"sqlite:///{db}"},
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "admin_token": ADMIN_SECRET,
            "api_tokens": [{"name": n, "secret": s, "scopes": sc} for n, (s, sc) in TOKENS.items()],
        },
        "logging": {"level": "info", "format": "json"},
        "apps": {},
    }
    names = {"shopee": APP, "tiktok_shop": "tts-us", "lazada": "lazada-sg", "tiktok": "tiktok-login"}
    for platform in apps:
        if platform in available:
            config["apps"][names[platform]] = sandbox.app_config(platform)
    return parse_config(yaml.safe_dump(config), credential_models=platforms.credential_models())


@dataclass
class ApiEnv:
    """A running daemon with its sandbox, its clock and an HTTP client pointed at it."""

    daemon: Daemon
    sandbox: SandboxServer
    clock: FakeClock
    settings: Settings
    http: httpx.AsyncClient
    read_logs: Callable[[], list[dict[str, Any]]]
    responses: list[httpx.Response] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    @staticmethod
    def auth(who: str) -> dict[str, str]:
        secret = ADMIN_SECRET if who == "admin" else TOKENS[who][0]
        return {"Authorization": f"Bearer {secret}"}

    async def call(self, method: str, path: str, who: str | None = "admin", **kw: Any) -> httpx.Response:
        headers = {**(self.auth(who) if who else {}), **kw.pop("headers", {})}
        response = await self.http.request(method, self.base + path, headers=headers, **kw)
        self.responses.append(response)
        return response

    async def onboard(self, app: str = APP, **options: str) -> list[Account]:
        """Authorize accounts the way a seller would: consent URL → sandbox approve → code exchange → store."""
        platform = self.daemon.platforms[app]
        pkce = platform.pkce_pair()
        url = platform.authorize_url("state-123", platform.app.redirect_uri, pkce)
        params = await self.sandbox.approve(url, **options)
        grants = await platform.exchange_code(params, pkce, platform.app.redirect_uri)
        return [await self.daemon.store.upsert_grant(app, platform.name, g) for g in grants]

    async def counters(self) -> dict[str, int]:
        answer = await self.http.get(f"{self.sandbox.url}/_sandbox/counters")
        data: dict[str, int] = answer.json()
        return data


@contextlib.contextmanager
def capture_json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """JSON log lines written so far (the daemon's real logging pipeline, captured from stderr)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging(LoggingSettings(level="info", format="json"))
    seen: list[dict[str, Any]] = []

    def read() -> list[dict[str, Any]]:
        for line in capsys.readouterr().err.splitlines():
            line = line.strip()
            if line.startswith("{"):
                seen.append(json.loads(line))
        return list(seen)

    try:
        yield read
    finally:
        structlog.reset_defaults()
        forget_secrets()
        root.handlers[:] = saved[0]  # later tests (and CLI runs) see logging as it was
        root.setLevel(saved[1])


@contextlib.asynccontextmanager
async def running_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[ApiEnv]:
    """Sandbox + daemon (SQLite in ``tmp_path``, port 0) + an HTTP client; shared by the API test modules."""
    with capture_json_logs(capsys) as read_logs:
        clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        async with SandboxServer(clock=clock) as sandbox:
            settings = build_settings(sandbox, tmp_path / "tokens.db")
            daemon = Daemon(settings, clock=clock)
            await daemon.start()
            try:
                async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
                    yield ApiEnv(daemon, sandbox, clock, settings, http, read_logs)
            finally:
                await daemon.stop(grace=5)


@pytest.fixture
async def api_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[ApiEnv]:
    async with running_api(tmp_path, capsys) as env:
        yield env


# --------------------------------------------------------------------------------------- the routes

ACCOUNT = "/v1/accounts/{app}/{key}"
# (method, path template, scope it needs, a token lacking that scope)
ROUTES = [
    ("GET", "/v1/apps", "accounts:read", "writer"),
    ("GET", "/v1/accounts?app={app}", "accounts:read", "writer"),
    ("GET", ACCOUNT, "accounts:read", "proxy"),
    ("GET", ACCOUNT + "/token", "tokens:read", "writer"),
    ("POST", ACCOUNT + "/refresh", "refresh", "reader"),
    ("POST", ACCOUNT + "/disable", "accounts:write", "reader"),
    ("POST", ACCOUNT + "/enable", "accounts:write", "full"),
    ("DELETE", ACCOUNT, "accounts:write", "refresher"),
    ("GET", ACCOUNT + "/history", "accounts:read", "writer"),
]
ROUTE_IDS = [f"{m} {p.split('?')[0]}" for m, p, _, _ in ROUTES]


@pytest.mark.parametrize(("method", "template", "scope", "lacking"), ROUTES, ids=ROUTE_IDS)
async def test_every_route_refuses_missing_wrong_and_underprivileged_tokens(
    api_env: ApiEnv, method: str, template: str, scope: str, lacking: str
) -> None:
    (account,) = await api_env.onboard()
    path = template.format(app=APP, key=account.key)

    missing = await api_env.call(method, path, who=None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].lower().startswith("bearer")
    assert "bearer token" in missing.json()["detail"]

    wrong = await api_env.call(method, path, who=None, headers={"Authorization": "Bearer not-a-real-token-123456"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].lower().startswith("bearer")

    basic = await api_env.call(method, path, who=None, headers={"Authorization": f"Basic {ADMIN_SECRET}"})
    assert basic.status_code == 401

    # A secret that is a prefix of a real one must not pass (no partial or length-based match).
    prefix = await api_env.call(method, path, who=None, headers={"Authorization": f"Bearer {ADMIN_SECRET[:-1]}"})
    assert prefix.status_code == 401

    forbidden = await api_env.call(method, path, who=lacking)
    assert forbidden.status_code == 403
    assert scope in forbidden.json()["detail"]
    assert lacking in forbidden.json()["detail"]

    # Nothing was changed by the refused calls.
    still = await api_env.daemon.store.get(APP, account.key)
    assert still is not None and still.status == account.status and still.version == account.version


@pytest.mark.parametrize(
    ("method", "template", "who"),
    [(m, p, "admin") for m, p, _, _ in ROUTES if "{key}" in p],
    ids=[i for i, (_, p, _, _) in zip(ROUTE_IDS, ROUTES, strict=True) if "{key}" in p],
)
async def test_every_account_route_answers_404_for_unknown_app_and_account(
    api_env: ApiEnv, method: str, template: str, who: str
) -> None:
    (account,) = await api_env.onboard()
    unknown_app = await api_env.call(method, template.format(app="no-such-app", key=account.key), who)
    assert unknown_app.status_code == 404
    assert unknown_app.json() == {"detail": "unknown app 'no-such-app'"}
    unknown_key = await api_env.call(method, template.format(app=APP, key="shop:999"), who)
    assert unknown_key.status_code == 404
    assert unknown_key.json() == {"detail": f"unknown account 'shop:999' of app '{APP}'"}


async def test_apps_lists_configured_apps_with_counts_per_status(api_env: ApiEnv) -> None:
    await api_env.onboard(**{"as": "main", "shops": "2", "merchants": "1"})
    accounts = await api_env.daemon.store.list(app=APP)
    await api_env.daemon.store.set_status(APP, accounts[0].key, "disabled")  # type: ignore[arg-type]

    answer = await api_env.call("GET", "/v1/apps", "reader")
    assert answer.status_code == 200
    apps = {item["name"]: item for item in answer.json()["items"]}
    assert set(apps) == set(api_env.settings.apps)
    assert apps[APP] == {
        "name": APP,
        "platform": "shopee",
        "enabled": True,
        "accounts": {"active": 2, "needs_reauth": 0, "disabled": 1},
        "total": 3,
    }


async def test_accounts_filter_and_page_without_tokens(api_env: ApiEnv) -> None:
    granted = await api_env.onboard(**{"as": "main", "shops": "3", "merchants": "1"})
    assert len(granted) == 4
    await api_env.daemon.store.set_status(APP, granted[0].key, "disabled")  # type: ignore[arg-type]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"app": APP, "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await api_env.call("GET", "/v1/accounts", "reader", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [item["key"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 2
    assert sorted(seen) == sorted(a.key for a in granted)

    active = (await api_env.call("GET", "/v1/accounts", "reader", params={"status": "active"})).json()
    assert {i["key"] for i in active["items"]} == {a.key for a in granted[1:]}
    item = active["items"][0]
    assert item["identity"]["kind"] in ("shop", "merchant")
    assert item["access_expires_at"].endswith(("Z", "+00:00"))
    tokens = [a.tokens for a in granted if a.tokens]
    text = json.dumps(active)
    for t in tokens:
        assert t.access_token not in text and t.refresh_token not in text


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"status": "sleeping"}, "status"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
        ({"cursor": "-1"}, "cursor"),
    ],
)
async def test_bad_list_parameters_are_422_naming_the_parameter(
    api_env: ApiEnv, params: dict[str, str], name: str
) -> None:
    answer = await api_env.call("GET", "/v1/accounts", "reader", params=params)
    assert answer.status_code == 422
    (problem,) = answer.json()["detail"]
    assert problem["loc"] == ["query", name]
    assert problem["msg"]


async def test_unknown_app_filter_is_404(api_env: ApiEnv) -> None:
    answer = await api_env.call("GET", "/v1/accounts", "reader", params={"app": "nope"})
    assert answer.status_code == 404
    assert answer.json() == {"detail": "unknown app 'nope'"}


async def test_account_by_key_plain_and_url_encoded(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    assert ":" in account.key
    plain = await api_env.call("GET", f"/v1/accounts/{APP}/{account.key}", "reader")
    encoded = await api_env.call("GET", f"/v1/accounts/{APP}/{quote(account.key, safe='')}", "reader")
    assert plain.status_code == encoded.status_code == 200
    assert plain.json() == encoded.json()
    body = plain.json()
    assert body["key"] == account.key and body["app"] == APP and body["status"] == "active"
    assert body["identity"]["platform_id"] == account.identity.platform_id
    assert body["version"] == account.version
    assert "access_token" not in plain.text and account.tokens is not None
    assert account.tokens.access_token not in plain.text


@pytest.mark.parametrize(
    ("method", "template"),
    [(m, p) for m, p, _, _ in ROUTES if "{key}" in p],
    ids=[i for i, (_, p, _, _) in zip(ROUTE_IDS, ROUTES, strict=True) if "{key}" in p],
)
async def test_every_account_route_answers_422_naming_a_bad_path_parameter(
    api_env: ApiEnv, method: str, template: str
) -> None:
    overlong = await api_env.call(method, template.format(app=APP, key="x" * 300), "admin")
    assert overlong.status_code == 422
    assert [e["loc"] for e in overlong.json()["detail"]] == [["path", "key"]]
    assert "x" * 300 not in overlong.text  # the input is not echoed back
    bad_app = await api_env.call(method, template.format(app="a" * 64, key="shop:1"), "admin")
    assert bad_app.status_code == 422
    assert [e["loc"] for e in bad_app.json()["detail"]] == [["path", "app"]]


async def test_token_read_and_refresh_token_only_with_its_scope(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    assert account.tokens is not None
    path = f"/v1/accounts/{APP}/{quote(account.key, safe='')}/token"

    answer = await api_env.call("GET", path, "reader")
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["access_token"] == account.tokens.access_token
    assert body["refresh_token"] is None
    assert dt.datetime.fromisoformat(body["access_expires_at"]) == account.tokens.access_expires_at
    assert body["identity"]["key"] == account.key
    assert account.tokens.refresh_token not in answer.text

    denied = await api_env.call("GET", path, "reader", params={"include_refresh": "true"})
    assert denied.status_code == 403
    assert "tokens:read_refresh" in denied.json()["detail"]
    assert account.tokens.refresh_token not in denied.text

    full = await api_env.call("GET", path, "full", params={"include_refresh": "true"})
    assert full.status_code == 200
    assert full.json()["refresh_token"] == account.tokens.refresh_token
    assert full.headers["cache-control"] == "no-store"

    bad = await api_env.call("GET", path, "full", params={"include_refresh": "perhaps"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "include_refresh"]


async def test_forced_refresh_rotates_tokens_and_history_shows_versions_only(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    assert account.tokens is not None
    before = await api_env.counters()
    path = f"/v1/accounts/{APP}/{account.key}"

    answer = await api_env.call("POST", path + "/refresh", "refresher")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["outcome"] == "success"
    assert body["account"]["version"] == account.version + 1
    after = await api_env.counters()
    refreshed = {k: after.get(k, 0) - before.get(k, 0) for k in after if "refresh" in k}
    assert sum(refreshed.values()) == 1, refreshed

    stored = await api_env.daemon.store.get(APP, account.key)
    assert stored is not None and stored.tokens is not None
    assert stored.tokens.access_token != account.tokens.access_token
    for secret in (stored.tokens.access_token, stored.tokens.refresh_token, account.tokens.refresh_token):
        assert secret not in answer.text

    history = await api_env.call("GET", path + "/history", "reader")
    assert history.status_code == 200
    data = history.json()
    assert data["current_version"] == account.version + 1
    assert [item["version"] for item in data["items"]] == [account.version]
    assert set(data["items"][0]) == {"version", "access_expires_at", "refresh_expires_at", "replaced_at"}
    assert account.tokens.access_token not in history.text and account.tokens.refresh_token not in history.text

    bad = await api_env.call("GET", path + "/history", "reader", params={"limit": "-1"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_refresh_refused_by_platform_is_502_with_the_error(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    revoked = await api_env.http.post(
        f"{api_env.sandbox.url}/_sandbox/revoke",
        json={"platform": "shopee", "subject_id": account.identity.platform_id},
    )
    assert revoked.status_code == 200, revoked.text
    answer = await api_env.call("POST", f"/v1/accounts/{APP}/{account.key}/refresh", "admin")
    assert answer.status_code == 502, answer.text
    body = answer.json()
    assert body["outcome"] == "failure"
    assert body["error"]["error_class"] in ("reauth_required", "config_error")
    assert body["account"]["status"] == "needs_reauth"


async def test_disable_enable_delete(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    path = f"/v1/accounts/{APP}/{account.key}"

    disabled = await api_env.call("POST", path + "/disable", "writer")
    assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
    stored = await api_env.daemon.store.get(APP, account.key)
    assert stored is not None and stored.status == "disabled"

    # A disabled account is not refreshed on demand: 409, nothing sent to the platform.
    before = await api_env.counters()
    skipped = await api_env.call("POST", path + "/refresh", "admin")
    assert skipped.status_code == 409 and skipped.json()["outcome"] == "skipped"
    assert await api_env.counters() == before

    enabled = await api_env.call("POST", path + "/enable", "writer")
    assert enabled.status_code == 200 and enabled.json()["status"] == "active"

    deleted = await api_env.call("DELETE", path, "writer")
    assert deleted.status_code == 204 and deleted.content == b""
    assert await api_env.daemon.store.get(APP, account.key) is None
    again = await api_env.call("DELETE", path, "writer")
    assert again.status_code == 404


async def test_openapi_describes_the_routes_and_security(api_env: ApiEnv) -> None:
    answer = await api_env.http.get(api_env.base + "/openapi.json")
    assert answer.status_code == 200
    spec = answer.json()
    paths = spec["paths"]
    for path in (
        "/v1/apps",
        "/v1/accounts",
        "/v1/accounts/{app}/{key}",
        "/v1/accounts/{app}/{key}/token",
        "/v1/accounts/{app}/{key}/refresh",
        "/v1/accounts/{app}/{key}/history",
    ):
        assert path in paths, path
    token_op = paths["/v1/accounts/{app}/{key}/token"]["get"]
    assert {"200", "401", "403", "404", "422"} <= set(token_op["responses"])
    assert token_op["security"] == [{"HTTPBearer": []}]
    schema = spec["components"]["schemas"]["AccountOut"]["properties"]
    assert "access_token" not in schema and "refresh_token" not in schema
    assert not any(p.startswith("/proxy") for p in paths)


async def test_no_answer_or_log_line_carries_a_secret_the_caller_may_not_see(api_env: ApiEnv) -> None:
    granted = await api_env.onboard(**{"as": "main", "shops": "1", "merchants": "1"})
    key = granted[0].key
    path = f"/v1/accounts/{APP}/{key}"
    # Everything a tokens:read + accounts:read caller can do, successes and failures alike.
    await api_env.call("GET", "/v1/apps", "reader")
    await api_env.call("GET", "/v1/accounts", "reader")
    await api_env.call("GET", path, "reader")
    await api_env.call("GET", path + "/token", "reader")
    await api_env.call("GET", path + "/token", "reader", params={"include_refresh": "1"})
    await api_env.call("GET", path + "/history", "reader")
    await api_env.call("POST", path + "/refresh", "reader")
    await api_env.call("POST", path + "/refresh", "refresher")
    await api_env.call("GET", path, who=None, headers={"Authorization": f"Bearer {TOKENS['reader'][0]}x"})
    await api_env.call("GET", "/v1/accounts", "reader", params={"cursor": TOKENS["writer"][0]})

    current = [a for a in await api_env.daemon.store.list(app=APP)]
    refresh_tokens = [a.tokens.refresh_token for a in current if a.tokens] + [
        a.tokens.refresh_token for a in granted if a.tokens
    ]
    forbidden = [*refresh_tokens, *api_secrets(), *app_secrets()]
    assert len(forbidden) >= 8
    for response in api_env.responses:
        text = response.text + json.dumps(dict(response.headers))
        assert_no_secret([text], forbidden, f"{response.request.method} {response.request.url.path}")

    lines = api_env.read_logs()
    calls = [line for line in lines if line.get("event") == "api.call"]
    assert {line.get("caller") for line in calls} >= {"reader", "refresher"}
    denied = [line for line in lines if line.get("event") == "api.denied"]
    assert any(line.get("outcome") == "wrong_token" for line in denied)
    assert any(line.get("outcome") == "forbidden" and line.get("caller") == "reader" for line in denied)
    dump = json.dumps(lines)
    access_tokens = [a.tokens.access_token for a in current if a.tokens]
    for secret in [*forbidden, *access_tokens]:
        assert secret not in dump
    # The API's own lines never even needed redacting: they name the caller, not the secret.
    assert "***" not in json.dumps(calls + denied)
