"""The desktop flow as a user runs it: ``refresher authorize`` in a real subprocess, the sandbox in this
process, and a test that plays the browser (fetches the printed URL, approves, follows the redirect to
the loopback port). Also ``auth-url`` + ``exchange`` by hand, and ``invite``."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from refresher.domain import SystemClock
from refresher.sandbox import SandboxServer
from refresher.store.base import Account
from refresher.store.sql import open_store
from tests.onboarding_support import browse, config_text, free_port, settings_from

pytestmark = pytest.mark.slow


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    async with SandboxServer() as server:
        yield server


class Cli:
    """One ``refresher`` subprocess whose stdout is read line by line while the test goes on."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def line_with(self, text: str, timeout: float = 20) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                assert self.proc.stdout is not None
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"exited before printing {text!r}: {self.lines}")
                self.lines.append(raw.decode().rstrip("\n"))

    async def finish(self, timeout: float = 20) -> tuple[int, str, str]:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            out, err = await self.proc.communicate()
        self.lines += out.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode, "\n".join(self.lines), err.decode()


async def start(*args: str, config: Path) -> Cli:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "refresher",
        *args,
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return Cli(proc)


def write_config(sandbox: SandboxServer, tmp_path: Path, port: int) -> Path:
    path = tmp_path / "refresher.yaml"
    path.write_text(config_text(sandbox, port, tmp_path / "tokens.db", redirect="loopback"))
    return path


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def stored(config: Path, app: str) -> list[Account]:
    settings = settings_from(config.read_text())
    store = open_store(settings.store, SystemClock())
    await store.open()
    try:
        return list(await store.list(app=app))
    finally:
        await store.close()


@pytest.mark.parametrize("platform", ["shopee", "tiktok"])
async def test_authorize_granted_prints_progress_and_stores_the_accounts(
    platform: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(sandbox, tmp_path, port)
    cli = await start("authorize", platform, "--no-browser", "--port", str(port), "--timeout", "30s", config=config)
    url = (await cli.line_with("authorization URL: ")).split("authorization URL: ", 1)[1]
    await cli.line_with("waiting for the redirect")
    async with httpx.AsyncClient(timeout=10) as client:
        visit = await browse(client, url, options={"as": "main"} if platform == "shopee" else None)
    assert visit.outcome == "granted", visit.final.text
    assert visit.callback_url.startswith(f"http://127.0.0.1:{port}/callback?")
    code, out, err = await cli.finish()
    assert code == 0, (out, err)
    assert "exchanging the code" in out and "granted:" in out
    accounts = await stored(config, platform)
    assert len(accounts) == (3 if platform == "shopee" else 1)
    for account in accounts:
        assert account.key in out
        tokens = account.tokens
        assert tokens is not None
        assert tokens.access_token not in out + err and tokens.refresh_token not in out + err
    for secret in settings_from(config.read_text()).secrets():
        assert secret not in out + err
    assert port_is_free(port)


async def test_authorize_denied_exits_1(sandbox: SandboxServer, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(sandbox, tmp_path, port)
    cli = await start("authorize", "tiktok_shop", "--no-browser", "--port", str(port), config=config)
    url = (await cli.line_with("authorization URL: ")).split("authorization URL: ", 1)[1]
    async with httpx.AsyncClient(timeout=10) as client:
        visit = await browse(client, url, choice="deny")
    assert visit.outcome == "denied"
    code, out, _ = await cli.finish()
    assert code == 1
    assert "denied:" in out
    assert await stored(config, "tiktok_shop") == []
    assert port_is_free(port)


async def test_authorize_times_out_with_exit_3_and_frees_the_port(sandbox: SandboxServer, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(sandbox, tmp_path, port)
    cli = await start("authorize", "tiktok", "--no-browser", "--port", str(port), "--timeout", "1s", config=config)
    await cli.line_with("waiting for the redirect")
    assert not port_is_free(port)  # it really listens while waiting
    code, out, _ = await cli.finish()
    assert code == 3
    assert "timed out" in out
    assert port_is_free(port)


async def test_authorize_ctrl_c_cancels_cleanly(sandbox: SandboxServer, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(sandbox, tmp_path, port)
    cli = await start("authorize", "tiktok", "--no-browser", "--port", str(port), config=config)
    await cli.line_with("waiting for the redirect")
    cli.proc.send_signal(signal.SIGINT)
    code, out, err = await cli.finish()
    assert code == 130
    assert "cancelled" in out
    assert "Traceback" not in err
    assert port_is_free(port)


async def test_a_stray_request_does_not_end_the_wait(sandbox: SandboxServer, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(sandbox, tmp_path, port)
    cli = await start("authorize", "tiktok", "--no-browser", "--port", str(port), config=config)
    url = (await cli.line_with("authorization URL: ")).split("authorization URL: ", 1)[1]
    async with httpx.AsyncClient(timeout=10) as client:
        stray = await client.get(f"http://127.0.0.1:{port}/callback", params={"code": "x", "state": "forged"})
        assert stray.status_code == 400
        assert (await client.get(f"http://127.0.0.1:{port}/favicon.ico")).status_code == 404
        visit = await browse(client, url)
    assert visit.outcome == "granted"
    code, out, _ = await cli.finish()
    assert code == 0
    assert "ignored a request" in out


async def test_authorize_refuses_a_public_redirect_uri(sandbox: SandboxServer, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "refresher.yaml"
    config.write_text(
        config_text(sandbox, port, tmp_path / "t.db").replace("http://127.0.0.1", "https://erp.example.com")
    )
    cli = await start("authorize", "shopee", "--no-browser", config=config)
    code, _, err = await cli.finish()
    assert code == 2
    assert err.strip().count("\n") == 0 and "loopback" in err and "apps.shopee.redirect_uri" in err


async def test_auth_url_then_exchange_by_hand(sandbox: SandboxServer, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(sandbox, tmp_path, port)
    cli = await start("auth-url", "tiktok", config=config)
    code, out, err = await cli.finish()
    assert code == 0, err
    url = out.strip()
    async with httpx.AsyncClient(timeout=10) as client:
        visit = await browse(client, url, stop_at="/callback")
    callback = visit.callback_url
    done = await start("exchange", "tiktok", callback, config=config)
    code, out, err = await done.finish()
    assert code == 0, err
    assert "granted: 1 account(s)" in out
    (account,) = await stored(config, "tiktok")
    assert account.key in out
    # The same callback again: the state was used.
    again = await start("exchange", "tiktok", callback, config=config)
    code, _, err = await again.finish()
    assert code == 1 and "already used" in err


async def test_auth_url_with_a_chosen_state(sandbox: SandboxServer, tmp_path: Path) -> None:
    config = write_config(sandbox, tmp_path, free_port())
    code, out, _ = await (await start("auth-url", "lazada", "--state", "my-state-123", config=config)).finish()
    assert code == 0
    assert "state=my-state-123" in out


async def test_invite_prints_a_working_link(sandbox: SandboxServer, tmp_path: Path) -> None:
    from refresher.domain import FakeClock
    from refresher.invites import check_invite
    from tests.onboarding_support import INVITE_SECRET

    config = write_config(sandbox, tmp_path, 8123)
    code, out, err = await (await start("invite", "shopee", "--ttl", "2h", config=config)).finish()
    assert code == 0, err
    url = out.strip()
    assert url.startswith("http://127.0.0.1:8123/connect/shopee?invite=")
    params = httpx.URL(url).params  # the invitation is stored (revocable): its id is signed with it
    token, stored = params["invite"], params["id"]
    assert f"id {stored}:" in err
    now = dt.datetime.now(dt.UTC)
    check_invite(token, "shopee", secret=INVITE_SECRET, clock=FakeClock(now), invitation=stored)
    with pytest.raises(Exception, match="not valid"):
        check_invite(token, "shopee", secret=INVITE_SECRET, clock=FakeClock(now))  # the id cannot be dropped
    with pytest.raises(Exception, match="expired"):
        later = FakeClock(now + dt.timedelta(hours=2, minutes=1))
        check_invite(token, "shopee", secret=INVITE_SECRET, clock=later, invitation=stored)
    assert INVITE_SECRET not in out + err
    code, _, err = await (await start("invite", "shopee", "--ttl", "soon", config=config)).finish()
    assert code == 2 and "--ttl" in err
