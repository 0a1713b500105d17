"""The soak's sandbox, in this process or in a child process of its own, driven the same way: over HTTP.

Why a child process: in one process the sandbox's own CPU (signing checks, token chains, fault draws)
shares the daemon's GIL, so the full soak (~1.5 million refreshes) measured the two together and ran ~7
hours. In a child the sandbox has a core of its own, as a real platform would, and the run measures the
daemon alone.

Why over HTTP in both modes: the harness then has one way to revoke a grant, read the counters, set the
fault plan and look at the chains (the sandbox's admin endpoints), and the short soak test exercises the
very path the full run uses. The only addition to the sandbox is a clock the harness sets (``PUT
/_sandbox/clock``), because the sandbox must judge expiry by the simulated time the daemon lives in; it is
mounted here, for the soak only, never by ``refresher sandbox``.

``python -m tests.soak.sandbox_link --seed 8 --fault-delay 2.2 --start 2026-01-01T00:00:00+00:00`` is
the child: it prints ``listening PORT`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from refresher.domain import FakeClock
from refresher.sandbox import SandboxServer
from refresher.sandbox.core import fingerprint
from refresher.sandbox.runner import answer_consent

PLATFORMS = ("shopee", "tiktok_shop", "lazada", "tiktok")
ADMIN = "/_sandbox"


def serving(clock: FakeClock, *, seed: int, fault_delay: float, port: int = 0) -> SandboxServer:
    """A sandbox on ``clock`` with the soak's clock endpoint and every platform's app registered with the
    redirect URI the harness's config uses (``app_config``'s default)."""
    server = SandboxServer(port=port, clock=clock, seed=seed, fault_delay=fault_delay)
    for name in PLATFORMS:
        server.app_config(name)

    async def set_clock(request: Request) -> Response:
        body = await request.json()
        clock.set(dt.datetime.fromisoformat(str(body["now"])))
        return JSONResponse({"now": clock.now().isoformat()})

    server.app.router.routes.insert(0, Route(f"{ADMIN}/clock", set_clock, methods=["PUT"]))
    return server


class SandboxLink:
    """What the harness needs of the sandbox, wherever it runs. ``async with SandboxLink(...) as link``."""

    def __init__(self, start: dt.datetime, *, seed: int, fault_delay: float, own_process: bool) -> None:
        self.own_process = own_process
        self._start, self._seed, self._fault_delay = start, seed, fault_delay
        self._inline: SandboxServer | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._clock_sent: dt.datetime | None = None
        self.port = 0
        self.http = httpx.AsyncClient(timeout=30)
        # Only for app_config()'s dict (hosts, credentials): the serving side registered the apps itself.
        self._view: SandboxServer | None = None

    async def __aenter__(self) -> SandboxLink:
        if self.own_process:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.soak.sandbox_link",
                    "--seed",
                    str(self._seed),
                    "--fault-delay",
                    str(self._fault_delay),
                    "--start",
                    self._start.isoformat(),
                ],
                stdin=subprocess.PIPE,  # never written: the child ends when it closes (below)
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
            assert self._proc.stdout is not None
            line = await asyncio.to_thread(self._proc.stdout.readline)
            if not line.startswith("listening "):
                self._proc.kill()
                raise RuntimeError(f"the soak's sandbox process did not start: {line!r}")
            self.port = int(line.split()[1])
        else:
            self._inline = await serving(FakeClock(self._start), seed=self._seed, fault_delay=self._fault_delay).start()
            self.port = self._inline.port
        self._clock_sent = self._start
        self._view = SandboxServer(port=self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.http.aclose()
        if self._inline is not None:
            await self._inline.stop()
        if self._proc is not None:
            self._proc.terminate()
            try:
                await asyncio.to_thread(self._proc.wait, 10)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app_config(self, platform: str) -> dict[str, Any]:
        assert self._view is not None
        return self._view.app_config(platform)

    async def approve(self, authorize_url: str, **options: str) -> dict[str, str]:
        return await answer_consent(authorize_url, "approve", options)

    async def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = await self.http.request(method, f"{self.url}{ADMIN}/{path}", json=body)
        answer.raise_for_status()
        return answer.json()

    async def set_clock(self, now: dt.datetime) -> None:
        """The sandbox's time is the daemon's: sent before every sweep whose simulated time moved."""
        if now != self._clock_sent:
            await self._admin("PUT", "clock", {"now": now.isoformat()})
            self._clock_sent = now

    async def set_faults(self, spec: str | None, seed: int | None = None) -> None:
        await self._admin("PUT", "faults", {"spec": spec or "", "seed": seed})

    async def counters(self) -> dict[str, int]:
        return dict(await self._admin("GET", "counters"))

    async def chains(self) -> list[dict[str, Any]]:
        """Every token chain the sandbox keeps, as its admin endpoint shows them (fingerprints, no tokens)."""
        return list(await self._admin("GET", "accounts"))

    async def revoke_holder_of(self, platform: str, refresh_token: str) -> bool:
        """Revoke, on the platform, the grant whose current refresh token is ``refresh_token``."""
        wanted = fingerprint(refresh_token)
        for chain in await self.chains():
            if chain["platform"] == platform and chain["refresh_fingerprint"] == wanted:
                answer = await self._admin("POST", "revoke", {"platform": platform, "chain_id": chain["id"]})
                return int(answer["revoked"]) > 0
        return False

    def cpu_seconds(self) -> float | None:
        """The child's CPU time so far (None in-process: it is in ours)."""
        if self._proc is None:
            return None
        with open(f"/proc/{self._proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _serve(args: argparse.Namespace) -> None:
    server = await serving(
        FakeClock(dt.datetime.fromisoformat(args.start)), seed=args.seed, fault_delay=args.fault_delay
    ).start()
    print(f"listening {server.port}", flush=True)
    # Nobody reads the pipe after that line: anything printed later must not fill it and block us.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())

    def end_with_the_parent() -> None:
        # stdin is the parent's pipe, never written: it reaches EOF when the parent exits, killed included
        # (a soak stopped with kill left its sandbox serving), and that ends this process as SIGTERM would.
        sys.stdin.read()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=end_with_the_parent, daemon=True).start()
    await server.serve_until_signalled()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the soak's sandbox as a process of its own")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--fault-delay", type=float, required=True)
    parser.add_argument("--start", required=True)
    asyncio.run(_serve(parser.parse_args()))
