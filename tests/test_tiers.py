"""The fast tier's definition in tests/conftest.py names real modules and tests, so a rename cannot
silently move an end-to-end test into the tier a developer runs while working (or drop a fast one)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import MIXED_MODULES, SLOW_MODULES, SLOW_TESTS

TESTS = Path(__file__).resolve().parent


def test_every_slow_module_exists() -> None:
    modules = {path.stem for path in TESTS.rglob("test_*.py")}
    assert len(modules) > 30
    assert sorted(SLOW_MODULES - modules) == []


def test_every_slow_test_names_a_test_function() -> None:
    for entry in SLOW_TESTS:
        module, prefix = entry.split("::")
        text = (TESTS / f"{module}.py").read_text()
        assert re.search(rf"^(?:async )?def {re.escape(prefix)}", text, re.M), entry


# What makes a module end-to-end: it starts processes, or uses the sandbox or a daemon (as a fixture too).
HEAVY = re.compile(
    r"^import (?:subprocess|multiprocessing)\b|\b(?:SandboxServer|running_daemon|started_daemon)\b|\bdaemon: Daemon\b",
    re.M,
)


def test_a_module_that_starts_processes_or_servers_is_in_the_slow_tier() -> None:
    modules = [path for path in TESTS.rglob("test_*.py") if path.stem != "test_tiers"]
    heavy = {path.stem for path in modules if HEAVY.search(path.read_text())}
    assert {"test_replicas", "test_onboarding_web"} <= heavy  # the pattern sees what it should
    unclassified = sorted(heavy - SLOW_MODULES - MIXED_MODULES)
    assert unclassified == [], "add these to SLOW_MODULES (tests/conftest.py), or split their slow tests out"
    for module in MIXED_MODULES:
        assert any(entry.startswith(f"{module}::") for entry in SLOW_TESTS), module
