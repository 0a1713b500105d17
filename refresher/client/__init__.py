"""Use refresher's tokens from Python: :class:`TokenSource`, :func:`get_token` and :class:`RefresherAuth`.

Two places to read tokens from:

* the daemon's token API — ``TokenSource.from_api("http://127.0.0.1:8765", api_token)`` (any process,
  needs a token with ``tokens:read``);
* the store itself — ``TokenSource.from_store(store)`` (same process or same database).

Tokens are cached until shortly before they expire (the larger of 60 s and 10 % of the lifetime left when
fetched), so a hot loop does not hit the API on every call. The cache holds at most ``cache_size``
accounts (least recently used go first), and concurrent readers of one account share one fetch.

Both sources hand out only a token that works: an account that needs re-authorization, is disabled, or
whose token expired raises :class:`TokenRefused` (``.status``, ``.reason``, ``.reauth_url``), the API's
409. The store source refreshes a token inside the read margin first when given the daemon's refresher
(``TokenSource.from_store(store, reader=ReadRefresher(refresher))``); without one it only judges.

:class:`RefresherAuth` is an ``httpx.Auth`` that signs each request the way the platform wants it and
adds the current access token; it needs the app's credentials (a :class:`~refresher.config.Settings`).
A service without the credentials uses the daemon's signing proxy instead: :func:`proxy_client`.
"""

from __future__ import annotations

from refresher.client.auth import RefresherAuth, proxy_client
from refresher.client.source import AccessToken, TokenRefused, TokenSource, TokenUnavailable, get_token

__all__ = [
    "AccessToken",
    "RefresherAuth",
    "TokenRefused",
    "TokenSource",
    "TokenUnavailable",
    "get_token",
    "proxy_client",
]
