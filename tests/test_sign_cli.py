"""``refresher sign`` is the proxy's own signer: every signature vector reproduced through it, the same
signature as ``Platform.sign_call`` for the cases where a second implementation used to differ, a base
string for every signing platform, bare paths, ACCOUNT from the store, and the shop-level warning."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from click.testing import CliRunner, Result

from refresher import platforms
from refresher.cli import main
from refresher.config import AppSettings
from refresher.domain import FakeClock, Identity, TokenSet
from refresher.platforms.base import ApiCall
from refresher.platforms.signing import lazada_sign, shopee_sign

VECTORS = Path(__file__).resolve().parent / "vectors"


def _vectors(platform: str) -> list[Any]:
    path = VECTORS / f"{platform}.json"
    return [v for v in json.loads(path.read_text())["vectors"] if v.get("expected_sign")]


def _invoke(tmp_path: Path, app: dict[str, Any], args: list[str], store: bool = False) -> Result:
    config = tmp_path / "refresher.yaml"
    document: dict[str, Any] = {"apps": {"a": app}}
    if store:
        document["store"] = {"url": f"sqlite:///{tmp_path}/tokens.db"}
    config.write_text(yaml.safe_dump(document, allow_unicode=True))
    return CliRunner().invoke(main, ["sign", "-c", str(config), "a", *args])


def _run(tmp_path: Path, app: dict[str, Any], args: list[str], store: bool = False) -> dict[str, Any]:
    result = _invoke(tmp_path, app, args, store)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _plugin(app: dict[str, Any]) -> Any:
    settings = AppSettings.model_validate({"name": "a", **app})
    return platforms.get(app["platform"])(settings, clock=FakeClock())


# ----------------------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("vector", _vectors("shopee"), ids=lambda v: v["id"])
def test_shopee_vectors(tmp_path: Path, vector: dict[str, Any]) -> None:
    i = vector["inputs"]
    query = {"partner_id": i["partner_id"], "timestamp": i["timestamp"]}
    for key in ("access_token", "shop_id", "merchant_id"):
        if i.get(key) is not None:
            query[key] = i[key]
    url = f"https://partner.shopeemobile.com{i['path']}?{urlencode(query)}"
    app = {"platform": "shopee", "partner_id": i["partner_id"], "partner_key": i["partner_key"]}
    out = _run(tmp_path, app, [url])
    assert out["sign"] == vector["expected_sign"]
    assert f"sign={vector['expected_sign']}" in out["request"]["url"]
    expected_base = i["base_string_per_official_doc"]
    if i.get("access_token"):
        expected_base = expected_base.replace(i["access_token"], "<access_token>")
    assert out["base_string"] == expected_base


def _complete(vector: dict[str, Any]) -> bool:
    keys = {k for k, _ in vector["inputs"]["query_decoded_in_send_order"]}
    return {"app_key", "timestamp"} <= keys


@pytest.mark.parametrize("vector", [v for v in _vectors("tiktok_shop") if _complete(v)], ids=lambda v: v["id"])
def test_tiktok_shop_vectors(tmp_path: Path, vector: dict[str, Any]) -> None:
    """Every vector of a real request (app key and timestamp present: T03 is a library's unit test
    without them, which no gateway would take)."""
    i = vector["inputs"]
    pairs = [tuple(p) for p in i["query_decoded_in_send_order"]]
    app_key = next(v for k, v in pairs if k == "app_key")
    url = f"https://open-api.tiktokglobalshop.com{i['path']}?{urlencode(pairs)}"
    app = {"platform": "tiktok_shop", "app_key": app_key, "app_secret": i["app_secret"]}
    args = [url, "-X", i["method"], "--content-type", i.get("content_type") or "application/json"]
    if i.get("body_text_as_sent") is not None:
        args += ["--body", i["body_text_as_sent"]]
    out = _run(tmp_path, app, args)
    if vector["id"].startswith("T11"):
        # refresher never sends a literal {} (the official samples disagree on its sign): it sends no body,
        # and its signature is the official Node SDK's, which skips the empty object.
        assert out["request"]["body"] is None
        assert out["sign"] == vector["results_by_library"]["official-tts-node-sdk generateSign"]["sign"]
    else:
        assert out["sign"] == vector["expected_sign"]
    assert out["base_string"].startswith("<app_secret>" + i["path"]) and out["base_string"].endswith("<app_secret>")


def _lazada_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("vector", _vectors("lazada"), ids=lambda v: v["id"])
def test_lazada_vectors(tmp_path: Path, vector: dict[str, Any]) -> None:
    i = vector["inputs"]
    query = urlencode({k: _lazada_value(v) for k, v in i["params"].items()})
    url = f"https://api.lazada.sg/rest{i['api_path']}?{query}"
    app = {"platform": "lazada", "app_key": str(i["params"]["app_key"]), "app_secret": i["app_secret"]}
    out = _run(tmp_path, app, [url])
    assert out["sign"] == vector["expected_sign"]
    assert out["base_string"].startswith(i["api_path"])


def test_every_platform_has_vectors() -> None:
    assert all(_vectors(p) for p in ("shopee", "tiktok_shop", "lazada"))


# --------------------------------------------------------------------------- one signer, not two


def test_tiktok_shop_duplicate_keys_and_empty_body_sign_as_the_proxy_does(tmp_path: Path) -> None:
    app = {"platform": "tiktok_shop", "app_key": "key123", "app_secret": "secret-456"}
    out = _run(tmp_path, app, ["/order/202309/orders?a=2&a=1&timestamp=1700000000", "-X", "POST", "--body", "{}"])
    proxy = _plugin(app).sign_call(
        ApiCall("POST", "/order/202309/orders", (("a", "2"), ("a", "1")), b"{}", "application/json", 1700000000)
    )
    assert out["sign"] == proxy.sign and out["request"]["body"] is None


def test_lazada_form_body_is_signed_as_parameters_like_lazop(tmp_path: Path) -> None:
    app = {"platform": "lazada", "app_key": "102802", "app_secret": "lazada-secret"}
    form = urlencode({"payload": '{"a":1}'})
    out = _run(
        tmp_path,
        app,
        [
            "/product/update?timestamp=1717000000000&access_token=tok",
            "-X",
            "POST",
            "--body",
            form,
            "--content-type",
            "application/x-www-form-urlencoded",
        ],
    )
    params = {
        "app_key": "102802",
        "timestamp": "1717000000000",
        "sign_method": "sha256",
        "access_token": "tok",
        "payload": '{"a":1}',
    }
    assert out["sign"] == lazada_sign("lazada-secret", "/product/update", params)  # no raw body appended
    assert "payload" not in out["request"]["url"] and out["request"]["body"] == form


def test_lazada_json_body_is_appended_raw(tmp_path: Path) -> None:
    app = {"platform": "lazada", "app_key": "102802", "app_secret": "lazada-secret"}
    body = '{"Request":{"Product":{}}}'
    out = _run(tmp_path, app, ["/product/create?timestamp=1717000000000", "-X", "POST", "--body", body])
    params = {"app_key": "102802", "timestamp": "1717000000000", "sign_method": "sha256"}
    assert out["sign"] == lazada_sign("lazada-secret", "/product/create", params, body)
    assert out["base_string"].endswith(body)


@pytest.mark.parametrize(
    ("app", "target", "secret"),
    [
        ({"platform": "shopee", "partner_id": 2001887, "partner_key": "shopee-key"}, "/api/v2/public/x", None),
        ({"platform": "tiktok_shop", "app_key": "k", "app_secret": "tts-secret"}, "/seller/202309/shops", "tts"),
        ({"platform": "lazada", "app_key": "1", "app_secret": "laz-secret"}, "/seller/get", None),
    ],
    ids=["shopee", "tiktok_shop", "lazada"],
)
def test_every_signing_platform_prints_the_base_string_it_signed(
    tmp_path: Path, app: dict[str, Any], target: str, secret: str | None
) -> None:
    out = _run(tmp_path, app, [target])
    key = str(app.get("partner_key") or app["app_secret"])
    text = out["base_string"].replace("<app_secret>", key)
    digest = hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()
    assert out["sign"] in (digest, digest.upper())
    assert key not in out["base_string"]  # the secret is shown as a placeholder, never printed


# ------------------------------------------------------------------------------- paths and accounts


def test_bare_shopee_path_is_accepted(tmp_path: Path) -> None:
    app = {"platform": "shopee", "partner_id": 2006566, "partner_key": "k"}
    out = _run(tmp_path, app, ["/api/v2/auth/token/get?timestamp=1655714431"])
    assert out["sign"] == shopee_sign("k", 2006566, "/api/v2/auth/token/get", 1655714431)
    assert out["request"]["url"].startswith("https://partner.shopeemobile.com/api/v2/auth/token/get?")


def test_shop_level_path_without_a_token_is_warned_about(tmp_path: Path) -> None:
    app = {"platform": "shopee", "partner_id": 2006566, "partner_key": "k"}
    result = _invoke(tmp_path, app, ["/api/v2/shop/get_shop_info?shop_id=14701711&timestamp=1655714431"])
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "no access_token" in result.stderr and "shop 14701711" in result.stderr
    quiet = _invoke(tmp_path, app, ["/api/v2/shop/get_shop_info?shop_id=1&access_token=t&timestamp=1655714431"])
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_account_fills_its_token_and_shop_from_the_store(tmp_path: Path) -> None:
    from refresher.store import SqlStore

    async def seed() -> None:
        store = SqlStore(f"sqlite:///{tmp_path}/tokens.db", clock=FakeClock())
        await store.open()
        tokens = TokenSet("stored-access-token-123", "stored-refresh", FakeClock().now())
        await store.import_account("a", "shopee", Identity("shop:777", "shop", "777"), tokens, "active")  # type: ignore[arg-type]
        await store.close()

    asyncio.run(seed())
    app = {"platform": "shopee", "partner_id": 2006566, "partner_key": "k"}
    out = _run(tmp_path, app, ["shop:777", "/api/v2/shop/get_shop_info?timestamp=1655714431"], store=True)
    expected = shopee_sign("k", 2006566, "/api/v2/shop/get_shop_info", 1655714431, "stored-access-token-123", "777")
    assert out["sign"] == expected and out["account"] == "shop:777"
    assert "stored-access-token-123" not in json.dumps(out)  # a token from the store is not printed
    assert "shop_id=777" in out["request"]["url"]
    missing = _invoke(tmp_path, app, ["shop:1", "/api/v2/shop/get_shop_info"], store=True)
    assert missing.exit_code == 2 and "no account 'shop:1'" in missing.output


def test_a_cross_border_lazada_account_is_signed_for_the_venture_a_header_picks(tmp_path: Path) -> None:
    """As through the proxy: ACCOUNT's ventures come from the store, x-refresher-country picks one and is
    not sent on."""
    from refresher.store import SqlStore

    infos = [{"country": "sg", "seller_id": "1001"}, {"country": "my", "seller_id": "2002"}]

    async def seed() -> None:
        store = SqlStore(f"sqlite:///{tmp_path}/tokens.db", clock=FakeClock())
        await store.open()
        identity = Identity("1001", "seller", "1001", region="cb", extra={"country_user_info": infos})
        tokens = TokenSet("stored-lazada-token-456", "stored-refresh", FakeClock().now())
        await store.import_account("a", "lazada", identity, tokens, "active")  # type: ignore[arg-type]
        await store.close()

    asyncio.run(seed())
    app = {"platform": "lazada", "app_key": "102802", "app_secret": "lazada-secret"}
    target = ["1001", "/seller/get?timestamp=1717000000000"]
    first = _run(tmp_path, app, target, store=True)
    assert first["request"]["url"].startswith("https://api.lazada.sg/rest/seller/get?")
    chosen = _run(tmp_path, app, [*target, "-H", "X-Refresher-Country: my"], store=True)
    assert chosen["request"]["url"].startswith("https://api.lazada.com.my/rest/seller/get?")
    assert "x-refresher-country" not in chosen["request"]["headers"]
    bad = _invoke(tmp_path, app, [*target, "-H", "no colon"], store=True)
    assert bad.exit_code == 2 and "--header" in bad.output


def test_sign_refuses_an_unsigned_platform_in_one_line(tmp_path: Path) -> None:
    app = {"platform": "tiktok", "client_key": "k", "client_secret": "s"}
    result = _invoke(tmp_path, app, ["https://open.tiktokapis.com/v2/user/info/"])
    assert result.exit_code == 2
    assert "not signed" in result.output and "Traceback" not in result.output


def test_sign_refuses_a_relative_target(tmp_path: Path) -> None:
    app = {"platform": "shopee", "partner_id": 1, "partner_key": "k"}
    result = _invoke(tmp_path, app, ["api/v2/shop/get_shop_info"])
    assert result.exit_code == 2 and "path starting with '/'" in result.output


def test_a_secret_with_a_lone_surrogate_is_rejected_by_check_config(tmp_path: Path) -> None:
    config = tmp_path / "refresher.yaml"
    config.write_text('apps:\n  a:\n    platform: lazada\n    app_key: "1"\n    app_secret: "\\ud83d\\ude00"\n')
    checked = CliRunner().invoke(main, ["check-config", "-c", str(config)])
    assert checked.exit_code == 2, checked.output
    assert "apps.a.app_secret" in checked.output and "surrogate" in checked.output
    assert "Traceback" not in checked.output
    signed = CliRunner().invoke(main, ["sign", "-c", str(config), "a", "/seller/get"])
    assert signed.exit_code == 2 and "Traceback" not in signed.output


def test_a_secret_file_that_is_not_utf8_is_rejected_by_check_config(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"\xff\xfe-not-text")
    config = tmp_path / "refresher.yaml"
    config.write_text('apps:\n  a:\n    platform: lazada\n    app_key: "1"\n    app_secret_file: secret\n')
    checked = CliRunner().invoke(main, ["check-config", "-c", str(config)])
    assert checked.exit_code == 2, checked.output
    assert "apps.a.app_secret_file" in checked.output and "not UTF-8" in checked.output
    assert "Traceback" not in checked.output and "unexpected error" not in checked.output
