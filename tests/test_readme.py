"""The configuration shown in the README is valid (with its environment variables set)."""

from __future__ import annotations

import re
from pathlib import Path

from refresher import platforms
from refresher.config import parse_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_example_is_valid() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README shows a configuration"
    text = blocks[0]
    env = {name: f"value-for-{name.lower()}-0123456789" for name in re.findall(r"\$\{([A-Z0-9_]+)\}", text)}
    env["SHOPEE_PARTNER_ID"] = "2001234"
    env["SLACK_APPRISE_URL"] = "json://127.0.0.1:9/hook"
    settings = parse_config(text, file="README.md", env=env, credential_models=platforms.credential_models())
    assert "shopee-sg" in settings.apps
    assert [c.type for c in settings.alerts.channels] == ["webhook", "apprise"]


def test_readme_commands_exist() -> None:
    from click.testing import CliRunner

    from refresher.cli import main

    text = README.read_text()
    for command in sorted(set(re.findall(r"`refresher ([a-z][a-z-]+)", text))):
        result = CliRunner().invoke(main, [*command.split(), "--help"])
        assert result.exit_code == 0, f"`refresher {command}` from the README: {result.output[:200]}"


ROOT = README.parent
# What a user's clone holds: none of it may point outside the repository.
STANDALONE = (
    "README.md",
    "CONTRIBUTING.md",
    "CHANGELOG.md",
    "docs",
    "refresher",
    "tests",
    "benchmarks",
    "scripts",
    "deploy",
)
OUTSIDE = re.compile(r"(?<![\w-])(?:\.\./)?shared" + "/")  # split so this file does not name itself


def repository_texts() -> list[Path]:
    files: list[Path] = []
    for name in STANDALONE:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files


def test_docs_and_code_reference_nothing_outside_the_repository() -> None:
    files = repository_texts()
    assert len(files) > 50  # the walk found the tree
    offenders = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offenders += [
            f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)
        ]
    assert offenders == []


def test_relative_links_of_the_docs_resolve() -> None:
    pages = [README, *sorted((ROOT / "docs").glob("*.md")), *(ROOT / n for n in ("CONTRIBUTING.md", "CHANGELOG.md"))]
    broken = []
    for page in (p for p in pages if p.exists()):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
