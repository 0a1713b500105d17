"""``refresher authorize``: the desktop flow — open the browser, wait for the redirect on 127.0.0.1, store it.

Like the other onboarding commands it runs without the daemon and opens the store itself; the flow is
:mod:`refresher.onboarding`, the same code the web routes use. Nothing printed contains a token or a code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sys
import webbrowser
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from refresher.cli.commands_onboarding import opened_app, print_accounts, run_flow, say, settings_for
from refresher.cli.common import config_option, fail, friendly_errors, main
from refresher.config import Settings, format_duration, parse_duration
from refresher.domain import AuthorizationDenied, Clock, RefresherError, SystemClock
from refresher.store.base import StoreError

EXIT_GRANTED = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 3
EXIT_CANCELLED = 130
DEFAULT_PORT = 3017


def loopback_target(redirect_uri: str | None, app: str, port: int | None) -> tuple[str, int, str]:
    """(redirect URI to send, port to listen on, callback path) for the desktop flow, or exit 2."""
    from refresher.onboarding import is_loopback_http

    if not redirect_uri or not is_loopback_http(redirect_uri):
        fail(
            f"apps.{app}.redirect_uri must be a loopback URL such as http://127.0.0.1:{DEFAULT_PORT}/callback "
            "for `refresher authorize` (use /connect on the daemon for a public one)"
        )
    parts = urlsplit(redirect_uri)
    listen = port if port is not None else (parts.port or DEFAULT_PORT)
    if parts.port != listen:
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        redirect_uri = urlunsplit((parts.scheme, f"{host}:{listen}", parts.path, parts.query, ""))
        click.echo(f"note: redirecting to port {listen}; the platform must accept {redirect_uri}", err=True)
    return redirect_uri, listen, parts.path or "/"


async def desktop_flow(
    settings: Settings,
    app: str,
    *,
    port: int | None,
    open_browser: bool,
    wait: dt.timedelta,
    clock: Clock,
    target: tuple[str, int, str] | None = None,
) -> int:
    """Serve the callback on 127.0.0.1, wait for the seller, store the grant; returns the exit code."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from refresher.onboarding import OnboardingError, StateError, begin, complete_flow
    from refresher.server import onboarding as pages
    from refresher.server.http import start_server, stop_server

    redirect_uri, listen, path = target or loopback_target(settings.app(app).redirect_uri, app, port)
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[int] = loop.create_future()
    secrets = settings.secrets()

    def settle(code: int) -> None:
        if not outcome.done():
            outcome.set_result(code)

    async with opened_app(settings, app, clock) as (store, platform):

        async def callback(request: Request) -> Response:
            params = dict(request.query_params)
            if outcome.done():
                return pages.message_page("Already handled", "done", ["This authorization is finished."], 409)
            try:
                if params.get("code") and not params.get("error"):
                    say("exchanging the code…")
                done = await complete_flow(app, platform, store, clock, params)
            except AuthorizationDenied as exc:
                say(f"denied: {exc.message}")
                settle(EXIT_FAILED)
                return pages.denied_page(exc)
            except StateError as exc:
                # Not our flow's redirect (a stale tab, a probe): refuse it and keep waiting.
                say(f"ignored a request to the callback: {exc.message}")
                return pages.state_page(exc)
            except OnboardingError as exc:
                say(f"failed: {exc.message}")
                settle(EXIT_FAILED)
                return pages.message_page("Authorization failed", "failed", [exc.message], 400)
            except StoreError as exc:  # before RefresherError, its root
                say(f"failed: the token store refused the accounts ({type(exc).__name__})")
                settle(EXIT_FAILED)
                return pages.message_page("Authorization failed", "failed", ["The token store failed."], 503)
            except RefresherError as exc:
                say(f"failed: {exc.error_class}: {exc.message}" + (f" (code {exc.code})" if exc.code else ""))
                settle(EXIT_FAILED)
                return pages.failure_page(exc, [*secrets, params.get("code", "")])
            say(f"granted: {len(done.accounts)} account(s) of app {app} stored")
            print_accounts(done.accounts, clock.now())
            settle(EXIT_GRANTED)
            return pages.granted_page(app, done.accounts, clock.now())

        async def not_here(request: Request) -> Response:
            return Response("not found", status_code=404, media_type="text/plain")

        web = Starlette(routes=[Route(path, callback)])
        web.add_route("/{rest:path}", not_here)
        try:
            server, task, _ = await start_server(web, "127.0.0.1", listen)
        except OSError as exc:
            fail(f"cannot listen on 127.0.0.1:{listen} ({exc.strerror or exc}); choose another --port")

        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            url, _ = await begin(
                app,
                platform,
                store,
                clock,
                redirect_uri=redirect_uri,
                ttl=max(settings.server.state_ttl, wait),
            )
            say(f"authorization URL: {url}")
            if open_browser and not webbrowser.open(url):
                say("could not open a browser; open the URL above yourself")
            say(
                f"waiting for the redirect to http://127.0.0.1:{listen}{path} "
                f"(times out in {format_duration(wait)}; Ctrl-C cancels)…"
            )
            stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            waiting: set[asyncio.Future[Any]] = {outcome, stopper}
            done_set, _ = await asyncio.wait(waiting, timeout=wait.total_seconds(), return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if outcome in done_set:
                return outcome.result()
            if stop.is_set():
                say("cancelled")
                return EXIT_CANCELLED
            say(f"timed out after {format_duration(wait)} without a redirect")
            return EXIT_TIMEOUT
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            # Lets the result page of a finished callback go out, then frees the port.
            await stop_server(server, task)


@main.command("authorize")
@config_option
@click.argument("app")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Loopback port (default: the redirect_uri's, else {DEFAULT_PORT}).",
)
@click.option("--no-browser", is_flag=True, help="Only print the URL; do not open a browser.")
@click.option("--timeout", "timeout_text", default="60s", show_default=True, help="How long to wait.")
@friendly_errors
def authorize(config_path: str | None, app: str, port: int | None, no_browser: bool, timeout_text: str) -> None:
    """Authorize APP from this machine: open the browser, wait for the redirect on 127.0.0.1, store it.

    Exit codes: 0 granted, 1 denied or failed, 3 timed out, 130 cancelled.
    """
    settings = settings_for(config_path, app)
    try:
        timeout = parse_duration(timeout_text)
    except ValueError as exc:
        fail(f"--timeout: {exc}")
    if timeout <= dt.timedelta(0):
        fail("--timeout: must be positive")
    # Checked before the event loop starts, so a wrong redirect URI is one line and nothing else.
    target = loopback_target(settings.app(app).redirect_uri, app, port)
    flow = desktop_flow(
        settings, app, port=port, open_browser=not no_browser, wait=timeout, clock=SystemClock(), target=target
    )
    sys.exit(run_flow(flow))
