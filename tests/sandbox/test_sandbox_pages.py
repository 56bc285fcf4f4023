"""Pages of the sandbox work without the internet (the API docs bring their own Swagger UI), and
the ones a demo user reaches (the OAuth stand-in, the QR scan page) are Chinese and fit a phone."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from scrm.sandbox import Sandbox, create_sandbox_app

VIEWPORT = '<meta name="viewport" content="width=device-width, initial-scale=1">'


@pytest.fixture
def sandbox(clock):
    sb = Sandbox(clock=clock, qr_base_url="http://sandbox/sandbox/qr/")
    sb.add_member("zhangsan", "张三")
    sb.add_member("x<b>", "<script>alert(1)</script>")
    return sb


@pytest.fixture
def api(sandbox):
    return TestClient(create_sandbox_app(sandbox), base_url="http://sandbox")


def test_api_docs_load_every_asset_from_the_sandbox_itself(api):
    for page in ("/sandbox/docs", "/sandbox/redoc"):
        r = api.get(page)
        assert r.status_code == 200
        assert not re.search(r"(?:src|href|url)\s*[=:]\s*['\"]?(?:https?:)?//", r.text), page
        assets = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", r.text)
        assert any(a.endswith(".js") for a in assets)
        for asset in assets:
            assert asset.startswith("/sandbox/")
            got = api.get(asset)
            assert got.status_code == 200 and len(got.content) > 0, asset
    docs = api.get("/sandbox/docs").text
    assert "/sandbox/openapi.json" in docs and api.get("/sandbox/openapi.json").json()["paths"]


def test_the_login_page_is_chinese_for_a_phone_and_escapes_names(api):
    r = api.get("/sandbox/oauth/authorize", params={"redirect_uri": "http://127.0.0.1:8000/toolbar", "state": "t"})
    assert r.status_code == 200
    text = r.text
    assert VIEWPORT in text
    assert "企业微信登录（沙箱）" in text and "以下面的身份登录" in text and "不是企业成员的微信用户" in text
    assert "张三 (zhangsan)" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; (x&lt;b&gt;)" in text and "<script>" not in text
    assert "Sandbox WeCom login" not in text and "Sign in" not in text


def test_the_scan_page_is_chinese_for_a_phone(api, sandbox):
    cid = sandbox.api_add_contact_way({"type": 2, "scene": 2, "user": ["zhangsan", "x<b>"], "remark": "<i>码</i>"})[
        "config_id"]
    text = api.get(f"/sandbox/qr/{cid}").text
    assert VIEWPORT in text and "扫码（以新顾客身份）" in text and "「联系我」" in text
    assert "张三 (zhangsan)" in text and "(x&lt;b&gt;)" in text and "&lt;i&gt;码&lt;/i&gt;" in text
    assert "<script>" not in text and "<i>" not in text
    missing = api.get("/sandbox/qr/nope", headers={"accept": "text/html"})
    assert missing.status_code == 404 and VIEWPORT in missing.text and "二维码不存在" in missing.text
