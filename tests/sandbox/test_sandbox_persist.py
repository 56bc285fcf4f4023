"""The sandbox corp survives a restart: saved to one JSON file after every change made through the
API or an action, loaded back with the same ids, never reseeded over (so scrm does not sync in a
second demo corp), and an unusable file is named in a clear error."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from scrm.config import ConfigError, Settings
from scrm.sandbox import Sandbox, SandboxStateError, create_sandbox_app, load_or_seed
from scrm.sandbox.persist import corp_to_dict
from scrm.wecom.client import WeComClient
from scrm.wecom.events import ContactEvent
from tests.sandbox.test_sandbox import AES, CORP, SECRET, TOKEN, Receiver
from tests.waiting import run_threads

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


def new_sandbox(clock, receiver: Receiver | None = None) -> Sandbox:
    """A sandbox as a fresh process would build it (nothing in memory)."""
    if receiver is None:
        return Sandbox(CORP, SECRET, clock=clock)
    return Sandbox(CORP, SECRET, callback_token=TOKEN, encoding_aes_key=AES, clock=clock,
                   callback_url="http://receiver/wecom/callback", callback_http=receiver.client)


def corp(sb: Sandbox) -> dict:
    data = corp_to_dict(sb)
    data.pop("saved_at")
    return data


def test_a_saved_corp_loads_back_the_same_and_keeps_working(tmp_path, clock):
    path = tmp_path / "sandbox-corp.json"
    first = new_sandbox(clock)
    demo = load_or_seed(first, path)  # no file yet: seeds the demo chain and saves it
    assert path.exists() and demo is first.demo and demo["stores"]
    store = demo["stores"][0]
    # state that only actions and API calls create: all of it must come back
    scan = first.scan_contact_way(store["contact_way"]["config_id"], name="新顾客")
    first.group_qr_cap = 3  # fill the store's groups so the join way creates a room (rooms_created)
    joined = first.join_group_via_way(store["join_way_config_id"], name="进群顾客")
    first.group_qr_cap = 200
    tag = first.admin_create_tag("咖啡重度用户", group_name="用户分层")
    first.employee_edits_customer(scan["userid"], scan["external_userid"], remark="常客", add_tags=[tag["tag_id"]])
    msgid = first.api_add_msg_template({"chat_type": "group", "sender": store["owner"], "text": {"content": "早"}})[
        "msgid"]
    first.confirm_mass_send(msgid)
    robot = first.add_group_robot(store["chat_ids"][0])
    before = corp(first)

    receiver = Receiver()
    again = new_sandbox(clock, receiver)
    assert load_or_seed(again, path) == demo
    assert corp(again) == before
    assert again.snapshot() == first.snapshot()
    assert set(again.contact_ways) == set(first.contact_ways) and set(again.join_ways) == set(first.join_ways)
    assert joined["created_chat_id"] and again.join_ways[store["join_way_config_id"]].rooms_created == 1
    assert again.templates[msgid].tasks[store["owner"]]["status"] == 2
    assert again.group_robots == {robot: store["chat_ids"][0]}

    # the reloaded corp acts and posts callbacks like the original
    nxt = again.scan_contact_way(store["contact_way"]["config_id"], name="第二位")
    assert nxt["userid"] != scan["userid"]  # the way's rotation between its staff went on where it was
    assert nxt.delivered
    event = receiver.events[-1]
    assert isinstance(event, ContactEvent) and (event.change_type, event.state, event.external_user_id) == (
        "add_external_contact", store["contact_way"]["state"], nxt["external_userid"])
    # ... and that was saved too
    third = new_sandbox(clock)
    load_or_seed(third, path)
    assert nxt["external_userid"] in third.customers


def test_a_restart_on_the_same_file_duplicates_nothing(tmp_path, clock):
    settings = Settings(wecom={"corp_id": CORP, "secret": SECRET, "callback_token": TOKEN, "encoding_aes_key": AES})
    path = tmp_path / "data" / "sandbox-corp.json"
    first = Sandbox.from_settings(settings, state_file=path, clock=clock)
    counts = {k: len(getattr(first, k)) for k in ("members", "customers", "follows", "groups", "tags",
                                                   "tag_groups", "contact_ways", "join_ways")}
    assert counts["groups"] > 0 and counts["customers"] > 0
    for _ in range(2):
        restarted = Sandbox.from_settings(settings, state_file=path, clock=clock)
        assert {k: len(getattr(restarted, k)) for k in counts} == counts
        assert set(restarted.groups) == set(first.groups) and set(restarted.customers) == set(first.customers)
        assert restarted.demo == first.demo


def test_every_api_change_is_saved_and_reads_do_not_write(tmp_path, clock):
    path = tmp_path / "sandbox-corp.json"
    sb = new_sandbox(clock)
    sb.add_member("zhangsan", "张三")
    load_or_seed(sb, path, seed=False)
    api = TestClient(create_sandbox_app(sb), base_url="http://sandbox")
    client = WeComClient(CORP, SECRET, "http://sandbox/cgi-bin/", http=api, sleep=lambda s: None)
    way = client.add_contact_way(type=1, scene=2, state="st_a", user=["zhangsan"])
    group = sb.create_group("zhangsan", "福利群")
    join_way = client.add_join_way(scene=2, chat_id_list=[group.chat_id], state="grp_a")
    tags = client.add_corp_tag(group_name="用户分层", tags=[{"name": "新客"}])

    reloaded = new_sandbox(clock)
    load_or_seed(reloaded, path)
    assert reloaded.contact_ways[way["config_id"]].state == "st_a"
    assert reloaded.join_ways[join_way].chat_id_list == [group.chat_id]
    assert [t.name for t in reloaded.tags.values()] == ["新客"] and tags["tag"][0]["id"] in reloaded.tags
    assert group.chat_id in reloaded.groups  # created directly, saved with the next API change

    inode = path.stat().st_ino  # every save renames a new file over the old one
    client.list_members()
    client.get_contact_way(way["config_id"])
    list(client.list_group_chats())
    assert path.stat().st_ino == inode
    client.del_contact_way(way["config_id"])
    assert path.stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir()] == ["sandbox-corp.json"]  # no temporary file left behind


@pytest.mark.parametrize("content, says", [
    ("{\"format\": \"scrm-sandbox-corp\", \"members\": [", "is not valid JSON (line 1"),
    ("", "is not valid JSON"),
    ("[1, 2]", "is not a scrm sandbox corp file"),
    (json.dumps({"format": "scrm-sandbox-corp", "version": 1, "corp_id": CORP, "members": [{"nope": 1}]}),
     "is not a usable sandbox corp file"),
    (json.dumps({"format": "scrm-sandbox-corp", "version": 1, "corp_id": "wwanother"}), "holds corp 'wwanother'"),
])
def test_an_unusable_file_is_a_clear_error_and_is_never_reseeded_over(tmp_path, clock, content, says):
    path = tmp_path / "sandbox-corp.json"
    path.write_text(content, encoding="utf-8")
    sb = new_sandbox(clock)
    with pytest.raises(SandboxStateError) as exc:
        load_or_seed(sb, path)
    assert str(path) in str(exc.value) and says in str(exc.value)
    assert isinstance(exc.value, ConfigError)  # the CLI shows ConfigErrors as a message, not a traceback
    assert path.read_text(encoding="utf-8") == content
    assert sb.members == {} and sb.demo is None and sb.persist_path is None


def test_an_unreadable_file_is_named(tmp_path, clock):
    path = tmp_path / "sandbox-corp.json"
    path.mkdir()  # a directory where the file should be
    with pytest.raises(SandboxStateError, match="cannot read the sandbox corp file .*sandbox-corp.json"):
        load_or_seed(new_sandbox(clock), path)


def test_concurrent_actions_leave_the_newest_corp_on_disk(tmp_path, clock):
    """Threads act at once (as uvicorn's do): whichever save lands last, the file holds every change.
    A thread's exception fails the test (run_threads; tried: a scan raising in one thread, which a
    plain thread only reported as a warning)."""
    path = tmp_path / "sandbox-corp.json"
    sb = new_sandbox(clock)
    demo = load_or_seed(sb, path)
    ways = [s["contact_way"]["config_id"] for s in demo["stores"]]

    def scan_many(way):
        for _ in range(10):
            sb.scan_contact_way(way)

    run_threads([lambda w=w: scan_many(w) for w in ways[:4]])
    reloaded = new_sandbox(clock)
    load_or_seed(reloaded, path)
    assert set(reloaded.customers) == set(sb.customers) and len(sb.customers) == len(demo["stores"]) * 4 + 40
    assert set(reloaded.follows) == set(sb.follows)


def test_an_older_snapshot_is_never_written_over_a_newer_one(tmp_path, clock, monkeypatch):
    """Two saves race: the one that took its snapshot first but reaches the file last is dropped.
    Both actions run through run_threads, so an exception in either fails the test."""
    import threading

    path = tmp_path / "sandbox-corp.json"
    sb = new_sandbox(clock)
    sb.add_member("zhangsan", "张三")
    load_or_seed(sb, path, seed=False)
    first_serialised, go_on = threading.Event(), threading.Event()
    real_dumps = json.dumps

    class FirstSaveIsSlow:  # stands in for state.py's json module
        calls = 0

        @staticmethod
        def dumps(*args, **kwargs):
            FirstSaveIsSlow.calls += 1
            if FirstSaveIsSlow.calls == 1:
                first_serialised.set()
                go_on.wait(5)
            return real_dumps(*args, **kwargs)

    monkeypatch.setattr("scrm.sandbox.state.json", FirstSaveIsSlow)

    def second():
        assert first_serialised.wait(5), "the first save never started"
        try:
            sb.add_employee("zhangsan", name="后到")  # its save (both customers) is written first
        finally:
            go_on.set()

    run_threads([lambda: sb.add_employee("zhangsan", name="先到"), second], timeout=30)
    reloaded = new_sandbox(clock)
    load_or_seed(reloaded, path)
    assert sorted(c.name for c in reloaded.customers.values()) == ["先到", "后到"]
