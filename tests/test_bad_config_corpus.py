"""Broken configurations (tests/bad_configs/*.yaml) through the real CLI: one clear line per problem,
naming the file and the key path, exit code 2, never a traceback, never a secret.

Each corpus file starts with ``# expect: FRAGMENT``. Starting Python for each of 60+ files would cost a
minute, so one subprocess runs the real ``refresher`` entry point over every file (each in its own
``main([...])`` call with stderr captured); a handful more run as separate processes end to end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import assert_no_secret

CORPUS = Path(__file__).parent / "bad_configs"
FILES = sorted(CORPUS.glob("*.yaml"))
SECRET = "s3cr3t-corpus-value-never-echoed-0042"
PG_REFUSED = "postgresql://postgres@127.0.0.1:1/test"

RUNNER = r"""
import contextlib, io, json, sys
from refresher.cli import main
results = {}
for path in sys.argv[1:]:
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(["check-config", "-c", path], prog_name="refresher")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # what the CLI let escape: the test reports it
            import traceback
            traceback.print_exc(file=err)
            code = -1
    results[path] = {"code": code, "stderr": err.getvalue(), "stdout": out.getvalue()}
print(json.dumps(results))
"""


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFRESHER_")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def expected(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = re.match(r"# expect: (.+)", first)
    assert match, f"{path.name}: first line must be '# expect: FRAGMENT'"
    return match.group(1)


def check_output(path: Path, code: int, stderr: str, stdout: str, fragment: str) -> None:
    assert "Traceback" not in stderr, f"{path.name}: traceback\n{stderr}"
    assert code == 2, f"{path.name}: exit {code}\n{stderr}"
    assert_no_secret([stderr + stdout], [SECRET], f"the output for {path.name}")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, f"{path.name}: no message"
    for line in lines:
        # One line per problem, each naming the file (and its line where known).
        assert line.startswith(f"refresher: {path}"), f"{path.name}: {line!r}"
        assert len(line) < 400, line
    assert fragment in stderr, f"{path.name}: expected {fragment!r} in\n{stderr}"


@pytest.fixture(scope="module")
def corpus_results() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, *map(str, FILES)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(result.stdout))


def test_the_corpus_has_at_least_fifty_files() -> None:
    assert len(FILES) >= 50


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_broken_config_gives_one_clear_line_and_exit_2(path: Path, corpus_results: dict[str, Any]) -> None:
    outcome = corpus_results[str(path)]
    check_output(path, outcome["code"], outcome["stderr"], outcome["stdout"], expected(path))


def test_a_line_number_is_given_where_the_key_is_in_the_file(corpus_results: dict[str, Any]) -> None:
    path = CORPUS / "unknown_store_key.yaml"
    stderr = corpus_results[str(path)]["stderr"]
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("uri:"))
    assert f"{path}:{line}: store.uri" in stderr


def test_two_problems_give_two_lines(corpus_results: dict[str, Any]) -> None:
    stderr = corpus_results[str(CORPUS / "two_problems_at_once.yaml")]["stderr"]
    assert len(stderr.strip().splitlines()) == 2, stderr
    assert "apps.shop-sg.timezone" in stderr


@pytest.mark.parametrize(
    "name", ["yaml_tab_indent", "missing_env_secret", "key_and_key_file", "cron_bad_minute", "unknown_platform"]
)
def test_real_process_per_file(name: str) -> None:
    path = CORPUS / f"{name}.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "refresher", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )
    check_output(path, result.returncode, result.stderr, result.stdout, expected(path))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "refresher", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or cli_env(),
        check=False,
    )


def good_config(tmp_path: Path, store_url: str) -> Path:
    path = tmp_path / "refresher.yaml"
    path.write_text(
        f"store:\n  url: {store_url}\nserver:\n  enabled: false\napps:\n  shop-sg:\n    platform: shopee\n"
        f'    partner_id: 1000001\n    partner_key: "{SECRET}"\n',
        encoding="utf-8",
    )
    return path


def test_status_with_a_store_in_an_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: directory permissions do not bind")
        config = good_config(tmp_path, f"sqlite:///{locked / 'sub' / 'tokens.db'}")
        result = run_cli("status", "-c", str(config))
    finally:
        locked.chmod(0o700)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "store" in result.stderr.lower()
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_status_with_a_store_under_a_regular_file(tmp_path: Path) -> None:
    """Unwritable even for root: the store's directory is a file."""
    (tmp_path / "not-a-dir").write_text("x")
    config = good_config(tmp_path, f"sqlite:///{tmp_path / 'not-a-dir' / 'tokens.db'}")
    result = run_cli("status", "-c", str(config))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert SECRET not in result.stderr + result.stdout


@pytest.mark.parametrize("command", [["status"], ["run"]])
def test_store_on_a_refused_postgres_port(tmp_path: Path, command: list[str]) -> None:
    config = good_config(tmp_path, PG_REFUSED)
    result = run_cli(*command, "-c", str(config))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "store" in result.stderr.lower()
    assert SECRET not in result.stderr + result.stdout


def test_run_with_a_broken_config_exits_2_before_starting(tmp_path: Path) -> None:
    path = CORPUS / "missing_env_secret.yaml"
    result = run_cli("run", "-c", str(path))
    check_output(path, result.returncode, result.stderr, result.stdout, expected(path))
