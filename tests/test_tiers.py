"""The fast tier's definition in tests/conftest.py names real modules and tests, so a rename cannot
silently move an end-to-end test into the tier a developer runs while working (or drop a fast one)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import SLOW_MODULES, SLOW_TESTS

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
