"""Run an ASGI app with uvicorn inside the daemon's event loop, without uvicorn owning the signals."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn


class EmbeddedServer(uvicorn.Server):
    """uvicorn's server minus its signal capture: the daemon drains refreshes before the server stops
    (STYLE.md pitfall), so SIGTERM/SIGINT belong to the daemon."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_listener(host: str, port: int) -> socket.socket:
    """The server's bound socket (``port=0`` picks one); ``OSError`` (e.g. ``EADDRINUSE``) if it is taken.

    Separate from :func:`start_server` so the daemon can take its port before it starts anything else."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the socket says
    # it is TCP (proto 0 does not), and without it every response waited ~40 ms for Nagle + delayed ACK.
    # That delay sat between a platform rotating a token and our commit (issue 8's crash window).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def start_server(
    app: Any, host: str, port: int, *, access_log: bool = False, sock: socket.socket | None = None
) -> tuple[EmbeddedServer, asyncio.Task[None], int]:
    """Start serving ``app``; returns the server, its task and the bound port (``port=0`` picks one).
    ``sock``, from :func:`bind_listener`, is used instead of binding ``host:port`` here.

    ``access_log=False`` makes uvicorn silence its access logger; with True it leaves the logger as
    :func:`refresher.logging.configure_logging` set it (propagating, with secret query values redacted).
    """
    sock = sock or bind_listener(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=access_log,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http-server")
    while not server.started:
        if task.done():
            task.result()  # raises the startup error
        await asyncio.sleep(0.01)
    return server, task, bound


async def stop_server(server: EmbeddedServer, task: asyncio.Task[None], grace: float = 5.0) -> None:
    server.should_exit = True
    try:
        await asyncio.wait_for(task, grace)
    except (TimeoutError, asyncio.CancelledError):
        server.force_exit = True
        task.cancel()
