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
    from refresher.sandbox.apps import DEFAULT_LIFETIMES

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
        if credentials:
            # The file's apps are registered with their own redirect URIs; printing the built-in block
            # would register the built-in apps again with port 8765's and override those.
            served = ", ".join(f"{platform} ({len(apps)})" for platform, apps in sorted(credentials.items()))
            click.echo(f"serving the apps of {config_path}: {served}")
        else:
            click.echo("# apps for your config:")
            click.echo(yaml.safe_dump({"apps": sandbox_apps(server, "http://127.0.0.1:8765")}, sort_keys=False))
        await server.serve_until_signalled()

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


DEMO_MARKER = "# written by `refresher demo`: the store beside it is emptied at each demo start\n"
DEMO_STORE = "tokens.db"
# What the sandbox's refresh tokens live in the demo: longer than alerts.reauth_warning (3 days), so the
# demo's accounts do not ask to be re-authorized the moment they are onboarded.
DEMO_REFRESH_TTL = "30d"


def demo_timing(access: dt.timedelta) -> dict[str, Any]:
    """Schedule, window and retries scaled to the demo's short tokens, so that ``check-config`` finds a
    positive worst-case margin, also after a crash (for the default 90s and longer lifetimes): refresh_before
    (three quarters of the life) > two ticks + the whole retry budget + the lease a dead worker leaves
    behind (at least 1.5 x the retry budget + 30s, see ``AppPolicy.resolve``). At 90s: ticks 5s apart, a 7s
    retry budget, a 40.5s lease, 67s before expiry: 9.5s to spare after a crash."""
    life = int(access.total_seconds())
    timeout = min(max(life // 30, 1), 5)
    return {
        "interval": f"{max(life // 18, 2)}s",
        "refresh_before": f"{life * 3 // 4}s",
        "timeout": f"{timeout}s",
        "retry": {"attempts": 2, "initial_delay": "1s", "max_delay": f"{max(timeout // 2, 1)}s"},
    }


def demo_config(sandbox: Any, directory: Path, port: int, timing: dict[str, Any]) -> dict[str, Any]:
    return {
        # The shortest lease the apps' retry budgets allow (the 10m default would leave no margin after a
        # crash for 90s tokens; check-config would say so for every app).
        "store": {"url": f"sqlite:///{directory / DEMO_STORE}", "lease_ttl": "30s"},
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "admin_token": secrets.token_urlsafe(24),
        },
        "logging": {"level": "info", "format": "console"},
        "apps": sandbox_apps(sandbox, f"http://127.0.0.1:{port}", **timing),
    }


def start_clean(directory: Path) -> None:
    """Empty the store of an earlier demo in ``directory``: the sandbox starts afresh each run, so the old
    accounts' tokens mean nothing to it (every one failed and alarmed). A directory whose refresher.yaml
    the demo did not write is left alone: it may be real."""
    config = directory / "refresher.yaml"
    if config.exists() and not config.read_text(encoding="utf-8", errors="replace").startswith(DEMO_MARKER):
        fail(f"--dir {directory}: its refresher.yaml was not written by the demo; choose another --dir")
    removed = False
    for suffix in ("", "-wal", "-shm", "-journal"):
        old = directory / f"{DEMO_STORE}{suffix}"
        if old.exists():
            old.unlink()
            removed = True
    if removed:
        click.echo(f"refresher demo: emptied the previous demo's store in {directory} (the sandbox starts afresh)")


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
    start_clean(directory)
    life = f"{int(access.total_seconds())}s"
    sandbox = SandboxServer(auto_approve=False, lifetimes=_lifetimes(life, DEMO_REFRESH_TTL))
    await sandbox.start()
    timing = demo_timing(access)
    refresh_before = timing["refresh_before"]
    config = demo_config(sandbox, directory, port, timing)
    path = directory / "refresher.yaml"
    path.write_text(DEMO_MARKER + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
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
    click.echo(demo_summary(dict(sandbox.state.counters)))
    return 0


def demo_summary(counters: dict[str, int]) -> str:
    """The closing line: what the sandbox saw, in words a newcomer can read."""
    per_platform = {p: counters.get(f"{p}.rotated", 0) for p in PLATFORMS}
    reuses = sum(v for k, v in counters.items() if k.endswith(".reuse"))
    each = ", ".join(f"{p} {n}" for p, n in per_platform.items())
    return (
        f"demo finished: {sum(per_platform.values())} refreshes, each answered with a new refresh token "
        f"({each}); {reuses} reuses of an already rotated refresh token (must be 0: a reuse means two "
        "refreshes raced and one of them lost the account)."
    )


def _probe_port(port: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            fail(f"port {port} is in use: pass --port 0 for any free port, or stop what uses it")
