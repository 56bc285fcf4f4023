"""Signing in to the group owner's toolbar page through the sandbox's OAuth2: a member lands on the
page under their name, an expired code and a non-member get different Chinese pages, and the
errors the page shows the owner are Chinese."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from scrm.contacts.models import Employee
from scrm.groups.models import CustomerGroup
from scrm.sandbox import Sandbox, create_sandbox_app
from scrm.sop.models import SopPost
from scrm.web.toolbar import ToolbarConfig, toolbar_router
from scrm.wecom.client import WeComClient
from tests.web.shop import make_app

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture
def toolbar(sqlite_engine):
    sandbox = Sandbox("wwtoolbarcorp", "toolbar-secret")
    sandbox.add_member("zhangsan", "张三")
    sandbox.add_member("nameless", "")
    with Session(sqlite_engine) as s:
        s.add(Employee(userid="zhangsan", name="张三"))
        s.commit()
    sandbox_http = TestClient(create_sandbox_app(sandbox), base_url="http://sandbox")
    client = WeComClient("wwtoolbarcorp", "toolbar-secret", "http://sandbox/cgi-bin/", http=sandbox_http,
                         sleep=lambda s: None)
    app = make_app(sqlite_engine)
    app.api.include_router(toolbar_router(ToolbarConfig(
        engine=sqlite_engine, client=client, corp_id="wwtoolbarcorp", agent_id=1000002, secret="test-secret",
        base_url="http://scrm", authorize_url="http://sandbox/sandbox/oauth/authorize", tz=ZoneInfo("Asia/Shanghai"),
        templates=lambda: {})))
    with TestClient(app, base_url="http://scrm") as web:
        yield web, sandbox
    sandbox_http.close()


def chinese_page(r) -> bool:
    return r.headers["content-type"].startswith("text/html") and 'name="viewport"' in r.text \
        and '<html lang="zh-CN">' in r.text


def test_an_expired_or_used_code_says_open_it_again_from_the_toolbar(toolbar):
    web, sandbox = toolbar
    code = sandbox.oauth_code("zhangsan")
    assert web.get("/toolbar", params={"code": code}, follow_redirects=False).status_code == 302
    again = web.get("/toolbar", params={"code": code}, follow_redirects=False)  # codes are one-time
    assert again.status_code == 403 and chinese_page(again)
    assert "登录已过期或失败" in again.text and "客户群工具栏重新打开" in again.text
    assert "只对企业成员" not in again.text
    made_up = web.get("/toolbar", params={"code": "made-up"})
    assert made_up.status_code == 403 and "登录已过期或失败" in made_up.text


@pytest.mark.parametrize("external", [None, "wm_customer"])
def test_a_visitor_who_is_not_a_member_is_told_the_page_is_for_members(toolbar, external):
    web, sandbox = toolbar
    if external:
        sandbox.add_customer("顾客", external_userid=external)
    code = sandbox.oauth_code(external_userid=external)
    r = web.get("/toolbar", params={"code": code})
    assert r.status_code == 403 and chinese_page(r)
    assert "这个页面只对企业成员（群主）开放" in r.text and "登录已过期" not in r.text
    assert "scrm_owner" not in r.headers.get("set-cookie", "")


def test_the_owner_is_shown_by_name(toolbar):
    web, sandbox = toolbar
    web.get("/toolbar", params={"code": sandbox.oauth_code("zhangsan")})
    page = web.get("/toolbar")
    assert page.status_code == 200 and "张三" in page.text and "zhangsan" not in page.text
    web.cookies.clear()
    web.get("/toolbar", params={"code": sandbox.oauth_code("nameless")})
    assert "nameless" in web.get("/toolbar").text  # no name known: the userid


def test_errors_the_owner_can_read_are_chinese(toolbar, sqlite_engine):
    import datetime as dt

    web, sandbox = toolbar
    assert CJK.search(web.get("/toolbar/api/posts").json()["detail"])  # 401, not signed in
    web.get("/toolbar", params={"code": sandbox.oauth_code("zhangsan")})
    with Session(sqlite_engine) as s:
        s.add(CustomerGroup(chat_id="chat_other", name="别人的群", owner_userid="lisi"))
        at = dt.datetime(2026, 11, 24, 4, tzinfo=dt.UTC)
        post = SopPost(chat_id="chat_other", template_id="t", step_key="0", template_digest="d", slot=1,
                       day=dt.date(2026, 11, 24), scheduled_for=at, window_ends_at=at, channel="owner_task",
                       sender="lisi", status="due")
        s.add(post)
        s.commit()
        post_id = post.id
    wecom = {"X-Requested-With": "scrm-toolbar", "User-Agent": "Mozilla/5.0 wxwork/4.1.30 MicroMessenger/7.0.1"}
    url = f"/toolbar/api/posts/{post_id}"
    answers = [
        web.post(f"{url}/claim", json={"chat_id": "chat_other"}),  # no X-Requested-With
        web.post(f"{url}/claim", content=b"not json", headers=wecom),
        web.post(f"{url}/claim", json={"chat": "chat_other"}, headers=wecom),  # no chat_id
        web.post(f"{url}/claim", json={"chat_id": "chat_other"}, headers=wecom),  # lisi's post
        web.post(f"{url}/claim", json={"chat_id": "chat_other"},  # outside WeCom on a real corp
                 headers={"X-Requested-With": "scrm-toolbar"}),
        web.post("/toolbar/api/posts/999999/claim", json={"chat_id": "x"}, headers=wecom),
        web.post(f"{url}/confirm", json={}, headers=wecom),  # not zhangsan's claim
        web.post(f"{url}/confirm", json={"partial": {"sent": "one"}}, headers=wecom),
        web.post(f"{url}/release", json={"reason": "because"}, headers=wecom),
        web.get("/toolbar/api/agent-config", params={"url": "http://elsewhere/"}),
    ]
    assert [r.status_code for r in answers] == [400, 400, 400, 403, 403, 404, 403, 400, 400, 400]
    assert "企业微信" in answers[4].json()["detail"] and "别的群主" in answers[3].json()["detail"]
    for r in answers:
        detail = r.json()["detail"]
        assert CJK.search(detail) and not re.search(r"[A-Za-z]{4,}", detail), detail
    with Session(sqlite_engine) as s:
        p = s.get(SopPost, post_id)
        assert (p.status, p.sent_by, p.claimed_by) == ("due", None, None)  # none of it changed the ledger
