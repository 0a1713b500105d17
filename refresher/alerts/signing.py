"""HMAC-SHA256 signatures of outgoing webhooks (alarm webhooks and token hooks).

The signed text is ``"<timestamp>.<body>"``: the timestamp is part of the MAC, so a receiver that checks
its age (``tolerance``) refuses a replayed request, and the body cannot be swapped under an old header.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

TIMESTAMP_HEADER = "X-Refresher-Timestamp"
SIGNATURE_HEADER = "X-Refresher-Signature"
_PREFIX = "sha256="


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` over ``"<timestamp>.<body>"``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return _PREFIX + mac.hexdigest()


def signature_headers(secret: str | None, body: bytes, now: dt.datetime) -> dict[str, str]:
    """The headers of one signed request (only the timestamp when no secret is configured)."""
    timestamp = str(int(now.timestamp()))
    headers = {TIMESTAMP_HEADER: timestamp}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
    return headers


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    now: dt.datetime | float,
    tolerance: float = 300,
) -> bool:
    """For receivers: True when ``signature`` is ours for this body and the timestamp is fresh.

    ``now`` is the receiver's current time (a datetime or epoch seconds); a timestamp further than
    ``tolerance`` seconds from it, in either direction, fails.
    """
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = now.timestamp() if isinstance(now, dt.datetime) else float(now)
    if abs(current - sent) > tolerance:
        return False
    if not isinstance(signature, str) or not signature.startswith(_PREFIX):
        return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace"))
