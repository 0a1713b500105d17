"""Every signature vector, reproduced through ``refresher sign`` (what a user runs to debug "invalid sign")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from click.testing import CliRunner

from refresher.cli import main

VECTORS = Path(__file__).resolve().parent / "vectors"  # a copy of ../shared/vectors


def _vectors(platform: str) -> list[Any]:
    path = VECTORS / f"{platform}.json"
    if not path.exists():  # pragma: no cover - the vectors live beside the project
        return []
    return [v for v in json.loads(path.read_text())["vectors"] if v.get("expected_sign")]


def _run(tmp_path: Path, app: dict[str, Any], args: list[str]) -> dict[str, Any]:
    config = tmp_path / "refresher.yaml"
    config.write_text(yaml.safe_dump({"apps": {"a": app}}))
    result = CliRunner().invoke(main, ["sign", "-c", str(config), "a", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


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


@pytest.mark.parametrize("vector", _vectors("tiktok_shop"), ids=lambda v: v["id"])
def test_tiktok_shop_vectors(tmp_path: Path, vector: dict[str, Any]) -> None:
    i = vector["inputs"]
    query = urlencode([tuple(p) for p in i["query_decoded_in_send_order"]])
    url = f"https://open-api.tiktokglobalshop.com{i['path']}?{query}"
    app = {"platform": "tiktok_shop", "app_key": "ignored-by-as-is", "app_secret": i["app_secret"]}
    args = [url, "--as-is", "-X", i["method"], "--content-type", i.get("content_type") or "application/json"]
    if i.get("body_text_as_sent") is not None:
        args += ["--body", i["body_text_as_sent"]]
    assert _run(tmp_path, app, args)["sign"] == vector["expected_sign"]


def _lazada_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("vector", _vectors("lazada"), ids=lambda v: v["id"])
def test_lazada_vectors(tmp_path: Path, vector: dict[str, Any]) -> None:
    i = vector["inputs"]
    query = urlencode({k: _lazada_value(v) for k, v in i["params"].items()})
    url = f"https://api.lazada.sg/rest{i['api_path']}?{query}"
    app = {"platform": "lazada", "app_key": "ignored-by-as-is", "app_secret": i["app_secret"]}
    assert _run(tmp_path, app, [url, "--as-is"])["sign"] == vector["expected_sign"]


def test_every_platform_has_vectors() -> None:
    assert all(_vectors(p) for p in ("shopee", "tiktok_shop", "lazada"))


def test_sign_refuses_an_unsigned_platform_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "refresher.yaml"
    config.write_text(yaml.safe_dump({"apps": {"t": {"platform": "tiktok", "client_key": "k", "client_secret": "s"}}}))
    result = CliRunner().invoke(main, ["sign", "-c", str(config), "t", "https://open.tiktokapis.com/v2/user/info/"])
    assert result.exit_code == 2
    assert "not signed" in result.output and "Traceback" not in result.output
