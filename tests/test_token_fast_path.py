"""The token read's fast path (refresher/server/token_route.py) answers exactly as the FastAPI route does.

The fast path takes ``include_refresh=true``/``false``; FastAPI also reads ``yes``/``no``, which the fast
path leaves to it. So each case is asked twice, once per spelling, against a real daemon over a socket,
and the two answers must be the same: status, body and the headers that matter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from refresher.server.token_route import fast_path_target
from tests.test_api import APP, ApiEnv, running_api

# (the fast path's spelling, FastAPI's spelling) of the same query
SPELLINGS = [
    ({"include_refresh": "false"}, {"include_refresh": "no"}),
    ({"include_refresh": "true"}, {"include_refresh": "yes"}),
]


async def _both(env: ApiEnv, path: str, who: str | None, headers: dict[str, str] | None = None) -> None:
    for fast_query, slow_query in SPELLINGS:
        fast = await env.call("GET", path, who, params=fast_query, headers=headers or {})
        slow = await env.call("GET", path, who, params=slow_query, headers=headers or {})
        assert (fast.status_code, fast.json()) == (slow.status_code, slow.json()), (path, who, fast_query)
        for header in ("content-type", "cache-control", "pragma", "www-authenticate"):
            assert fast.headers.get(header) == slow.headers.get(header), (header, path, who)


@pytest.fixture
async def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[ApiEnv]:
    async with running_api(tmp_path, capsys) as running:
        yield running


async def test_fast_path_and_fastapi_route_give_the_same_answers(env: ApiEnv) -> None:
    (account,) = await env.onboard()
    path = f"/v1/accounts/{APP}/{quote(account.key, safe='')}/token"
    for who in ("reader", "full", "writer", "admin", None):
        await _both(env, path, who)
    await _both(env, path, None, headers={"Authorization": "Basic abc"})
    await _both(env, path, None, headers={"Authorization": "Bearer not-a-configured-token-000"})
    await _both(env, f"/v1/accounts/no-such-app/{account.key}/token", "reader")
    await _both(env, f"/v1/accounts/{APP}/shop:404404/token", "reader")
    # An account that needs the seller again: a 409 with its re-authorization link.
    disabled = await env.call("POST", f"/v1/accounts/{APP}/{quote(account.key, safe='')}/disable", "writer")
    assert disabled.status_code == 200
    await _both(env, path, "full")
    # Every call logged once, with the caller's name, whichever path served it.
    calls = [
        line for line in env.read_logs() if line.get("event") == "api.call" and line.get("path", "").endswith("/token")
    ]
    assert calls and all(line["caller"] in ("reader", "full", "admin") for line in calls)


@pytest.mark.parametrize(
    ("path", "query", "taken"),
    [
        ("/v1/accounts/shopee-sg/shop:1/token", b"", ("shopee-sg", "shop:1", False)),
        ("/v1/accounts/shopee-sg/shop:1/token", b"include_refresh=TRUE", ("shopee-sg", "shop:1", True)),
        ("/v1/accounts/shopee-sg/shop:1/token", b"include_refresh=0", ("shopee-sg", "shop:1", False)),
        ("/v1/accounts/shopee-sg/shop:1/token", b"include_refresh=yes", None),  # pydantic's: FastAPI's job
        ("/v1/accounts/shopee-sg/shop:1/token", b"include_refresh=perhaps", None),  # a 422
        ("/v1/accounts/shopee-sg/shop:1/token", b"include_refresh=1&include_refresh=0", None),
        ("/v1/accounts/shopee-sg/shop:1/token", b"other=1", None),
        ("/v1/accounts/shopee-sg/shop:1/history", b"", None),
        ("/v1/accounts/shopee-sg/a/b/token", b"", None),  # no route has a slash in a key
        ("/v1/accounts//shop:1/token", b"", None),
        ("/v1/accounts/" + "a" * 64 + "/shop:1/token", b"", None),  # over the app's declared length: 422
        ("/v1/accounts/shopee-sg/" + "k" * 201 + "/token", b"", None),
        ("/v1/accounts/shopee-sg/" + "k" * 200 + "/token", b"", ("shopee-sg", "k" * 200, False)),
    ],
)
def test_fast_path_takes_only_what_fastapi_would_answer_the_same(
    path: str, query: bytes, taken: tuple[str, str, bool] | None
) -> None:
    assert fast_path_target(path, query) == taken
