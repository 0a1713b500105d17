"""What is wrong with a config file: one problem per line, naming file, line and key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from refresher.domain import ConfigError


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file."""

    file: str
    path: str  # dotted key path, e.g. apps.shopee-sg.partner_key ("" for the whole file)
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigFileError(ConfigError):
    """A config file cannot be used. ``str()`` is one line per problem, never a secret."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
