"""Bad command-line arguments: a clear message, exit code 2, never a traceback, never a secret.

Most cases run through the real entry point inside one subprocess (one interpreter start for all); a few
run as their own ``python -m refresher`` process end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SECRET = "s3cr3t-cli-args-value-never-echoed-77"

RUNNER = r"""
import contextlib, io, json, sys
from refresher.cli import main
cases = json.loads(sys.argv[1])
results = []
for argv in cases:
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(argv, prog_name="refresher")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc(file=err)
            code = -1
    results.append({"code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
print(json.dumps(results))
"""


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    path = root / "refresher.yaml"
    path.write_text(
        f"store:\n  url: sqlite:///{root / 'tokens.db'}\nserver:\n  enabled: false\napps:\n  shop-sg:\n"
        f'    platform: shopee\n    partner_id: 1000001\n    partner_key: "{SECRET}"\n'
        "    redirect_uri: https://erp.example.com/callback/shop-sg\n",
        encoding="utf-8",
    )
    return path


def cases(config: Path) -> list[tuple[list[str], str]]:
    """(argv, a fragment the error must contain)."""
    c = str(config)
    return [
        (["frobnicate"], "No such command"),
        (["refersh"], "No such command"),
        (["--no-such-flag"], "No such option"),
        (["status", "--bogus"], "No such option"),
        (["refresh", "-c", c], "Missing argument"),
        (["token", "-c", c, "shop-sg"], "Missing argument"),
        (["exchange", "-c", c, "shop-sg"], "either CALLBACK"),
        (["exchange", "-c", c, "shop-sg", "--code", "x", "--param", "shop_id"], "give NAME=VALUE"),
        (["exchange", "-c", c, "shop-sg", "--code", "x", "--param", "code=y"], "once per name"),
        (["exchange", "-c", c, "shop-sg", "?code=x&shop_id=1", "--param", "shop_id=2"], "--param goes with --code"),
        (["auth-url", "-c", c], "Missing argument"),
        (["refresh", "-c", c, "no-such-app", "shop:1"], "no-such-app"),
        (["token", "-c", c, "no-such-app", "shop:1"], "no-such-app"),
        (["auth-url", "-c", c, "no-such-app"], "no-such-app"),
        (["authorize", "-c", c, "shop-sg", "--timeout", "soon"], "--timeout"),
        (["authorize", "-c", c, "shop-sg", "--timeout", "-5"], "--timeout"),
        (["authorize", "-c", c, "shop-sg", "--timeout", "0"], "--timeout"),
        (["sandbox", "--faults", "shopee:refresh"], "faults"),
        (["sandbox", "--faults", "shopee:refresh:teapot"], "faults"),
        (["sandbox", "--faults", "nowhere:refresh:503"], "faults"),
        (["sandbox", "--faults", "shopee:refresh:503@2.5"], "faults"),
        (["sandbox", "--faults", "shopee:refresh:503|xZ"], "faults"),
        (["sandbox", "--port", "http"], "Invalid value"),
        (["status", "-c", str(config.parent / "missing.yaml")], "no such file"),
        (["check-config", "-c"], "requires an argument"),
        (["invite", "-c", c, "shop-sg", "--ttl", "100000000d"], "at most 365 days"),
        (["invite", "-c", c, "shop-sg", "--ttl", "99999999999999d"], "--ttl"),
        (["invite", "-c", c, "shop-sg", "--ttl", "366d"], "at most 365 days"),
    ]


@pytest.fixture(scope="module")
def outcomes(config: Path) -> list[dict[str, Any]]:
    argvs = [argv for argv, _ in cases(config)]
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return list(json.loads(result.stdout))


def test_bad_arguments(config: Path, outcomes: list[dict[str, Any]]) -> None:
    problems = []
    for (argv, fragment), outcome in zip(cases(config), outcomes, strict=True):
        stderr = outcome["stderr"]
        where = " ".join(argv)
        if "Traceback" in stderr:
            problems.append(f"{where}: traceback\n{stderr}")
        elif outcome["code"] != 2:
            problems.append(f"{where}: exit {outcome['code']}: {stderr.strip()[:300]}")
        elif fragment.lower() not in stderr.lower():
            problems.append(f"{where}: {fragment!r} not in {stderr.strip()[:300]!r}")
        elif SECRET in stderr + outcome["stdout"]:
            problems.append(f"{where}: echoed a secret")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [(["frobnicate"], "No such command"), (["sandbox", "--faults", "shopee:refresh:teapot"], "faults")],
)
def test_bad_arguments_in_a_real_process(argv: list[str], fragment: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "refresher", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    assert fragment.lower() in result.stderr.lower()


def _daemon_config(path: Path, store: Path, port: int) -> Path:
    path.write_text(
        f"store:\n  url: sqlite:///{store}\nserver:\n  port: {port}\napps:\n  shop-sg:\n"
        f'    platform: shopee\n    partner_id: 1000001\n    partner_key: "{SECRET}"\n'
        "    base_url: http://127.0.0.1:9\n    interval: 1s\n",
        encoding="utf-8",
    )
    return path


def test_a_second_daemon_on_a_busy_port_says_one_line_before_starting_anything(tmp_path: Path) -> None:
    """Issue 12.11: the second ``refresher run`` used to start its sweeps, then fail at the bind with
    150 lines and tracebacks. Now the port is taken first: one line, exit 2, its store not even opened."""
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    first_config = _daemon_config(tmp_path / "first.yaml", tmp_path / "first.db", port)
    first = subprocess.Popen(
        [sys.executable, "-m", "refresher", "run", "-c", str(first_config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert first.poll() is None, "the first daemon exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the first daemon never answered"
            time.sleep(0.2)
        second_store = tmp_path / "second.db"
        second_config = _daemon_config(tmp_path / "second.yaml", second_store, port)
        second = subprocess.run(
            [sys.executable, "-m", "refresher", "run", "-c", str(second_config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env(),
            check=False,
        )
        output = (second.stdout + second.stderr).strip().splitlines()
        assert second.returncode == 2, (second.returncode, output)
        assert output == [
            f"refresher: {second_config}: server.port: cannot listen on 127.0.0.1:{port}: Address already in "
            "use (another refresher running? stop it or choose another server.port)"
        ]
        assert not second_store.exists()  # nothing ran before the bind failed
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        first.terminate()
        first.wait(timeout=30)
