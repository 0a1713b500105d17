"""refresher: keeps the OAuth tokens of e-commerce platforms alive.

The public surface is small: the domain types and errors, the config loader, and (from
``refresher.client``) the token client for other services.
"""

from refresher.config import ConfigFileError, Settings, load_config
from refresher.domain import (
    AccessTokenInvalid,
    AccountStatus,
    Clock,
    ConfigError,
    FakeClock,
    Grant,
    Identity,
    MalformedAnswer,
    ReauthRequired,
    RefresherError,
    RefreshTokenRejected,
    SystemClock,
    TokenSet,
    TransientError,
)

__all__ = [
    "AccessTokenInvalid",
    "AccountStatus",
    "Clock",
    "ConfigError",
    "ConfigFileError",
    "FakeClock",
    "Grant",
    "Identity",
    "MalformedAnswer",
    "ReauthRequired",
    "RefreshTokenRejected",
    "RefresherError",
    "Settings",
    "SystemClock",
    "TokenSet",
    "TransientError",
    "load_config",
]
