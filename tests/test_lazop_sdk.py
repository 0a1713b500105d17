"""Lazada's official Python SDK (lazop-sdk) signs calls against the Lazada sandbox and the sandbox
accepts them: the sandbox verifies signatures the way the real gateway does, not the way our own signer
happens to sign. The SDK is synchronous (requests), so it runs in a thread beside the sandbox's loop."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from refresher.domain import Identity
from refresher.platforms.lazada import LazadaPlatform
from refresher.sandbox import SandboxServer
from refresher.sandbox.apps import SANDBOX_CREDENTIALS
from tests.support import app_for

APP_KEY = str(SANDBOX_CREDENTIALS["lazada"]["app_key"])
SECRET = str(SANDBOX_CREDENTIALS["lazada"]["app_secret"])


@pytest.fixture
def lazop(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The SDK creates ~/logs and a log file at import: keep that out of the real home directory.
    monkeypatch.setenv("HOME", str(tmp_path))
    return importlib.import_module("lazop_sdk")


async def test_official_sdk_is_accepted_by_the_sandbox(lazop: ModuleType) -> None:
    async with SandboxServer() as sandbox, httpx.AsyncClient() as http:
        plugin = LazadaPlatform(app_for(sandbox, "lazada"), http=http)
        params = await sandbox.approve(plugin.authorize_url("state-sdk"))
        client = lazop.LazopClient(f"{sandbox.url}/lazada/rest", APP_KEY, SECRET, timeout=10)

        create = lazop.LazopRequest("/auth/token/create")  # POST, form-encoded, with partner_id
        create.add_api_param("code", params["code"])
        created = await asyncio.to_thread(client.execute, create)
        assert created.code == "0", created.body
        assert created.body["country_user_info"][0]["seller_id"]
        assert sandbox.state.counters["lazada.bad_sign"] == 0

        refresh = lazop.LazopRequest("/auth/token/refresh", "GET")  # GET, query string
        refresh.add_api_param("refresh_token", created.body["refresh_token"])
        refreshed = await asyncio.to_thread(client.execute, refresh)
        assert refreshed.code == "0", refreshed.body
        assert refreshed.body["refresh_token"] != created.body["refresh_token"]

        seller = await asyncio.to_thread(
            client.execute, lazop.LazopRequest("/seller/get", "GET"), refreshed.body["access_token"]
        )
        assert seller.code == "0" and seller.body["data"]["seller_id"]

        # The tokens the SDK obtained are ordinary tokens: refresher's plugin rotates them further.
        seller_id = str(created.body["country_user_info"][0]["seller_id"])
        tokens = await plugin.refresh(Identity(seller_id, "seller", seller_id), refreshed.body["refresh_token"])
        assert tokens.refresh_token != refreshed.body["refresh_token"]


async def test_sdk_with_a_wrong_secret_gets_lazadas_signature_error(lazop: ModuleType) -> None:
    async with SandboxServer() as sandbox:
        client = lazop.LazopClient(f"{sandbox.url}/lazada/rest", APP_KEY, "not-the-secret", timeout=10)
        request = lazop.LazopRequest("/auth/token/create")
        request.add_api_param("code", "0_100132_whatever")
        answer = await asyncio.to_thread(client.execute, request)
        assert answer.code == "IncompleteSignature" and answer.type == "ISV" and answer.request_id
        assert sandbox.state.counters["lazada.bad_sign"] == 1


async def test_sdk_form_post_and_the_proxy_post_sign_alike_and_are_both_accepted(
    lazop: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lazop-sdk POSTs every parameter as a form; refresher's proxy sends the caller's form as the body and
    its own system parameters in the query. Same parameters, same timestamp: the same signature, and the
    sandbox (which signs form fields as parameters, never the form's bytes) takes both."""
    import time
    import types
    from urllib.parse import urlencode

    import requests

    from refresher.domain import FakeClock
    from refresher.platforms.base import ApiCall

    now = int(time.time())
    sent: list[dict[str, str]] = []

    def post(url: str, data: dict[str, str], **kwargs: object) -> requests.Response:
        sent.append(dict(data))
        return requests.post(url, data, **kwargs)  # type: ignore[arg-type]

    base = importlib.import_module("lazop_sdk.base")
    monkeypatch.setattr(
        base, "time", types.SimpleNamespace(time=lambda: now, strftime=time.strftime, localtime=time.localtime)
    )
    monkeypatch.setattr(base, "requests", types.SimpleNamespace(post=post, get=requests.get))
    payload = '{"Request":{"Product":{"Skus":{"Sku":[{"SellerSku":"sku-1","Quantity":"5"}]}}}}'

    async with SandboxServer() as sandbox, httpx.AsyncClient() as http:
        plugin = LazadaPlatform(app_for(sandbox, "lazada"), http=http, clock=FakeClock())
        params = await sandbox.approve(plugin.authorize_url("state-form"))
        [grant] = await plugin.exchange_code(params)
        token = grant.tokens.access_token
        client = lazop.LazopClient(f"{sandbox.url}/lazada/rest", APP_KEY, SECRET, timeout=10)

        request = lazop.LazopRequest("/seller/get")  # POST: a form with every parameter
        request.add_api_param("payload", payload)
        answer = await asyncio.to_thread(client.execute, request, token)
        assert answer.code == "0", answer.body
        [sdk_form] = sent

        # What a service sends through the proxy: its business parameters as a form, no credentials.
        form = urlencode({"payload": payload, "partner_id": sdk_form["partner_id"]}).encode()
        call = ApiCall(
            "POST", "/seller/get", body=form, content_type="application/x-www-form-urlencoded", timestamp=now
        )
        signed = plugin.sign_call(call, token, grant.identity)
        assert signed.sign == sdk_form["sign"]
        relayed = await plugin.transport.send(signed.method, signed.url, headers=signed.headers, content=signed.body)
        assert plugin.classify_api_answer(relayed) is None, relayed.body
        assert sandbox.state.counters["lazada.bad_sign"] == 0


async def test_sdk_form_post_and_a_post_through_the_running_proxy_sign_alike_and_both_pass(
    lazop: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same as above, end to end: the service POSTs its form to the daemon's /proxy route (no
    credentials), the daemon signs and relays it; lazop-sdk POSTs the same parameters itself. The sandbox
    takes both, and the signatures it accepted are the same one."""
    import time
    import types
    from urllib.parse import urlencode

    import requests

    from tests.test_api import running_api

    sent: list[dict[str, str]] = []

    def post(url: str, data: dict[str, str], **kwargs: object) -> requests.Response:
        sent.append(dict(data))
        return requests.post(url, data, **kwargs)  # type: ignore[arg-type]

    payload = '{"Request":{"Product":{"Skus":{"Sku":[{"SellerSku":"sku-1","Quantity":"5"}]}}}}'
    async with running_api(tmp_path, capsys) as env:
        # One instant for both signers: the daemon's clock (shared with the sandbox) is not moved.
        now = env.clock.now().timestamp()
        base = importlib.import_module("lazop_sdk.base")
        clock = types.SimpleNamespace(time=lambda: now, strftime=time.strftime, localtime=time.localtime)
        monkeypatch.setattr(base, "time", clock)
        monkeypatch.setattr(base, "requests", types.SimpleNamespace(post=post, get=requests.get))
        (account,) = await env.onboard("lazada-sg")
        assert account.tokens is not None
        gateway = env.sandbox.platforms["lazada"]
        gateway.accepted_signs.clear()  # type: ignore[attr-defined]

        client = lazop.LazopClient(f"{env.sandbox.url}/lazada/rest", APP_KEY, SECRET, timeout=10)
        request = lazop.LazopRequest("/seller/get")  # POST: a form with every parameter
        request.add_api_param("payload", payload)
        answer = await asyncio.to_thread(client.execute, request, account.tokens.access_token)
        assert answer.code == "0", answer.body
        [sdk_form] = sent

        form = urlencode({"payload": payload, "partner_id": sdk_form["partner_id"]})
        relayed = await env.call(
            "POST",
            f"/proxy/lazada-sg/{account.key}/rest/seller/get",
            "proxy",
            content=form,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert relayed.status_code == 200 and relayed.json()["code"] == "0", relayed.text
        assert relayed.json()["data"]["received"]["payload"] == payload
        assert list(gateway.accepted_signs) == [sdk_form["sign"], sdk_form["sign"]]  # type: ignore[attr-defined]
        assert env.sandbox.state.counters["lazada.bad_sign"] == 0
