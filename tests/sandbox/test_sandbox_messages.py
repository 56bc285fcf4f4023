"""The sandbox's message/send, ticket/get and OAuth2 (auth/getuserinfo + a browser-facing authorize
page) answer like WeCom (reference §3.8a, §3.10, §3.11), and show up on the /sandbox/ surface."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from scrm.sandbox import OAUTH_CODE_TTL, Sandbox, SandboxError, create_sandbox_app, serve
from scrm.sandbox.server import local_redirect_uri
from scrm.wecom.client import InvalidOAuthCode, NotAMember, WeComClient

CORP, SECRET, AGENT = "wwsandboxmsg", "sb-secret", 1000002

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


@pytest.fixture
def sandbox(clock):
    sb = Sandbox(CORP, SECRET, clock=clock, agent_id=AGENT)
    sb.add_member("zhangsan", "张三")
    sb.add_member("lisi", "李四")
    return sb


@pytest.fixture
def api(sandbox):
    return TestClient(create_sandbox_app(sandbox), base_url="http://sandbox")


@pytest.fixture
def q(sandbox):
    token = sandbox.handle("GET", "gettoken", {"corpid": CORP, "corpsecret": SECRET}, None)["access_token"]
    return {"access_token": token}


def textcard(touser="zhangsan", **kw):
    card = {"title": "今日待发", "description": "09:30 早餐券", "url": "https://scrm.example/t/x", "btntxt": "去发送"}
    card.update(kw)
    return {"touser": touser, "msgtype": "textcard", "agentid": AGENT, "textcard": card}


# -- message/send ------------------------------------------------------------------------------------
def test_message_send_validates_like_wecom(sandbox, q):
    send = lambda body: sandbox.handle("POST", "message/send", q, body)  # noqa: E731
    ok = send(textcard("zhangsan|Ghost"))
    assert (ok["errcode"], ok["invaliduser"]) == (0, "ghost") and ok["msgid"]  # userids answered lower case
    assert send({**textcard(), "agentid": None})["errcode"] == 41011
    assert send({**textcard(), "agentid": 1})["errcode"] == 40056
    assert send({**textcard(), "agentid": "x"})["errcode"] == 40056
    assert send({**textcard(), "agentid": str(AGENT)})["errcode"] == 0
    assert send({**textcard(), "msgtype": "markdown"})["errcode"] == 40008
    assert send(textcard("ghost|nobody"))["errcode"] == 81013
    assert send({**textcard(), "touser": ""})["errcode"] == 40058
    assert send({**textcard(), "toparty": "1"})["errcode"] == 40058
    assert send(textcard(title="x" * 129))["errcode"] == 40058
    assert send(textcard(description="字" * 171))["errcode"] == 40058  # 513 bytes
    assert send(textcard(url=None))["errcode"] == 40058
    assert send({"touser": "zhangsan", "msgtype": "textcard", "agentid": AGENT})["errcode"] == 40058
    empty = {"touser": "zhangsan", "msgtype": "text", "agentid": AGENT, "text": {"content": ""}}
    assert send(empty)["errcode"] == 44004
    assert send({"touser": "zhangsan", "msgtype": "text", "agentid": AGENT,
                 "text": {"content": "x" * 2049}})["errcode"] == 40058
    assert send({**textcard("|".join(f"u{i}" for i in range(1001)))})["errcode"] == 40058
    long_btn = send(textcard(btntxt="现在就去发送"))
    assert long_btn["errcode"] == 0 and sandbox.app_messages[-1]["textcard"]["btntxt"] == "现在就去"  # cut to 4
    assert send(textcard("@all"))["errcode"] == 0 and [m["touser"] for m in sandbox.app_messages[-2:]] == [
        "zhangsan", "lisi"]
    assert [m["touser"] for m in sandbox.app_messages] == ["zhangsan", "zhangsan", "zhangsan", "zhangsan", "lisi"]


def test_message_send_without_a_sandbox_agent_id_accepts_any_agentid(clock):
    sb = Sandbox(CORP, SECRET, clock=clock, agent_id=None)
    sb.add_member("zhangsan", "张三")
    tok = {"access_token": sb.handle("GET", "gettoken", {"corpid": CORP, "corpsecret": SECRET}, None)["access_token"]}
    assert sb.handle("POST", "message/send", tok, {**textcard(), "agentid": 7})["errcode"] == 0
    assert sb.handle("POST", "message/send", tok, {**textcard(), "agentid": None})["errcode"] == 41011


def test_thirty_messages_a_minute_per_member_sliding_window(sandbox, q, clock):
    send = lambda touser: sandbox.handle("POST", "message/send", q, textcard(touser))["errcode"]  # noqa: E731
    start = clock.t
    for i in range(30):
        clock.t = start + i  # 30 messages in 30 s
        assert send("zhangsan") == 0
    assert send("zhangsan") == 45009
    assert send("lisi|zhangsan") == 45009  # refused whole: nothing for lisi either
    assert send("lisi") == 0
    clock.t = start + 59.5
    assert send("zhangsan") == 45009  # the first message is still inside the last minute
    clock.t = start + 60.5
    assert send("zhangsan") == 0  # one slot freed
    assert send("zhangsan") == 45009
    assert [m["touser"] for m in sandbox.app_messages].count("zhangsan") == 31
    sandbox.app_message_per_member_per_minute = 0  # 0 turns the limit off
    assert send("zhangsan") == 0


# -- ticket/get ---------------------------------------------------------------------------------------
def test_ticket_get_needs_agent_config_and_expires_with_the_clock(sandbox, q, clock):
    get = lambda **p: sandbox.handle("GET", "ticket/get", {**q, **p}, None)  # noqa: E731
    assert get()["errcode"] == 40058
    assert get(type="jsapi")["errcode"] == 40058
    assert sandbox.handle("GET", "ticket/get", {"type": "agent_config"}, None)["errcode"] == 41001
    first = get(type="agent_config")
    assert first["errcode"] == 0 and first["ticket"] and first["expires_in"] == 7200
    clock.t += 100
    again = get(type="agent_config")
    assert again["ticket"] == first["ticket"] and again["expires_in"] == 7100  # same ticket while valid
    clock.t += 7100  # both the access token and the ticket expired
    assert get(type="agent_config")["errcode"] == 42001
    q["access_token"] = sandbox.handle("GET", "gettoken", {"corpid": CORP, "corpsecret": SECRET}, None)["access_token"]
    assert get(type="agent_config")["ticket"] != first["ticket"]


def test_ticket_get_is_limited_per_hour(sandbox, q, clock):
    sandbox.agent_tickets_per_hour = 3
    get = lambda: sandbox.handle("GET", "ticket/get", {**q, "type": "agent_config"}, None)["errcode"]  # noqa: E731
    clock.t = 3600 * (int(clock.t) // 3600 + 1)  # start of an hour
    assert [get(), get(), get(), get()] == [0, 0, 0, 45009]
    clock.t += 3600
    assert get() == 0


# -- OAuth2 -------------------------------------------------------------------------------------------
def test_getuserinfo_codes_are_one_time_and_expire(sandbox, q, clock):
    get = lambda code: sandbox.handle("GET", "auth/getuserinfo", {**q, "code": code}, None)  # noqa: E731
    code = sandbox.oauth_code("zhangsan")
    assert get(code) == {"errcode": 0, "errmsg": "ok", "userid": "zhangsan"}
    assert get(code)["errcode"] == 40029
    assert get("nope")["errcode"] == 40029
    assert sandbox.handle("GET", "auth/getuserinfo", q, None)["errcode"] == 41008
    old = sandbox.oauth_code("lisi")
    clock.t += OAUTH_CODE_TTL + 1
    assert get(old)["errcode"] == 40029
    cust = sandbox.add_customer("段誉")
    visitor = get(sandbox.oauth_code(external_userid=cust.external_userid))
    assert "userid" not in visitor and visitor["external_userid"] == cust.external_userid and visitor["openid"]
    with pytest.raises(SandboxError) as exc:
        sandbox.oauth_code("ghost")
    assert exc.value.errcode == 60111


def test_authorize_page_redirects_with_code_and_state(sandbox, api):
    c = WeComClient(CORP, SECRET, "http://sandbox/cgi-bin/", http=api, sleep=lambda s: None)
    r = api.get("/sandbox/oauth/authorize", params={"userid": "lisi", "state": "toolbar42",
                                                    "redirect_uri": "http://127.0.0.1:8000/toolbar?chat=wr1"},
                follow_redirects=False)
    assert r.status_code == 302
    target = urlsplit(r.headers["location"])
    assert (target.scheme, target.netloc, target.path) == ("http", "127.0.0.1:8000", "/toolbar")
    params = parse_qs(target.query)
    assert params["chat"] == ["wr1"] and params["state"] == ["toolbar42"]  # the page's own query is kept
    assert c.get_user_by_code(params["code"][0]) == "lisi"
    with pytest.raises(InvalidOAuthCode):
        c.get_user_by_code(params["code"][0])
    r = api.get("/sandbox/oauth/authorize", params={"userid": "zhangsan", "appid": CORP,
                                                    "redirect_uri": "http://localhost/cb"}, follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"].startswith("http://localhost/cb?code=")
    assert r.headers["location"].endswith("&state=")


@pytest.mark.parametrize("redirect_uri", [
    "", "https://127.0.0.1/cb", "http://evil.example/cb", "http://localhost.evil.example/cb",
    "http://127.0.0.1.nip.io/cb", "http://localhost@evil.example/cb", "http://evil.example@localhost/cb",
    "http://127.0.0.1\\@evil.example/", "javascript:alert(1)", "//localhost/cb", "http://127.0.0.1:99999/cb",
    "http://localhost/cb\r\nX: y",
])
def test_authorize_page_refuses_non_local_redirects(sandbox, api, redirect_uri):
    assert not local_redirect_uri(redirect_uri)
    r = api.get("/sandbox/oauth/authorize", params={"userid": "lisi", "redirect_uri": redirect_uri},
                follow_redirects=False)
    assert r.status_code == 400 and "location" not in r.headers
    assert sandbox.oauth_codes == {}  # no code minted for a refused redirect


def test_authorize_page_without_a_user_lets_the_browser_choose(sandbox, api):
    c = WeComClient(CORP, SECRET, "http://sandbox/cgi-bin/", http=api, sleep=lambda s: None)
    wecom_style = {"appid": CORP, "redirect_uri": "http://127.0.0.1:8000/toolbar", "response_type": "code",
                   "scope": "snsapi_base", "state": "toolbar", "agentid": str(AGENT)}
    page = api.get("/sandbox/oauth/authorize", params=wecom_style, follow_redirects=False)
    assert page.status_code == 200 and "张三 (zhangsan)" in page.text and sandbox.oauth_codes == {}
    hrefs = [h.replace("&amp;", "&") for h in page.text.split("href='")[1:]]
    chosen = api.get("/sandbox/oauth/authorize" + hrefs[1].split("'")[0], follow_redirects=False)  # lisi
    params = parse_qs(urlsplit(chosen.headers["location"]).query)
    assert params["state"] == ["toolbar"] and c.get_user_by_code(params["code"][0]) == "lisi"
    visitor = api.get("/sandbox/oauth/authorize" + hrefs[-1].split("'")[0], follow_redirects=False)
    with pytest.raises(NotAMember):
        c.get_user_by_code(parse_qs(urlsplit(visitor.headers["location"]).query)["code"][0])
    r = api.get("/sandbox/oauth/authorize", params={**wecom_style, "agentid": "1", "userid": "lisi"},
                follow_redirects=False)
    assert r.status_code == 400 and r.json()["errcode"] == 40056


def test_authorize_page_refuses_bad_state_unknown_member_and_foreign_appid(api):
    local = "http://127.0.0.1:8000/cb"
    assert api.get("/sandbox/oauth/authorize", params={"userid": "lisi", "redirect_uri": local, "state": "a&b=c"},
                   follow_redirects=False).status_code == 400
    assert api.get("/sandbox/oauth/authorize", params={"userid": "lisi", "redirect_uri": local, "state": "s" * 129},
                   follow_redirects=False).status_code == 400
    r = api.get("/sandbox/oauth/authorize", params={"userid": "ghost", "redirect_uri": local}, follow_redirects=False)
    assert r.status_code == 400 and r.json()["errcode"] == 60111
    assert api.get("/sandbox/oauth/authorize", params={"userid": "lisi", "redirect_uri": local, "appid": "wwother"},
                   follow_redirects=False).status_code == 400


# -- /sandbox/ surface ---------------------------------------------------------------------------------
def test_admin_surface_shows_app_messages_and_mints_oauth_codes(sandbox, api, q):
    sandbox.handle("POST", "message/send", q, textcard("zhangsan|lisi"))
    assert "oauth_code" in api.get("/sandbox/actions").json()["actions"]
    msgs = api.get("/sandbox/app_messages").json()["app_messages"]
    assert [(m["touser"], m["textcard"]["title"]) for m in msgs] == [("zhangsan", "今日待发"), ("lisi", "今日待发")]
    to_lisi = api.get("/sandbox/app_messages", params={"touser": "lisi"}).json()["app_messages"]
    assert [m["touser"] for m in to_lisi] == ["lisi"]
    assert api.get("/sandbox/state").json()["app_messages"] == msgs
    r = api.post("/sandbox/actions/oauth_code", json={"userid": "zhangsan"})
    assert r.status_code == 200
    code = r.json()["code"]
    assert sandbox.handle("GET", "auth/getuserinfo", {**q, "code": code}, None)["userid"] == "zhangsan"
    assert api.post("/sandbox/actions/oauth_code", json={"userid": "ghost"}).json()["errcode"] == 60111


def test_a_real_server_client_and_redis_do_the_toolbar_login_end_to_end(redis_url):
    sb = Sandbox(CORP, SECRET, agent_id=AGENT)
    sb.add_member("zhangsan", "张三")
    server = serve(sb, "127.0.0.1", 0)
    r = redis_lib.Redis.from_url(redis_url)
    try:
        with WeComClient(CORP, SECRET, server.api_base_url, redis=r, agent_id=AGENT, timeout=5) as c, \
                httpx.Client(base_url=server.base_url) as browser:
            sent = c.send_app_message({"touser": "zhangsan|ghost", "msgtype": "textcard",
                                       "textcard": {"title": "今日待发", "description": "2 条", "btntxt": "去发送",
                                                    "url": "http://127.0.0.1:8000/toolbar"}})
            assert sent["invaliduser"] == ["ghost"]
            hop = browser.get("/sandbox/oauth/authorize", params={
                "userid": "zhangsan", "state": "s1", "redirect_uri": "http://127.0.0.1:8000/toolbar"})
            assert hop.status_code == 302
            code = parse_qs(urlsplit(hop.headers["location"]).query)["code"][0]
            assert c.get_user_by_code(code) == "zhangsan"
            ticket = c.get_agent_ticket()["ticket"]
            sig = WeComClient.jsapi_signature(ticket, "n0nce", 1_700_000_000, "http://127.0.0.1:8000/toolbar#x")
            assert sb.agent_config_signature_valid(sig, "n0nce", 1_700_000_000, "http://127.0.0.1:8000/toolbar")
            assert browser.get("/sandbox/app_messages").json()["app_messages"][0]["touser"] == "zhangsan"
    finally:
        r.close()
        server.stop()
