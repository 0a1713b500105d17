"""YAML configuration → validated, typed settings.

* ``${VAR}`` and ``${VAR:-default}`` are interpolated in every string value (``$$`` is a literal ``$``);
  an unset variable without a default is an error naming the variable.
* ``<key>_file: /path`` reads the secret for ``<key>`` from a file (Docker / Kubernetes secrets).
* Every problem is reported as one line: ``FILE:LINE: key.path: what is wrong``.

The package imports nothing of the project but :mod:`refresher.domain`. Platform plugins validate their
own credential keys: ``load_config`` takes a mapping ``platform name -> pydantic model`` (the registry
provides it).

Modules: ``models`` (what each key may hold), ``loading`` (YAML, interpolation, line numbers),
``errors`` (ConfigProblem, ConfigFileError), ``durations``, ``cron`` (cron → APScheduler trigger).
"""

from refresher.config.cron import cron_trigger_from, validate_cron
from refresher.config.durations import Duration, format_duration, parse_duration
from refresher.config.errors import ConfigFileError, ConfigProblem
from refresher.config.loading import load_config, parse_config
from refresher.config.models import (
    APP_NAME,
    AlertSettings,
    ApiToken,
    AppriseChannel,
    AppSettings,
    Channel,
    HookSettings,
    LoggingSettings,
    RetrySettings,
    Scope,
    ServerSettings,
    Settings,
    StoreSettings,
    WebhookChannel,
)

__all__ = [
    "APP_NAME",
    "AlertSettings",
    "ApiToken",
    "AppSettings",
    "AppriseChannel",
    "Channel",
    "ConfigFileError",
    "ConfigProblem",
    "Duration",
    "HookSettings",
    "LoggingSettings",
    "RetrySettings",
    "Scope",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "WebhookChannel",
    "cron_trigger_from",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "validate_cron",
]
