"""Platform facts live in the plugins (issue 12, 2): outside ``refresher/platforms/`` (and the sandbox, the
platforms' stand-in) no code and no template names a platform. Docstrings and comments may give one as an
example; a string, a name or a comparison in code may not: that is a platform fact the plugin should
declare (``display_name``, ``grant_subject``, ``proxy_request_headers``, ``lost_token_hint`` …)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "refresher"
NAMED = re.compile(r"shopee|lazada|tiktok", re.IGNORECASE)
# Where a platform is named on purpose: the plugins, the sandbox and the commands that run it, migrations.
OWN = ("platforms/", "sandbox/", "cli/commands_sandbox.py", "store/migrations/")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def platform_mentions(path: Path) -> list[str]:
    if path.suffix == ".html":
        return [line.strip() for line in path.read_text().splitlines() if NAMED.search(line)]
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        else:
            continue
        if NAMED.search(text):
            found.append(f"line {node.lineno}: {text[:80]!r}")
    return found


def test_generic_code_names_no_platform() -> None:
    checked = 0
    offenders: dict[str, list[str]] = {}
    for path in sorted([*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.html")]):
        where = path.relative_to(PACKAGE).as_posix()
        if where.startswith(OWN):
            continue
        checked += 1
        mentions = platform_mentions(path)
        if mentions:
            offenders[where] = mentions
    assert checked > 80  # the walk saw the package
    assert offenders == {}


def test_the_scan_sees_a_platform_in_code(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""Shopee in a docstring is fine."""\n# and lazada in a comment\nif x == "tiktok":\n    pass\n')
    assert platform_mentions(sample) == ["line 3: 'tiktok'"]
