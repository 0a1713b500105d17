"""Reading the fields of a token answer defensively: tokens, counts of seconds, and the salvage of a
new token pair from an answer that is otherwise flawed."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from refresher.domain import MalformedAnswer, TokenSet

# How long salvaged tokens are trusted: short, so the next sweep refreshes them with a proper answer.
SALVAGED_LIFETIME = dt.timedelta(minutes=10)


def as_token(data: Mapping[str, Any], key: str, platform: str, request_id: str | None = None) -> str:
    """A token must be a non-empty string: a number or an object in its place is a broken answer."""
    value = data.get(key)
    if value is None or value == "":
        raise MalformedAnswer(f"answer lacks {key}", platform=platform, request_id=request_id)
    if not isinstance(value, str):
        raise MalformedAnswer(
            f"{key} has the wrong type ({type(value).__name__})", platform=platform, request_id=request_id
        )
    return value


def as_seconds(data: Mapping[str, Any], key: str, platform: str, *, required: bool = True) -> int | None:
    """A count of seconds or an epoch time given as a number or a numeric string (Lazada's docs use both)."""
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise MalformedAnswer(f"answer lacks {key}", platform=platform)
        return None
    if isinstance(value, bool):
        raise MalformedAnswer(f"{key} has the wrong type (bool)", platform=platform)
    if isinstance(value, str):
        if not re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
            raise MalformedAnswer(f"{key} is not a number", platform=platform)
        value = float(value)
    if not isinstance(value, int | float) or value != value or value in (float("inf"), float("-inf")):
        raise MalformedAnswer(f"{key} has the wrong type ({type(value).__name__})", platform=platform)
    if value < 0 or value > 10**11:
        raise MalformedAnswer(f"{key} is out of range", platform=platform)
    return int(value)


def json_seconds(data: Mapping[str, Any], key: str, platform: str) -> int:
    """A positive JSON number of seconds (Shopee's ``expire_in``): a string or anything else is broken."""
    value = data.get(key)
    if value is None:
        raise MalformedAnswer(f"answer lacks {key}", platform=platform)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedAnswer(f"{key} has the wrong type ({type(value).__name__})", platform=platform)
    if not 0 < value <= 10**8:
        raise MalformedAnswer(f"{key} is out of range", platform=platform)
    return int(value)


def salvage(error: MalformedAnswer, data: Mapping[str, Any], now: dt.datetime) -> MalformedAnswer:
    """Attach the new tokens of a flawed success answer to its error, if both tokens are there.

    A platform that rotates has invalidated the old refresh token the moment it answered: dropping the
    new pair because, say, ``expires_in`` was a word, would cost a re-authorization by the seller.
    """
    access, refresh = data.get("access_token"), data.get("refresh_token")
    if isinstance(access, str) and access and isinstance(refresh, str) and refresh:
        error.salvaged = TokenSet(
            access_token=access,
            refresh_token=refresh,
            access_expires_at=now + SALVAGED_LIFETIME,
            refresh_expires_at=None,
            raw={"salvaged_because": error.message},
        )
    return error
