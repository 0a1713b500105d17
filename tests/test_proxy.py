"""The signing proxy (issue 6) against the sandbox's signed echo APIs and a real loopback upstream."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from refresher.server.http import start_server, stop_server
from refresher.server.proxy import MAX_REQUEST_BYTES
from tests.test_api import APP, TOKENS, ApiEnv, running_api

SHOP_INFO = "/api/v2/shop/get_shop_info"


@pytest.fixture
async def api_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[ApiEnv]:
    async with running_api(tmp_path, capsys) as env:
        yield env


def proxy_path(key: str, path: str, app: str = APP) -> str:
    return f"/proxy/{app}/{quote(key, safe='')}{path}"


async def test_signed_get_is_accepted_by_the_platform(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    before = await api_env.counters()
    answer = await api_env.call("GET", proxy_path(account.key, SHOP_INFO), "proxy")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["error"] == "" and body["shop_name"] == "Sandbox Shop 1"
    assert answer.headers["content-type"].startswith("application/json")
    after = await api_env.counters()
    assert after.get("shopee.api", 0) == before.get("shopee.api", 0) + 1
    assert "x-refresher-retried" not in answer.headers
    # The caller never sees the token or the sign the proxy added.
    assert account.tokens is not None and account.tokens.access_token not in answer.text


@pytest.mark.parametrize(
    ("app", "method", "path"),
    [
        ("tts-us", "GET", "/authorization/202309/shops"),
        ("lazada-sg", "GET", "/rest/seller/get"),
        ("lazada-sg", "POST", "/rest/seller/get"),
        ("tiktok-login", "GET", "/v2/user/info/?fields=open_id,display_name"),
    ],
)
async def test_every_platform_accepts_the_proxy_signature(api_env: ApiEnv, app: str, method: str, path: str) -> None:
    account = (await api_env.onboard(app))[0]
    platform = api_env.daemon.platforms[app].name
    before = await api_env.counters()
    answer = await api_env.call(method, proxy_path(account.key, path, app=app), "proxy")
    assert answer.status_code == 200, answer.text
    after = await api_env.counters()
    assert after.get(f"{platform}.api", 0) == before.get(f"{platform}.api", 0) + 1, answer.text
    assert account.tokens is not None and account.tokens.access_token not in answer.text


async def test_a_header_the_plugin_declares_reaches_it_through_the_proxy(api_env: ApiEnv) -> None:
    """Lazada's x-refresher-country (a cross-border seller's venture for this call) is the plugin's own
    proxy_request_headers, not a name in the proxy: it reaches the plugin, which routes by it and removes it."""
    account = (await api_env.onboard("lazada-sg", countries="sg,my,th"))[0]
    path = proxy_path(account.key, "/rest/seller/get", app="lazada-sg")
    answer = await api_env.call("GET", path, "proxy", headers={"x-refresher-country": "th"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["location"] == "TH", answer.text
    default = await api_env.call("GET", path, "proxy")
    assert default.json()["data"]["location"] == "SG", default.text


@pytest.mark.parametrize(
    ("app", "path"),
    [("tts-us", "/order/202309/orders/search?page_size=20"), ("shopee-sg", "/api/v2/product/update_stock")],
)
async def test_signed_post_with_a_json_body_is_accepted(api_env: ApiEnv, app: str, path: str) -> None:
    """TikTok Shop signs the body too; Shopee does not, but the body must still arrive intact."""
    account = (await api_env.onboard(app))[0]
    payload = {"order_status": "AWAITING_SHIPMENT", "stock_list": [{"model_id": 1, "seller_stock": [{"stock": 5}]}]}
    answer = await api_env.call("POST", proxy_path(account.key, path, app=app), "proxy", json=payload)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    echoed = body["data"]["echo"] if "data" in body else body["echo"]
    assert echoed == payload
    # A changed body no longer matches the TikTok Shop signature: the proxy signs what it forwards.
    assert account.tokens is not None and account.tokens.access_token not in answer.text


async def test_expired_access_token_refreshes_once_and_retries_once(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    expired = await api_env.http.post(
        f"{api_env.sandbox.url}/_sandbox/expire",
        json={"platform": "shopee", "subject_id": account.identity.platform_id},
    )
    assert expired.status_code == 200, expired.text
    before = await api_env.counters()

    answer = await api_env.call("GET", proxy_path(account.key, SHOP_INFO), "proxy")
    assert answer.status_code == 200, answer.text
    assert answer.json()["shop_name"] == "Sandbox Shop 1"
    assert answer.headers["x-refresher-retried"] == "1"
    after = await api_env.counters()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta.get("shopee.refresh") == 1, delta
    assert delta.get("shopee.api") == 1, delta  # the successful retry; the refused call is not counted

    stored = await api_env.daemon.store.get(APP, account.key)
    assert stored is not None and stored.version == account.version + 1


async def test_platform_errors_pass_through_unchanged_without_a_refresh(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    direct_error = await api_env.http.get(f"{api_env.sandbox.url}/shopee/api/v2/merchant/get_merchant_info")
    before = await api_env.counters()
    # A shop account asking the merchant API: Shopee answers with its own error envelope.
    answer = await api_env.call("GET", proxy_path(account.key, "/api/v2/merchant/get_merchant_info"), "proxy")
    assert answer.status_code == direct_error.status_code >= 400
    assert answer.json()["error"] == "error_param"
    assert (await api_env.counters()).get("shopee.refresh", 0) == before.get("shopee.refresh", 0)


async def test_revoked_grant_returns_the_platform_answer_after_one_failed_refresh(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    await api_env.http.post(
        f"{api_env.sandbox.url}/_sandbox/revoke",
        json={"platform": "shopee", "subject_id": account.identity.platform_id},
    )
    answer = await api_env.call("GET", proxy_path(account.key, SHOP_INFO), "proxy")
    assert answer.status_code == 403
    assert answer.json()["error"] in ("invalid_acceess_token", "error_auth")
    assert "x-refresher-retried" not in answer.headers
    stored = await api_env.daemon.store.get(APP, account.key)
    assert stored is not None and stored.status == "needs_reauth"
    # Now the account is not active: the proxy says so itself instead of calling the platform.
    again = await api_env.call("GET", proxy_path(account.key, SHOP_INFO), "proxy")
    assert again.status_code == 409
    assert "needs_reauth" in again.json()["detail"]


async def test_proxy_auth_and_unknown_targets(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    path = proxy_path(account.key, SHOP_INFO)
    missing = await api_env.call("GET", path, who=None)
    assert missing.status_code == 401 and "bearer" in missing.headers["www-authenticate"].lower()
    wrong = await api_env.call("GET", path, who=None, headers={"Authorization": "Bearer nope-nope-nope-nope"})
    assert wrong.status_code == 401
    forbidden = await api_env.call("GET", path, "reader")
    assert forbidden.status_code == 403 and "proxy" in forbidden.json()["detail"]
    unknown_app = await api_env.call("GET", proxy_path(account.key, SHOP_INFO, app="nope"), "proxy")
    assert unknown_app.status_code == 404 and unknown_app.json() == {"detail": "unknown app 'nope'"}
    unknown_account = await api_env.call("GET", proxy_path("shop:1", SHOP_INFO), "proxy")
    assert unknown_account.status_code == 404


# ------------------------------------------------------------------- a real upstream that shows the call


@dataclass
class Upstream:
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    record = Upstream()

    async def echo(request: Request) -> Response:
        body = await request.body()
        record.seen.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.query_params.multi_items(),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode(),
            }
        )
        status = int(request.query_params.get("status", "200"))
        await asyncio.sleep(float(request.query_params.get("sleep", "0")))  # a platform too slow to answer
        return Response(
            json.dumps({"echo": True, "got": body.decode()}),
            status_code=status,
            media_type="application/vnd.test+json",
            headers={"x-platform-request-id": "req-42", "connection": "keep-alive"},
        )

    app = Starlette(routes=[Route("/{rest:path}", echo, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
    server, task, port = await start_server(app, "127.0.0.1", 0)
    record.url = f"http://127.0.0.1:{port}"
    yield record
    await stop_server(server, task)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "GET"])
async def test_method_query_body_and_safe_headers_are_forwarded(
    api_env: ApiEnv, upstream: Upstream, method: str
) -> None:
    (account,) = await api_env.onboard()
    platform = api_env.daemon.platforms[APP]
    # Point the app's API host at the recording upstream (hosts are per-app settings).
    platform.app = platform.app.model_copy(update={"hosts": {**platform.app.hosts, "api": upstream.url + "/base"}})
    payload = json.dumps({"item_id": 7, "name": "Kopi"})
    answer = await api_env.call(
        method,
        proxy_path(account.key, "/api/v2/product/update_item") + "?status=201&page_size=20&page_size=30",
        "proxy",
        content=payload if method != "GET" else None,
        headers={
            "content-type": "application/json",
            "accept-language": "en",
            "cookie": "session=abc",
            "x-forwarded-for": "10.0.0.1",
        },
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["content-type"] == "application/vnd.test+json"
    assert answer.headers["x-platform-request-id"] == "req-42"
    assert answer.json()["echo"] is True

    (seen,) = upstream.seen
    assert seen["method"] == method
    assert seen["path"] == "/base/api/v2/product/update_item"
    query = seen["query"]
    assert ("page_size", "20") in query and ("page_size", "30") in query
    names = [k for k, _ in query]
    assert {"partner_id", "timestamp", "access_token", "shop_id", "sign"} <= set(names)
    assert account.tokens is not None and ("access_token", account.tokens.access_token) in query
    if method != "GET":
        assert seen["body"] == payload
        assert seen["headers"]["content-type"] == "application/json"
    assert seen["headers"].get("accept-language") == "en"
    # The caller's refresher credential and cookies never reach the platform.
    assert "authorization" not in seen["headers"]
    assert "cookie" not in seen["headers"]
    assert "x-forwarded-for" not in seen["headers"]
    assert TOKENS["proxy"][0] not in json.dumps(seen)


async def raw_answer(port: int, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """The status and body of a GET sent over a plain socket, so no client library normalises the target."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    answer = await reader.read()  # Connection: close, so the whole answer
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def raw_get(port: int, target: str, headers: dict[str, str]) -> int:
    return (await raw_answer(port, target, headers))[0]


@pytest.mark.parametrize("path", ["/api/../../other/x", "/api/%2E%2E/x", "/api/..%5Cx", "/./x"])
async def test_dot_segments_cannot_climb_out_of_the_api_base(api_env: ApiEnv, upstream: Upstream, path: str) -> None:
    (account,) = await api_env.onboard()
    platform = api_env.daemon.platforms[APP]
    platform.app = platform.app.model_copy(update={"hosts": {**platform.app.hosts, "api": upstream.url + "/base"}})
    assert api_env.daemon.port is not None
    status = await raw_get(api_env.daemon.port, f"/proxy/{APP}/{account.key}{path}", api_env.auth("proxy"))
    assert status == 400
    assert upstream.seen == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/%252e%252e/%252e%252e/x",  # double-encoded dots: an upstream that decodes again would climb
        "/api/%25252E%25252E/x",
        "/api/x%3Fsign=forged&access_token=x",  # an encoded '?' would put parameters before the signed ones
        "/api/x%253Fsign=forged",
        "/api/x%23",  # an encoded '#' would cut the signed query off
        "/api/%00x",
        "/api/%01x",
        "/api/%7fx",
        "/api/" + "a" * 65536,
        "/api/x?q=" + "a" * 66000,
    ],
)
async def test_hostile_paths_are_400_and_never_forwarded(api_env: ApiEnv, upstream: Upstream, path: str) -> None:
    (account,) = await api_env.onboard()
    platform = api_env.daemon.platforms[APP]
    platform.app = platform.app.model_copy(update={"hosts": {**platform.app.hosts, "api": upstream.url + "/base"}})
    assert api_env.daemon.port is not None
    status, body = await raw_answer(api_env.daemon.port, f"/proxy/{APP}/{account.key}{path}", api_env.auth("proxy"))
    assert status == 400, body[:300]
    detail = json.loads(body)["detail"]  # a clear message: one line, naming what is wrong, no echo of it all
    assert "\n" not in detail and len(detail) < 200
    assert any(word in detail for word in ("path", "query", "URL")), detail
    assert upstream.seen == []


async def test_an_encoded_character_that_is_no_trick_is_still_forwarded(api_env: ApiEnv, upstream: Upstream) -> None:
    (account,) = await api_env.onboard()
    platform = api_env.daemon.platforms[APP]
    platform.app = platform.app.model_copy(update={"hosts": {**platform.app.hosts, "api": upstream.url + "/base"}})
    answer = await api_env.call("GET", proxy_path(account.key, "/api/v2/item/sku%20one.v2"), "proxy")
    assert answer.status_code == 200, answer.text
    assert upstream.seen[0]["path"] == "/base/api/v2/item/sku one.v2"


async def test_oversized_request_body_is_refused(api_env: ApiEnv, upstream: Upstream) -> None:
    (account,) = await api_env.onboard()
    platform = api_env.daemon.platforms[APP]
    platform.app = platform.app.model_copy(update={"hosts": {**platform.app.hosts, "api": upstream.url}})
    big = b"x" * (MAX_REQUEST_BYTES + 1)
    answer = await api_env.call("POST", proxy_path(account.key, "/api/v2/upload"), "proxy", content=big)
    assert answer.status_code == 413
    assert upstream.seen == []


async def test_unreachable_platform_is_502_with_a_clean_message(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    platform = api_env.daemon.platforms[APP]
    platform.app = platform.app.model_copy(update={"hosts": {**platform.app.hosts, "api": "http://127.0.0.1:9"}})
    answer = await api_env.call("GET", proxy_path(account.key, SHOP_INFO), "proxy")
    assert answer.status_code == 502
    assert "platform unreachable" in answer.json()["detail"]
    assert account.tokens is not None and account.tokens.access_token not in answer.text


async def test_a_platform_that_does_not_answer_in_time_is_504(api_env: ApiEnv, upstream: Upstream) -> None:
    (account,) = await api_env.onboard()
    platform = api_env.daemon.platforms[APP]
    platform.app = platform.app.model_copy(
        update={"hosts": {**platform.app.hosts, "api": upstream.url}, "timeout": dt.timedelta(seconds=0.3)}
    )
    answer = await api_env.call("GET", proxy_path(account.key, SHOP_INFO), "proxy", params={"sleep": "2"})
    assert answer.status_code == 504
    assert "platform unreachable" in answer.json()["detail"] and "0.3s" in answer.json()["detail"]
    assert len(upstream.seen) == 1  # the call went out once; a timeout is not retried by the proxy


async def test_proxy_logs_the_caller_and_never_the_token(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard()
    await api_env.call("GET", proxy_path(account.key, SHOP_INFO), "proxy")
    lines = api_env.read_logs()
    calls = [line for line in lines if line.get("event") == "proxy.call"]
    assert calls and calls[-1]["caller"] == "proxy" and calls[-1]["status"] == 200
    dump = json.dumps(lines)
    assert account.tokens is not None and account.tokens.access_token not in dump
    assert TOKENS["proxy"][0] not in dump


async def test_httpx_client_through_the_proxy(api_env: ApiEnv) -> None:
    from refresher.client import proxy_client

    (account,) = await api_env.onboard()
    async with proxy_client(api_env.base, TOKENS["proxy"][0], APP, account.key) as client:
        answer = await client.get(SHOP_INFO)
    assert answer.status_code == 200 and answer.json()["shop_name"] == "Sandbox Shop 1"
    # Silence "unused" for the shared fixture names imported above.
    assert httpx is not None


# ------------------------------------------------ identity the proxy uses (issue 14: shops, ventures)

ORDER_SEARCH = "/order/202309/orders/search"


async def test_a_refused_cipher_is_read_again_retried_once_and_stored(api_env: ApiEnv) -> None:
    """TikTok Shop changed the seller's shop ciphers: the first call is refused (101000), the proxy reads
    the shops again, retries once with the new cipher, and stores the shops, so the next call goes
    straight through."""
    (account,) = await api_env.onboard("tts-us")
    old_cipher = account.identity.extra["shops"][0]["cipher"]
    api_env.sandbox.platforms["tiktok_shop"].rotate_ciphers(account.identity.key)  # type: ignore[attr-defined]
    path = proxy_path(account.key, ORDER_SEARCH, app="tts-us")
    answer = await api_env.call("POST", path, "proxy", json={"order_status": "UNPAID"})
    assert answer.status_code == 200 and answer.json()["code"] == 0, answer.text
    assert answer.headers["x-refresher-retried"] == "1"
    stored = await api_env.daemon.store.get("tts-us", account.key)
    assert stored is not None and stored.identity.extra["shops"][0]["cipher"] != old_cipher
    before = await api_env.counters()
    again = await api_env.call("POST", path, "proxy", json={"order_status": "UNPAID"})
    assert again.status_code == 200 and "x-refresher-retried" not in again.headers, again.text
    after = await api_env.counters()
    assert after.get("tiktok_shop.wrong_cipher", 0) == before.get("tiktok_shop.wrong_cipher", 0)


async def test_a_multi_shop_seller_names_the_shop_by_id_through_the_proxy(api_env: ApiEnv) -> None:
    (account,) = await api_env.onboard("tts-us", shops="3")
    shop = account.identity.extra["shops"][2]
    path = proxy_path(account.key, f"{ORDER_SEARCH}?shop_id={shop['id']}", app="tts-us")
    answer = await api_env.call("POST", path, "proxy", json={"order_status": "UNPAID"})
    assert answer.status_code == 200 and answer.json()["data"]["shop_id"] == shop["id"], answer.text
    unknown = await api_env.call("POST", proxy_path(account.key, f"{ORDER_SEARCH}?shop_id=999", app="tts-us"), "proxy")
    assert unknown.status_code == 502 and "not among the seller's authorized shops" in unknown.json()["detail"]


async def test_lazada_calls_go_to_the_gateway_of_the_accounts_venture(api_env: ApiEnv) -> None:
    """A Malaysian seller's call goes to the Malaysian gateway (the app's default is Singapore's, which does
    not know the seller); a cross-border seller picks a venture per call with x-refresher-country."""
    (malaysian,) = await api_env.onboard("lazada-sg", countries="my")
    answer = await api_env.call("GET", proxy_path(malaysian.key, "/rest/seller/get", app="lazada-sg"), "proxy")
    assert answer.status_code == 200 and answer.json()["data"]["location"] == "MY", answer.text
    (cross,) = await api_env.onboard("lazada-sg", countries="sg,th")
    thai = await api_env.call(
        "GET",
        proxy_path(cross.key, "/rest/seller/get", app="lazada-sg"),
        "proxy",
        headers={"x-refresher-country": "th"},
    )
    assert thai.status_code == 200 and thai.json()["data"]["location"] == "TH", thai.text
    assert (await api_env.counters()).get("lazada.wrong_gateway", 0) == 0
