"""Connect sessions, lifecycle events and the callback's reload (issue 13, points 2, 3 and 5), end to end.

A daemon on a real port, the sandbox platform, a real webhook receiver (tests.test_alerts_e2e.Receiver,
which checks every signature) and a token-less HTTP client playing the seller's browser.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from refresher.alerts import verify_signature
from refresher.config.models import WebhookChannel
from tests.onboarding_support import browse
from tests.test_alerts_e2e import SECRET, Receiver
from tests.test_api import APP, ApiEnv
from tests.test_token_read import running_public

RETURN_TO = "https://erp.example.com/connected"
END_USER = {"id": "tenant-42", "email": "ops@tenant42.example", "display_name": "Tenant 42"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


@pytest.fixture
async def env(tmp_path: Path, capsys: pytest.CaptureFixture[str], receiver: Receiver) -> AsyncIterator[ApiEnv]:
    channel = WebhookChannel(type="webhook", name="events", url=receiver.url, secret=SecretStr(SECRET))
    async with running_public(
        tmp_path,
        capsys,
        server={"return_to_allowlist": ["https://erp.example.com/"]},
        alerts={"channels": [channel]},
    ) as running:
        yield running


async def events(env: ApiEnv, receiver: Receiver) -> list[dict[str, Any]]:
    assert await env.daemon.deliverer.drain(10)
    return [m for m in receiver.messages() if str(m.get("type", "")).startswith("account.")]


async def new_session(env: ApiEnv, **body: Any) -> dict[str, Any]:
    payload = {"app": APP, "end_user": END_USER, "tags": {"plan": "pro", "region": "sg"}, **body}
    answer = await env.call("POST", "/v1/connect-sessions", "admin", json=payload)
    assert answer.status_code == 201, answer.text
    data: dict[str, Any] = answer.json()
    return data


async def test_a_connect_session_stores_end_user_and_tags_and_fires_account_connected(
    env: ApiEnv, receiver: Receiver
) -> None:
    session = await new_session(env, return_to=RETURN_TO)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:  # no token of any kind
        visit = await browse(browser, session["url"], stop_at="/connected")
        # Single use: the same link does not start a second flow.
        again = await browser.get(session["url"])
    assert again.status_code == 403 and "already used" in again.text

    target = urlsplit(visit.urls[-1])
    assert f"{target.scheme}://{target.netloc}{target.path}" == RETURN_TO
    query = parse_qs(target.query)
    assert query["connected"] == [APP] and query["session_id"] == [session["id"]]
    (key,) = query["account"]

    end_user, tags = await env.daemon.store.connection(APP, key)
    assert end_user == END_USER and tags == {"plan": "pro", "region": "sg"}
    one = await env.call("GET", f"/v1/accounts/{APP}/{quote(key, safe='')}", "reader")
    assert one.json()["end_user"] == END_USER and one.json()["tags"] == {"plan": "pro", "region": "sg"}
    listed = await env.call("GET", "/v1/accounts", "reader", params={"end_user_id": "tenant-42"})
    assert [a["key"] for a in listed.json()["items"]] == [key]
    tagged = await env.call("GET", "/v1/accounts", "reader", params={"tag": "plan:pro"})
    assert [a["key"] for a in tagged.json()["items"]] == [key]
    other = await env.call("GET", "/v1/accounts", "reader", params={"tag": "plan:free"})
    assert other.json()["items"] == []

    (event,) = await events(env, receiver)  # Receiver.messages() checked the signature
    assert event["type"] == "account.connected" and event["version"] == 1
    assert event["account_key"] == key and event["end_user"] == END_USER and event["tags"]["plan"] == "pro"
    assert event["session_id"] == session["id"] and event["idempotency_key"].startswith("evt_")
    headers, body = receiver.bodies[-1]
    assert headers["idempotency-key"] == event["idempotency_key"]
    assert verify_signature(
        SECRET, headers["x-refresher-timestamp"], body, headers["x-refresher-signature"], time.time()
    )
    stored = await env.daemon.store.get(APP, key)
    assert stored is not None and stored.tokens is not None
    assert stored.tokens.access_token not in body.decode() and stored.tokens.refresh_token not in body.decode()
    # The session's signed token never reaches a log line (the id is public, the token opens the door).
    invite_token = httpx.URL(session["url"]).params["invite"]
    logged = json.dumps(env.read_logs())
    assert invite_token not in logged and stored.tokens.access_token not in logged


async def test_reauthorizing_through_a_session_keeps_the_account_and_says_reauthorized(
    env: ApiEnv, receiver: Receiver
) -> None:
    (account,) = await env.onboard()
    session = await new_session(env)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:
        visit = await browse(browser, session["url"], options={"id": account.identity.platform_id})
    assert visit.final.status_code == 200
    (event,) = await events(env, receiver)
    assert (event["type"], event["account_key"]) == ("account.reauthorized", account.key)
    assert (await env.daemon.store.connection(APP, account.key))[0] == END_USER


async def test_a_reload_of_the_callback_page_says_already_connected(env: ApiEnv) -> None:
    session = await new_session(env)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:
        visit = await browse(browser, session["url"])
        assert visit.final.status_code == 200
        callback = next(u for u in visit.urls if "/callback/" in u)
        reload = await browser.get(callback)
    assert reload.status_code == 200, reload.text
    assert "Already connected" in reload.text
    (account,) = await env.daemon.store.list(app=APP)
    assert account.identity.platform_id in reload.text  # the page lists the shop it connected
    assert "Nothing was stored" not in reload.text


async def test_connect_session_refusals(env: ApiEnv) -> None:
    body = {"app": APP, "end_user": {"id": "t1"}}
    assert (await env.call("POST", "/v1/connect-sessions", "reader", json=body)).status_code == 403
    unknown = await env.call("POST", "/v1/connect-sessions", "admin", json={**body, "app": "nope"})
    assert unknown.status_code == 404
    outside = await env.call(
        "POST", "/v1/connect-sessions", "admin", json={**body, "return_to": "https://evil.example/"}
    )
    assert outside.status_code == 400
    no_user = await env.call("POST", "/v1/connect-sessions", "admin", json={"app": APP})
    assert no_user.status_code == 422
    # A forged id on a real session's signature is refused before anything starts.
    session = await new_session(env)
    forged = session["url"].replace(quote(session["id"]), "inv_0000000000000000")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:
        assert (await browser.get(forged)).status_code == 403
    assert json.dumps(session).count("invite=") == 1


async def test_disabling_and_deleting_send_their_events_with_end_user_and_tags(env: ApiEnv, receiver: Receiver) -> None:
    session = await new_session(env)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:
        assert (await browse(browser, session["url"])).final.status_code == 200
    (account,) = await env.daemon.store.list(app=APP)
    path = f"/v1/accounts/{APP}/{quote(account.key, safe='')}"
    assert (await env.call("POST", path + "/disable", "writer")).status_code == 200
    assert (await env.call("POST", path + "/disable", "writer")).status_code == 200  # no second event
    assert (await env.call("DELETE", path, "writer")).status_code == 204
    sent = await events(env, receiver)
    assert [e["type"] for e in sent] == ["account.connected", "account.disabled", "account.deleted"]
    assert all(e["end_user"] == END_USER and e["tags"]["plan"] == "pro" for e in sent)
    assert len({e["idempotency_key"] for e in sent}) == 3


def _cli(env: ApiEnv, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    import yaml
    from click.testing import CliRunner

    from refresher.cli import main

    config = tmp_path / "cli.yaml"
    server = env.settings.server
    assert server.invite_secret is not None
    document = {
        "store": {"url": env.settings.store.url},
        "server": {"public_url": server.public_url, "invite_secret": server.invite_secret.get_secret_value()},
        "apps": {APP: env.sandbox.app_config("shopee")},
    }
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = CliRunner().invoke(main, [*args, "-c", str(config)])
    return result.exit_code, result.stdout, result.stderr


async def test_cli_invitations_single_use_tagged_and_revocable(env: ApiEnv, receiver: Receiver, tmp_path: Path) -> None:
    code, out, err = await asyncio.to_thread(
        _cli, env, tmp_path, "invite", APP, "--single-use", "--end-user", "tenant-7", "--tag", "plan=basic"
    )
    assert code == 0, err
    link = out.strip()
    invitation_id = httpx.URL(link).params["id"]
    assert f"id {invitation_id}" in err and "single use" in err
    async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:
        assert (await browse(browser, link)).final.status_code == 200
        used = await browser.get(link)
        assert used.status_code == 403 and "already used" in used.text
    (account,) = await env.daemon.store.list(app=APP)
    assert await env.daemon.store.connection(APP, account.key) == ({"id": "tenant-7"}, {"plan": "basic"})

    code, out, err = await asyncio.to_thread(_cli, env, tmp_path, "invite", APP)  # reusable until revoked
    assert code == 0, err
    second = out.strip()
    second_id = httpx.URL(second).params["id"]
    async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:
        assert (await browser.get(second)).status_code == 200
        code, out, err = await asyncio.to_thread(_cli, env, tmp_path, "invite", "revoke", second_id)
        assert (code, out.strip()) == (0, f"invitation {second_id} revoked"), err
        revoked = await browser.get(second)
        assert revoked.status_code == 403 and "withdrawn" in revoked.text
    code, _, err = await asyncio.to_thread(_cli, env, tmp_path, "invite", "revoke", second_id)
    assert code == 1 and "revoked already" in err


async def test_an_on_demand_reauth_link_is_stored_revocable_and_single_use(
    env: ApiEnv, receiver: Receiver, tmp_path: Path
) -> None:
    (account,) = await env.onboard()
    path = f"/v1/accounts/{APP}/{quote(account.key, safe='')}/reauth-link"
    first = (await env.call("GET", path, "writer")).json()
    code, out, err = await asyncio.to_thread(_cli, env, tmp_path, "invite", "revoke", first["id"])
    assert (code, out.strip()) == (0, f"invitation {first['id']} revoked"), err
    async with httpx.AsyncClient(timeout=30, trust_env=False) as seller:  # no token, no cookie: curl would do
        refused = await seller.get(first["url"])
        assert refused.status_code == 403 and "withdrawn" in refused.text
        once = await env.call("GET", path, "writer", params={"single_use": "true"})
        assert once.status_code == 200 and once.json()["single_use"] is True
        visit = await browse(seller, once.json()["url"], options={"id": account.identity.platform_id})
        assert visit.final.status_code == 200, visit.final.text
        again = await seller.get(once.json()["url"])
        assert again.status_code == 403 and "already used" in again.text
    stored = await env.daemon.store.get(APP, account.key)
    assert stored is not None and stored.version > account.version  # re-authorized in place
    assert [e["type"] for e in await events(env, receiver)] == ["account.reauthorized"]
    rows = {i.id: i for i in await env.daemon.store.list_invitations(APP)}
    assert rows[first["id"]].revoked_at is not None and rows[once.json()["id"]].used_at is not None
    assert {(i.kind, i.account_key) for i in rows.values()} == {("reauth", account.key)}

    # The same from the command line: a stored link bound to the account; an unknown account is refused.
    code, out, err = await asyncio.to_thread(
        _cli, env, tmp_path, "invite", APP, "--account", account.key, "--single-use"
    )
    assert code == 0, err
    link = httpx.URL(out.strip())
    assert link.params["account"] == account.key and "single use" in err
    assert (await env.daemon.store.get_invitation(link.params["id"])) is not None
    code, _, err = await asyncio.to_thread(_cli, env, tmp_path, "invite", APP, "--account", "shop:404")
    assert code == 1 and "no account 'shop:404'" in err


async def test_disable_and_delete_from_the_cli_send_their_events_through_the_daemon(
    env: ApiEnv, receiver: Receiver, tmp_path: Path
) -> None:
    session = await new_session(env)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as browser:
        assert (await browse(browser, session["url"])).final.status_code == 200
    (account,) = await env.daemon.store.list(app=APP)
    for args in (("disable", APP, account.key), ("disable", APP, account.key), ("delete", APP, account.key, "--yes")):
        code, _, err = await asyncio.to_thread(_cli, env, tmp_path, *args)
        assert code == 0, err
    # The CLI only stored them (on the wall clock: the daemon's simulated one catches up); the running
    # daemon's deliverer sent them, signed, with the end user.
    env.clock.advance(dt.timedelta(minutes=1))
    sent = await events(env, receiver)
    assert [e["type"] for e in sent] == ["account.connected", "account.disabled", "account.deleted"]
    assert sent[1]["status"] == "disabled" and all(e["end_user"] == END_USER for e in sent)
