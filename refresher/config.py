"""YAML configuration → validated, typed settings.

* ``${VAR}`` and ``${VAR:-default}`` are interpolated in every string value (``$$`` is a literal ``$``);
  an unset variable without a default is an error naming the variable.
* ``<key>_file: /path`` reads the secret for ``<key>`` from a file (Docker / Kubernetes secrets).
* Every problem is reported as one line: ``FILE:LINE: key.path: what is wrong``.

This module imports nothing of the project. Platform plugins validate their own credential keys:
``load_config`` takes a mapping ``platform name -> pydantic model`` (the registry provides it).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from refresher.domain import ConfigError, UnknownApp

# ------------------------------------------------------------------------------------------ errors


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


# --------------------------------------------------------------------------------------- durations

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> dt.timedelta:
    """``"90s"``, ``"5m"``, ``"1h30m"``, ``"7d"``, or a number of seconds → timedelta."""
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 2h or 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return dt.timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return dt.timedelta(seconds=float(text))
        pos, total = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return dt.timedelta(seconds=total)
    raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 2h, 7d or 1h30m)")


Duration = Annotated[dt.timedelta, BeforeValidator(parse_duration)]


def format_duration(value: dt.timedelta) -> str:
    """A short human form: ``2d3h``, ``45m``, ``-5m`` …"""
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return sign + ("".join(parts) or "0s")


# ----------------------------------------------------------------------------------------- models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _split_list(value: Any) -> Any:
    """Accept a list, or one string with one item per line / comma (as a ``*_file`` yields)."""
    if isinstance(value, str):
        return [part.strip() for part in re.split(r"[\n,]", value) if part.strip()]
    return value


class StoreSettings(_Strict):
    url: str = "sqlite:///tokens.db"
    encryption_keys: Annotated[list[SecretStr], BeforeValidator(_split_list)] = Field(default_factory=list)
    history_versions: int = Field(default=10, ge=1, le=1000)
    audit_retention: Duration = dt.timedelta(days=90)
    lease_ttl: Duration = dt.timedelta(minutes=10)
    pool_size: int = Field(default=5, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql|postgres)(\+\w+)?://", value):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


Scope = Literal["tokens:read", "tokens:read_refresh", "accounts:read", "accounts:write", "refresh", "proxy"]


class ApiToken(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    secret: SecretStr
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["tokens:read", "accounts:read"]))

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value


class ServerSettings(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    public_url: str | None = None  # how sellers' browsers reach this server (for links)
    admin_token: SecretStr | None = None
    api_tokens: list[ApiToken] = Field(default_factory=list)
    return_to_allowlist: list[str] = Field(default_factory=list)
    state_ttl: Duration = dt.timedelta(minutes=15)
    invite_secret: SecretStr | None = None
    connect_requires_auth: bool = True
    # Who the seller pages say is asking for access (an app's own values win), and how long a console
    # login lasts.
    display_name: str | None = Field(default=None, max_length=120)
    logo_url: str | None = None
    console_session: Duration = dt.timedelta(hours=8)

    @field_validator("logo_url")
    @classmethod
    def _logo_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class WebhookChannel(_Strict):
    type: Literal["webhook"]
    name: str
    url: str
    secret: SecretStr | None = None
    timeout: Duration = dt.timedelta(seconds=10)
    headers: dict[str, str] = Field(default_factory=dict)


class AppriseChannel(_Strict):
    type: Literal["apprise"]
    name: str
    url: SecretStr  # chat URLs embed their tokens


Channel = Annotated[WebhookChannel | AppriseChannel, Field(discriminator="type")]


class AlertSettings(_Strict):
    after_failures: int = Field(default=3, ge=1, le=1000)
    reauth_warning: Duration = dt.timedelta(days=3)
    repeat_every: Duration = dt.timedelta(hours=24)
    delivery_attempts: int = Field(default=5, ge=1, le=50)
    # Alarm when the token store has refused writes (or not answered) for this long.
    store_outage: Duration = dt.timedelta(minutes=2)
    channels: list[Channel] = Field(default_factory=list)


class LoggingSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    # uvicorn's line per HTTP request; off by default (secret query values are redacted when it is on).
    access_log: bool = False


class RetrySettings(_Strict):
    attempts: int = Field(default=4, ge=1, le=20)
    initial_delay: Duration = dt.timedelta(seconds=1)
    max_delay: Duration = dt.timedelta(seconds=30)


class HookSettings(_Strict):
    url: str
    secret: SecretStr | None = None
    timeout: Duration = dt.timedelta(seconds=10)


# Keys every app has, whatever its platform; the rest are the platform's credentials.
_COMMON_APP_KEYS = {
    "platform",
    "base_url",
    "hosts",
    "redirect_uri",
    "schedule",
    "interval",
    "timezone",
    "refresh_before",
    "concurrency",
    "rate_limit",
    "retry",
    "timeout",
    "on_success",
    "on_failure",
    "enabled",
    "scopes",
    "credentials",
    "display_name",
    "logo_url",
}


class AppSettings(_Strict):
    """One set of credentials for one platform."""

    name: str = ""  # filled from the mapping key
    platform: str
    base_url: str | None = None  # overrides every host of the platform (sandbox, test server)
    hosts: dict[str, str] = Field(default_factory=dict)  # per-role overrides: consent, token, api …
    redirect_uri: str | None = None
    schedule: str | None = None  # cron, 5 fields (or 6 with seconds first); default per platform
    interval: Duration | None = None  # alternative to schedule (tests, demos)
    timezone: str = "UTC"
    refresh_before: Duration | None = None  # default per platform
    concurrency: int = Field(default=4, ge=1, le=256)
    rate_limit: float = Field(default=10.0, gt=0, le=10000)  # requests per second for this app
    retry: RetrySettings = Field(default_factory=RetrySettings)
    timeout: Duration = dt.timedelta(seconds=20)
    on_success: HookSettings | None = None
    on_failure: HookSettings | None = None
    enabled: bool = True
    scopes: list[str] = Field(default_factory=list)
    display_name: str | None = Field(default=None, max_length=120)  # seller pages; server's otherwise
    logo_url: str | None = None
    # The platform's own keys (partner_id, app_key, app_secret …), validated by the plugin's model.
    credentials: Any = None

    @model_validator(mode="before")
    @classmethod
    def _collect_credentials(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        common = {k: v for k, v in data.items() if k in _COMMON_APP_KEYS or k == "name"}
        common["credentials"] = {k: v for k, v in data.items() if k not in common}
        return common

    @field_validator("base_url", "redirect_uri", "logo_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("schedule")
    @classmethod
    def _cron_fields(cls, value: str | None) -> str | None:
        if value is not None:
            validate_cron(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def credential(self, name: str) -> Any:
        """One credential value (secrets come back as plain strings)."""
        value = getattr(self.credentials, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value


APP_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Settings(_Strict):
    source: str = "<defaults>"
    store: StoreSettings = Field(default_factory=StoreSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    apps: dict[str, AppSettings] = Field(default_factory=dict)

    @field_validator("apps", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            named = {}
            for key, app in value.items():
                if not isinstance(key, str) or not APP_NAME.match(key):
                    raise ValueError(
                        f"app name {key!r} must be lowercase letters, digits, '-' or '_' (it is used in URLs)"
                    )
                named[key] = {**app, "name": key} if isinstance(app, Mapping) else app
            return named
        return value

    def app(self, name: str) -> AppSettings:
        try:
            return self.apps[name]
        except KeyError:
            known = ", ".join(sorted(self.apps)) or "none"
            raise UnknownApp(f"unknown app {name!r} (configured: {known})") from None

    def secrets(self) -> list[str]:
        """Every secret value in these settings (for tests and the log redactor)."""
        found: list[str] = []

        def walk(obj: Any) -> None:
            if isinstance(obj, SecretStr):
                if obj.get_secret_value():
                    found.append(obj.get_secret_value())
            elif isinstance(obj, BaseModel):
                for name in type(obj).model_fields:
                    walk(getattr(obj, name))
            elif isinstance(obj, Mapping):
                for item in obj.values():
                    walk(item)
            elif isinstance(obj, list | tuple):
                for item in obj:
                    walk(item)

        walk(self)
        return found


# ------------------------------------------------------------------------------------------- cron

_CRON_FIELD = re.compile(r"^[\w*/,\-?#LW]+$")


def validate_cron(expr: str) -> None:
    """Cheap structural check; APScheduler's CronTrigger does the full parse at schedule time."""
    fields = expr.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(
            f"{expr!r} is not a cron expression (5 fields: minute hour day month weekday, "
            "or 6 with seconds first)"
        )
    try:
        from apscheduler.triggers.cron import CronTrigger

        cron_trigger_from(expr, "UTC", CronTrigger)
    except ValueError as exc:
        raise ValueError(f"{expr!r} is not a valid cron expression: {exc}") from None


def cron_trigger_from(expr: str, timezone: str, trigger_cls: Any) -> Any:
    """Build an APScheduler ``CronTrigger`` from 5 (or 6, seconds first) standard cron fields.

    APScheduler's ``from_crontab`` numbers weekdays from Monday=0, unlike cron: numeric weekdays are
    translated to names here so ``0``/``7`` mean Sunday as every operator expects.
    """
    fields = expr.split()
    second = "0"
    if len(fields) == 6:
        second, fields = fields[0], fields[1:]
    minute, hour, day, month, weekday = fields
    names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]

    def day_name(match: re.Match[str]) -> str:
        number = int(match.group(0))
        if number > 7:
            raise ValueError(f"weekday {number} is out of range 0-7")
        return names[number]

    weekday = re.sub(r"\d+", day_name, weekday)
    return trigger_cls(
        second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=weekday, timezone=timezone
    )


# ---------------------------------------------------------------------------------- YAML loading

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
            _interpolate(item, (*path, str(i)), env, base_dir, lines, problems, file)
            for i, item in enumerate(value)
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


def _problems_from(
    exc: ValidationError, prefix: tuple[str, ...], lines: _Lines, file: str
) -> list[ConfigProblem]:
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
) -> Settings:
    """Parse and validate YAML text. Raises :class:`ConfigFileError` listing every problem."""
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
        data: Any = {}
    else:
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
        text, file=str(file), env=env, base_dir=file.parent, credential_models=credential_models
    )
