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
