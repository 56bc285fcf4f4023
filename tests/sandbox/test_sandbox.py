"""The sandbox plays WeCom's users: each scripted action must post a callback a real receiver can
verify, decrypt and parse into the right typed event, with WeCom's retry and expiry rules."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient

from scrm.sandbox import DEMO_STORES, ActionError, Sandbox, create_sandbox_app, seed_demo, serve
from scrm.wecom.client import WeComClient
from scrm.wecom.crypto import CallbackCrypto, parse_envelope
from scrm.wecom.errors import WelcomeCodeUsed
from scrm.wecom.events import ChatEvent, ContactEvent, TagEvent, dedup_key, parse_event

CORP, SECRET = "wwsandboxtest", "sb-secret"
TOKEN, AES = "CbToken123", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


class Receiver:
    """A tiny callback receiver that checks signature + decrypts like the real service must."""

    def __init__(self, status: int = 200):
        self.status = status
        self.crypto = CallbackCrypto(TOKEN, AES, CORP)
        self.events: list = []
        self.plaintexts: list[str] = []
        self.bodies: list[str] = []
        app = FastAPI()

        @app.post("/wecom/callback")
        async def callback(request: Request, msg_signature: str, timestamp: str, nonce: str):
            body = await request.body()
            self.bodies.append(body.decode())
            if self.status != 200:
                return PlainTextResponse("boom", status_code=self.status)
            plain = self.crypto.open_envelope(body, msg_signature, timestamp, nonce)
            self.plaintexts.append(plain)
            self.events.append(parse_event(plain))
            return PlainTextResponse("success")

        self.client = TestClient(app, base_url="http://receiver")


@pytest.fixture
def receiver():
    return Receiver()


@pytest.fixture
def sandbox(clock, receiver):
    sb = Sandbox(CORP, SECRET, callback_token=TOKEN, encoding_aes_key=AES,
                 callback_url="http://receiver/wecom/callback", callback_http=receiver.client, clock=clock)
    sb.add_member("zhangsan", "张三")
    sb.add_member("lisi", "李四")
    return sb


def contact_way(sb, **kw) -> str:
    body = {"type": 2, "scene": 2, "state": "store_sanlitun", "user": ["zhangsan", "lisi"], **kw}
    return sb.api_add_contact_way(body)["config_id"]


def last(receiver, n=1):
    return receiver.events[-n:] if n > 1 else receiver.events[-1]


# -- contact events ------------------------------------------------------------------------------------
def test_scan_contact_way_posts_signed_add_event_with_state_and_welcome_code(sandbox, receiver):
    cid = contact_way(sandbox)
    res = sandbox.scan_contact_way(cid, name="王语嫣")
    assert res.delivered and res.deliveries[0].attempts == [200]
    ev = last(receiver)
    assert isinstance(ev, ContactEvent) and ev.known
    assert (ev.corp_id, ev.change_type, ev.user_id, ev.external_user_id) == (
        CORP, "add_external_contact", "zhangsan", res["external_userid"])
    assert ev.state == "store_sanlitun" and ev.welcome_code == res["welcome_code"]
    assert ev.fields["FromUserName"] == "sys"
    assert res["external_userid"].startswith("wm")
    f = sandbox.follows[("zhangsan", res["external_userid"])]
    assert (f.state, f.add_way, f.oper_userid) == ("store_sanlitun", 1, res["external_userid"])
    assert "<AgentID>" in receiver.bodies[-1]  # envelope as WeCom sends it
    # a multi-user way rotates between its users
    assert sandbox.scan_contact_way(cid)["userid"] == "lisi"


def test_every_scripted_action_posts_the_matching_typed_event(sandbox, receiver):
    add = sandbox.add_employee("zhangsan", name="段誉", state="poster_1")
    eid = add["external_userid"]
    ev = last(receiver)
    assert (ev.change_type, ev.state, ev.user_id) == ("add_external_contact", "poster_1", "zhangsan")

    tag = sandbox.admin_create_tag("新客", group_name="用户分层")
    ev = last(receiver)
    assert isinstance(ev, TagEvent) and (ev.change_type, ev.id, ev.tag_type) == ("create", tag["group_id"], "tag_group")
    tag2 = sandbox.admin_create_tag("活跃", group_id=tag["group_id"])
    assert (last(receiver).id, last(receiver).tag_type) == (tag2["tag_id"], "tag")

    sandbox.employee_edits_customer("zhangsan", eid, remark="段公子", add_tags=[tag["tag_id"]])
    ev = last(receiver)
    assert (ev.change_type, ev.user_id, ev.external_user_id) == ("edit_external_contact", "zhangsan", eid)
    assert sandbox.follows[("zhangsan", eid)].tag_ids == [tag["tag_id"]]

    sandbox.admin_edit_tag(tag["tag_id"], name="新客户")
    assert (last(receiver).change_type, last(receiver).tag_type) == ("update", "tag")
    sandbox.admin_delete_tag(tag["group_id"])
    ev = last(receiver)
    assert (ev.change_type, ev.id, ev.tag_type) == ("delete", tag["group_id"], "tag_group")
    assert sandbox.follows[("zhangsan", eid)].tag_ids == [] and not sandbox.tags

    grp = sandbox.employee_creates_group("zhangsan", "福利群", members=["lisi"])
    chat = grp["chat_id"]
    ev = last(receiver)
    assert isinstance(ev, ChatEvent) and (ev.change_type, ev.chat_id) == ("create", chat)
    v0 = sandbox.groups[chat].member_version

    inv = sandbox.invite_to_group(chat, eid)
    ev = last(receiver)
    assert (ev.update_detail, ev.join_scene, ev.mem_change_cnt, ev.mem_change_list) == ("add_member", 0, 1, (eid,))
    assert ev.last_mem_ver == v0 and ev.cur_mem_ver == inv["member_version"] != v0
    m = [x for x in sandbox.group_json(sandbox.groups[chat])["member_list"] if x["userid"] == eid][0]
    assert (m["type"], m["join_scene"], m["invitor"]) == (2, 1, {"userid": "zhangsan"})

    sandbox.leave_group(chat, eid)
    ev = last(receiver)
    assert (ev.update_detail, ev.quit_scene, ev.mem_change_list, ev.last_mem_ver) == (
        "del_member", 0, (eid,), inv["member_version"])
    sandbox.remove_from_group(chat, "lisi")
    assert (last(receiver).update_detail, last(receiver).quit_scene) == ("del_member", 1)

    sandbox.rename_group(chat, "新名字")
    assert last(receiver).update_detail == "change_name"
    sandbox.change_group_owner(chat, "lisi")
    assert last(receiver).update_detail == "change_owner" and sandbox.groups[chat].owner == "lisi"
    sandbox.dismiss_group(chat)
    assert (last(receiver).change_type, last(receiver).chat_id) == ("dismiss", chat)

    sandbox.customer_deletes_employee(eid, "zhangsan")
    assert (last(receiver).change_type, last(receiver).external_user_id) == ("del_follow_user", eid)
    assert sandbox.follows[("zhangsan", eid)].deleted_by_customer
    sandbox.employee_deletes_customer("zhangsan", eid)
    ev = last(receiver)
    assert (ev.change_type, ev.source) == ("del_external_contact", None)
    assert ("zhangsan", eid) not in sandbox.follows
    assert all(d.delivered for d in sandbox.callbacks)
    assert len(receiver.events) == len(sandbox.callbacks) == 15


# -- groups via join way -------------------------------------------------------------------------------
def test_join_way_fills_group_to_cap_then_auto_creates_a_room(sandbox, receiver):
    sandbox.group_qr_cap = 3
    g = sandbox.create_group("zhangsan", "福利群1", members=["lisi"])  # 2 members
    cid = sandbox.api_add_join_way({"scene": 2, "chat_id_list": [g.chat_id], "state": "grp_qr",
                                    "room_base_name": "福利群", "room_base_id": 2})["config_id"]
    first = sandbox.join_group_via_way(cid, name="乔峰")
    assert first["chat_id"] == g.chat_id and first["created_chat_id"] is None
    ev = last(receiver)
    assert (ev.change_type, ev.update_detail, ev.join_scene, ev.mem_change_list) == (
        "update", "add_member", 3, (first["external_userid"],))
    assert len(sandbox.groups[g.chat_id].members) == 3  # full now

    second = sandbox.join_group_via_way(cid, name="虚竹")
    new = second["created_chat_id"]
    assert new and second["chat_id"] == new
    create, join = last(receiver, 2)
    assert (create.change_type, create.chat_id) == ("create", new)
    assert (join.chat_id, join.join_scene, join.mem_change_cnt) == (new, 3, 1)
    room = sandbox.groups[new]
    assert (room.name, room.owner) == ("福利群2", "zhangsan")
    assert sandbox.join_ways[cid].chat_id_list == [g.chat_id, new]
    member = [m for m in sandbox.group_json(room)["member_list"] if m["userid"] == second["external_userid"]][0]
    assert (member["join_scene"], member["state"], member["type"]) == (3, "grp_qr", 2)
    assert join.cur_mem_ver == room.member_version
    assert sandbox.join_group_via_way(cid)["chat_id"] == new  # room has space again


def test_join_way_without_auto_create_refuses_when_full(sandbox):
    sandbox.group_qr_cap = 1
    g = sandbox.create_group("zhangsan", "满员群")
    cid = sandbox.api_add_join_way({"scene": 2, "chat_id_list": [g.chat_id], "auto_create_room": 0})["config_id"]
    with pytest.raises(ActionError):
        sandbox.join_group_via_way(cid)


# -- delivery ------------------------------------------------------------------------------------------
def test_callback_retried_three_times_on_500_then_given_up(sandbox):
    failing = Receiver(status=500)
    sandbox.poster.http = failing.client
    res = sandbox.add_employee("zhangsan")
    d = res.deliveries[0]
    assert d.attempts == [500, 500, 500] and not d.delivered and not res.delivered
    assert len(failing.bodies) == 3
    assert len({parse_envelope(b) for b in failing.bodies}) == 3  # each try re-encrypted


def test_callback_connection_failure_and_timeout_are_retried(sandbox):
    seen = []

    def handler(request):
        seen.append(request.extensions["timeout"]["read"])
        if len(seen) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(seen) == 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, text="")

    sandbox.poster.http = httpx.Client(transport=httpx.MockTransport(handler))
    d = sandbox.add_employee("lisi").deliveries[0]
    assert d.attempts == ["ConnectError", "ReadTimeout", 200] and d.delivered
    assert seen == [5.0, 5.0, 5.0]  # each try with the callback timeout


def test_same_event_delivered_twice_has_same_plaintext_but_new_ciphertext(sandbox, receiver):
    sandbox.deliver_twice = True
    sandbox.add_employee("zhangsan")
    assert len(receiver.plaintexts) == 2
    assert dedup_key(receiver.plaintexts[0]) == dedup_key(receiver.plaintexts[1])
    assert parse_envelope(receiver.bodies[0]) != parse_envelope(receiver.bodies[1])
    sandbox.deliver_twice = False
    d = sandbox.redeliver(0)
    assert d.delivered and receiver.plaintexts[-1] == receiver.plaintexts[0]


def test_held_callbacks_are_queued_and_delivered_in_order_on_flush(sandbox, receiver):
    sandbox.hold_callbacks()
    a = sandbox.add_employee("zhangsan")
    b = sandbox.add_employee("lisi")
    assert receiver.events == [] and a.deliveries[0].held
    sandbox.hold_callbacks(False)
    flushed = sandbox.flush_callbacks()
    assert [d.delivered for d in flushed] == [True, True]
    assert [e.external_user_id for e in receiver.events] == [a["external_userid"], b["external_userid"]]


# -- welcome code and mass-send quota ------------------------------------------------------------------
def test_welcome_code_expires_after_20s_and_works_once(sandbox, clock):
    api = TestClient(create_sandbox_app(sandbox), base_url="http://sandbox")
    c = WeComClient(CORP, SECRET, "http://sandbox/cgi-bin/", http=api, sleep=lambda s: None)
    late = sandbox.add_employee("zhangsan")["welcome_code"]
    clock.t += 21
    with pytest.raises(WelcomeCodeUsed) as exc:
        c.send_welcome_msg(late, text="hi")
    assert exc.value.errcode == 41050
    fresh = sandbox.add_employee("lisi")["welcome_code"]
    clock.t += 19
    c.send_welcome_msg(fresh, text="欢迎", attachments=[{"msgtype": "link", "link": {"title": "t", "url": "u"}}])
    with pytest.raises(WelcomeCodeUsed) as exc:
        c.send_welcome_msg(fresh, text="again")
    assert exc.value.errcode == 41051
    assert [(m["userid"], m["text"]) for m in sandbox.welcome_messages] == [("lisi", "欢迎")]


def test_mass_send_quota_gives_status_3_and_resets_next_day(sandbox, clock):
    g1 = sandbox.create_group("zhangsan", "群1")
    g2 = sandbox.create_group("zhangsan", "群2")
    body = {"chat_type": "group", "sender": "zhangsan", "text": {"content": "x"}}
    m1 = sandbox.api_add_msg_template({**body, "chat_id_list": [g1.chat_id]})["msgid"]
    m2 = sandbox.api_add_msg_template(body)["msgid"]  # all of the sender's groups
    assert sandbox.confirm_mass_send(m1)["results"] == {g1.chat_id: 1}
    assert sandbox.confirm_mass_send(m2)["results"] == {g1.chat_id: 3, g2.chat_id: 1}
    task = sandbox.api_get_groupmsg_task({"msgid": m2})["task_list"][0]
    assert (task["status"], task["send_time"]) == (2, int(clock.t))
    clock.t += 86400
    m3 = sandbox.api_add_msg_template({**body, "chat_id_list": [g1.chat_id]})["msgid"]
    assert sandbox.confirm_mass_send(m3)["results"] == {g1.chat_id: 1}
    # single-chat: a customer who deleted the member fails with status 2
    a = sandbox.add_employee("zhangsan")["external_userid"]
    b = sandbox.add_employee("zhangsan")["external_userid"]
    sandbox.customer_deletes_employee(b, "zhangsan")
    m4 = sandbox.api_add_msg_template({"chat_type": "single", "sender": "zhangsan", "external_userid": [a, b],
                                       "text": {"content": "y"}})["msgid"]
    assert sandbox.confirm_mass_send(m4)["results"] == {a: 1, b: 2}


# -- API errors ----------------------------------------------------------------------------------------
def test_api_errors_use_wecom_codes(sandbox, clock):
    h = sandbox.handle
    assert h("GET", "user/list", {}, None)["errcode"] == 41001
    assert h("GET", "user/list", {"access_token": "nope"}, None)["errcode"] == 40014
    assert h("GET", "gettoken", {"corpid": CORP, "corpsecret": "bad"}, None)["errcode"] == 40001
    tok = h("GET", "gettoken", {"corpid": CORP, "corpsecret": SECRET}, None)
    again = h("GET", "gettoken", {"corpid": CORP, "corpsecret": SECRET}, None)
    assert tok["access_token"] == again["access_token"] and tok["expires_in"] == 7200
    q = {"access_token": tok["access_token"]}
    post = lambda path, body: h("POST", path, q, body)["errcode"]  # noqa: E731
    assert h("GET", "externalcontact/get", {**q, "external_userid": "wmx"}, None)["errcode"] == 40096
    assert post("externalcontact/batch/get_by_user", {"userid_list": ["ghost"]}) == 40003
    assert post("externalcontact/batch/get_by_user", {"userid_list": ["zhangsan"], "limit": 101}) == 40058
    assert post("externalcontact/groupchat/list", {"limit": 0}) == 40058
    assert post("externalcontact/groupchat/list", {}) == 40058
    g = sandbox.create_group("zhangsan", "g")
    assert post("externalcontact/groupchat/add_join_way", {"scene": 2, "chat_id_list": [g.chat_id] * 6}) == 40058
    assert post("externalcontact/groupchat/add_join_way",
                {"scene": 2, "chat_id_list": [g.chat_id], "state": "s" * 31}) == 40058
    assert post("externalcontact/get_contact_way", {"config_id": "nope"}) == 41044
    assert post("externalcontact/add_contact_way", {"type": 1, "scene": 2, "user": ["ghost"]}) == 60111
    sandbox.dismiss_group(g.chat_id)
    assert post("externalcontact/groupchat/get", {"chat_id": g.chat_id}) == 49008
    sandbox.groupchat_list_owner_filter_over = 1
    assert post("externalcontact/groupchat/list", {"limit": 10}) == 81017
    sandbox.rate_limit_per_minute = 2
    assert post("externalcontact/get_corp_tag_list", {}) == 0
    assert post("externalcontact/get_corp_tag_list", {}) == 0
    assert post("externalcontact/get_corp_tag_list", {}) == 45009
    clock.t += 60
    assert post("externalcontact/get_corp_tag_list", {}) == 0
    clock.t += 7200
    assert h("GET", "user/list", q, None)["errcode"] == 42001
    assert h("GET", "gettoken", {"corpid": CORP, "corpsecret": SECRET}, None)["access_token"] != tok["access_token"]


# -- HTTP admin endpoints, seed, serve -------------------------------------------------------------------
def test_admin_endpoints_drive_actions_and_show_state(sandbox, receiver):
    """Tried: /sandbox/tokens/expire doing nothing (the old test called it and asserted nothing),
    and a seed with one group fewer: both fail here."""
    seeded = seed_demo(sandbox)
    api = TestClient(create_sandbox_app(sandbox), base_url="http://sandbox")
    store = seeded["stores"][0]
    r = api.post("/sandbox/actions/scan_contact_way", json={"config_id": store["contact_way"]["config_id"],
                                                             "name": "新客户"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["deliveries"][0]["attempts"] == [200] and last(receiver).state == "store_bj001"
    r = api.post("/sandbox/actions/join_group_via_way", json={"config_id": store["join_way_config_id"]})
    assert r.status_code == 200 and last(receiver).join_scene == 3
    assert api.post("/sandbox/actions/nope", json={}).status_code == 404
    err = api.post("/sandbox/actions/dismiss_group", json={"chat_id": "wrnope"})
    assert err.status_code == 400 and err.json()["errcode"] == 40050
    state = api.get("/sandbox/state").json()
    assert {g["group_name"] for g in state["tag_groups"]} == {"门店", "用户分层"}
    # the admin plus every store's staff (the seed reuses zhangsan/lisi), one or two groups a store
    assert len(state["members"]) == 1 + sum(len(s.staff) for s in DEMO_STORES) == 13
    assert len(state["groups"]) == sum(len(s.group_names) for s in DEMO_STORES) == 8
    assert api.get("/sandbox/callbacks").json()["callbacks"][-1]["delivered"]
    assert api.post("/sandbox/callbacks/hold", json={"hold": True}).json() == {"hold": True}
    api.post("/sandbox/actions/rename_group", json={"chat_id": store["chat_id"], "name": "改名"})
    n = len(receiver.events)
    assert len(api.post("/sandbox/callbacks/flush").json()["delivered"]) == 1 and len(receiver.events) == n + 1
    assert api.get(f"/sandbox/qr/{store['contact_way']['config_id']}").status_code == 200
    # Expiring tokens: the token in use gets 42001 (as WeCom's expired token), and a new one works.
    token = api.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": SECRET}).json()["access_token"]
    assert api.get("/cgi-bin/user/list", params={"access_token": token}).json()["errcode"] == 0
    assert api.post("/sandbox/tokens/expire").json() == {"expired": True}
    assert api.get("/cgi-bin/user/list", params={"access_token": token}).json()["errcode"] == 42001
    fresh = api.get("/cgi-bin/gettoken", params={"corpid": CORP, "corpsecret": SECRET}).json()["access_token"]
    assert fresh != token and api.get("/cgi-bin/user/list", params={"access_token": fresh}).json()["errcode"] == 0


def test_serve_runs_a_real_server_the_client_can_use(receiver):
    sb = Sandbox(CORP, SECRET)
    seed_demo(sb)
    server = serve(sb, "127.0.0.1", 0)
    try:
        assert server.api_base_url.startswith("http://127.0.0.1:")
        with WeComClient(CORP, SECRET, server.api_base_url, timeout=5) as c:
            chats = list(c.list_group_chats())
            assert len(chats) == sum(len(s.group_names) for s in DEMO_STORES)
            assert c.get_group_chat(chats[0]["chat_id"])["member_list"]
            assert c.get_contact_way(sb.snapshot()["contact_ways"][0]["config_id"])["qr_code"].startswith(
                server.base_url)
    finally:
        server.stop()
    assert not server.thread.is_alive()


def test_from_settings_builds_a_sandbox_posting_to_the_web_callback():
    from scrm.config import Settings

    s = Settings(wecom={"corp_id": "wwS", "secret": "x", "callback_token": TOKEN, "encoding_aes_key": AES},
                 sandbox={"token_expires_in": 1, "callback_tries": 2}, web={"port": 8123})
    sb = Sandbox.from_settings(s)
    assert (sb.corp_id, sb.token_expires_in, sb.poster.tries) == ("wwS", 1, 2)
    assert sb.callback_url == "http://127.0.0.1:8123/wecom/callback" and sb.poster.enabled
