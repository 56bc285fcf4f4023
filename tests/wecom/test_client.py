"""WeComClient against the sandbox app in-process, and against MockTransport fault servers."""

from __future__ import annotations

import hashlib
import json

import fakeredis
import httpx
import pytest
from fastapi.testclient import TestClient

from scrm.sandbox import Sandbox, create_sandbox_app
from scrm.wecom.client import WeComClient
from scrm.wecom.errors import (
    GroupDismissed,
    NotExternalContact,
    RateLimited,
    SystemBusy,
    TokenError,
    TransportError,
    WeComAPIError,
    WelcomeCodeUsed,
)

CORP, SECRET = "wwtestcorp", "s3cret-value"
BASE = "http://sandbox/cgi-bin/"

# Starlette warns about per-request timeouts on TestClient; the client must send them to real servers.
pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


@pytest.fixture
def sandbox(clock):
    sb = Sandbox(CORP, SECRET, clock=clock)
    sb.add_member("zhangsan", "张三")
    sb.add_member("lisi", "李四")
    return sb


@pytest.fixture
def http(sandbox):
    with TestClient(create_sandbox_app(sandbox), base_url="http://sandbox") as tc:
        yield tc


def make_client(http, **kw) -> WeComClient:
    kw.setdefault("sleep", lambda s: None)
    return WeComClient(CORP, kw.pop("secret", SECRET), BASE, http=http, **kw)


def calls(sandbox, path):
    return sum(1 for _, p in sandbox.api_calls if p == path)


# -- token -----------------------------------------------------------------------------------------
def test_token_is_fetched_once_and_shared_through_redis_by_two_clients(sandbox, http):
    redis = fakeredis.FakeRedis()
    a, b = make_client(http, redis=redis), make_client(http, redis=redis)
    assert [m["userid"] for m in a.list_members()] == ["zhangsan", "lisi"]
    assert b.list_follow_users() == ["zhangsan", "lisi"]
    assert calls(sandbox, "gettoken") == 1
    key = a.token_key
    assert key == f"scrm:wecom:token:{CORP}:{hashlib.sha256(SECRET.encode()).hexdigest()[:12]}"
    assert SECRET not in key
    assert 0 < redis.ttl(key) < 7200  # expires_in minus a safety margin
    assert SECRET not in repr(a) and a.access_token() not in repr(a)


def test_expired_token_gets_exactly_one_refresh_and_retry(clock, http):
    sb = http.app.state.sandbox
    sb.token_expires_in = 1
    c = make_client(http)
    c.list_members()
    first = c.access_token()
    clock.t += 5  # the sandbox now answers 42001 for that token; the client still trusts its copy
    assert c.list_members()
    assert calls(sb, "gettoken") == 2
    assert calls(sb, "user/list") == 3  # ok, 42001, retried ok
    assert c.access_token() != first


def test_force_expired_token_refreshes_once(sandbox, http):
    c = make_client(http)
    c.list_members()
    sandbox.expire_tokens()
    c.list_follow_users()
    assert calls(sandbox, "gettoken") == 2
    assert calls(sandbox, "externalcontact/get_follow_user_list") == 2


def test_server_always_answering_40014_raises_token_error_after_two_calls_and_one_refresh():
    counts = {"gettoken": 0, "api": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/gettoken"):
            counts["gettoken"] += 1
            return httpx.Response(200, json={"errcode": 0, "access_token": f"T{counts['gettoken']}",
                                             "expires_in": 7200})
        counts["api"] += 1
        return httpx.Response(200, json={"errcode": 40014, "errmsg": "invalid access_token"})

    c = make_client(httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(TokenError) as exc:
        c.list_members()
    assert exc.value.errcode == 40014
    assert counts == {"gettoken": 2, "api": 2}  # initial token + exactly one refresh


def test_bad_secret_raises_token_error_at_once(sandbox, http):
    c = make_client(http, secret="wrong")
    with pytest.raises(TokenError) as exc:
        c.list_members()
    assert exc.value.errcode == 40001
    assert calls(sandbox, "gettoken") == 1
    assert calls(sandbox, "user/list") == 0


# -- backoff and transport -------------------------------------------------------------------------
def test_rate_limit_sleeps_per_backoff_then_raises(sandbox, http):
    sleeps: list[float] = []
    c = make_client(http, sleep=sleeps.append, backoff=(1.0, 2.0, 4.0))
    c.access_token()
    sandbox.rate_limit_per_minute = 1
    c.list_members()  # the one allowed call this minute
    with pytest.raises(RateLimited) as exc:
        c.list_members()
    assert exc.value.errcode == 45009
    assert sleeps == [1.0, 2.0, 4.0]
    assert calls(sandbox, "user/list") == 5  # 1 ok + 4 tries


def test_rate_limit_then_recovery(sandbox, http):
    sleeps: list[float] = []
    c = make_client(http, sleep=sleeps.append)
    sandbox.inject_fault("externalcontact/get_follow_user_list", 45033, times=2)
    assert c.list_follow_users() == ["zhangsan", "lisi"]
    assert sleeps == [1.0, 2.0]


def test_system_busy_retried_three_times_then_raises(sandbox, http):
    sleeps: list[float] = []
    c = make_client(http, sleep=sleeps.append, backoff=(0.5,))
    sandbox.inject_fault("user/list", -1, times=10)
    with pytest.raises(SystemBusy) as exc:
        c.list_members()
    assert exc.value.errcode == -1
    assert sleeps == [0.5, 0.5, 0.5]
    assert calls(sandbox, "user/list") == 4


def test_timeout_raises_transport_error_and_timeout_is_applied():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions.get("timeout"))
        raise httpx.ReadTimeout("slow", request=request)

    c = make_client(httpx.Client(transport=httpx.MockTransport(handler)), timeout=0.25)
    with pytest.raises(TransportError) as exc:
        c.list_members()
    assert exc.value.errcode == -2
    assert seen and seen[0]["read"] == 0.25


def test_connection_refused_is_a_transport_error():
    c = WeComClient(CORP, SECRET, "http://127.0.0.1:1/cgi-bin/", timeout=0.5)
    with pytest.raises(TransportError):
        c.access_token()
    c.close()


def test_errcode_is_carried_on_typed_exceptions(sandbox, http):
    c = make_client(http)
    with pytest.raises(WeComAPIError) as exc:
        c.get_external_contact("wmdoesnotexist")
    assert exc.value.errcode == 40096 and exc.value.path == "externalcontact/get"
    cust = sandbox.add_customer("王语嫣")
    sandbox.add_follow("lisi", cust.external_userid)
    with pytest.raises(NotExternalContact) as exc:
        c.mark_tag("zhangsan", cust.external_userid, add=["etx"])
    assert exc.value.errcode == 84061
    g = sandbox.create_group("zhangsan", "群")
    sandbox.dismiss_group(g.chat_id)
    with pytest.raises(GroupDismissed) as exc:
        c.get_group_chat(g.chat_id)
    assert exc.value.errcode == 49008


# -- pagination ------------------------------------------------------------------------------------
def test_get_external_contact_follows_cursor_and_merges_follow_users(sandbox, http):
    sandbox.follow_page_size = 2
    for i in range(3):
        sandbox.add_member(f"u{i}", f"员工{i}")
    cust = sandbox.add_customer("乔峰")
    for i, uid in enumerate(["zhangsan", "lisi", "u0", "u1", "u2"]):
        sandbox.add_follow(uid, cust.external_userid, createtime=1000 + i, state="s")
    c = make_client(http)
    out = c.get_external_contact(cust.external_userid)
    assert out["external_contact"]["name"] == "乔峰"
    assert [f["userid"] for f in out["follow_user"]] == ["zhangsan", "lisi", "u0", "u1", "u2"]
    assert calls(sandbox, "externalcontact/get") == 3


def test_iter_contacts_by_users_chunks_userids_and_follows_cursors(sandbox, http):
    userids = [f"m{i:03d}" for i in range(150)]
    for uid in userids:
        sandbox.add_member(uid, uid)
    expected = set()
    for i, uid in enumerate(userids):
        for k in range(1 if i % 10 else 3):
            cust = sandbox.add_customer(f"c{i}-{k}")
            sandbox.add_follow(uid, cust.external_userid)
            expected.add((uid, cust.external_userid))
    c = make_client(http)
    got = {(it["follow_info"]["userid"], it["external_contact"]["external_userid"])
           for it in c.iter_contacts_by_users(userids)}
    assert got == expected  # 180 relations over 2 userid chunks, several cursor pages each
    assert calls(sandbox, "externalcontact/batch/get_by_user") == 3  # chunk 1: 120 items = 2 pages; chunk 2: 60 = 1


def test_list_group_chats_walks_all_pages(sandbox, http):
    ids = {sandbox.create_group("zhangsan", f"群{i}").chat_id for i in range(5)}
    c = make_client(http)
    assert {g["chat_id"] for g in c.list_group_chats(limit=2)} == ids
    assert calls(sandbox, "externalcontact/groupchat/list") == 3
    assert list(c.list_group_chats(owner_userids=["lisi"])) == []


# -- endpoint round trips ----------------------------------------------------------------------------
def test_tags_contact_ways_join_ways_round_trip(sandbox, http):
    c = make_client(http)
    grp = c.add_corp_tag(group_name="门店", tags=[{"name": "三里屯店"}, {"name": "望京店"}])
    tag_ids = [t["id"] for t in grp["tag"]]
    assert [t["name"] for t in grp["tag"]] == ["三里屯店", "望京店"] and all(t.startswith("et") for t in tag_ids)
    c.edit_corp_tag(tag_ids[0], name="三里屯旗舰店")
    assert [t["name"] for t in c.get_corp_tags()[0]["tag"]] == ["三里屯旗舰店", "望京店"]
    cust = sandbox.add_customer("段誉")
    sandbox.add_follow("zhangsan", cust.external_userid)
    c.mark_tag("zhangsan", cust.external_userid, add=tag_ids)
    c.mark_tag("zhangsan", cust.external_userid, remove=[tag_ids[1]])
    fu = c.get_external_contact(cust.external_userid)["follow_user"][0]
    assert [t["tag_id"] for t in fu["tags"]] == [tag_ids[0]]
    c.del_corp_tag(group_ids=[grp["group_id"]])
    assert c.get_corp_tags() == []

    way = c.add_contact_way(type=1, scene=2, state="store_a", user=["zhangsan"])
    assert way["config_id"] and way["qr_code"]
    c.update_contact_way(way["config_id"], remark="新备注")
    assert c.get_contact_way(way["config_id"])["remark"] == "新备注"
    with pytest.raises(WeComAPIError) as exc:
        c.add_contact_way(type=1, scene=2, state="x" * 31, user=["zhangsan"])
    assert exc.value.errcode == 40058
    c.del_contact_way(way["config_id"])
    with pytest.raises(WeComAPIError) as exc:
        c.get_contact_way(way["config_id"])
    assert exc.value.errcode == 41044

    g = sandbox.create_group("zhangsan", "福利群")
    cid = c.add_join_way(scene=2, chat_id_list=[g.chat_id], state="grp_a", room_base_name="福利群", room_base_id=2)
    jw = c.get_join_way(cid)
    assert jw["chat_id_list"] == [g.chat_id] and jw["state"] == "grp_a" and jw["qr_code"]
    with pytest.raises(WeComAPIError) as exc:
        c.update_join_way(cid, scene=2, chat_id_list=[g.chat_id] * 6)
    assert exc.value.errcode == 40058
    c.del_join_way(cid)


def test_mass_send_and_welcome_message(sandbox, http, clock):
    c = make_client(http)
    g = sandbox.create_group("zhangsan", "福利群")
    first = c.add_msg_template({"chat_type": "group", "sender": "zhangsan", "chat_id_list": [g.chat_id, "wrnope"],
                                "text": {"content": "今日特价"}})
    assert first["fail_list"] == ["wrnope"] and first["msgid"]
    assert c.get_groupmsg_task(first["msgid"])["task_list"] == [{"userid": "zhangsan", "status": 0}]
    sandbox.confirm_mass_send(first["msgid"])
    second = c.add_msg_template({"chat_type": "group", "sender": "zhangsan", "chat_id_list": [g.chat_id],
                                 "text": {"content": "再来一条"}})
    sandbox.confirm_mass_send(second["msgid"])
    r1 = c.get_groupmsg_send_result(first["msgid"], "zhangsan")["send_list"]
    r2 = c.get_groupmsg_send_result(second["msgid"], "zhangsan")["send_list"]
    assert [(r["chat_id"], r["status"]) for r in r1] == [(g.chat_id, 1)]
    assert [(r["chat_id"], r["status"]) for r in r2] == [(g.chat_id, 3)]  # quota: 1 per group per day
    listed = c.get_groupmsg_list_v2(chat_type="group", start_time=int(clock.t) - 60, end_time=int(clock.t) + 60)
    assert {m["msgid"] for m in listed["group_msg_list"]} == {first["msgid"], second["msgid"]}

    res = sandbox.add_employee("lisi", name="木婉清")
    c.send_welcome_msg(res["welcome_code"], text="欢迎！")
    assert sandbox.welcome_messages[-1]["text"] == "欢迎！"
    with pytest.raises(WelcomeCodeUsed) as exc:
        c.send_welcome_msg(res["welcome_code"], text="again")
    assert exc.value.errcode == 41051


def test_from_settings_uses_settings_wecom(monkeypatch):
    from scrm.config import Settings

    s = Settings(wecom={"corp_id": "wwX", "secret": "abc", "api_base_url": "http://h:1/cgi-bin",
                        "timeout_seconds": 2.5, "rate_limit_backoff_seconds": [0.1]})
    c = WeComClient.from_settings(s)
    assert (c.corp_id, c.base_url, c.timeout, c.backoff) == ("wwX", "http://h:1/cgi-bin/", 2.5, (0.1,))
    c.close()


def test_logs_never_contain_secret_or_token(sandbox, http, monkeypatch):
    import scrm.wecom.client as client_mod

    captured: list[str] = []

    class Recorder:
        def __getattr__(self, level):
            return lambda event, **kw: captured.append(json.dumps({"event": event, "level": level, **kw},
                                                                  default=str, ensure_ascii=False))

    monkeypatch.setattr(client_mod, "log", Recorder())
    c = make_client(http)
    c.list_members()
    sandbox.expire_tokens()
    c.list_members()
    token = c.access_token()
    text = "\n".join(captured)
    assert "wecom.token_refresh" in text and '"errcode": 42001' in text
    assert SECRET not in text and token not in text


def test_from_settings_without_secret_says_what_to_set():
    from scrm.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="SCRM_WECOM__SECRET"):
        WeComClient.from_settings(Settings(wecom={"secret": ""}))
