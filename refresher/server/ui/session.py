"""Console sessions: a login with the admin token sets a signed, expiring cookie; every action carries a
CSRF token bound to that session.

Why signed cookies with a key derived from the admin token (HMAC-SHA256(admin_token, purpose)) rather
than a server-side session table or a new configured secret:

* nothing to store or configure, and every replica of a deployment (same config) accepts the same cookie;
* changing ``server.admin_token`` logs every console user out, which is what rotating it should do;
* the cookie never contains the admin token or anything it can be recovered from (the signature is an
  HMAC under a key that is itself an HMAC of the token), and its lifetime is checked on every request
  by itsdangerous' timestamp (``server.console_session``, 8 h by default);
* logout clears the cookie and remembers the session id until it would have expired anyway, so a copied
  cookie is refused too (per process: another replica learns of a logout only when the cookie expires).

The cookie is HttpOnly, SameSite=Strict (a cross-site request carries no session at all), Path=/, and
Secure with the ``__Host-`` name prefix when ``server.public_url`` is https. The CSRF token lives inside
the signed session and must come back with every POST (form field ``csrf`` or header ``X-CSRF-Token``),
compared in constant time. The login form itself is protected the same way by a short pre-login cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from refresher.config import ServerSettings

LOGIN_TTL = 3600  # seconds a login form stays usable
_PURPOSE = b"refresher console session v1"


@dataclass(frozen=True)
class Session:
    sid: str
    csrf: str


class SessionKeeper:
    """Issues and checks console cookies for one server configuration."""

    def __init__(self) -> None:
        self._revoked: dict[str, float] = {}  # session id -> monotonic time after which it expired anyway

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

    def current(self, server: ServerSettings, request: Request) -> Session | None:
        """The request's valid session, or None (absent, forged, expired, logged out, console disabled)."""
        if not self.enabled(server):
            return None
        cookie = request.cookies.get(self.cookie_name(server))
        if not cookie:
            return None
        try:
            data = self._serializer(server, "session").loads(
                cookie, max_age=int(server.console_session.total_seconds())
            )
        except BadSignature:  # SignatureExpired is a BadSignature
            return None
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str) or not isinstance(data.get("csrf"), str):
            return None
        self._forget_old()
        if data["sid"] in self._revoked:
            return None
        return Session(data["sid"], data["csrf"])

    def start(self, server: ServerSettings, response: Response) -> Session:
        session = Session(secrets.token_urlsafe(16), secrets.token_urlsafe(24))
        value = self._serializer(server, "session").dumps({"sid": session.sid, "csrf": session.csrf})
        self._set(server, response, self.cookie_name(server), value, int(server.console_session.total_seconds()))
        response.delete_cookie(self.login_cookie_name(server), path="/", secure=self.secure(server), httponly=True)
        return session

    def end(self, server: ServerSettings, session: Session, response: Response) -> None:
        self._revoked[session.sid] = time.monotonic() + server.console_session.total_seconds()
        response.delete_cookie(
            self.cookie_name(server), path="/", secure=self.secure(server), httponly=True, samesite="strict"
        )

    def _forget_old(self) -> None:
        now = time.monotonic()
        for sid in [sid for sid, until in self._revoked.items() if until < now]:
            del self._revoked[sid]

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
