"""Importing chats, calls and SMS into crm_messages, on SQLite and PostgreSQL: the sample story lands
on one customer per mobile however it is written, a re-import changes nothing, a recall blanks its
message whichever comes first, bad lines are named and the rest imported. Each docstring says the
mutation that was tried and made the test fail."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from scrm.crm import ingest
from scrm.crm.archive import render
from scrm.crm.ingest import import_calls, import_chats, import_sms, link_unmatched
from scrm.crm.models import CrmMessage
from scrm.db import as_utc
from tests.crm.conftest import (
    CHEN,
    CHEN_MOBILE,
    GUEST,
    LI,
    LIU,
    LIU_MOBILE,
    NOW,
    SAMPLES,
    STRANGER_MOBILE,
    ZHANG,
    add_people,
)

MS = 1_794_189_720_000  # 2026-11-09 10:02 Asia/Shanghai


def rows(engine) -> dict[tuple[str, str], dict]:
    with engine.connect() as conn:
        return {(r.channel, r.source_id): dict(r._mapping) for r in conn.execute(sa.select(CrmMessage.__table__))}


def chat(msgid: str, frm: str, to: list[str], *, at: int = MS, msgtype: str = "text", obj=None, room: str = "",
         action: str = "send") -> str:
    obj = {"content": f"hello {msgid}"} if obj is None and msgtype == "text" else obj
    line = {"msgid": msgid, "action": action, "from": frm, "tolist": to, "roomid": room, "msgtime": at,
            "msgtype": msgtype}
    if obj is not None:
        line[msgtype] = obj
    return json.dumps(line, ensure_ascii=False)


def recall(msgid: str, pre: str, *, frm: str = LIU, at: int = MS + 60_000) -> str:
    return chat(msgid, frm, [ZHANG], at=at, msgtype="revoke", obj={"pre_msgid": pre}, action="recall")


def import_samples(engine, now=NOW):
    return (import_chats(engine, SAMPLES / "chats.jsonl", now=now),
            import_calls(engine, SAMPLES / "calls.csv", now=now),
            import_sms(engine, SAMPLES / "sms.csv", now=now))


def test_the_sample_story_lands_on_one_customer_whatever_way_the_mobile_is_written(sample_people):
    """刘洋's mobile is 138-0013-8000 in the remark, +86 138 0013 8000 in calls.csv and 8613800138000
    in sms.csv: all his calls and SMS are his. Tried: matching the mobile as given instead of
    normalised (the calls and SMS were stored unmatched)."""
    chats, calls, sms = import_samples(sample_people)
    assert (chats.read, chats.created, chats.skipped, chats.revoked, chats.refused) == (26, 25, 1, 1, 0)
    assert (calls.created, calls.unmatched, calls.refused) == (5, 1, 0)
    assert (sms.created, sms.unmatched, sms.refused) == (3, 0, 0)
    assert chats.customers == {LIU, CHEN, GUEST} and calls.customers == sms.customers == {LIU, CHEN}
    stored = rows(sample_people)
    liu = [r for r in stored.values() if r["external_userid"] == LIU]
    assert sorted((r["channel"], r["mobile"]) for r in liu if r["channel"] != "chat") == [
        ("call", LIU_MOBILE)] * 3 + [("sms", LIU_MOBILE)] * 2
    assert sum(r["channel"] == "chat" for r in liu) == 19
    assert stored[("call", "CC20261110-0001")]["payload"]["given_mobile"] == "+86 138 0013 8000"
    assert stored[("sms", "SMS-7f3a-0001")]["payload"]["given_mobile"] == "8613800138000"
    assert {r["mobile"] for r in stored.values() if r["external_userid"] == CHEN and r["mobile"]} == {CHEN_MOBILE}
    stranger = stored[("call", "CC20261120-0003")]
    assert (stranger["external_userid"], stranger["mobile"], stranger["userid"]) == (None, STRANGER_MOBILE, LI)
    first = stored[("chat", "crm-sample-liu-0101")]
    assert (first["direction"], first["userid"], first["content"][:8]) == ("in", ZHANG, "张经理您好，我们")
    assert as_utc(first["sent_at"]) == dt.datetime(2026, 11, 9, 2, 2, 11, tzinfo=dt.UTC)
    call = stored[("call", "CC20261110-0001")]  # naive local time in the CSV: Asia/Shanghai
    assert as_utc(call["sent_at"]) == dt.datetime(2026, 11, 10, 7, 0, tzinfo=dt.UTC)
    assert (call["direction"], call["duration_seconds"]) == ("out", 312)
    assert call["content"].startswith("[去电 5分12秒] 确认订货")
    assert stored[("call", "CC20261125-0004")]["content"] == "[未接来电]"


def test_a_reimport_changes_nothing(sample_people):
    """Every row compares equal after importing the samples again (with a later clock), and the
    report says unchanged. Tried: ON CONFLICT DO UPDATE of content/created_at (the rows changed),
    and counting created from the batch size instead of RETURNING (the report said created)."""
    import_samples(sample_people)
    before = rows(sample_people)
    again = import_samples(sample_people, now=NOW + dt.timedelta(days=1))
    assert rows(sample_people) == before
    assert [(r.created, r.unchanged, r.revoked, r.refused, r.customers) for r in again] == [
        (0, 25, 0, 0, set()), (0, 5, 0, 0, set()), (0, 3, 0, 0, set())]


@pytest.mark.parametrize("order", ["original first", "recall first", "one file, recall first"])
def test_a_recall_blanks_its_message_whichever_is_imported_first(sample_people, order):
    """The recalled text is gone (content "", payload {}, revoked_at = the recall's time) and the
    recall row keeps pre_msgid. Tried: no UPDATE of stored originals ("original first" failed) and
    no look-up of stored recalls ("recall first" failed)."""
    original = chat("m1", LIU, [ZHANG], obj={"content": "预算最多3000元"})
    undo = recall("r1", "m1")
    if order == "original first":
        first, second = import_chats(sample_people, [original], now=NOW), import_chats(sample_people, [undo], now=NOW)
    elif order == "recall first":
        first, second = import_chats(sample_people, [undo], now=NOW), import_chats(sample_people, [original], now=NOW)
    else:
        first, second = import_chats(sample_people, [undo, original], now=NOW), None
    assert first.revoked + (second.revoked if second else 0) == 1
    assert LIU in first.customers | (second.customers if second else set())
    stored = rows(sample_people)
    m1, r1 = stored[("chat", "m1")], stored[("chat", "r1")]
    assert (m1["content"], m1["payload"]) == ("", {})
    assert as_utc(m1["revoked_at"]) == dt.datetime.fromtimestamp((MS + 60_000) / 1000, dt.UTC)
    assert (r1["msgtype"], r1["payload"], r1["content"], r1["revoked_at"]) == ("revoke", {"pre_msgid": "m1"}, "", None)
    assert "3000" not in json.dumps([str(v) for r in stored.values() for v in r.values()], ensure_ascii=False)
    # and again: nothing more is revoked
    assert import_chats(sample_people, [original, undo], now=NOW).revoked == 0


def test_malformed_chat_lines_are_named_by_line_and_the_rest_is_imported(sample_people, tmp_path):
    """Tried: numbering lines from 0 (every problem was one line early) and stopping at the first bad
    line (the good lines after it were lost)."""
    good = [chat(f"g{i}", LIU, [ZHANG]) for i in range(3)]
    path = tmp_path / "chats.jsonl"
    path.write_bytes(b"\n".join([
        ("\ufeff" + good[0]).encode(),  # 1, with a BOM
        b"{not json",  # 2
        b"",  # 3: blank, ignored
        b'["a list"]',  # 4
        json.dumps({"msgid": "x", "action": "send", "from": LIU, "tolist": [ZHANG], "msgtype": "text",
                    "text": {"content": "no time"}}).encode(),  # 5
        chat("s", LIU, [ZHANG], at=1_794_189_720).encode(),  # 6: seconds, not ms
        good[1].encode(),  # 7
        b"\xff\xfe broken",  # 8: not UTF-8
        json.dumps({"msgid": "y", "action": "delete"}).encode(),  # 9
        chat("t", LIU, [ZHANG], obj={"text": "no content key"}).encode(),  # 10
        recall("r", "").encode(),  # 11: a recall naming nothing
        good[2].encode(),  # 12
    ]) + b"\n")
    report = import_chats(sample_people, path, now=NOW)
    assert [line for line, _ in report.problems] == [2, 4, 5, 6, 8, 9, 10, 11]
    why = dict(report.problems)
    assert why[2].startswith("not JSON") and "msgtime" in why[5] and "between 2000 and 2100" in why[6]
    assert why[8] == "not UTF-8" and "'action' is 'delete'" in why[9] and "text.content" in why[10]
    assert (report.read, report.created) == (11, 3)
    assert {k[1] for k in rows(sample_people)} == {"g0", "g1", "g2"}


def test_malformed_csv_rows_are_named_by_line_and_the_rest_is_imported(sample_people):
    """A quoted summary spanning two lines moves the numbering on. Tried: numbering a row by its last
    line (line 4 was named for the row starting on 3)."""
    text = ("\ufeffcall_id,mobile,userid,direction,started_at,duration_seconds,status,summary\n"
            "C1,13800138000,sales_zhang,out,2026-11-10 15:00:00,60,answered,ok\n"  # 2
            'C2,13800138000,sales_zhang,out,2026-11-10 15:00:00,60,hung up,"two\nlines"\n'  # 3-4: bad status
            "C3,12345,sales_zhang,out,2026-11-10 15:00:00,60,answered,\n"  # 5: not a mobile
            "C4,13800138000,sales_zhang,sideways,2026-11-10 15:00:00,60,answered,\n"  # 6
            "C5,13800138000,sales_zhang,in,yesterday,60,answered,\n"  # 7
            "C6,13800138000,sales_zhang,in,2026-11-10 15:00:00,-1,answered,\n"  # 8
            'C7,13800138000,sales_zhang,out,2026-11-10 15:00:00,60,answered,"two\nlines"\n'  # 9-10: good
            "C8,13800138000,sales_zhang,in\n"  # 11: too few cells
            "C9,13800138000,,in,2026-11-10T15:00:00Z,0,missed,\n")  # 12: good
    report = import_calls(sample_people, text.splitlines(keepends=True), now=NOW)
    assert [line for line, _ in report.problems] == [3, 5, 6, 7, 8, 11]
    why = dict(report.problems)
    assert "status" in why[3] and "not a Chinese mobile" in why[5] and "direction" in why[6]
    assert "started_at" in why[7] and "duration_seconds" in why[8] and why[11] == "4 cells, the header has 8"
    assert (report.read, report.created) == (9, 3)
    assert rows(sample_people)[("call", "C7")]["content"] == "[去电 1分钟] two\nlines"


def test_a_bad_header_refuses_the_file_with_the_columns_it_accepts(sample_people):
    report = import_sms(sample_people, ["sms_id,mobile,direction,sent_at,body\n", "S1,13800138000,in,x,y\n"], now=NOW)
    assert report.created == 0 and report.problems[0][0] == 1
    assert "unknown column(s) 'body'" in report.problems[0][1] and "missing column(s) content" in report.problems[0][1]


def test_a_call_id_reused_with_other_content_is_refused_and_the_stored_call_kept(sample_people):
    """Tried: counting the changed repeat as unchanged (no problem was reported)."""
    head = "call_id,mobile,userid,direction,started_at,duration_seconds,status\n"
    import_calls(sample_people, [head, "C1,13800138000,sales_zhang,out,2026-11-10 15:00:00,60,answered\n"], now=NOW)
    again = import_calls(sample_people, [head, "C1,13800138000,sales_zhang,out,2026-11-10 15:00:00,90,answered\n",
                                         "C1,13800138000,sales_zhang,out,2026-11-10 15:00:00,95,answered\n"], now=NOW)
    assert [line for line, _ in again.problems] == [2, 3]
    assert "duration_seconds was 60, now 90" in again.problems[0][1]
    assert rows(sample_people)[("call", "C1")]["duration_seconds"] == 60


UNKNOWN = [
    (chat("u1", LIU, [ZHANG], msgtype="sphfeed", obj={"feed_type": 2, "sph_name": "咖啡号"}),
     "[消息类型 sphfeed]", {"feed_type": 2, "sph_name": "咖啡号"}),
    (json.dumps({"msgid": "u2", "action": "send", "from": LIU, "tolist": [ZHANG], "roomid": "", "msgtime": MS,
                 "msgtype": "brand_new", "info": {"x": 1}}), "[消息类型 brand_new]", {"info": {"x": 1}}),
]


def test_unknown_msgtypes_are_stored_with_a_generic_rendering(sample_people):
    """A type WeCom adds later never fails the import. Tried: refusing unknown types (both lines
    were problems)."""
    report = import_chats(sample_people, [line for line, _, _ in UNKNOWN], now=NOW)
    assert (report.created, report.refused) == (2, 0)
    stored = rows(sample_people)
    for (_, content, payload), key in zip(UNKNOWN, ("u1", "u2"), strict=True):
        assert (stored[("chat", key)]["content"], stored[("chat", key)]["payload"]) == (content, payload)


@pytest.mark.parametrize("msgtype,obj,shown", [
    ("text", {"content": "在吗"}, "在吗"),
    ("image", {"md5sum": "x"}, "[图片]"),
    ("voice", {"play_length": 12}, "[语音 12秒]"),
    ("video", {"play_length": 75}, "[视频 1分15秒]"),
    ("file", {"filename": "报价单.pdf", "fileext": "pdf"}, "[文件] 报价单.pdf"),
    ("file", {"filename": "报价单", "fileext": "xlsx"}, "[文件] 报价单.xlsx"),
    ("link", {"title": "团购指南", "link_url": "https://x"}, "[链接] 团购指南"),
    ("weapp", {"title": "点单", "displayname": "咖啡"}, "[小程序] 点单"),
    ("weapp", {"displayname": "咖啡"}, "[小程序] 咖啡"),
    ("card", {"corpname": "某公司", "userid": "u"}, "[名片] 某公司"),
    ("location", {"title": "张江", "address": "上海浦东"}, "[位置] 张江 上海浦东"),
    ("emotion", {"type": 1}, "[表情]"),
    ("chatrecord", {"title": "群聊的聊天记录", "item": []}, "[聊天记录] 群聊的聊天记录"),
    ("agree", {"userid": "wm1", "agree_time": 1}, "[同意会话存档]"),
    ("disagree", {"userid": "wm1"}, "[不同意会话存档]"),
    ("mixed", {"item": [{"type": "text", "content": "{\"content\":\"看这个\"}"}, {"type": "image", "content": "{}"}]},
     "看这个 [图片]"),
])
def test_each_type_reads_as_a_person_would(msgtype, obj, shown):
    assert render(msgtype, obj) == shown


def test_group_chats_and_robots_are_attributed_by_the_rule(sample_people):
    """In a group a customer's message is theirs with no rep; an employee's has no customer. An
    employee whose userid starts with wm is ours (the employees table wins); a wb robot is ours;
    a 1:1 between colleagues is skipped. Tried: attributing group messages like 1:1 ones (the
    employee's group message got a customer)."""
    add_people(sample_people, employees={"wmarketing": "市场部"})
    lines = [
        chat("g1", LIU, [ZHANG, CHEN], room="wrRoom1"),
        chat("g2", ZHANG, [LIU, CHEN], room="wrRoom1"),
        chat("g3", "wbRobot01", [LIU], room="wrRoom1"),
        chat("p1", "wmarketing", [CHEN]),  # an employee with a wm-looking userid, 1:1
        chat("p2", "wbRobot01", [LIU]),  # a robot 1:1
        chat("p3", ZHANG, [LI]),  # colleagues
        chat("p4", "wo_other_corp_user", ["wmarketing"]),  # another corp's WeCom user is a customer
    ]
    report = import_chats(sample_people, lines, now=NOW)
    assert (report.created, report.skipped) == (6, 1)
    got = {k[1]: (r["external_userid"], r["userid"], r["direction"], r["roomid"])
           for k, r in rows(sample_people).items()}
    assert got == {
        "g1": (LIU, None, "in", "wrRoom1"),
        "g2": (None, ZHANG, "out", "wrRoom1"),
        "g3": (None, "wbRobot01", "out", "wrRoom1"),
        "p1": (CHEN, "wmarketing", "out", None),
        "p2": (LIU, "wbRobot01", "out", None),
        "p4": ("wo_other_corp_user", "wmarketing", "in", None),
    }


def test_switch_lines_are_counted_as_skipped_not_refused(sample_people):
    """Tried: requiring 'from' before looking at the action (the switch line was a problem)."""
    switch = json.dumps({"msgid": "sw1", "action": "switch", "time": MS, "user": ZHANG})
    report = import_chats(sample_people, [switch, chat("a", LIU, [ZHANG]), switch], now=NOW)
    assert (report.read, report.created, report.skipped, report.refused) == (3, 1, 2, 0)


def test_unmatched_calls_are_linked_once_the_mobile_is_known(sample_people):
    """Tried: an UPDATE without the mobile condition (王芳 also got the other mobile's SMS)."""
    head = "sms_id,mobile,userid,direction,sent_at,content\n"
    report = import_sms(sample_people, [head, "S1,13700137000,sales_li,in,2026-11-20 10:00,在吗\n",
                                        "S2,13600136000,sales_li,in,2026-11-20 10:00,你好\n"], now=NOW)
    assert (report.created, report.unmatched, report.customers) == (2, 2, set())
    assert link_unmatched(sample_people) == set()
    add_people(sample_people, customers=[("wmWangFang", "王芳", LI, ["137 0013 7000"])])
    assert link_unmatched(sample_people, mobiles=["+8613600136000"]) == set()  # someone else's mobile only
    assert link_unmatched(sample_people) == {"wmWangFang"}
    assert link_unmatched(sample_people) == set()
    stored = rows(sample_people)
    assert stored[("sms", "S1")]["external_userid"] == "wmWangFang"
    assert stored[("sms", "S2")]["external_userid"] is None


def test_a_shared_mobile_goes_to_the_customer_the_rep_follows_else_the_smallest_id(sample_people):
    """Tried: always the smallest external_userid (the rep's own customer lost the call)."""
    add_people(sample_people, customers=[("wmA_parent", "父亲", ZHANG, ["13500135000"]),
                                         ("wmB_child", "女儿", LI, ["13500135000"])])
    head = "call_id,mobile,userid,direction,started_at,duration_seconds,status\n"
    report = import_calls(sample_people, [head, "K1,13500135000,sales_li,in,2026-11-20 10:00,30,answered\n",
                                          "K2,13500135000,sales_zhang,in,2026-11-20 10:00,30,answered\n",
                                          "K3,13500135000,,in,2026-11-20 10:00,30,answered\n"], now=NOW)
    assert report.ambiguous == 3
    stored = rows(sample_people)
    assert [stored[("call", k)]["external_userid"] for k in ("K1", "K2", "K3")] == [
        "wmB_child", "wmA_parent", "wmA_parent"]


def test_large_imports_go_in_batches(sample_people, monkeypatch):
    """More rows than a batch: all stored once, the report adds up across batches, and a recall in
    a later batch blanks a message of an earlier one. Tried: no final flush (the lines after the
    last full batch were lost)."""
    monkeypatch.setattr(ingest, "BATCH", 7)
    lines = [chat(f"b{i}", LIU, [ZHANG], at=MS + i) for i in range(30)] + [recall("rb", "b3", at=MS + 100)]
    report = import_chats(sample_people, lines, now=NOW)
    assert (report.created, report.revoked) == (31, 1)
    assert rows(sample_people)[("chat", "b3")]["content"] == ""


def test_a_failed_batch_write_stops_the_import_with_the_error(sample_people, monkeypatch):
    """Batches are written on a worker thread; its failure must reach the caller, not vanish with
    the thread. Tried: not collecting the worker's result (the import returned a report as if
    every line were stored)."""
    monkeypatch.setattr(ingest, "BATCH", 5)
    real = ingest._insert_rows
    calls = []

    def failing(conn, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(conn, rows)

    monkeypatch.setattr(ingest, "_insert_rows", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        import_chats(sample_people, [chat(f"f{i}", LIU, [ZHANG], at=MS + i) for i in range(20)], now=NOW)
    assert len(rows(sample_people)) == 5  # the first batch is stored; re-running the import finishes it
    monkeypatch.setattr(ingest, "_insert_rows", real)
    again = import_chats(sample_people, [chat(f"f{i}", LIU, [ZHANG], at=MS + i) for i in range(20)], now=NOW)
    assert (again.created, again.unchanged) == (15, 5)
