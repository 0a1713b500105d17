"""Console sessions: a login with the admin token sets a signed, expiring cookie; every action carries a
CSRF token bound to that session.

Why signed cookies with a key derived from the admin token (HMAC-SHA256(admin_token, purpose)) rather
than a server-side session table or a new configured secret:

* nothing to store or configure, and every replica of a deployment (same config) accepts the same cookie;
* changing ``server.admin_token`` logs every console user out, which is what rotating it should do;
* the cookie never contains the admin token or anything it can be recovered from (the signature is an
  HMAC under a key that is itself an HMAC of the token), and its lifetime is checked on every request
  by itsdangerous' timestamp (``server.console_session``, 8 h by default);
* logout clears the cookie and writes the session id to the store (``console_logouts``) until the cookie
  would have expired anyway, so a copied cookie is refused too, by every replica on that store: each
  request asks the store (the answer "not logged out" is reused for at most ``LOGOUT_CHECK_CACHE``
  seconds), and a store that cannot answer refuses the session rather than honour a possible logout late.

The cookie is HttpOnly, SameSite=Strict (a cross-site request carries no session at all), Path=/, and
Secure with the ``__Host-`` name prefix when ``server.public_url`` is https. The CSRF token lives inside
the signed session and must come back with every POST (form field ``csrf`` or header ``X-CSRF-Token``),
compared in constant time. The login form itself is protected the same way by a short pre-login cookie.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import structlog
from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from refresher.config import ServerSettings
from refresher.store.roles import LogoutStore

log = structlog.get_logger("refresher.console")

LOGIN_TTL = 3600  # seconds a login form stays usable
# Seconds a "not logged out" answer of the store is reused for a session: a logout on another replica
# is refused here within this long, and a page's several requests cost one look-up.
LOGOUT_CHECK_CACHE = 1.0
_PURPOSE = b"refresher console session v1"


@dataclass(frozen=True)
class Session:
    sid: str
    csrf: str
    issued_at: dt.datetime | None = None  # the cookie signature's time (wall clock, as itsdangerous's)


class SessionKeeper:
    """Issues and checks console cookies for one server configuration."""

    def __init__(self) -> None:
        self._revoked: dict[str, float] = {}  # session id -> monotonic time after which it expired anyway
        self._checked: dict[str, float] = {}  # session id -> monotonic time the store said "not logged out"

    # -- configuration ------------------------------------------------------------------------------

    @staticmethod
    def enabled(server: ServerSettings) -> bool:
        return server.admin_token is not None and bool(server.admin_token.get_secret_value())

    @staticmethod
    def secure(server: ServerSettings) -> bool:
        return bool(server.public_url and server.public_url.lower().startswith("https://"))

    def cookie_name(self, server: ServerSettings) -> str:
        return "__Host-refresher_console" if self.secure(server) else "refresher_console"

    def login_cookie_name(self, server: ServerSettings) -> str:
        return "__Host-refresher_login" if self.secure(server) else "refresher_login"

    @staticmethod
    def _serializer(server: ServerSettings, salt: str) -> URLSafeTimedSerializer:
        assert server.admin_token is not None
        key = hmac.new(server.admin_token.get_secret_value().encode("utf-8"), _PURPOSE, hashlib.sha256).digest()
        return URLSafeTimedSerializer(key, salt=salt)

    # -- sessions -----------------------------------------------------------------------------------

    async def current(self, server: ServerSettings, request: Request, logouts: LogoutStore) -> Session | None:
        """The request's valid session, or None (absent, forged, expired, logged out on any replica sharing
        ``logouts``, console disabled)."""
        if not self.enabled(server):
            return None
        cookie = request.cookies.get(self.cookie_name(server))
        if not cookie:
            return None
        try:
            data, issued = self._serializer(server, "session").loads(
                cookie, max_age=int(server.console_session.total_seconds()), return_timestamp=True
            )
        except BadSignature:  # SignatureExpired is a BadSignature
            return None
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str) or not isinstance(data.get("csrf"), str):
            return None
        sid = data["sid"]
        self._forget_old()
        if sid in self._revoked:
            return None
        if sid not in self._checked:
            # Fail closed on any database error: a logout elsewhere may be exactly what cannot be read.
            try:
                logged_out = await logouts.logged_out(sid)
            except Exception:  # noqa: BLE001
                log.warning("console.session_check_failed", reason="the store did not answer")
                return None
            if logged_out:
                self._revoked[sid] = time.monotonic() + server.console_session.total_seconds()
                return None
            self._checked[sid] = time.monotonic()
        return Session(sid, data["csrf"], issued)

    def start(self, server: ServerSettings, response: Response) -> Session:
        session = Session(secrets.token_urlsafe(16), secrets.token_urlsafe(24))
        value = self._serializer(server, "session").dumps({"sid": session.sid, "csrf": session.csrf})
        self._set(server, response, self.cookie_name(server), value, int(server.console_session.total_seconds()))
        response.delete_cookie(self.login_cookie_name(server), path="/", secure=self.secure(server), httponly=True)
        return session

    async def end(self, server: ServerSettings, session: Session, response: Response, logouts: LogoutStore) -> bool:
        """Log ``session`` out here and, through ``logouts``, on every replica; False when the store did
        not take it (this process refuses the cookie all the same; others until it expires)."""
        lifetime = server.console_session
        self._revoked[session.sid] = time.monotonic() + lifetime.total_seconds()
        self._checked.pop(session.sid, None)
        self.end_cookie(server, response)
        # Wall-clock times, like the cookie's own expiry (itsdangerous signs time.time()).
        now = dt.datetime.now(dt.UTC)
        expires_at = (session.issued_at or now) + lifetime
        try:
            await logouts.add_logout(session.sid, expires_at, now)
        except Exception:  # noqa: BLE001 - any database error: said on the page, never raised
            log.error("console.logout_not_shared", reason="the store did not take the logout")
            return False
        return True

    def end_cookie(self, server: ServerSettings, response: Response) -> None:
        """Tell the browser to drop the session cookie."""
        response.delete_cookie(
            self.cookie_name(server), path="/", secure=self.secure(server), httponly=True, samesite="strict"
        )

    def _forget_old(self) -> None:
        now = time.monotonic()
        for sid in [sid for sid, until in self._revoked.items() if until < now]:
            del self._revoked[sid]
        for sid in [sid for sid, at in self._checked.items() if now - at > LOGOUT_CHECK_CACHE]:
            del self._checked[sid]

    def _set(self, server: ServerSettings, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", secure=self.secure(server), httponly=True, samesite="strict"
        )

    # -- the login form's own CSRF token ---------------------------------------------------------------

    def login_token(self, server: ServerSettings, request: Request, response: Response) -> str:
        """The CSRF token of the login form (reusing a still valid pre-login cookie)."""
        serializer = self._serializer(server, "login")
        cookie = request.cookies.get(self.login_cookie_name(server))
        if cookie:
            try:
                token = serializer.loads(cookie, max_age=LOGIN_TTL)
                if isinstance(token, str):
                    return token
            except BadSignature:
                pass
        token = secrets.token_urlsafe(24)
        self._set(server, response, self.login_cookie_name(server), serializer.dumps(token), LOGIN_TTL)
        return token

    def login_token_ok(self, server: ServerSettings, request: Request, presented: str | None) -> bool:
        cookie = request.cookies.get(self.login_cookie_name(server))
        if not cookie or not presented:
            return False
        try:
            token = self._serializer(server, "login").loads(cookie, max_age=LOGIN_TTL)
        except BadSignature:
            return False
        return isinstance(token, str) and hmac.compare_digest(token.encode(), presented.encode())


def csrf_ok(session: Session, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), (presented or "").encode())
