"""The row codec: what a stored row holds in clear and what it holds encrypted, and rows as domain objects.

Token fields are encrypted with the row (app, account key, field) as associated data, so a ciphertext
cannot be moved to another row. Text that could carry a token (raw answers, error messages) is scrubbed
of every known token value before it is stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Row

from refresher.crypto import CryptoError, TokenCipher
from refresher.domain import AccountStatus, ErrorInfo, Identity, TokenSet, as_utc
from refresher.store.base import Account, StoreError

MESSAGE_LIMIT = 2000
# Keys dropped from a platform's raw answer before it is stored (belt and braces: the platform
# plugins already remove secrets, and token *values* are scrubbed wherever they appear).
_SECRET_KEYS = frozenset(
    {"access_token", "refresh_token", "id_token", "client_secret", "app_secret", "partner_key", "secret"}
)
_REDACTED = "[redacted]"


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def scrub(value: Any, secrets: frozenset[str]) -> Any:
    """``value`` without secret keys and without any known token value anywhere inside it."""
    if isinstance(value, Mapping):
        return {str(k): scrub(v, secrets) for k, v in value.items() if str(k).lower() not in _SECRET_KEYS}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, _REDACTED)
        return value
    return value


def error_json(error: ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "error_class": error.error_class,
        "code": error.code,
        "message": error.message[:MESSAGE_LIMIT],
        "request_id": error.request_id,
        "http_status": error.http_status,
    }


def error_info(data: Any) -> ErrorInfo | None:
    if not data:
        return None
    return ErrorInfo(
        error_class=str(data.get("error_class") or "error"),
        code=data.get("code"),
        message=str(data.get("message") or ""),
        request_id=data.get("request_id"),
        http_status=data.get("http_status"),
    )


class RowCodec:
    """Encrypts and decrypts token fields and maps account rows to :class:`Account`."""

    def __init__(self, encryption_keys: Sequence[str] = ()) -> None:
        try:
            self.cipher = TokenCipher(encryption_keys)
        except CryptoError as exc:
            raise StoreError(f"store.encryption_keys: {exc}") from None

    @property
    def enabled(self) -> bool:
        return self.cipher.enabled

    def encrypt(self, value: str | None, app: str, key: str, field: str) -> str | None:
        if value is None:
            return None
        return self.cipher.encrypt(value, app=app, account=key, field=field)

    def decrypt(self, value: str | None, app: str, key: str, field: str) -> str | None:
        if value is None:
            return None
        try:
            return self.cipher.decrypt(value, app=app, account=key, field=field)
        except CryptoError as exc:
            raise StoreError(f"store: {exc}") from None

    def tokens(self, row: Any, app: str, key: str) -> TokenSet | None:
        if row.access_token is None or row.refresh_token is None or row.access_expires_at is None:
            return None
        return TokenSet(
            access_token=self.decrypt(row.access_token, app, key, "access_token") or "",
            refresh_token=self.decrypt(row.refresh_token, app, key, "refresh_token") or "",
            access_expires_at=as_utc(row.access_expires_at),
            refresh_expires_at=as_utc(row.refresh_expires_at) if row.refresh_expires_at else None,
            scopes=tuple(row.scopes or ()),
            raw=dict(row.raw or {}),
        )

    def account(self, row: Row[Any], *, secrets: bool = True) -> Account:
        """The row as an :class:`Account`; with ``secrets=False`` no token is decrypted (``tokens`` is None,
        the expiries are read from their clear columns), so a listing works even under a wrong key."""
        return Account(
            id=row.id,
            app=row.app,
            platform=row.platform,
            key=row.key,
            identity=Identity(
                key=row.key,
                kind=row.kind,
                platform_id=row.platform_id,
                name=row.name,
                region=row.region,
                extra=dict(row.extra or {}),
            ),
            status=AccountStatus(row.status),
            tokens=self.tokens(row, row.app, row.key) if secrets else None,
            consecutive_failures=row.consecutive_failures,
            last_success_at=row.last_success_at,
            last_attempt_at=row.last_attempt_at,
            last_error=error_info(row.last_error),
            next_attempt_at=row.next_attempt_at,
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
            refresh_started_at=row.refresh_started_at,
            version=row.version,
            previous_refresh_token=(
                self.decrypt(row.previous_refresh_token, row.app, row.key, "previous_refresh_token")
                if secrets
                else None
            ),
            access_expires_at=as_utc(row.access_expires_at) if row.access_expires_at else None,
            refresh_expires_at=as_utc(row.refresh_expires_at) if row.refresh_expires_at else None,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def token_values(self, app: str, key: str, tokens: TokenSet) -> dict[str, Any]:
        secrets = frozenset({tokens.access_token, tokens.refresh_token})
        return {
            "access_token": self.encrypt(tokens.access_token, app, key, "access_token"),
            "refresh_token": self.encrypt(tokens.refresh_token, app, key, "refresh_token"),
            "access_expires_at": as_utc(tokens.access_expires_at),
            "refresh_expires_at": as_utc(tokens.refresh_expires_at) if tokens.refresh_expires_at else None,
            "scopes": list(tokens.scopes),
            "raw": scrub(jsonable(dict(tokens.raw)), secrets),
        }

    def previous_refresh(self, row: Row[Any], tokens: TokenSet) -> dict[str, Any]:
        """The row's refresh token as ``previous_refresh_token`` when ``tokens`` rotate it, else nothing:
        platforms that do not rotate hand back the same refresh token, so the older "previous" stays."""
        old_refresh = self.decrypt(row.refresh_token, row.app, row.key, "refresh_token")
        if old_refresh is None or old_refresh == tokens.refresh_token:
            return {}
        return {"previous_refresh_token": self.encrypt(old_refresh, row.app, row.key, "previous_refresh_token")}

    def row_secrets(self, row: Any) -> frozenset[str]:
        """Every token value the account row holds, in clear (to scrub them from stored text)."""
        fields = ("access_token", "refresh_token", "previous_refresh_token")
        return frozenset(s for f in fields if (s := self.decrypt(getattr(row, f), row.app, row.key, f)))
