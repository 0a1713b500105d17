"""The settings models: what each key of the config file may hold, and its default."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from refresher.config.cron import validate_cron
from refresher.config.durations import Duration
from refresher.domain import UnknownApp


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


Scope = Literal["tokens:read", "tokens:read_refresh", "accounts:read", "accounts:write", "refresh", "proxy", "connect"]


# The shortest secret a caller may present or sign with: API tokens, the admin token, the invite secret.
MIN_SECRET_LENGTH = 16


def _long_enough(value: SecretStr | None) -> SecretStr | None:
    if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
        raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
    return value


class ApiToken(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    secret: SecretStr
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["tokens:read", "accounts:read"]))

    _secret_long_enough = field_validator("secret")(_long_enough)


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
    # A token read refreshes first when the token expires within this margin (default: the app's
    # refresh_before, at most 5 minutes); re-authorization links in alarms and 409s live reauth_link_ttl.
    token_read_margin: Duration | None = None
    reauth_link_ttl: Duration = dt.timedelta(days=7)
    # Accounts the token API and the proxy keep in memory between reads (0: none), each at most
    # token_cache_max_age old; the store's change token keeps them exact (refresher/token_cache.py).
    token_cache_size: int = Field(default=10_000, ge=0, le=10_000_000)
    token_cache_max_age: Duration = dt.timedelta(seconds=30)
    # Who the seller pages say is asking for access (an app's own values win), and how long a console
    # login lasts.
    display_name: str | None = Field(default=None, max_length=120)
    logo_url: str | None = None
    console_session: Duration = dt.timedelta(hours=8)

    _secrets_long_enough = field_validator("admin_token", "invite_secret")(_long_enough)

    @field_validator("logo_url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
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
