"""``refresher exchange APP --code CODE [--shop-id N]``: a code obtained elsewhere, exchanged by hand."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import yaml

from refresher import platforms
from refresher.config import load_config
from refresher.domain import SystemClock
from refresher.sandbox import SandboxServer
from refresher.store import open_store


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "refresher", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_exchange_a_bare_code_and_refuse_it_for_a_pkce_app(tmp_path: Path) -> None:
    async with SandboxServer() as sandbox:
        config = tmp_path / "refresher.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "store": {"url": f"sqlite:///{tmp_path / 'tokens.db'}"},
                    "apps": {"shopee": sandbox.app_config("shopee"), "tiktok": sandbox.app_config("tiktok")},
                }
            )
        )
        settings = load_config(config, credential_models=platforms.credential_models())
        plugin = platforms.get("shopee")(settings.apps["shopee"])
        params = await sandbox.approve(plugin.authorize_url("s", plugin.app.redirect_uri))
        code, err = params["code"], ""
        status, out, err = await run_cli(
            "exchange", "-c", str(config), "shopee", "--code", code, "--param", f"shop_id={params['shop_id']}"
        )
        assert status == 0, err
        assert "granted: 1 account(s)" in out and code not in out + err

        # The code is single use: a second exchange fails in one line, without a traceback or the code.
        status, out, err = await run_cli(
            "exchange", "-c", str(config), "shopee", "--code", code, "--shop-id", params["shop_id"]
        )
        assert status != 0 and "Traceback" not in err and code not in err and len(err.strip().splitlines()) == 1

        status, out, err = await run_cli("exchange", "-c", str(config), "tiktok", "--code", "abc")
        assert status == 2 and "uses PKCE" in err

        status, out, err = await run_cli("exchange", "-c", str(config), "shopee")
        assert status == 2 and "either CALLBACK" in err

    store = open_store(settings.store, SystemClock())
    await store.open()
    try:
        account = await store.get("shopee", f"shop:{params['shop_id']}")
        assert account is not None and account.tokens is not None
    finally:
        await store.close()
