"""Lazada's official Python SDK (lazop-sdk) signs calls against the Lazada sandbox and the sandbox
accepts them: the sandbox verifies signatures the way the real gateway does, not the way our own signer
happens to sign. The SDK is synchronous (requests), so it runs in a thread beside the sandbox's loop."""

from __future__ import annotations

import asyncio
import importlib
from types import ModuleType

import httpx
import pytest

from refresher.domain import Identity
from refresher.platforms.lazada import LazadaPlatform
from refresher.sandbox import SandboxServer
from refresher.sandbox.core import SANDBOX_CREDENTIALS
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
