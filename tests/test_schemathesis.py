"""schemathesis against /openapi.json of a running daemon (issue 6): no 5xx, every answer matches the schema.

The daemon (with the sandbox and one onboarded account) runs in its own thread and event loop, because
schemathesis' pytest integration drives synchronous hypothesis tests that call it over real HTTP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import schemathesis
from fastapi import FastAPI, Response
from hypothesis import HealthCheck, Phase, given, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error

from refresher.daemon import Daemon
from refresher.domain import FakeClock
from refresher.sandbox import SandboxServer
from tests.test_api import ADMIN_SECRET, APP, build_settings

AUTH = {"Authorization": f"Bearer {ADMIN_SECRET}"}
# Per operation; the whole module stays well under a minute on 2 cores. A deeper run (the issue-17 probe
# sent 15,000 cases) sets REFRESHER_SCHEMATHESIS_EXAMPLES, e.g. 1000.
MAX_EXAMPLES = int(os.environ.get("REFRESHER_SCHEMATHESIS_EXAMPLES", "15"))


class DaemonThread:
    """A daemon + sandbox in a background event loop, with one Shopee account onboarded."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.base = ""
        self.account_key = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="daemon-under-test", daemon=True)

    def start(self) -> DaemonThread:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the daemon did not start within 60 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test thread by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        clock = FakeClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        async with SandboxServer(clock=clock) as sandbox:
            settings = build_settings(sandbox, self.db)
            # A public URL and an invitation secret, so GET …/reauth-link can answer 200 as well as 409.
            server = settings.server.model_copy(
                update={"public_url": "https://tokens.example.com", "invite_secret": SecretStr("x" * 32)}
            )
            daemon = Daemon(settings.model_copy(update={"server": server}), clock=clock)
            await daemon.start()
            try:
                platform = daemon.platforms[APP]
                params = await sandbox.approve(platform.authorize_url("state-1", platform.app.redirect_uri))
                (grant,) = await platform.exchange_code(params, redirect_uri=platform.app.redirect_uri)
                account = await daemon.store.upsert_grant(APP, platform.name, grant)
                self.account_key = account.key
                self.base = f"http://127.0.0.1:{daemon.port}"
                self._ready.set()
                await self._stop.wait()
            finally:
                await daemon.stop(grace=5)


@pytest.fixture(scope="module")
def running_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    runner = DaemonThread(tmp_path_factory.mktemp("schemathesis") / "tokens.db").start()
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def api_schema(running_daemon: DaemonThread) -> Any:
    return schemathesis.openapi.from_url(f"{running_daemon.base}/openapi.json")


# Every operation of the token API; test_every_operation_is_covered keeps this list honest.
OPERATIONS = [
    ("GET", "/v1/apps"),
    ("GET", "/v1/accounts"),
    ("GET", "/v1/accounts/{app}/{key}"),
    ("DELETE", "/v1/accounts/{app}/{key}"),
    ("GET", "/v1/accounts/{app}/{key}/token"),
    ("POST", "/v1/accounts/{app}/{key}/refresh"),
    ("POST", "/v1/accounts/{app}/{key}/disable"),
    ("POST", "/v1/accounts/{app}/{key}/enable"),
    ("GET", "/v1/accounts/{app}/{key}/history"),
    ("GET", "/v1/accounts/{app}/{key}/events"),
    ("GET", "/v1/accounts/{app}/{key}/reauth-link"),
    ("POST", "/v1/connect-sessions"),
]


def all_operations(api_schema: Any) -> set[tuple[str, str]]:
    return {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}


def test_every_token_api_operation_is_covered(api_schema: Any) -> None:
    documented = {op for op in all_operations(api_schema) if op[1].startswith("/v1/")}
    assert documented == set(OPERATIONS)


def test_other_operations_match_their_schema(api_schema: Any) -> None:
    """The rest of the document (onboarding routes and whatever is added later), with fewer examples:
    no server error, and every status code they answer is documented."""
    others = sorted(all_operations(api_schema) - set(OPERATIONS))
    assert others, "no operation beyond the token API: this test would check nothing"
    for method, path in others:
        run_operation(api_schema, method, path, max(3, MAX_EXAMPLES // 3))


def test_onboarding_answers_are_documented(api_schema: Any, running_daemon: DaemonThread) -> None:
    """The answers fuzzing rarely reaches: a flow started with the admin token (302), an unknown app (404),
    a callback with no state or a forged one (400), an unauthenticated start (401), an invitation that
    does not open the door (403), a code the platform refuses to exchange (502)."""
    cases = [
        ("/connect/{app}", {"app": APP}, {}, AUTH, 302),
        ("/connect/{app}/continue", {"app": APP}, {}, AUTH, 302),
        ("/connect/{app}", {"app": "no-such-app"}, {}, AUTH, 404),
        ("/connect/{app}", {"app": APP}, {}, {}, 401),
        ("/connect/{app}", {"app": APP}, {"invite": "1a.forged"}, {}, 403),
        ("/connect/{app}", {"app": APP}, {"return_to": "https://evil.example/"}, AUTH, 400),
        ("/callback/{app}", {"app": APP}, {}, {}, 400),
        ("/callback/{app}", {"app": APP}, {"state": "forged", "code": "x"}, {}, 400),
        ("/callback/{app}", {"app": "no-such-app"}, {"state": "s", "code": "x"}, {}, 404),
    ]
    for path, path_parameters, query, headers, status in cases:
        operation = api_schema[path]["GET"]
        case = operation.Case(path_parameters=path_parameters, query=query)
        response = case.call(headers=headers, allow_redirects=False) if hasattr(case, "call") else None
        assert response is not None and response.status_code == status, (path, query, response.status_code)
        case.validate_response(response)  # the status is documented, and so is the body's type

    # A live state with a code the platform will not exchange: 502, documented like the rest.
    with httpx.Client(base_url=running_daemon.base) as client:
        start = client.get(f"/connect/{APP}", headers=AUTH)
    assert start.status_code == 302, start.text
    # Shopee carries the state inside the redirect URL it is given (it has no state parameter of its own).
    redirect = dict(parse_qsl(urlsplit(start.headers["location"]).query))["redirect"]
    state = dict(parse_qsl(urlsplit(redirect).query))["state"]
    operation = api_schema["/callback/{app}"]["GET"]
    case = operation.Case(path_parameters={"app": APP}, query={"state": state, "code": "not-a-code", "shop_id": "1"})
    response = case.call(allow_redirects=False)
    assert response.status_code == 502, response.text
    # Documented (status and body); schemathesis counts every 5xx as a server error, so that one check is
    # left out for this deliberate answer only. Fuzzing never reaches it: it needs a live state.
    case.validate_response(response, excluded_checks=[not_a_server_error])


def test_a_method_not_allowed_lists_every_method_of_the_path(api_schema: Any, running_daemon: DaemonThread) -> None:
    """405 names every method the path has (a path served by two routes, GET and DELETE, said only GET)."""
    by_path: dict[str, set[str]] = {}
    for method, path in all_operations(api_schema):
        by_path.setdefault(path, set()).add(method)
    with httpx.Client(base_url=running_daemon.base) as client:
        for path, methods in sorted(by_path.items()):
            unused = next(m for m in ("PATCH", "PUT", "POST", "DELETE") if m not in methods)
            concrete = path.replace("{app}", APP).replace("{key}", running_daemon.account_key)
            answer = client.request(unused, concrete, headers=AUTH)
            assert answer.status_code == 405, (unused, path, answer.status_code)
            allowed = {m.strip() for m in answer.headers["allow"].split(",")} - {"HEAD"}
            assert allowed == methods, (path, answer.headers["allow"], answer.text, concrete)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_matches_its_schema(api_schema: Any, running_daemon: DaemonThread, method: str, path: str) -> None:
    run_operation(api_schema, method, path, MAX_EXAMPLES)
    # The known account is reachable with the documented key format (':' in the path).
    if "{key}" in path and method == "GET":
        operation = api_schema[path][method]
        known = operation.Case(path_parameters={"app": APP, "key": running_daemon.account_key})
        assert known.call_and_validate(headers=AUTH).status_code == 200


def run_operation(api_schema: Any, method: str, path: str, examples: int, excluded: list[Any] | None = None) -> None:
    operation = api_schema[path][method]
    # (schemathesis' pytest plugin cannot load a schema from a fixture under this pytest; hypothesis can.)

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
        case.call_and_validate(headers=AUTH, excluded_checks=excluded)

    check()


def test_the_harness_fails_on_an_undocumented_code_and_on_a_server_error() -> None:
    """run_operation's checks (schemathesis' defaults) are the ones this module relies on: a 418 the
    schema does not name and a 500 both fail it, a documented answer passes."""
    app = FastAPI()

    @app.get("/teapot")
    def teapot() -> dict[str, str]:
        return Response(status_code=418)  # type: ignore[return-value]

    @app.get("/boom")
    def boom() -> dict[str, str]:
        return Response(status_code=500)  # type: ignore[return-value]

    @app.get("/fine")
    def fine() -> dict[str, str]:
        return {"ok": "yes"}

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    for path, code in (("/teapot", "Undocumented status code"), ("/boom", "Server error")):
        with pytest.raises(BaseException) as failed:  # a FailureGroup of what failed
            run_operation(schema, "GET", path, 3)
        assert code in str(failed.value), (path, str(failed.value)[:500])
    run_operation(schema, "GET", "/fine", 3)
