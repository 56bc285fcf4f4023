"""Signing in with a local account, the session, roles on pages and APIs, CSRF and ``next``.

Mutations tried (each made the named tests fail, then was undone):
- require_page without the role check (``if roles and not principal.has(*roles)`` -> ``if False``):
  test_a_manager_sees_everything_and_a_clerk_only_their_store.
- Principal.visible_stores returning None for everyone: the same test (clerk's API answer and pages).
- _session ignoring the max age (``max_age=None``): test_a_forged_or_expired_cookie_is_signed_out.
- check_csrf accepting a missing token (``if not expected or ...`` -> ``if False``):
  test_a_post_without_the_csrf_token_is_refused.
- safe_next returning its input: test_next_never_leaves_the_site.
- the throttle never blocking (``blocked`` -> False): test_repeated_wrong_passwords_lock_that_userid_for_a_while.
"""

from __future__ import annotations

import re
import time

import pytest
from itsdangerous import URLSafeTimedSerializer
from itsdangerous.timed import TimestampSigner

from scrm.auth import service
from scrm.auth.roles import Role
from scrm.web.auth_routes import SESSION_COOKIE, auth_secret, safe_next
from tests.auth.conftest import DESKTOP_UA, PASSWORD, SECRET, make_site, sign_in

CJK = re.compile(r"[\u4e00-\u9fff]")


def chinese_page(r) -> bool:
    return (r.headers["content-type"].startswith("text/html") and '<html lang="zh-CN">' in r.text
            and 'name="viewport"' in r.text)


def test_the_sign_in_page_is_chinese_and_offers_wecom_and_a_local_account(site):
    r = site.web.get("/login", headers={"user-agent": DESKTOP_UA})
    assert r.status_code == 200 and chinese_page(r)
    assert "登录门店运营后台" in r.text and "企业微信扫码登录" in r.text and "或使用本地账号" in r.text
    assert 'name="userid"' in r.text and 'type="password"' in r.text and 'name="csrf_token" value="' in r.text
    assert 'href="/auth/wecom/start?via=sso&amp;next=%2F"' in r.text
    assert "http://" not in r.text.replace(site.cfg.base_url, "")  # nothing from another host (no CDN)
    cookie = r.headers["set-cookie"]
    assert "scrm_csrf=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie


def test_without_wecom_the_page_offers_the_local_account_only(users):
    s = make_site(users, wecom=False)
    with s.web:
        r = s.web.get("/login")
        assert r.status_code == 200 and "企业微信" not in r.text.split("</h1>")[1].split("本地账号由")[0]
        assert 'id="local-login"' in r.text
        assert s.web.get("/auth/wecom/start").status_code == 404
    s.sandbox_http.close()


def test_a_manager_sees_everything_and_a_clerk_only_their_store(site):
    web = site.web
    assert web.get("/kpi", follow_redirects=False).headers["location"] == "/login?next=%2Fkpi"
    unsigned = web.get("/api/kpi/stores")
    assert unsigned.status_code == 401 and CJK.search(unsigned.json()["detail"])

    r = sign_in(web, "boss")
    assert r.status_code == 303 and r.headers["location"] == "/kpi"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Max-Age=3600" in cookie and "Secure" not in cookie  # http base URL
    assert "老板" in web.get("/kpi").text
    assert web.get("/kpi/all").status_code == 200
    assert web.get("/api/kpi/stores").json() == {"userid": "boss", "stores": None}
    assert web.get("/kpi/store/SH001").status_code == 200

    web.cookies.clear()
    assert sign_in(web, "clerk").status_code == 303
    assert web.get("/api/kpi/stores").json() == {"userid": "clerk", "stores": ["BJ001"]}
    refused = web.get("/kpi/all")
    assert refused.status_code == 403 and chinese_page(refused) and "没有权限" in refused.text
    assert "店员甲" in refused.text and "退出登录" in refused.text  # who is signed in, and a way out
    assert web.get("/kpi/store/BJ001").status_code == 200
    other = web.get("/kpi/store/SH001", headers={"accept": "text/html"})
    assert other.status_code == 403 and chinese_page(other) and "你只能查看自己门店的数据" in other.text
    api = web.get("/api/kpi/store/SH001")
    assert api.status_code == 403 and api.json() == {"detail": "你只能查看自己门店的数据"}
    assert web.get("/api/kpi/store/BJ001").json() == {"store": "BJ001"}
    no_role = web.get("/api/kpi/managers")
    assert no_role.status_code == 403 and CJK.search(no_role.json()["detail"])


def test_a_revoked_role_or_a_disabled_user_stops_at_the_next_request(site):
    web = site.web
    sign_in(web, "clerk")
    assert web.get("/kpi").status_code == 200
    service.grant(site.engine, "clerk", Role.store_staff, ["SH001"])
    assert web.get("/api/kpi/stores").json()["stores"] == ["BJ001", "SH001"]
    service.revoke(site.engine, "clerk", Role.store_staff)
    assert web.get("/kpi", follow_redirects=False).status_code == 302  # no role left: signed out
    web.cookies.clear()
    sign_in(web, "boss")
    service.set_disabled(site.engine, "boss", True)
    assert web.get("/api/kpi/stores").status_code == 401
    web.cookies.clear()
    assert sign_in(web, "boss").status_code == 401  # a disabled user's password no longer works


def test_a_wrong_password_or_an_unknown_userid_get_the_same_answer(site):
    wrong = sign_in(site.web, "boss", "not the password")
    unknown = sign_in(site.web, "nobody", PASSWORD)
    for r in (wrong, unknown):
        assert r.status_code == 401 and chinese_page(r) and "账号或密码不正确" in r.text
        assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert 'value="boss"' in wrong.text  # the userid stays filled in


def test_repeated_wrong_passwords_lock_that_userid_for_a_while(site):
    """Five wrong passwords for boss: the sixth attempt, even with the right password, is refused
    (429) without checking it; clerk is not affected; the window passing lets boss in again."""
    for _ in range(5):
        assert sign_in(site.web, "boss", "guess").status_code == 401
    locked = sign_in(site.web, "boss")
    assert locked.status_code == 429 and "错误次数太多" in locked.text and "15 分钟" in locked.text
    assert sign_in(site.web, "BOSS ").status_code == 429  # the same userid however it is typed
    assert sign_in(site.web, "clerk").status_code == 303
    site.web.cookies.clear()
    site.cfg.throttle.clock = lambda: time.monotonic() + 15 * 60 + 1  # type: ignore[attr-defined]
    assert sign_in(site.web, "boss").status_code == 303


def test_a_forged_or_expired_cookie_is_signed_out(site):
    web = site.web
    sign_in(web, "boss")
    good = web.cookies.get(SESSION_COOKIE)
    assert web.get("/api/kpi/stores").status_code == 200

    forged = URLSafeTimedSerializer("another secret", salt="scrm-session").dumps({"u": "boss", "n": "x"})
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")

    class TwoHoursAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 2 * 3600  # the session lasts an hour here

    expired = URLSafeTimedSerializer(SECRET, salt="scrm-session", signer=TwoHoursAgo).dumps({"u": "boss", "n": "x"})
    fresh = URLSafeTimedSerializer(SECRET, salt="scrm-session").dumps({"u": "boss", "n": "x"})
    for token in (forged, tampered, expired, "garbage"):
        web.cookies.clear()
        web.cookies.set(SESSION_COOKIE, token)
        assert web.get("/api/kpi/stores").status_code == 401, token
        assert web.get("/kpi", follow_redirects=False).headers["location"].startswith("/login?next=")
    web.cookies.clear()
    web.cookies.set(SESSION_COOKIE, fresh)  # the same secret and a current time: accepted (the test's control)
    assert web.get("/api/kpi/stores").status_code == 200


def test_a_post_without_the_csrf_token_is_refused(site):
    web = site.web
    page = web.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]*)"', page.text).group(1)
    no_token = web.post("/login", data={"userid": "boss", "password": PASSWORD}, headers={"accept": "text/html"})
    assert no_token.status_code == 403 and chinese_page(no_token) and "请刷新页面后重试" in no_token.text
    # A token one character off (never the same token: a token already ending in "0" once made this pass in).
    other = web.post("/login", data={"userid": "boss", "password": PASSWORD,
                                     "csrf_token": token[:-1] + ("1" if token.endswith("0") else "0")})
    assert other.status_code == 403
    assert web.cookies.get(SESSION_COOKIE) is None

    sign_in(web, "boss")
    form = web.post("/kpi/note", data={"text": "hi"}, headers={"accept": "text/html"})
    assert form.status_code == 403 and chinese_page(form) and "缺少安全校验码" in form.text
    js = web.post("/kpi/note", json={"text": "hi"})
    assert js.status_code == 403 and CJK.search(js.json()["detail"])
    signed_out_token = token  # the sign-in page's token is not this session's
    assert web.post("/kpi/note", data={"csrf_token": signed_out_token}).status_code == 403
    mine = re.search(r'name="csrf_token" value="([^"]+)"', web.get("/kpi/form").text).group(1)
    assert web.post("/kpi/note", data={"csrf_token": mine}).json() == {"saved": True}
    assert web.post("/kpi/note", headers={"x-csrf-token": mine}).json() == {"saved": True}

    refused = web.post("/logout", data={})  # sign-out needs the token too
    assert refused.status_code == 403 and web.get("/api/kpi/stores").status_code == 200
    out = web.post("/logout", data={"csrf_token": mine}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert web.get("/api/kpi/stores").status_code == 401


def test_the_csrf_token_is_on_the_pages_that_post(site):
    """The 403 page shows the signed-in person and a sign-out form carrying the session's token,
    and that form signs out."""
    web = site.web
    sign_in(web, "clerk")
    page = web.get("/kpi/all")
    token = re.search(r'action="/logout".*?name="csrf_token" value="([^"]+)"', page.text, re.S).group(1)
    assert web.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert web.get("/api/kpi/stores").status_code == 401


NEXT = [
    ("//evil.com", "/"), ("//evil.com/kpi", "/"), ("https://evil.com/", "/"), ("/\\evil.com", "/"),
    ("\\\\evil.com", "/"), ("http:/evil.com", "/"), ("javascript:alert(1)", "/"), ("/kpi/all?x=1", "/kpi/all?x=1"),
    (" //evil.com", "/"), ("/login?next=//evil.com", "/"), ("/%2F%2Fevil.com", "/%2F%2Fevil.com"), ("", "/"),
]


def test_next_never_leaves_the_site(site):
    for target, lands in NEXT:
        assert safe_next(target) == lands, target
        site.web.cookies.clear()
        r = sign_in(site.web, "boss", next_url=target)
        assert r.status_code == 303 and r.headers["location"] == lands, target
        site.web.cookies.clear()
        page = site.web.get("/login", params={"next": target}, follow_redirects=False)
        assert page.status_code == 200 and f'name="next" value="{lands}"' in page.text, target


def test_a_signed_in_visitor_of_the_sign_in_page_goes_on(site):
    sign_in(site.web, "boss")
    r = site.web.get("/login", params={"next": "/kpi/all"}, follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "/kpi/all"
    r = site.web.get("/login", params={"next": "//evil.com"}, follow_redirects=False)
    assert r.headers["location"] == "/"


def test_cookies_are_secure_on_https(users):
    s = make_site(users, base_url="https://127.0.0.1:8443")
    with s.web:
        r = sign_in(s.web, "boss")
        assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
    s.sandbox_http.close()


def test_the_session_key_is_derived_for_its_purpose():
    key = auth_secret("", "corp-secret")
    assert key != "corp-secret" and len(key) == 64 and auth_secret("", "corp-secret") == key
    assert auth_secret("web-secret", "corp-secret") != key
    from scrm.web.toolbar import session_secret

    assert auth_secret("", "corp-secret") != session_secret("", "corp-secret")  # not the toolbar's key
    with pytest.raises(ValueError, match="SCRM_WEB__SESSION_SECRET"):
        auth_secret("", "")


def test_sign_in_inside_the_app_and_from_settings(users, monkeypatch):
    """install_auth on the production app (behind the callback fast path, with its own error pages):
    the redirect and the 403 page are sign-in's, its 404 page still the app's; auth_from_settings
    wires the configured URLs, the session length and a key derived from the corp secret."""
    from fastapi.testclient import TestClient

    from scrm.config import Settings
    from scrm.web.auth_routes import auth_from_settings, install_auth
    from tests.auth.conftest import guarded_pages
    from tests.web.shop import make_app

    monkeypatch.delenv("SCRM_WECOM__SECRET", raising=False)
    monkeypatch.delenv("SCRM_WEB__SESSION_SECRET", raising=False)
    settings = Settings(_env_file=None, database={"url": str(users.url)},
                        wecom={"secret": "corp-secret", "agent_id": 1000005},
                        web={"public_url": "https://scrm.example.com", "session_max_age_hours": 8,
                             "sso_login_url": "http://127.0.0.1:8899/sandbox/sso/login"})
    cfg = auth_from_settings(settings)
    assert (cfg.base_url, cfg.session_max_age_seconds, cfg.secure, cfg.agent_id) == (
        "https://scrm.example.com", 8 * 3600, True, 1000005)
    assert cfg.secret == auth_secret("", "corp-secret") and cfg.client is not None
    assert cfg.sso_login_url == "http://127.0.0.1:8899/sandbox/sso/login"
    local_only = auth_from_settings(Settings(_env_file=None, database={"url": str(users.url)},
                                             web={"session_secret": "web-secret"}))
    assert local_only.client is None and local_only.secret == auth_secret("web-secret", "")  # WeCom not set up

    app = make_app(users)
    install_auth(app.api, cfg)
    guarded_pages(app.api)
    with TestClient(app, base_url="https://scrm.example.com") as web:
        assert web.get("/kpi/all", follow_redirects=False).headers["location"] == "/login?next=%2Fkpi%2Fall"
        page = web.get("/login", headers={"user-agent": DESKTOP_UA})
        assert page.status_code == 200 and "企业微信扫码登录" in page.text
        r = sign_in(web, "clerk", next_url="/kpi/all")
        assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
        refused = web.get("/kpi/all")
        assert refused.status_code == 403 and "没有权限" in refused.text
        missing = web.get("/no-such-page", headers={"accept": "text/html"})
        assert missing.status_code == 404 and '<html lang="zh-CN">' in missing.text


def test_each_person_lands_on_their_own_page(users):
    """A sign-in without ``next`` goes to /home (production's ``home``), which sends a sales rep
    to their customers (/crm), a manager or clerk to the figures, and someone signed out to the
    sign-in page. Mutation tried: /home checking sales_rep before may_see_kpis (a manager who is also
    a rep landed on /crm, not the dashboard)."""
    service.add_user(users, "rep", name="销售甲", password=PASSWORD, role=Role.sales_rep)
    service.grant(users, "boss", Role.sales_rep)  # a manager who also sells
    s = make_site(users)
    s.cfg.home = "/home"
    with s.web:
        assert s.web.get("/home", follow_redirects=False).headers["location"] == "/login"
        for userid, lands in (("rep", "/crm"), ("boss", "/dashboard"), ("clerk", "/dashboard")):
            s.web.cookies.clear()
            page = s.web.get("/login", headers={"user-agent": DESKTOP_UA})
            assert 'name="next" value="/home"' in page.text
            r = sign_in(s.web, userid, next_url="")
            assert r.status_code == 303 and r.headers["location"] == "/home", userid
            assert s.web.get("/home", follow_redirects=False).headers["location"] == lands, userid
    s.sandbox_http.close()
