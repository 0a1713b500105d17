"""What httpx would put on the wire for a request, computed without httpx, for the direct route of
:meth:`refresher.platforms.transport.Transport.send`.

Why: httpx's request building and URL parser cost ~12 % of a proxied call's CPU and ~20 % of a TikTok
refresh's (a form POST) in the soak; for a request httpx would send exactly as given, the same bytes can
go onto the aiohttp wire directly. Everything here mirrors httpx 0.28 (its URL normalisation, header
merge order, form encoding) and is held to it by tests/test_transport_wire.py, which sends each request
shape both ways to a raw socket server and compares the bytes: an httpx upgrade that changes any of it
fails there instead of letting the two routes drift apart.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx

# A URL that httpx.URL leaves exactly as it is: lower-case http(s) scheme and host name (or IPv4), a port
# only when not the scheme's default and written as a plain number, a path and query of characters httpx
# never quotes (RFC 3986 unreserved, sub-delims, ':' '@' '/', and '?' in the query) or well-formed %XX
# escapes, no fragment. Checked in C by one regex, where httpx's parser walks every character in Python
# (~30 µs for a signed proxy URL, a tenth of a proxied call's CPU). tests/test_transport_wire.py holds
# the two to agreement.
_WIRED_URL = re.compile(
    r"(https?)://([a-z0-9](?:[a-z0-9.-]*[a-z0-9])?)(?::([1-9][0-9]{0,4}))?"
    r"((?:/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*)+)"
    r"(?:\?(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*)?"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HTTPX_MAX_URL = 65536


def wired_netloc(url: str) -> str | None:
    """The ``Host`` httpx would send for ``url`` when httpx would send ``url`` unchanged, else ``None``."""
    if len(url) > _HTTPX_MAX_URL:
        return None
    match = _WIRED_URL.fullmatch(url)
    if match is None:
        return None
    scheme, host, port, path = match.group(1, 2, 3, 4)
    if not _plain_host(host) or (port is not None and (int(port) > 65535 or int(port) == _DEFAULT_PORTS[scheme])):
        return None
    if "." in path and any(segment in (".", "..") for segment in path.split("/")):
        return None  # httpx would drop the dot segments
    return host if port is None else f"{host}:{port}"


@functools.lru_cache(maxsize=256)
def _plain_host(host: str) -> bool:
    """A host name httpx keeps as written: a name with a letter, or a valid dotted IPv4 address."""
    if any(ch.isalpha() for ch in host):
        return ".." not in host
    try:
        return str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        return False


def form_body(data: Mapping[str, Any]) -> bytes:
    """A form as httpx 0.28 encodes it (``encode_urlencoded_data``): lists as repeated keys, booleans as
    ``true``/``false``, None as empty; tests/test_transport_wire.py compares the bytes."""
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        for item in value if isinstance(value, list | tuple) else (value,):
            pairs.append((key, _form_value(item)))
    return urlencode(pairs, doseq=True).encode("utf-8")


def _form_value(item: object) -> str:
    if item is True:
        return "true"
    if item is False:
        return "false"
    return "" if item is None else str(item)


def wire_headers(
    client: httpx.AsyncClient,
    method: str,
    netloc: str,
    content: bytes | None,
    headers: Mapping[str, str] | None,
    *,
    form: bool = False,
) -> list[tuple[str, str]]:
    """The header list ``client.build_request`` would give the wire for this request: the client's headers
    updated with ``headers`` (httpx's ``_merge_headers``), the body's Content-Length unless given, then
    Host and a bodiless POST/PUT/PATCH's ``Content-Length: 0`` in front (httpx's ``Request._prepare``)."""
    merged = httpx.Headers(client.headers)
    if headers:
        merged.update(headers)
    if content:
        merged.setdefault("Content-Length", str(len(content)))
        if form:
            merged.setdefault("Content-Type", "application/x-www-form-urlencoded")
    front: list[tuple[str, str]] = []
    if "Host" not in merged:
        front.append(("Host", netloc))
    if method in ("POST", "PUT", "PATCH") and "Content-Length" not in merged and "Transfer-Encoding" not in merged:
        front.append(("Content-Length", "0"))
    return front + [(k.decode("latin-1"), v.decode("latin-1")) for k, v in merged.raw]
