"""Invitation tokens: signed over app + expiry, expiring, tamper-evident, never leaking the secret."""

from __future__ import annotations

import datetime as dt

import pytest

from refresher.domain import FakeClock
from refresher.invites import MAX_TTL, InviteError, check_invite, invite_url, make_invite

SECRET = "invite-secret-0123456789abcdef"
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_a_fresh_invitation_opens_its_app_until_it_expires() -> None:
    clock = FakeClock(T0)
    token = make_invite("shopee-sg", dt.timedelta(days=7), secret=SECRET, clock=clock)
    assert check_invite(token, "shopee-sg", secret=SECRET, clock=clock) == T0 + dt.timedelta(days=7)
    clock.advance(dt.timedelta(days=7) - dt.timedelta(seconds=1))
    check_invite(token, "shopee-sg", secret=SECRET, clock=clock)
    clock.advance(1)
    with pytest.raises(InviteError) as caught:
        check_invite(token, "shopee-sg", secret=SECRET, clock=clock)
    assert caught.value.kind == "expired"
    assert "2026-03-08 12:00" in str(caught.value)


def test_an_invitation_is_bound_to_its_app_and_secret() -> None:
    clock = FakeClock(T0)
    token = make_invite("shopee-sg", dt.timedelta(hours=1), secret=SECRET, clock=clock)
    for app, secret in (("shopee-my", SECRET), ("shopee-sg", SECRET + "x")):
        with pytest.raises(InviteError) as caught:
            check_invite(token, app, secret=secret, clock=clock)
        assert caught.value.kind == "invalid"


def test_a_tampered_expiry_is_invalid_not_merely_expired() -> None:
    clock = FakeClock(T0)
    token = make_invite("app", dt.timedelta(hours=1), secret=SECRET, clock=clock)
    expiry, mac = token.split(".")
    # Pushing the expiry a year out must break the signature.
    later = int(expiry, 36) + 365 * 86400
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    forged = ""
    while later:
        later, rest = divmod(later, 36)
        forged = digits[rest] + forged
    with pytest.raises(InviteError) as caught:
        check_invite(f"{forged}.{mac}", "app", secret=SECRET, clock=clock)
    assert caught.value.kind == "invalid"
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    with pytest.raises(InviteError) as caught:
        check_invite(f"{expiry}.{flipped}", "app", secret=SECRET, clock=clock)
    assert caught.value.kind == "invalid"


@pytest.mark.parametrize("token", ["", "abc", "zz.short", "a.b.c", "x" * 300, "1.!!!!"])
def test_malformed_tokens_say_so(token: str) -> None:
    with pytest.raises(InviteError) as caught:
        check_invite(token, "app", secret=SECRET, clock=FakeClock(T0))
    assert caught.value.kind == "malformed"


def test_tokens_are_urlsafe_and_never_contain_the_secret() -> None:
    clock = FakeClock(T0)
    token = make_invite("app", dt.timedelta(days=30), secret=SECRET, clock=clock)
    assert all(c.isalnum() or c in "-_." for c in token)
    url = invite_url("https://refresher.example.com/", "app", token)
    assert url == f"https://refresher.example.com/connect/app?invite={token}"
    assert SECRET not in url
    with pytest.raises(InviteError) as caught:
        check_invite(token, "other", secret=SECRET, clock=clock)
    assert SECRET not in str(caught.value)


def test_short_secret_and_nonpositive_ttl_are_refused_with_one_clear_line() -> None:
    clock = FakeClock(T0)
    with pytest.raises(InviteError, match="invite_secret must be at least 16"):
        make_invite("app", dt.timedelta(days=1), secret="short", clock=clock)
    with pytest.raises(InviteError, match="positive"):
        make_invite("app", dt.timedelta(0), secret=SECRET, clock=clock)


def test_an_invitation_lifetime_is_bounded() -> None:
    clock = FakeClock(T0)
    make_invite("app", MAX_TTL, secret=SECRET, clock=clock)
    with pytest.raises(InviteError, match="at most 365 days"):
        make_invite("app", MAX_TTL + dt.timedelta(seconds=1), secret=SECRET, clock=clock)
