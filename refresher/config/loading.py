"""YAML text → validated :class:`Settings`: line numbers, ``${VAR}`` interpolation, ``*_file`` secrets,
pydantic errors turned into one :class:`ConfigProblem` each, then the platform's credential models."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from refresher.config.checks import cross_field_problems
from refresher.config.errors import ConfigFileError, ConfigProblem
from refresher.config.models import AppSettings, Settings

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class _Lines:
    """Remembers the line of every key path in the YAML document."""

    def __init__(self) -> None:
        self.by_path: dict[tuple[str, ...], int] = {}

    def line(self, path: Sequence[Any]) -> int | None:
        key = tuple(str(p) for p in path)
        while key:
            if key in self.by_path:
                return self.by_path[key]
            key = key[:-1]
        return None


def _walk_nodes(
    node: yaml.Node, path: tuple[str, ...], lines: _Lines, problems: list[ConfigProblem], file: str
) -> None:
    lines.by_path.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    ConfigProblem(
                        file, ".".join((*path, key)), line, f"duplicate key (first defined on line {seen[key]})"
                    )
                )
            seen[key] = line
            lines.by_path[(*path, key)] = line
            _walk_nodes(value_node, (*path, key), lines, problems, file)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk_nodes(item, (*path, str(index)), lines, problems, file)


# Lone UTF-16 surrogates: valid in a YAML escape, not encodable as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _interpolate(
    value: Any,
    path: tuple[str, ...],
    env: Mapping[str, str],
    base_dir: Path,
    lines: _Lines,
    problems: list[ConfigProblem],
    file: str,
) -> Any:
    """Expand ``${VAR}`` in strings and ``*_file`` keys, recursively."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            problems.append(
                ConfigProblem(file, ".".join(path), lines.line(path), f"environment variable {name} is not set")
            )
            return ""

        expanded = _VAR.sub(substitute, value)
        if _SURROGATE.search(expanded):
            # YAML's "\ud83d" escapes yield lone surrogates, which no UTF-8 signer or HTTP library can
            # encode: refuse them here rather than crash on the first signed call.
            problems.append(
                ConfigProblem(
                    file,
                    ".".join(path),
                    lines.line(path),
                    "contains an unpaired surrogate (a \\uD800-\\uDFFF escape): write the character itself "
                    "or its \\U0001xxxx escape",
                )
            )
        return expanded
    if isinstance(value, list):
        return [
            _interpolate(item, (*path, str(i)), env, base_dir, lines, problems, file) for i, item in enumerate(value)
        ]
    if isinstance(value, dict):
        result: dict[Any, Any] = {}
        for key, item in value.items():
            expanded = _interpolate(item, (*path, str(key)), env, base_dir, lines, problems, file)
            if isinstance(key, str) and key.endswith("_file") and len(key) > 5:
                target = key[: -len("_file")]
                where = ".".join((*path, key))
                if target in value:
                    problems.append(
                        ConfigProblem(file, where, lines.line((*path, key)), f"give {target} or {key}, not both")
                    )
                    continue
                if not isinstance(expanded, str) or not expanded:
                    problems.append(ConfigProblem(file, where, lines.line((*path, key)), "must be a file path"))
                    continue
                secret_path = Path(expanded)
                if not secret_path.is_absolute():
                    secret_path = base_dir / secret_path
                try:
                    result[target] = secret_path.read_text(encoding="utf-8").rstrip("\r\n")
                except OSError as exc:
                    problems.append(
                        ConfigProblem(
                            file, where, lines.line((*path, key)), f"cannot read {secret_path}: {exc.strerror}"
                        )
                    )
                except UnicodeDecodeError as exc:
                    # Like an unpaired surrogate: a secret no signer can encode (the bytes are not shown).
                    problems.append(
                        ConfigProblem(
                            file,
                            where,
                            lines.line((*path, key)),
                            f"{secret_path} is not UTF-8 text (byte {exc.start} cannot be decoded)",
                        )
                    )
                continue
            result[key] = expanded
        return result
    return value


_TYPE_HINTS = {
    "string_type": 'expected text; quote numbers and yes/no/on/off in YAML (e.g. app_key: "123")',
    "extra_forbidden": "unknown key (a typo?)",
    "missing": "is required",
}


def _describe(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "string_type" and isinstance(error.get("input"), bool | int | float):
        return _TYPE_HINTS["string_type"]
    if kind in ("extra_forbidden", "missing"):
        return _TYPE_HINTS[kind]
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def _problems_from(exc: ValidationError, prefix: tuple[str, ...], lines: _Lines, file: str) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors(include_url=False, include_input=True):
        loc = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
        # Discriminated unions add the tag name to the location; it is not a key in the file.
        loc = [p for p in loc if p not in ("webhook", "apprise")]
        if loc and loc[-1] == "credentials":
            loc = loc[:-1]
        if "credentials" in loc:
            loc.remove("credentials")
        path = (*prefix, *loc)
        problems.append(ConfigProblem(file, ".".join(path), lines.line(path), _describe(error)))
    return problems


def parse_config(
    text: str,
    *,
    file: str = "<string>",
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    credential_models: Mapping[str, type[BaseModel]] | None = None,
    access_lifetimes: Mapping[str, dt.timedelta] | None = None,
) -> Settings:
    """Parse and validate YAML text. Raises :class:`ConfigFileError` listing every problem.

    ``access_lifetimes`` (platform → its access token's lifetime) adds the refresh_before check."""
    env = os.environ if env is None else env
    base_dir = base_dir or Path.cwd()
    problems: list[ConfigProblem] = []
    lines = _Lines()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigFileError(
            [ConfigProblem(file, "", mark.line + 1 if mark else None, f"invalid YAML: {reason}")]
        ) from None
    if node is None:
        # Nothing but comments or blanks: surely not the file meant (a config with no apps at all still
        # says so with "apps: {}").
        raise ConfigFileError([ConfigProblem(file, "", 1, "the file is empty (no settings in it)")])
    _walk_nodes(node, (), lines, problems, file)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # constructor errors (e.g. bad tags)
        mark = getattr(exc, "problem_mark", None)
        raise ConfigFileError(
            [ConfigProblem(file, "", mark.line + 1 if mark else None, "invalid YAML value")]
        ) from None
    if not isinstance(data, dict):
        raise ConfigFileError([ConfigProblem(file, "", 1, "the top level must be a mapping of keys")])
    data = _interpolate(data, (), env, base_dir, lines, problems, file)
    if problems:
        raise ConfigFileError(problems)
    try:
        settings = Settings.model_validate({**data, "source": file})
    except ValidationError as exc:
        raise ConfigFileError(_problems_from(exc, (), lines, file)) from None

    if credential_models is not None:
        settings = _validate_credentials(settings, credential_models, lines, file)
    problems = cross_field_problems(settings, lines.line, file, access_lifetimes)
    if problems:
        raise ConfigFileError(problems)
    return settings


def _validate_credentials(
    settings: Settings, models: Mapping[str, type[BaseModel]], lines: _Lines, file: str
) -> Settings:
    problems: list[ConfigProblem] = []
    apps: dict[str, AppSettings] = {}
    for name, app in settings.apps.items():
        prefix = ("apps", name)
        model = models.get(app.platform)
        if model is None:
            known = ", ".join(sorted(models)) or "none installed"
            problems.append(
                ConfigProblem(
                    file,
                    ".".join((*prefix, "platform")),
                    lines.line((*prefix, "platform")),
                    f"unknown platform {app.platform!r} (known: {known})",
                )
            )
            continue
        try:
            credentials = model.model_validate(app.credentials or {})
        except ValidationError as exc:
            problems.extend(_problems_from(exc, prefix, lines, file))
            continue
        apps[name] = app.model_copy(update={"credentials": credentials})
    if problems:
        raise ConfigFileError(problems)
    return settings.model_copy(update={"apps": apps})


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    credential_models: Mapping[str, type[BaseModel]] | None = None,
    access_lifetimes: Mapping[str, dt.timedelta] | None = None,
) -> Settings:
    """Read, interpolate and validate a config file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError([ConfigProblem(str(file), "", None, "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not readable UTF-8 text"
        raise ConfigFileError([ConfigProblem(str(file), "", None, f"cannot read: {reason}")]) from None
    return parse_config(
        text,
        file=str(file),
        env=env,
        base_dir=file.parent,
        credential_models=credential_models,
        access_lifetimes=access_lifetimes,
    )
