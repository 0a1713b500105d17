"""No dead code (issue 12, 7): vulture finds no function, class, method, attribute or variable of the
package, the tests, the benchmarks or the scripts that nothing uses.

What a framework calls by name (routes, validators, httpx/uvicorn/SQLAlchemy hooks) is listed in
pyproject.toml's [tool.vulture], each group with the framework that calls it; a name that is only dead
goes, it is not added there. ``vulture`` on the command line reads the same configuration.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from vulture.core import Vulture

ROOT = Path(__file__).resolve().parent.parent


def test_vulture_finds_no_unused_code() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["vulture"]
    finder = Vulture(ignore_names=config["ignore_names"], ignore_decorators=config["ignore_decorators"])
    finder.scavenge([str(ROOT / p) for p in config["paths"]], exclude=[str(ROOT / p) for p in config["exclude"]])
    assert len(finder.defined_funcs) > 500  # it read the tree, not nothing
    unused = [item.get_report() for item in finder.get_unused_code(min_confidence=config["min_confidence"])]
    assert unused == [], "unused code: remove it, or name the framework that calls it in [tool.vulture]"
