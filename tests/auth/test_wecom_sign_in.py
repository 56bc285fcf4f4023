"""Signing in with WeCom through the sandbox (in-process): OAuth2 inside the WeCom client, the web
login (扫码登录) in a desktop browser, a ``state`` that must be this browser's, and the pages a member
without access or a non-member sees.

Mutations tried (each made the named tests fail, then was undone):
- the callback not comparing ``state`` with the cookie's nonce (the ``compare_digest`` condition
  dropped): test_a_tampered_or_foreign_state_is_refused.
- the callback not deleting the login cookie after a sign-in: the same test (its replay part checks
  the cookie is gone).
- /sandbox/sso/login redirecting without a code: test_the_web_login_round_trip_in_a_desktop_browser.
- principal_for without its "no roles: None" (a user whose grants were revoked gets a principal
  with no roles): test_a_member_without_grants_is_told_to_ask_a_manager.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from scrm.auth import service
from scrm.auth.roles import Role
from scrm.web.auth_routes import LOGIN_COOKIE, SESSION_COOKIE
from tests.auth.conftest import AGENT, BASE, CORP, DESKTOP_UA, WECOM_UA

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def at_sandbox(site, location: str, **extra) -> str:
    """The browser at the sandbox's page (``extra``: what the person picks there); the redirect back."""
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == "http://sandbox", location
    r = site.sandbox_http.get(parts.path, params={**query(location), **extra}, follow_redirects=False)
    assert r.status_code == 302, r.text
    return r.headers["location"]


def back_at_scrm(site, location: str, **headers):
    assert location.startswith(BASE + "/auth/wecom/callback?"), location
    return site.web.get(location[len(BASE):], headers=headers, follow_redirects=False)


def test_inside_wecom_the_sign_in_page_goes_straight_to_oauth(site):
    r = site.web.get("/login", params={"next": "/kpi/all"}, headers={"user-agent": WECOM_UA}, follow_redirects=False)
    assert r.status_code == 302
    to = r.headers["location"]
    assert to.startswith("http://sandbox/sandbox/oauth/authorize?") and to.endswith("#wechat_redirect")
    q = query(to.split("#")[0])
    assert q["appid"] == CORP and q["agentid"] == str(AGENT) and q["scope"] == "snsapi_base"
    assert q["redirect_uri"] == BASE + "/auth/wecom/callback" and q["response_type"] == "code"
    assert q["state"].isalnum() and len(q["state"]) == 32  # WeCom: a-zA-Z0-9, at most 128 bytes
    assert LOGIN_COOKIE in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]

    back = at_sandbox(site, to.split("#")[0], userid="zhangsan")
    assert query(back)["state"] == q["state"]
    signed_in = back_at_scrm(site, back, **{"user-agent": WECOM_UA})
    assert signed_in.status_code == 302 and signed_in.headers["location"] == "/kpi/all"
    assert SESSION_COOKIE in signed_in.headers["set-cookie"]
    assert "张三" in site.web.get("/kpi").text  # the synced member's name
    assert site.web.get("/kpi/all").status_code == 200  # zhangsan is a manager


def test_the_web_login_round_trip_in_a_desktop_browser(site):
    page = site.web.get("/login", params={"next": "/kpi"}, headers={"user-agent": DESKTOP_UA})
    assert "企业微信扫码登录" in page.text
    start = site.web.get("/auth/wecom/start", params={"via": "sso", "next": "/kpi"}, follow_redirects=False)
    to = start.headers["location"]
    assert to.startswith("http://sandbox/sandbox/sso/login?")
    q = query(to)
    assert (q["login_type"], q["appid"], q["agentid"]) == ("CorpApp", CORP, str(AGENT))
    assert q["redirect_uri"] == BASE + "/auth/wecom/callback"

    parts = urlsplit(to)
    members = site.sandbox_http.get(parts.path, params=query(to), headers={"accept": "text/html"})
    assert members.status_code == 200 and "企业微信扫码登录（沙箱）" in members.text
    assert "以 李四 (lisi) 扫码" in members.text and "不是企业成员" not in members.text  # members only

    back = at_sandbox(site, to, userid="lisi")
    assert query(back)["state"] == q["state"] and query(back)["code"]
    r = back_at_scrm(site, back)
    assert r.status_code == 302 and r.headers["location"] == "/kpi"
    assert site.web.get("/api/kpi/stores").json() == {"userid": "lisi", "stores": ["SH001"]}


def test_the_sandbox_web_login_refuses_what_wecom_would(site):
    ok = {"login_type": "CorpApp", "appid": CORP, "agentid": str(AGENT), "redirect_uri": BASE + "/cb",
          "state": "abc123", "userid": "zhangsan"}
    assert site.sandbox_http.get("/sandbox/sso/login", params=ok, follow_redirects=False).status_code == 302
    for bad, errcode in (({"appid": "wwother"}, 40013), ({"redirect_uri": "https://evil.example/cb"}, 40058),
                         ({"state": "not-alnum!"}, 40058), ({"login_type": "ServiceApp"}, 40058),
                         ({"agentid": "1"}, 40056)):
        r = site.sandbox_http.get("/sandbox/sso/login", params={**ok, **bad}, follow_redirects=False)
        assert r.status_code == 400 and r.json()["errcode"] == errcode, bad
    html = site.sandbox_http.get("/sandbox/sso/login", params={**ok, "appid": "wwother"},
                                 headers={"accept": "text/html"})
    assert html.status_code == 400 and "企业微信登录失败" in html.text
    unknown = site.sandbox_http.get("/sandbox/sso/login", params={**ok, "userid": "ghost"}, follow_redirects=False)
    assert unknown.status_code == 400  # not a member of the corp


def test_a_tampered_or_foreign_state_is_refused(site):
    start = site.web.get("/auth/wecom/start", params={"via": "sso"}, follow_redirects=False)
    back = at_sandbox(site, start.headers["location"], userid="zhangsan")
    state = query(back)["state"]
    tampered = back.replace(f"state={state}", f"state={state[:-1]}{'0' if state[-1] != '0' else '1'}")
    r = back_at_scrm(site, tampered)
    assert r.status_code == 400 and "登录请求已失效" in r.text and '<html lang="zh-CN">' in r.text
    assert site.web.get("/api/kpi/stores").status_code == 401

    # A code and state an attacker started in their own browser, opened in the victim's: no cookie.
    start = site.web.get("/auth/wecom/start", params={"via": "sso"}, follow_redirects=False)
    back = at_sandbox(site, start.headers["location"], userid="zhangsan")
    site.web.cookies.clear()
    assert back_at_scrm(site, back).status_code == 400
    assert site.web.get("/api/kpi/stores").status_code == 401

    # Without any state (a refusal also drops the started sign-in) ...
    start = site.web.get("/auth/wecom/start", params={"via": "sso"}, follow_redirects=False)
    back = at_sandbox(site, start.headers["location"], userid="zhangsan")
    assert site.web.get("/auth/wecom/callback", params={"code": query(back)["code"]}).status_code == 400
    assert back_at_scrm(site, back).status_code == 400
    # ... and a replay of a completed sign-in (the login cookie is gone after use).
    start = site.web.get("/auth/wecom/start", params={"via": "sso"}, follow_redirects=False)
    back = at_sandbox(site, start.headers["location"], userid="zhangsan")
    done = back_at_scrm(site, back)
    assert done.status_code == 302 and f'{LOGIN_COOKIE}=""' in done.headers["set-cookie"]
    assert site.web.cookies.get(LOGIN_COOKIE) is None
    site.web.cookies.delete(SESSION_COOKIE)
    assert back_at_scrm(site, back).status_code == 400


def test_a_member_without_grants_is_told_to_ask_a_manager(site):
    start = site.web.get("/auth/wecom/start", params={"via": "sso"}, follow_redirects=False)
    r = back_at_scrm(site, at_sandbox(site, start.headers["location"], userid="newbie"))
    assert r.status_code == 403 and '<html lang="zh-CN">' in r.text
    assert "还没有开通权限" in r.text and "newbie" in r.text and "请联系" not in r.text.split("<h1>")[0]
    assert "scrm users grant newbie 角色 [--store 门店编号]" in r.text and "店长或管理员" in r.text
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert site.web.get("/api/kpi/stores").status_code == 401

    # A user whose last grant was revoked is in the same place.
    assert service.revoke(site.engine, "lisi", Role.store_staff) == 1
    start = site.web.get("/auth/wecom/start", params={"via": "sso"}, follow_redirects=False)
    r = back_at_scrm(site, at_sandbox(site, start.headers["location"], userid="lisi"))
    assert r.status_code == 403 and "还没有开通权限" in r.text and "scrm users grant lisi" in r.text
    assert site.web.get("/api/kpi/stores").status_code == 401


def test_a_visitor_who_is_not_a_member_and_an_expired_code_get_chinese_pages(site):
    start = site.web.get("/auth/wecom/start", params={"via": "oauth"}, follow_redirects=False)
    back = at_sandbox(site, start.headers["location"].split("#")[0], visitor="1")
    r = back_at_scrm(site, back)
    assert r.status_code == 403 and "只对企业成员开放" in r.text

    start = site.web.get("/auth/wecom/start", params={"via": "oauth"}, follow_redirects=False)
    state = query(start.headers["location"].split("#")[0])["state"]
    r = site.web.get("/auth/wecom/callback", params={"code": "made-up", "state": state})
    assert r.status_code == 400 and "登录已过期或失败" in r.text
