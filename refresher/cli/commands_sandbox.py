"""``refresher sandbox`` (the local stand-in for the platforms) and ``refresher demo`` (everything at once)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from refresher.cli.common import config_option, fail, friendly_errors, load_settings, main
from refresher.config import parse_duration

PLATFORMS = ("shopee", "tiktok_shop", "lazada", "tiktok")


def _lifetimes(access: str | None, refresh: str | None) -> dict[str, Any]:
    from refresher.sandbox.core import DEFAULT_LIFETIMES

    try:
        a = parse_duration(access) if access else None
        r = parse_duration(refresh) if refresh else None
    except ValueError as exc:
        fail(f"--access-ttl/--refresh-ttl: {exc}")
    return {name: life.scaled(a, r) for name, life in DEFAULT_LIFETIMES.items()}


def sandbox_apps(sandbox: Any, redirect_base: str, **overrides: Any) -> dict[str, dict[str, Any]]:
    """One app per platform pointing at ``sandbox``, named like the platforms (``tiktok_shop`` → ``tiktok-shop``)."""
    apps = {}
    for platform in PLATFORMS:
        name = f"{platform.replace('_', '-')}-sandbox"
        entry = sandbox.app_config(platform, redirect_uri=f"{redirect_base}/callback/{name}")
        entry.update(overrides)
        apps[name] = entry
    return apps


@main.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True)
@config_option
@click.option("--port", default=8780, show_default=True, type=int)
@click.option("--auto-approve", is_flag=True, help="Skip the consent page: approve every authorization at once.")
@click.option(
    "--faults", default=None, metavar="SPEC", help="Inject faults, e.g. 'shopee:refresh:503@0.2,*:api:html|x1'."
)
@click.option("--access-ttl", default=None, metavar="DURATION", help="Access token lifetime for every platform.")
@click.option("--refresh-ttl", default=None, metavar="DURATION", help="Refresh token lifetime for every platform.")
@friendly_errors
def sandbox_command(
    config_path: str | None,
    host: str,
    port: int,
    auto_approve: bool,
    faults: str | None,
    access_ttl: str | None,
    refresh_ttl: str | None,
) -> None:
    """Serve the built-in sandbox platforms (Shopee, TikTok Shop, Lazada, TikTok) for local testing.

    Prints an `apps:` config block that points refresher at it.
    """
    from refresher.sandbox import FaultSpecError, SandboxServer

    credentials = _config_credentials(load_settings(config_path), host, port) if config_path else {}

    async def serve() -> None:
        try:
            server = SandboxServer(
                host=host,
                port=port,
                credentials=credentials,
                auto_approve=auto_approve,
                faults=faults,
                lifetimes=_lifetimes(access_ttl, refresh_ttl),
            )
        except FaultSpecError as exc:
            fail(f"--faults: {exc}")
        try:
            await server.start()
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        click.echo(f"sandbox listening on {server.url} (admin: {server.url}/_sandbox/health)")
        click.echo("# apps for your config:")
        click.echo(yaml.safe_dump({"apps": sandbox_apps(server, "http://127.0.0.1:8765")}, sort_keys=False))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(serve())


def _config_credentials(settings: Any, host: str, port: int) -> dict[str, list[dict[str, Any]]]:
    """The credentials of every app in the config whose hosts point at this sandbox, so one config file
    drives both sides."""
    roots = {f"http://{host}:{port}", f"http://localhost:{port}", f"http://127.0.0.1:{port}"}
    found: dict[str, list[dict[str, Any]]] = {}
    for app in settings.apps.values():
        urls = [app.base_url or "", *app.hosts.values()]
        if any(url.startswith(root) for url in urls for root in roots):
            model = app.credentials
            fields = type(model).model_fields if model is not None else {}
            entry = {name: app.credential(name) for name in fields}
            if app.redirect_uri:  # TikTok Shop redirects to the registered URI: its links carry none
                entry["redirect_uri"] = app.redirect_uri
            found.setdefault(app.platform, []).append(entry)
    return found


# ----------------------------------------------------------------------------------------------- demo


def demo_config(sandbox: Any, directory: Path, port: int, interval: str, refresh_before: str) -> dict[str, Any]:
    return {
        "store": {"url": f"sqlite:///{directory / 'tokens.db'}"},
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "admin_token": secrets.token_urlsafe(24),
        },
        "logging": {"level": "info", "format": "console"},
        "apps": sandbox_apps(
            sandbox, f"http://127.0.0.1:{port}", interval=interval, refresh_before=refresh_before, timeout="5s"
        ),
    }


DEMO_GRANTS: dict[str, dict[str, str]] = {
    "shopee": {"as": "main", "shops": "2", "merchants": "1"},
    "tiktok_shop": {},
    "lazada": {"countries": "sg,my"},
    "tiktok": {},
}


async def onboard_demo_accounts(daemon: Any, sandbox: Any) -> int:
    """Authorize one grant per platform through the sandbox's consent flow, as a seller would."""
    count = 0
    for name, platform in daemon.platforms.items():
        pkce = platform.pkce_pair()
        url = platform.authorize_url(secrets.token_urlsafe(16), platform.app.redirect_uri, pkce)
        params = await sandbox.approve(url, **DEMO_GRANTS.get(platform.name, {}))
        grants = await platform.exchange_code(params, pkce, platform.app.redirect_uri)
        for grant in grants:
            await daemon.store.upsert_grant(name, platform.name, grant)
            count += 1
    return count


@main.command("demo")
@click.option("--dir", "directory", default=".refresher-demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--port", default=8765, show_default=True, type=int, help="The daemon's HTTP port (0: any free port).")
@click.option("--access-ttl", default="90s", show_default=True, help="Sandbox access token lifetime.")
@click.option("--duration", default=None, metavar="DURATION", help="Stop after this long (default: until Ctrl-C).")
@click.option("--every", "status_every", default="15s", show_default=True, help="Print the status table this often.")
@friendly_errors
def demo(directory: str, port: int, access_ttl: str, duration: str | None, status_every: str) -> None:
    """Everything on embedded defaults: the sandbox platforms, a SQLite store, the daemon, a few accounts.

    Tokens live 90 seconds here, so within a minute you watch them being refreshed and rotated.
    Writes its config to DIR/refresher.yaml, so `refresher status -c DIR/refresher.yaml` works beside it.
    """
    try:
        access = parse_duration(access_ttl)
        stop_after = parse_duration(duration) if duration else None
        every = parse_duration(status_every)
    except ValueError as exc:
        fail(str(exc))
    if access < dt.timedelta(seconds=20):
        fail("--access-ttl: at least 20s, so a refresh fits inside the token's life")
    sys.exit(asyncio.run(_demo(Path(directory).resolve(), port, access, stop_after, every)))


async def _demo(
    directory: Path, port: int, access: dt.timedelta, stop_after: dt.timedelta | None, every: dt.timedelta
) -> int:
    from refresher.cli.commands_daemon import print_status, status_rows
    from refresher.config import parse_config
    from refresher.daemon import Daemon
    from refresher.logging import configure_logging
    from refresher.platforms import credential_models
    from refresher.sandbox import SandboxServer

    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    if port:
        _probe_port(port)
    sandbox = SandboxServer(auto_approve=False, lifetimes=_lifetimes(f"{int(access.total_seconds())}s", "1h"))
    await sandbox.start()
    interval = f"{max(int(access.total_seconds() // 9), 2)}s"
    refresh_before = f"{int(access.total_seconds() // 2)}s"
    config = demo_config(sandbox, directory, port, interval, refresh_before)
    path = directory / "refresher.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    settings = parse_config(path.read_text(), file=str(path), credential_models=credential_models())
    configure_logging(settings.logging, secrets=settings.secrets())
    daemon = Daemon(settings, config_path=path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
        onboarded = await onboard_demo_accounts(daemon, sandbox)
        click.echo(
            f"\nrefresher demo: sandbox on {sandbox.url}, daemon on http://127.0.0.1:{daemon.port}, "
            f"{onboarded} accounts onboarded; tokens live {int(access.total_seconds())}s and are refreshed "
            f"{refresh_before} before they expire.\nconfig: {path}   (Ctrl-C to stop)\n"
        )
        deadline = loop.time() + stop_after.total_seconds() if stop_after else None
        while not stop.is_set():
            accounts = list(await daemon.store.list(limit=1000))
            print_status(status_rows(accounts, daemon.clock.now()))
            wait = every.total_seconds()
            if deadline is not None:
                wait = min(wait, max(deadline - loop.time(), 0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if deadline is not None and loop.time() >= deadline:
                break
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await daemon.stop()
        await sandbox.stop()
    counters = dict(sandbox.state.counters)
    click.echo(
        f"demo finished: {counters.get('shopee.rotated', 0) + counters.get('tiktok_shop.rotated', 0)} "
        f"+ {counters.get('lazada.rotated', 0) + counters.get('tiktok.rotated', 0)} rotations, "
        f"{sum(v for k, v in counters.items() if k.endswith('.reuse'))} refresh-token reuses (must be 0)."
    )
    return 0


def _probe_port(port: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            fail(f"port {port} is in use: pass --port 0 for any free port, or stop what uses it")
