"""WeComClient: app messages (message/send), the JS-SDK agent ticket and its page signature, and
OAuth2 identity (auth/getuserinfo), against the sandbox app in-process (reference §3.8a, §3.10)."""

from __future__ import annotations

import hashlib
import json

import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from scrm.sandbox import OAUTH_CODE_TTL, Sandbox, create_sandbox_app
from scrm.wecom.client import InvalidOAuthCode, NotAMember, WeComClient
from scrm.wecom.errors import RateLimited, WeComAPIError

CORP, SECRET, AGENT = "wwtestcorp", "s3cret-value", 1000002
BASE = "http://sandbox/cgi-bin/"

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


@pytest.fixture
def sandbox(clock):
    sb = Sandbox(CORP, SECRET, clock=clock, agent_id=AGENT)
    sb.add_member("zhangsan", "张三")
    sb.add_member("lisi", "李四")
    return sb


@pytest.fixture
def http(sandbox):
    with TestClient(create_sandbox_app(sandbox), base_url="http://sandbox") as tc:
        yield tc


@pytest.fixture
def real_redis(redis_url):
    r = redis_lib.Redis.from_url(redis_url)
    yield r
    r.close()


def make_client(http, **kw) -> WeComClient:
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("agent_id", AGENT)
    return WeComClient(CORP, kw.pop("secret", SECRET), BASE, http=http, **kw)


def calls(sandbox, path):
    return sum(1 for _, p in sandbox.api_calls if p == path)


def card(**kw) -> dict:
    return {"title": "今日待发 3 条", "description": "三里屯店福利群1：09:30 早餐券", "url": "https://scrm.example/t/x",
            "btntxt": "去发送", **kw}


# -- message/send ------------------------------------------------------------------------------------
def test_send_app_message_delivers_a_textcard_and_splits_invaliduser(sandbox, http, clock):
    c = make_client(http)
    out = c.send_app_message({"touser": "zhangsan|ghost|LiSi|nobody", "msgtype": "textcard", "textcard": card()})
    assert out["invaliduser"] == ["ghost", "nobody"]  # WeCom's "ghost|nobody", split
    assert out["msgid"]
    got = [(m["touser"], m["msgtype"], m["textcard"]["title"], m["agentid"], m["time"], m["msgid"])
           for m in sandbox.app_messages]
    assert got == [("zhangsan", "textcard", "今日待发 3 条", AGENT, int(clock.t), out["msgid"]),
                   ("lisi", "textcard", "今日待发 3 条", AGENT, int(clock.t), out["msgid"])]  # userids: any case
    # a list touser is joined; nothing invalid gives []; plain text works too
    out = c.send_app_message({"touser": ["lisi"], "msgtype": "text", "text": {"content": "有 2 条待发"}})
    assert out["invaliduser"] == [] and sandbox.app_messages[-1]["text"] == {"content": "有 2 条待发"}


def test_send_app_message_agentid_and_recipient_errors(sandbox, http):
    c = make_client(http)
    with pytest.raises(WeComAPIError) as exc:
        c.send_app_message({"touser": "zhangsan", "msgtype": "textcard", "agentid": 42, "textcard": card()})
    assert exc.value.errcode == 40056 and exc.value.path == "message/send"
    with pytest.raises(WeComAPIError) as exc:  # every recipient invalid: the call fails
        c.send_app_message({"touser": "ghost|nobody", "msgtype": "textcard", "textcard": card()})
    assert exc.value.errcode == 81013
    with pytest.raises(ValueError, match="agentid"):
        make_client(http, agent_id=None).send_app_message({"touser": "zhangsan", "msgtype": "textcard",
                                                           "textcard": card()})
    assert sandbox.app_messages == []


def test_31st_message_to_one_member_within_a_minute_is_rate_limited_after_backoff(sandbox, http, clock):
    sleeps: list[float] = []
    c = make_client(http, sleep=sleeps.append, backoff=(1.0, 2.0, 4.0))
    for i in range(30):
        c.send_app_message({"touser": "zhangsan", "msgtype": "textcard", "textcard": card(title=f"#{i}")})
        clock.t += 1  # 30 messages over 30 s: all inside one minute
    with pytest.raises(RateLimited) as exc:
        c.send_app_message({"touser": "zhangsan", "msgtype": "textcard", "textcard": card(title="#31")})
    assert exc.value.errcode == 45009
    assert sleeps == [1.0, 2.0, 4.0]  # the client's backoff, then RateLimited
    assert calls(sandbox, "message/send") == 30 + 4
    # a call that would push one member over is refused whole: lisi gets nothing from it either
    with pytest.raises(RateLimited):
        c.send_app_message({"touser": "lisi|zhangsan", "msgtype": "textcard", "textcard": card(title="both")})
    assert [m["touser"] for m in sandbox.app_messages].count("zhangsan") == 30
    assert all(m["touser"] == "zhangsan" for m in sandbox.app_messages)
    # the limit is per member: lisi is fine
    assert c.send_app_message({"touser": "lisi", "msgtype": "textcard", "textcard": card()})["invaliduser"] == []


def test_backoff_that_waits_out_the_minute_gets_the_message_through(sandbox, http, clock):
    waited: list[float] = []

    def sleep(seconds: float) -> None:  # a backoff sleep moves the sandbox clock
        waited.append(seconds)
        clock.t += seconds

    c = make_client(http, sleep=sleep, backoff=(20.0, 45.0))
    for _ in range(30):
        c.send_app_message({"touser": "zhangsan", "msgtype": "text", "text": {"content": "x"}})
    c.send_app_message({"touser": "zhangsan", "msgtype": "text", "text": {"content": "31st"}})
    assert waited == [20.0, 45.0]  # 20 s later still 30 in the last minute; 65 s later the window has moved
    assert len(sandbox.app_messages) == 31 and sandbox.app_messages[-1]["text"]["content"] == "31st"


def test_textcard_over_wecom_limits_is_refused_with_an_errcode(sandbox, http):
    c = make_client(http)

    def send(**kw):
        return c.send_app_message({"touser": "zhangsan", "msgtype": "textcard", "textcard": card(**kw)})

    send(title="a" * 128, description="描" * 170)  # 128 bytes; 510 bytes: at the limits
    send(title="标" * 42)  # 126 bytes of UTF-8
    for bad in ({"title": "标" * 43},  # 129 bytes (43 characters): the limit is in bytes
                {"title": "a" * 129},
                {"description": "d" * 513},
                {"url": ""},
                {"url": "scrm.example/t/x"},
                {"title": ""}):
        with pytest.raises(WeComAPIError) as exc:
            send(**bad)
        assert exc.value.errcode == 40058, bad
    assert len(sandbox.app_messages) == 2


# -- JS-SDK agent ticket and signature -------------------------------------------------------------------
def test_agent_ticket_is_fetched_once_and_shared_through_real_redis(sandbox, http, real_redis):
    a, b = make_client(http, redis=real_redis), make_client(http, redis=real_redis)
    first = a.get_agent_ticket()
    assert first["ticket"] and first["expires_in"] == 7200
    second = b.get_agent_ticket()  # another process: from Redis, no WeCom call
    assert second["ticket"] == first["ticket"] and 0 < second["expires_in"] < 7200
    assert a.get_agent_ticket()["ticket"] == first["ticket"]  # in-process copy
    assert calls(sandbox, "ticket/get") == 1
    assert sandbox.api_calls.count(("GET", "ticket/get")) == 1
    key = a.agent_ticket_key
    app = hashlib.sha256(SECRET.encode()).hexdigest()[:12]
    assert key == b.agent_ticket_key == f"scrm:wecom:agent_ticket:{CORP}:{app}"
    assert SECRET not in key and key != a.token_key
    assert real_redis.get(key).decode() == first["ticket"]
    assert 7200 - 300 - 5 <= real_redis.ttl(key) <= 7200 - 300  # a bit under expires_in
    # a third client after the key is gone fetches once; the sandbox hands out the same valid ticket
    real_redis.delete(key)
    assert make_client(http, redis=real_redis).get_agent_ticket()["ticket"] == first["ticket"]
    assert calls(sandbox, "ticket/get") == 2
    assert a.get_agent_ticket(force_refresh=True)["ticket"] == first["ticket"]
    assert calls(sandbox, "ticket/get") == 3


def test_agent_ticket_is_never_logged(sandbox, http, monkeypatch):
    import scrm.wecom.client as client_mod

    captured: list[str] = []

    class Recorder:
        def __getattr__(self, level):
            return lambda event, **kw: captured.append(json.dumps({"event": event, **kw}, default=str))

    monkeypatch.setattr(client_mod, "log", Recorder())
    ticket = make_client(http).get_agent_ticket()["ticket"]
    text = "\n".join(captured)
    assert "wecom.agent_ticket_fetched" in text and ticket not in text and SECRET not in text


def test_jsapi_signature_matches_the_formula_and_ignores_the_fragment():
    ticket = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg"
    noncestr, timestamp, url = "Wm3WZYTPz0wzccnW", 1414587457, "http://mp.weixin.qq.com?params=value"
    by_hand = hashlib.sha1(
        b"jsapi_ticket=sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg"
        b"&noncestr=Wm3WZYTPz0wzccnW&timestamp=1414587457&url=http://mp.weixin.qq.com?params=value").hexdigest()
    # the example of the WeChat JS-SDK signature appendix (same algorithm as wx.agentConfig)
    assert by_hand == "0f9de62fce790f9a083d5c99e95740ceb90c27ed"
    assert WeComClient.jsapi_signature(ticket, noncestr, timestamp, url) == by_hand
    assert WeComClient.jsapi_signature(ticket, noncestr, str(timestamp), url + "#/toolbar?x=1") == by_hand
    # the query (and its encoding) is signed exactly as given; only '#…' is dropped
    page = "http://127.0.0.1:8000/toolbar?chat=wr1&q=%E4%B8%AD#frag"
    assert WeComClient.jsapi_signature("T", "N", 1, page) == hashlib.sha1(
        b"jsapi_ticket=T&noncestr=N&timestamp=1&url=http://127.0.0.1:8000/toolbar?chat=wr1&q=%E4%B8%AD").hexdigest()
    assert WeComClient.jsapi_signature("T", "N", 1, page) != WeComClient.jsapi_signature("T", "N", 2, page)


def test_signature_from_a_sandbox_ticket_is_what_the_sandbox_accepts(sandbox, http, clock):
    c = make_client(http)
    ticket = c.get_agent_ticket()["ticket"]
    url = "http://127.0.0.1:8000/toolbar#top"
    sig = WeComClient.jsapi_signature(ticket, "abc", 1_700_000_000, url)
    assert sandbox.agent_config_signature_valid(sig, "abc", 1_700_000_000, url)
    assert not sandbox.agent_config_signature_valid(sig, "abd", 1_700_000_000, url)
    clock.t += 7201  # the ticket expired
    assert not sandbox.agent_config_signature_valid(sig, "abc", 1_700_000_000, url)


# -- OAuth2 identity --------------------------------------------------------------------------------------
def test_oauth_code_gives_the_userid_once(sandbox, http):
    c = make_client(http)
    code = sandbox.oauth_code("zhangsan")
    assert c.get_user_by_code(code) == "zhangsan"
    with pytest.raises(InvalidOAuthCode) as exc:
        c.get_user_by_code(code)  # one-time
    assert exc.value.errcode == 40029 and exc.value.path == "auth/getuserinfo"
    assert isinstance(exc.value, WeComAPIError)
    with pytest.raises(InvalidOAuthCode):
        c.get_user_by_code("never-issued")
    assert calls(sandbox, "auth/getuserinfo") == 3  # 40029 is not retried


def test_oauth_code_expires_after_five_minutes(sandbox, http, clock):
    c = make_client(http)
    late = sandbox.oauth_code("lisi")
    clock.t += OAUTH_CODE_TTL - 1
    fresh = sandbox.oauth_code("lisi")
    clock.t += 2  # late is now 301 s old
    with pytest.raises(InvalidOAuthCode) as exc:
        c.get_user_by_code(late)
    assert exc.value.errcode == 40029
    assert c.get_user_by_code(fresh) == "lisi"


def test_a_non_member_visitor_is_refused_with_not_a_member(sandbox, http):
    c = make_client(http)
    cust = sandbox.add_customer("王语嫣")
    with pytest.raises(NotAMember) as exc:
        c.get_user_by_code(sandbox.oauth_code(external_userid=cust.external_userid))
    assert exc.value.external_userid == cust.external_userid and exc.value.openid.startswith("o")
    with pytest.raises(NotAMember) as exc:
        c.get_user_by_code(sandbox.oauth_code())  # a WeChat user who is not even a customer
    assert exc.value.openid and exc.value.external_userid == ""
    with pytest.raises(ValueError):
        c.get_user_by_code("")
