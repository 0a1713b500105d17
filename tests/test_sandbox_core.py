"""The platform-neutral sandbox: fault specs, strict rotation, reuse counting, grace for old tokens."""

from __future__ import annotations

import datetime as dt

import pytest

from refresher.domain import FakeClock
from refresher.sandbox.core import SandboxRejection, SandboxState, Subject
from refresher.sandbox.faults import FaultPlan, FaultSpecError


def test_fault_spec_parses_probability_and_count() -> None:
    plan = FaultPlan.parse("shopee:refresh:503|x2, *:api:html@0", seed=1)
    assert [r.kind for r in plan.rules] == ["503", "html"]
    assert plan.take("shopee", "refresh") == "503"
    assert plan.take("shopee", "refresh") == "503"
    assert plan.take("shopee", "refresh") is None  # used up
    assert plan.take("lazada", "api") is None  # probability 0


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [("shopee:refresh:melt", "unknown kind"), ("shopee:dance:500", "unknown operation"), ("garbage", "expected")],
)
def test_bad_fault_spec_is_one_clear_error(spec: str, fragment: str) -> None:
    with pytest.raises(FaultSpecError, match=fragment):
        FaultPlan.parse(spec)


def _grant(state: SandboxState, platform: str = "tiktok") -> tuple[str, str]:
    code = state.issue_code(platform, "sbxtiktokclient01", [Subject("u1", "user", "User 1")], ["user.info.basic"])
    _, chain = state.redeem_code(platform, "sbxtiktokclient01", code.code)
    return chain.access_token, chain.refresh_token


def test_code_is_single_use_and_expires() -> None:
    clock = FakeClock()
    state = SandboxState(clock=clock)
    code = state.issue_code("tiktok", "sbxtiktokclient01", [Subject("u1", "user", "U")], [])
    state.redeem_code("tiktok", "sbxtiktokclient01", code.code)
    with pytest.raises(SandboxRejection) as used:
        state.redeem_code("tiktok", "sbxtiktokclient01", code.code)
    assert used.value.reason == "used"
    late = state.issue_code("tiktok", "sbxtiktokclient01", [Subject("u1", "user", "U")], [])
    clock.advance(dt.timedelta(minutes=11))
    with pytest.raises(SandboxRejection) as expired:
        state.redeem_code("tiktok", "sbxtiktokclient01", late.code)
    assert expired.value.reason == "expired"


def test_rotation_is_strict_and_reuse_is_counted() -> None:
    state = SandboxState(clock=FakeClock())
    access, refresh = _grant(state)
    chain = state.refresh("tiktok", "sbxtiktokclient01", refresh)
    assert chain.refresh_token != refresh and chain.access_token != access
    with pytest.raises(SandboxRejection) as reused:
        state.refresh("tiktok", "sbxtiktokclient01", refresh)
    assert reused.value.reason == "reused"
    assert state.counters["tiktok.reuse"] == 1
    with pytest.raises(SandboxRejection):
        state.check_access("tiktok", access)  # no grace on TikTok


def test_shopee_keeps_the_previous_access_token_for_five_minutes() -> None:
    clock = FakeClock()
    state = SandboxState(clock=clock)
    code = state.issue_code("shopee", "100001", [Subject("1", "shop", "Shop")], [])
    _, chain = state.redeem_code("shopee", "100001", code.code)
    old_access = chain.access_token
    state.refresh("shopee", "100001", chain.refresh_token)
    assert state.check_access("shopee", old_access).id == chain.id
    clock.advance(dt.timedelta(minutes=5, seconds=1))
    with pytest.raises(SandboxRejection):
        state.check_access("shopee", old_access)


def test_refresh_deadline_is_not_extended_where_the_platform_does_not() -> None:
    clock = FakeClock()
    state = SandboxState(clock=clock)
    code = state.issue_code("lazada", "100001", [Subject("s", "seller", "S")], [])
    _, chain = state.redeem_code("lazada", "100001", code.code)
    deadline = chain.refresh_expires_at
    clock.advance(dt.timedelta(days=10))
    state.refresh("lazada", "100001", chain.refresh_token)
    assert chain.refresh_expires_at == deadline
    clock.advance(dt.timedelta(days=171))
    with pytest.raises(SandboxRejection) as expired:
        state.refresh("lazada", "100001", chain.refresh_token)
    assert expired.value.reason == "expired"


def test_admin_view_never_shows_a_token() -> None:
    state = SandboxState(clock=FakeClock())
    access, refresh = _grant(state)
    public = str([c.public() for c in state.chains.values()])
    assert access not in public and refresh not in public
