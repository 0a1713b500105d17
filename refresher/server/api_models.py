"""The token API's answer models: what /openapi.json documents and every route returns, and how the
store's records become them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from refresher.domain import AccountStatus, ErrorInfo
from refresher.store.base import Account
from refresher.token_read import Refusal


class Problem(BaseModel):
    """An error answer: one line saying what is wrong."""

    detail: str


class AppOut(BaseModel):
    name: str
    platform: str
    enabled: bool
    accounts: dict[str, int] = Field(description="Number of accounts per status.")
    total: int


class AppList(BaseModel):
    items: list[AppOut]


class ErrorOut(BaseModel):
    error_class: str
    code: str | None = None
    message: str
    request_id: str | None = None
    http_status: int | None = None


class IdentityOut(BaseModel):
    key: str
    kind: str
    platform_id: str
    name: str | None = None
    region: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class AccountOut(BaseModel):
    """An account as the API shows it: identity, state and expiries, never a token."""

    app: str
    platform: str
    key: str
    identity: IdentityOut
    status: AccountStatus
    access_expires_at: dt.datetime | None
    refresh_expires_at: dt.datetime | None
    scopes: list[str]
    consecutive_failures: int
    last_success_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    last_error: ErrorOut | None
    version: int
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    end_user: dict[str, Any] | None = Field(
        None, description="The integrator's end user it was connected for (GET of one account only)."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Its tags (GET of one account only).")


class AccountPage(BaseModel):
    items: list[AccountOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class TokenOut(BaseModel):
    app: str
    account: str
    identity: IdentityOut
    status: AccountStatus = Field(description="Always active: any other status is a 409.")
    access_token: str
    access_expires_at: dt.datetime
    refresh_token: str | None = Field(None, description="Only with ?include_refresh=true and tokens:read_refresh.")
    refresh_expires_at: dt.datetime | None
    version: int


class TokenRefusedOut(BaseModel):
    """Why no token is handed out: a token that would not work is never sent."""

    detail: str
    status: AccountStatus
    reason: Refusal = Field(description="needs_reauth | disabled | expired | no_token")
    reauth_url: str | None = Field(
        description="A signed, expiring link the seller opens to re-authorize this account (null without "
        "server.public_url and server.invite_secret, or for a disabled account)."
    )


class RefreshOut(BaseModel):
    outcome: str = Field(description="success | failure | busy | skipped")
    attempts: int
    duration_ms: int
    error: ErrorOut | None
    account: AccountOut


class HistoryItem(BaseModel):
    version: int
    access_expires_at: dt.datetime
    refresh_expires_at: dt.datetime | None
    replaced_at: dt.datetime


class HistoryOut(BaseModel):
    app: str
    account: str
    current_version: int
    items: list[HistoryItem]


class ReauthLinkOut(BaseModel):
    app: str
    account: str
    url: str = Field(description="A signed invitation re-authorizing this account in place; send it to the seller.")
    expires_at: dt.datetime
    id: str = Field(description="The stored invitation's id: `refresher invite revoke ID` withdraws the link.")
    single_use: bool = Field(description="Whether the link is refused after one re-authorization.")


class AuditItem(BaseModel):
    at: dt.datetime
    outcome: str = Field(description="success, or the error class of a failed refresh (transient, reauth_required, …)")
    duration_ms: int
    attempts: int
    error_class: str | None
    error_code: str | None
    request_id: str | None
    message: str | None


class AuditOut(BaseModel):
    app: str
    account: str
    items: list[AuditItem]


# -- from the store's records ------------------------------------------------------------------------


def error_out(error: ErrorInfo | None) -> ErrorOut | None:
    # The API models mirror the domain's dataclasses field for field: read them by attribute.
    return None if error is None else ErrorOut.model_validate(error, from_attributes=True)


def identity_out(account: Account) -> IdentityOut:
    return IdentityOut.model_validate(account.identity, from_attributes=True)


def account_out(account: Account) -> AccountOut:
    tokens = account.tokens
    return AccountOut(
        app=account.app,
        platform=account.platform,
        key=account.key,
        identity=identity_out(account),
        status=account.status,
        access_expires_at=tokens.access_expires_at if tokens else None,
        refresh_expires_at=tokens.refresh_expires_at if tokens else None,
        scopes=list(tokens.scopes) if tokens else [],
        consecutive_failures=account.consecutive_failures,
        last_success_at=account.last_success_at,
        last_attempt_at=account.last_attempt_at,
        next_attempt_at=account.next_attempt_at,
        last_error=error_out(account.last_error),
        version=account.version,
        created_at=account.created_at,
        updated_at=account.updated_at,
    )
