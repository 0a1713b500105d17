"""Redaction: no secret reaches a log line, an error message or an alert.

A :class:`Redactor` is a structlog processor object (:mod:`refresher.logging` installs one at the end of
every log pipeline); the alert channels and the policy use the same installed redactor on what they send.
It redacts three ways, because a secret can hide anywhere:

* by value: every secret it holds (config secrets, every token we read or receive, added with
  :meth:`Redactor.add` or :func:`register_secrets`) is replaced by ``***`` wherever it occurs in any string
  of the event, nested or not, including exception text and tracebacks;
* by key: the value of a key named like a secret (``access_token``, ``sign``, ``password`` …) is
  replaced whatever it is;
* by shape: query parameters and ``name=value`` pairs with secret names inside free text, and
  ``Bearer …`` credentials.

uvicorn's access log (off unless ``logging.access_log``) goes through :data:`ACCESS_FILTER`, which
replaces the values of ``state``, ``invite``, ``code`` and every secret-named query parameter.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from structlog.typing import EventDict, WrappedLogger

REDACTED = "***"
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true", an id) would redact half of every line
MAX_SECRETS = 100_000  # a daemon registers two tokens per refresh: keep the newest, forget the oldest

# Keys whose values are secrets whatever they hold (compared lowercased, "-" read as "_").
SECRET_KEYS = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "partner_key",
        "app_secret",
        "client_secret",
        "secret",
        "authorization",
        "proxy_authorization",
        "sign",
        "signature",
        "x_refresher_signature",
        "password",
        "passwd",
        "token",
        "code",
        "api_key",
        "apikey",
        "x_api_key",
        "cookie",
        "set_cookie",
        "encryption_keys",
        "admin_token",
        "invite_secret",
        "code_verifier",
        "pkce_verifier",
    }
)
_SECRET_SUFFIXES = ("_token", "_secret", "_password")

# In free text: query parameters with a secret name (?access_token=… / &sign=…).
_QUERY_PARAM = re.compile(
    r"(?i)([?&;](?:access_token|refresh_token|id_token|partner_key|app_secret|client_secret|secret|"
    r"authorization|sign|signature|password|token|code|api_key|apikey|code_verifier)=)[^&#\s\"'<>]*"
)
# In free text: name=value / "name": "value" for names that are never anything but secrets. ("code" and
# "sign" are left to the query form: "code=invalid_grant" in an error message is an error code.)
_NAMED_PAIR = re.compile(
    r"(?i)\b((?:access_token|refresh_token|id_token|partner_key|app_secret|client_secret|password|"
    r"code_verifier)[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,;}<>]+"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")


class _SecretSet:
    """A bounded, thread-safe set of secret strings that can be found anywhere inside a text.

    Secrets are indexed by their first :data:`MIN_SECRET_LENGTH` characters and then by length, so
    scanning a text costs one dictionary look-up per character, plus one set look-up per distinct
    secret length on a hit, whatever the number of secrets. (A regex alternation of 100k tokens would be
    recompiled on every refresh; and many tokens share a prefix, e.g. Lazada's numeric ones.)
    """

    def __init__(self, limit: int = MAX_SECRETS) -> None:
        self._limit = limit
        self._order: dict[str, None] = {}  # insertion-ordered: the oldest is evicted first
        self._index: dict[str, dict[int, set[str]]] = {}  # prefix -> length -> secrets
        self._lock = threading.Lock()
        # Bumped whenever the set changes: results remembered under an older generation are void.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, value: object) -> bool:
        return value in self._order

    def add(self, values: Iterable[str | None]) -> None:
        with self._lock:
            for value in values:
                if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
                    continue
                if value in self._order:
                    # Seen again: move it to the newest end so an active token is never evicted.
                    del self._order[value]
                    self._order[value] = None
                    continue
                self._order[value] = None
                by_length = self._index.setdefault(value[:MIN_SECRET_LENGTH], {})
                by_length.setdefault(len(value), set()).add(value)
                while len(self._order) > self._limit:
                    self._evict(next(iter(self._order)))
                self.generation += 1  # after the secret is in the index

    def _evict(self, oldest: str) -> None:
        del self._order[oldest]
        prefix = oldest[:MIN_SECRET_LENGTH]
        by_length = self._index.get(prefix, {})
        bucket = by_length.get(len(oldest), set())
        bucket.discard(oldest)
        if not bucket:
            by_length.pop(len(oldest), None)
        if not by_length:
            self._index.pop(prefix, None)

    def clear(self) -> None:
        with self._lock:
            self._order.clear()
            self._index.clear()
            self.generation += 1

    def redact(self, text: str) -> str:
        if len(text) < MIN_SECRET_LENGTH or not self._index:
            return text
        with self._lock:
            index = self._index
            width = MIN_SECRET_LENGTH
            # The common case is no secret at all: find candidate positions in one comprehension (several
            # times faster than a Python-level scan loop) and return the text untouched when none.
            hits = [i for i in range(len(text) - width + 1) if text[i : i + width] in index]
            if not hits:
                return text
            out: list[str] = []
            start = 0
            for i in hits:
                if i < start:
                    continue  # inside a secret already replaced
                by_length = index[text[i : i + width]]
                # Longest first, so a secret that extends another is replaced whole.
                for length in sorted(by_length, reverse=True):
                    if text[i : i + length] in by_length[length]:
                        out.append(text[start:i])
                        out.append(REDACTED)
                        start = i + length
                        break
        if not out:
            return text
        out.append(text[start:])
        return "".join(out)


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    name = key.lower().replace("-", "_")
    return name in SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)


def _redact_shapes(text: str) -> str:
    if "=" in text or ":" in text:
        text = _QUERY_PARAM.sub(rf"\1{REDACTED}", text)
        text = _NAMED_PAIR.sub(rf"\1{REDACTED}", text)
    if " " in text:
        text = _BEARER.sub(rf"\1 {REDACTED}", text)
    return text


_OWN_KEYS = frozenset({"timestamp", "level", "logger"})
# Bounds of the redactor's memory of redacted texts (entries, and the longest text remembered).
_MEMO_SIZE, _MEMO_TEXT = 2048, 256


class Redactor:
    """The redaction processor: a structlog processor object holding the secrets it removes.

    :func:`configure_logging` builds one with the config's secrets and puts it at the end of every
    pipeline; code that learns a new secret (a refreshed token, a channel URL) adds it with :meth:`add`.
    """

    def __init__(self, secrets: Iterable[str | None] = (), *, limit: int = MAX_SECRETS) -> None:
        self._secrets = _SecretSet(limit)
        self._secrets.add(secrets)
        # Short texts already redacted, for the secret set of one generation. Log lines repeat the same
        # values (method, path, caller, scope, outcome) on every API call: the scan and the regexes
        # were ~6 % of a token read. Void as soon as a secret is added (a refresh adds two).
        self._memo: dict[str, str] = {}
        self._memo_generation = -1

    def __len__(self) -> int:
        return len(self._secrets)

    def add(self, values: Iterable[str | None]) -> None:
        """Remember more secrets (None, empty and very short values are ignored)."""
        self._secrets.add(values)

    def forget(self) -> None:
        """Forget every secret (tests only: a daemon never forgets a secret on purpose)."""
        self._secrets.clear()

    def redact_text(self, text: str) -> str:
        """Remove every held secret and every secret-shaped pair from one string."""
        if len(text) > _MEMO_TEXT:
            return _redact_shapes(self._secrets.redact(text))
        generation = self._secrets.generation
        if generation != self._memo_generation:
            self._memo = {}
            self._memo_generation = generation
        done = self._memo.get(text)
        if done is None:
            done = _redact_shapes(self._secrets.redact(text))
            if len(self._memo) >= _MEMO_SIZE:
                self._memo = {}
            # Kept only if no secret arrived meanwhile (another thread): it might be in this very text.
            if self._secrets.generation == generation:
                self._memo[text] = done
        return done

    def redact_value(self, value: Any) -> Any:
        """Redact any value: strings, mappings (by key too), sequences, exceptions; other objects by their
        text. The result only holds JSON-friendly types, so no ``repr`` of an unknown object can slip a
        secret past the redactor inside the renderer."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return {
                # Keys too: a dict keyed by token (a cache, a batch result) must not leak through its keys.
                self.redact_text(str(k)): (
                    REDACTED if is_secret_key(k) and v not in (None, "") else self.redact_value(v)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact_value(v) for v in value]
        if isinstance(value, dt.datetime | dt.date | dt.time):
            return value.isoformat()
        if isinstance(value, BaseException):
            return self.redact_text(f"{type(value).__name__}: {value}")
        if isinstance(value, bytes):
            return self.redact_text(value.decode("utf-8", "replace"))
        return self.redact_text(str(value))

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        """The structlog processor: every key and value of the event, however deep."""
        for key in list(event_dict):
            value = event_dict[key]
            if key.startswith("_") or key in _OWN_KEYS:  # plumbing, or values our own processors wrote
                continue
            if is_secret_key(key) and value not in (None, ""):
                event_dict[key] = REDACTED
            else:
                event_dict[key] = self.redact_value(value)
        return event_dict


# The redactor the installed pipeline uses. Module functions below reach it, so code deep in a refresh or
# an alert channel can add a token it just learnt without carrying the object around.
_active = Redactor()


def install_redactor(redactor: Redactor) -> None:
    """Make ``redactor`` the one every helper below and every log pipeline uses."""
    global _active
    _active = redactor


def active_redactor() -> Redactor:
    """The redactor :func:`configure_logging` installed (an empty one before any configuration)."""
    return _active


def register_secrets(values: Iterable[str | None]) -> None:
    """Add values to the installed redactor (None, empty and very short values are ignored)."""
    _active.add(values)


def forget_secrets() -> None:
    """Empty the installed redactor (tests only: a daemon never forgets a secret on purpose)."""
    _active.forget()


def redact_text(text: str) -> str:
    """Remove every registered secret and every secret-shaped pair from one string."""
    return _active.redact_text(text)


def redact_value(value: Any) -> Any:
    """:meth:`Redactor.redact_value` of the installed redactor."""
    return _active.redact_value(value)


# Query parameters of the access log whose values are always replaced (besides every secret-named one):
# the OAuth state, the invitation token and the authorization code travel in /connect and /callback URLs.
ACCESS_LOG_SECRET_PARAMS = frozenset({"state", "invite", "code", "sign", "signature", "key", "api_key"})


def redact_query(target: str) -> str:
    """A request target with the values of secret query parameters replaced by ``***``."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    pairs = parse_qsl(query, keep_blank_values=True)
    cleaned = [(name, REDACTED if _secret_param(name) and value else value) for name, value in pairs]
    return f"{path}?{urlencode(cleaned, safe='*')}"


def _secret_param(name: str) -> bool:
    lowered = name.lower().replace("-", "_")
    return lowered in ACCESS_LOG_SECRET_PARAMS or is_secret_key(lowered) or lowered.endswith("_key")


class _AccessLogRedaction(logging.Filter):
    """Rewrites uvicorn's access records (``client, method, target, version, status``) so the target's
    secret query values never reach a handler, whatever the formatter does with the arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


ACCESS_FILTER = _AccessLogRedaction()
