"""Property-based tests (hypothesis) for the signers and the config loader.

The reference computations below are written from the documented algorithms (docs/platforms.md), not from
refresher's code, so a shared misunderstanding would have to be made twice to pass.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from refresher import platforms
from refresher.config import ConfigFileError, format_duration, parse_config, parse_duration
from refresher.platforms.signing import (
    lazada_sign,
    pkce_challenge_hex,
    pkce_challenge_s256,
    pkce_verifier,
    shopee_base_string,
    shopee_sign,
    tiktok_shop_sign,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

keys = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=12)
values = st.text(min_size=0, max_size=20)
nonempty_values = st.text(min_size=1, max_size=20)
secrets_ = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=40)
paths = st.from_regex(r"/[a-z0-9_/]{0,40}", fullmatch=True)


def ref_hmac_hex(key: str, message: str) -> str:
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------ TikTok Shop


@FAST
@given(secret=secrets_, path=paths, query=st.lists(st.tuples(keys, values), max_size=8), data=st.data())
def test_tiktok_shop_sign_ignores_query_order(secret: str, path: str, query: list[tuple[str, str]], data: Any) -> None:
    shuffled = data.draw(st.permutations(query))
    assert tiktok_shop_sign(secret, path, query, None) == tiktok_shop_sign(secret, path, shuffled, None)


@FAST
@given(secret=secrets_, path=paths, query=st.dictionaries(keys, values, max_size=6), sign=values, token=values)
def test_tiktok_shop_sign_excludes_sign_and_access_token(
    secret: str, path: str, query: dict[str, str], sign: str, token: str
) -> None:
    base = {k: v for k, v in query.items() if k not in ("sign", "access_token")}
    with_extras = [*base.items(), ("sign", sign), ("access_token", token)]
    assert tiktok_shop_sign(secret, path, with_extras) == tiktok_shop_sign(secret, path, base)


@FAST
@given(secret=secrets_, path=paths, query=st.dictionaries(keys, values, max_size=6), body=st.binary(max_size=64))
def test_tiktok_shop_sign_matches_the_documented_formula(
    secret: str, path: str, query: dict[str, str], body: bytes
) -> None:
    assume(body.strip() == body)  # keep the reference simple: bytes as given
    s = path + "".join(k + query[k] for k in sorted(query) if k not in ("sign", "access_token"))
    message = (secret + s).encode() + body + secret.encode()
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    assert tiktok_shop_sign(secret, path, query, body) == expected
    # Multipart bodies are never signed (§2.6).
    no_body = ref_hmac_hex(secret, secret + s + secret)
    assert tiktok_shop_sign(secret, path, query, body, "multipart/form-data; boundary=x") == no_body


# ----------------------------------------------------------------------------------------- Lazada


@FAST
@given(secret=secrets_, api_path=paths, params=st.dictionaries(keys, nonempty_values, max_size=8))
def test_lazada_sign_matches_the_documented_formula(secret: str, api_path: str, params: dict[str, str]) -> None:
    signed = {k: v for k, v in params.items() if k != "sign"}
    message = api_path + "".join(k + signed[k] for k in sorted(signed))
    expected = ref_hmac_hex(secret, message).upper()
    result = lazada_sign(secret, api_path, {**params, "sign": "IGNORED"})
    assert result == expected
    assert re.fullmatch(r"[0-9A-F]{64}", result)


@FAST
@given(secret=secrets_, api_path=paths, params=st.dictionaries(keys, nonempty_values, max_size=6), empty=keys)
def test_lazada_sign_refuses_an_empty_value(secret: str, api_path: str, params: dict[str, str], empty: str) -> None:
    assume(empty != "sign")
    try:
        lazada_sign("never-in-a-message-" + secret, api_path, {**params, empty: ""})
    except ValueError as exc:
        assert empty in str(exc)
        long_secret = "never-in-a-message-" + secret
        assert long_secret not in str(exc)
    else:
        raise AssertionError("an empty value was signed")


@FAST
@given(secret=secrets_, flag=st.booleans())
def test_lazada_booleans_sign_as_lowercase_words(secret: str, flag: bool) -> None:
    assert lazada_sign(secret, "/x", {"a": flag}) == lazada_sign(secret, "/x", {"a": "true" if flag else "false"})


# ----------------------------------------------------------------------------------------- Shopee


ids = st.one_of(st.integers(min_value=0, max_value=10**12), st.from_regex(r"[0-9]{1,12}", fullmatch=True))


@FAST
@given(
    partner_id=st.integers(min_value=1, max_value=10**9),
    path=paths,
    timestamp=st.integers(min_value=0, max_value=2**32),
    token=st.one_of(st.none(), st.text(string.ascii_letters + string.digits, min_size=1, max_size=40)),
    shop_id=st.one_of(st.none(), ids),
)
def test_shopee_base_string_composition(
    partner_id: int, path: str, timestamp: int, token: str | None, shop_id: int | str | None
) -> None:
    base = shopee_base_string(partner_id, path, timestamp, token, shop_id)
    expected = f"{partner_id}{path}{timestamp}"
    if token is not None:
        expected += token + ("" if shop_id is None else str(shop_id))
    assert base == expected
    # A merchant call composes the same way with its merchant id.
    assert shopee_base_string(partner_id, path, timestamp, token, None, shop_id) == expected


@FAST
@given(key=secrets_, partner_id=st.integers(min_value=1, max_value=10**9), path=paths, ts=st.integers(0, 2**32))
def test_shopee_sign_is_lowercase_hmac_of_the_base_string(key: str, partner_id: int, path: str, ts: int) -> None:
    result = shopee_sign(key, partner_id, path, ts)
    assert result == ref_hmac_hex(key, f"{partner_id}{path}{ts}")
    assert re.fullmatch(r"[0-9a-f]{64}", result)


@FAST
@given(shop=ids, merchant=ids)
def test_shopee_refuses_shop_and_merchant_together(shop: int | str, merchant: int | str) -> None:
    try:
        shopee_base_string(1, "/p", 1, "t", shop, merchant)
    except ValueError:
        return
    raise AssertionError("signed for a shop and a merchant at once")


# ------------------------------------------------------------------------------------------- PKCE


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=10))
def test_pkce_verifier_is_rfc7636(_: int) -> None:
    verifier = pkce_verifier()
    assert 43 <= len(verifier) <= 128
    assert re.fullmatch(r"[A-Za-z0-9\-._~]+", verifier)


@FAST
@given(verifier=st.from_regex(r"[A-Za-z0-9\-._~]{43,128}", fullmatch=True))
def test_pkce_challenges(verifier: str) -> None:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    s256 = pkce_challenge_s256(verifier)
    assert s256 == base64.urlsafe_b64encode(digest).decode().rstrip("=")
    assert len(s256) == 43 and "=" not in s256
    assert pkce_challenge_hex(verifier) == digest.hex()
    assert pkce_challenge_s256(verifier) == s256  # deterministic


# ----------------------------------------------------------------------------------------- config

app_names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
unit_seconds = {"d": 86400, "h": 3600, "m": 60, "s": 1}


@st.composite
def durations(draw: Any) -> tuple[str, int]:
    """A duration string with one or two units and its value in seconds."""
    units = draw(st.lists(st.sampled_from("dhms"), min_size=1, max_size=2, unique=True))
    units.sort(key="dhms".index)
    amounts = [draw(st.integers(min_value=1, max_value=500)) for _ in units]
    text = "".join(f"{a}{u}" for a, u in zip(amounts, units, strict=True))
    return text, sum(a * unit_seconds[u] for a, u in zip(amounts, units, strict=True))


@FAST
@given(durations())
def test_duration_strings_parse(pair: tuple[str, int]) -> None:
    text, seconds = pair
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@FAST
@given(st.lists(st.tuples(st.sampled_from("dhms"), st.integers(min_value=1, max_value=10**4)), min_size=1, max_size=2))
def test_format_then_parse_round_trips(parts: list[tuple[str, int]]) -> None:
    # format_duration keeps two units, so values are built from at most two non-zero units.
    seen: dict[str, int] = {}
    for unit, amount in parts:
        seen.setdefault(unit, amount)
    bounds = {"h": 23, "m": 59, "s": 59}
    seconds = sum(min(a, bounds.get(u, a)) * unit_seconds[u] for u, a in seen.items())
    value = dt.timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@st.composite
def valid_documents(draw: Any) -> dict[str, Any]:
    names = draw(st.lists(app_names, min_size=0, max_size=4, unique=True))
    apps = {}
    for name in names:
        platform = draw(st.sampled_from(["shopee", "tiktok_shop", "lazada", "tiktok"]))
        secret = draw(st.text(string.ascii_letters + string.digits, min_size=1, max_size=30))
        word = draw(st.text(string.ascii_letters, min_size=1, max_size=10))
        creds: dict[str, Any] = {
            "shopee": {"partner_id": draw(st.integers(1, 10**9)), "partner_key": secret},
            "tiktok_shop": {"app_key": word, "app_secret": secret},
            "lazada": {"app_key": str(draw(st.integers(1, 10**6))), "app_secret": secret},
            "tiktok": {"client_key": word, "client_secret": secret},
        }[platform]
        app: dict[str, Any] = {"platform": platform, **creds}
        if draw(st.booleans()):
            app["refresh_before"] = draw(durations())[0]
        if draw(st.booleans()):
            app["concurrency"] = draw(st.integers(1, 256))
        if draw(st.booleans()):
            app["timezone"] = draw(st.sampled_from(["UTC", "Asia/Singapore", "Asia/Ho_Chi_Minh", "Europe/Berlin"]))
        if draw(st.booleans()):
            app["schedule"] = draw(st.sampled_from(["*/10 * * * *", "17 * * * *", "0 */2 * * mon-fri"]))
        apps[name] = app
    document: dict[str, Any] = {"apps": apps}
    if draw(st.booleans()):
        document["alerts"] = {"after_failures": draw(st.integers(1, 1000))}
    if draw(st.booleans()):
        document["store"] = {"lease_ttl": draw(durations())[0]}
    return document


@FAST
@given(valid_documents())
def test_valid_configs_round_trip(document: dict[str, Any]) -> None:
    settings_ = parse_config(
        yaml.safe_dump(document), file="p.yaml", env={}, credential_models=platforms.credential_models()
    )
    assert set(settings_.apps) == set(document["apps"])
    for name, app in document["apps"].items():
        parsed = settings_.apps[name]
        assert parsed.name == name and parsed.platform == app["platform"]
        for key, value in app.items():
            if key == "platform":
                continue
            if key in ("refresh_before",):
                assert getattr(parsed, key) == parse_duration(value)
            elif key in ("concurrency", "timezone", "schedule"):
                assert getattr(parsed, key) == value
            else:
                assert parsed.credential(key) == value
    if "alerts" in document:
        assert settings_.alerts.after_failures == document["alerts"]["after_failures"]
    # Every secret is known to the redactor.
    for app in document["apps"].values():
        secret = app.get("partner_key") or app.get("app_secret") or app.get("client_secret")
        assert secret in settings_.secrets()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_garbage_never_raises_anything_but_config_file_error(text: str) -> None:
    try:
        parse_config(text, file="g.yaml", env={}, credential_models=platforms.credential_models())
    except ConfigFileError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert "\n" not in str(problem)


yaml_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=10),
)
yaml_values = st.recursive(
    yaml_atoms,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["apps", "store", "server", "alerts", "logging", "x"]), yaml_values, max_size=4))
def test_well_formed_yaml_of_wrong_shapes_gives_config_file_error(document: dict[str, Any]) -> None:
    try:
        parse_config(yaml.safe_dump(document), file="s.yaml", env={}, credential_models=platforms.credential_models())
    except ConfigFileError as exc:
        assert exc.problems


env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
env_values = st.text(string.ascii_letters + string.digits + "-_.:/", min_size=1, max_size=20)


@FAST
@given(
    name=env_names,
    value=env_values,
    default=st.one_of(st.none(), st.text(string.ascii_letters + "-", max_size=10)),
    is_set=st.booleans(),
)
def test_env_interpolation(name: str, value: str, default: str | None, is_set: bool) -> None:
    reference = "${" + name + (f":-{default}" if default is not None else "") + "}"
    text = f'apps:\n  a:\n    platform: tiktok\n    client_key: "k{reference}"\n    client_secret: s\n'
    env = {name: value} if is_set else {}
    try:
        parsed = parse_config(text, file="e.yaml", env=env, credential_models=platforms.credential_models())
    except ConfigFileError as exc:
        assert not is_set and default is None
        assert f"environment variable {name} is not set" in str(exc)
        assert "apps.a.client_key" in str(exc)
        return
    expected = value if is_set else default
    assert parsed.apps["a"].credential("client_key") == f"k{expected}"


@FAST
@given(value=env_values)
def test_double_dollar_is_a_literal_dollar(value: str) -> None:
    text = f'apps:\n  a:\n    platform: tiktok\n    client_key: "$${{{value}}}"\n    client_secret: s\n'
    parsed = parse_config(text, file="e.yaml", env={}, credential_models=platforms.credential_models())
    assert parsed.apps["a"].credential("client_key") == "${" + value + "}"


def test_secret_files_are_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("file-secret-value\n")
    text = "apps:\n  a:\n    platform: tiktok\n    client_key: k\n    client_secret_file: key\n"
    models = platforms.credential_models()
    parsed = parse_config(text, file="f.yaml", env={}, base_dir=tmp_path, credential_models=models)
    assert parsed.apps["a"].credential("client_secret") == "file-secret-value"
