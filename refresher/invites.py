"""Signed, expiring invitation links for ``/connect/{app}``.

An operator runs ``refresher invite APP --ttl 7d`` and sends the printed URL to a seller; the daemon lets
that URL start an authorization without the admin token until it expires. The token is
``<expiry, base 36>.<HMAC-SHA256(server.invite_secret, app + expiry), base64url>``: the app travels in
the URL path and is bound by the signature, so an invitation for one app cannot open another.
Nothing is stored server-side for a plain invitation; rotating ``server.invite_secret`` revokes every
invitation at once. A single-use invitation, a connect session and an account's re-authorization link made
on demand are also stored (``invitations``, by a public id the signature covers, ``&id=`` in the URL), so
each can be used once or revoked alone (``refresher invite revoke ID``).

A re-authorization link (alarms, ``account.needs_reauth`` events, 409 token answers, ``GET
…/reauth-link``) is an invitation bound to one account as well: the account key travels in the URL
(``&account=KEY``) and is covered by the signature under its own domain separator, so the link cannot be
turned into an app-wide invitation or moved to another account.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from urllib.parse import quote

from refresher.config.models import MIN_SECRET_LENGTH  # the one minimum for every configured secret
from refresher.domain import Clock, RefresherError, from_epoch

# A domain separator, so an invitation MAC can never be replayed as some other HMAC the project makes
# with the same secret.
_CONTEXT = b"refresher-invite-v1\x00"
_ACCOUNT_CONTEXT = b"refresher-reauth-v1\x00"
_STORED_CONTEXT = b"refresher-stored-invite-v1\x00"
_TOKEN = re.compile(r"^([0-9a-z]{1,12})\.([A-Za-z0-9_-]{43})$")
# A link that works for years is a standing door; a year is longer than any onboarding needs, and keeps the
# expiry far from datetime's year-9999 end (``--ttl 100000000d`` overflowed it).
MAX_TTL = dt.timedelta(days=365)


class InviteError(RefresherError):
    """An invitation that does not open the door. ``kind``: ``malformed`` | ``expired`` | ``invalid``."""

    error_class = "invite"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message, code=kind)
        self.kind = kind


def _mac(secret: str, app: str, expires: int, account: str | None = None, invitation: str | None = None) -> str:
    if len(secret) < MIN_SECRET_LENGTH:
        # Said without the value: the message may reach a terminal or a log.
        raise InviteError("config", f"server.invite_secret must be at least {MIN_SECRET_LENGTH} characters")
    message = _CONTEXT + app.encode("utf-8") + b"\x00" + str(expires).encode("ascii")
    if account is not None:
        message = _ACCOUNT_CONTEXT + message + b"\x00" + account.encode("utf-8")
    if invitation is not None:
        message = _STORED_CONTEXT + message + b"\x00" + invitation.encode("utf-8")
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def make_invite(
    app: str,
    ttl: dt.timedelta,
    *,
    secret: str,
    clock: Clock,
    account: str | None = None,
    invitation: str | None = None,
) -> str:
    """A URL-safe invitation token for ``app`` (only for re-authorizing ``account`` when given) that stops
    working after ``ttl``."""
    if ttl <= dt.timedelta(0):
        raise InviteError("malformed", "an invitation's lifetime must be positive (e.g. --ttl 7d)")
    if ttl > MAX_TTL:
        raise InviteError("malformed", f"an invitation's lifetime must be at most {MAX_TTL.days} days")
    expires = int((clock.now() + ttl).timestamp())
    return f"{_base36(expires)}.{_mac(secret, app, expires, account, invitation)}"


def check_invite(
    token: str,
    app: str,
    *,
    secret: str,
    clock: Clock,
    account: str | None = None,
    invitation: str | None = None,
) -> dt.datetime:
    """Return the invitation's expiry, or raise :class:`InviteError` saying why it is refused.

    The signature is checked before the expiry, so a forged token is never reported as merely expired.
    """
    match = _TOKEN.match(token or "")
    if match is None:
        raise InviteError("malformed", "the invitation link is damaged (copy the whole URL)")
    expires = int(match.group(1), 36)
    if not hmac.compare_digest(match.group(2), _mac(secret, app, expires, account, invitation)):
        raise InviteError("invalid", f"the invitation link is not valid for app {app!r}")
    expires_at = from_epoch(expires)
    if expires_at <= clock.now():
        raise InviteError(
            "expired", f"the invitation link expired at {expires_at:%Y-%m-%d %H:%M} UTC; ask for a new one"
        )
    return expires_at


def invite_url(public_url: str, app: str, token: str, account: str | None = None, invitation: str | None = None) -> str:
    """The link a seller opens: the daemon's connect page with the invitation (its account, its stored
    row's id) attached."""
    url = f"{public_url.rstrip('/')}/connect/{quote(app, safe='')}?invite={token}"
    if account is not None:
        url += f"&account={quote(account, safe='')}"
    return url if invitation is None else f"{url}&id={quote(invitation, safe='')}"


def new_invitation_id() -> str:
    """A public id for a stored invitation (shown by ``refresher invite``, named by ``invite revoke``)."""
    return "inv_" + secrets.token_hex(8)


def reauth_url(
    public_url: str | None, app: str, account: str, *, secret: str | None, ttl: dt.timedelta, clock: Clock
) -> str | None:
    """A signed link re-authorizing ``account`` for ``ttl``; ``None`` without a public URL or a secret
    (an unsigned connect link would only answer "Invitation needed")."""
    if not public_url or not secret:
        return None
    token = make_invite(app, min(ttl, MAX_TTL), secret=secret, clock=clock, account=account)
    return invite_url(public_url, app, token, account)
