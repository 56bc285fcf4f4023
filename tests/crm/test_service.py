"""Rebuilding, reading and editing follow-up records on SQLite and PostgreSQL: what a rep sees
after new messages, recalls and rebuilds, and that a rebuild with nothing new writes nothing.

Mutations tried on scrm/crm/service.py, each seen to fail here: records rewritten whether or not
they changed (the nothing-new test: built_at moved); events always replaced (same test: new ids);
vanished records kept (the all-recalled test); an edit shown on the record whose first message is
its anchor instead of the record containing it (the merge test: the note was lost); the oldest of
two edits shown (the newest-wins test); home store not read (the store test); a saved note dropping
the earlier correction (the validation test)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from scrm.crm.models import CrmMessage, FollowUp, FollowUpEdit, ServiceEvent
from scrm.crm.service import EditRefused, latest_records, rebuild_all, rebuild_customers, records_for, save_edit
from scrm.layers.models import CustomerLayer
from tests.crm.builders import (
    ALL_TABLES,
    NOW,
    TZ,
    events,
    followups,
    insert,
    local,
    msg,
    revoke,
    rows_of,
    settings,
)

T0 = local(2026, 11, 23, 10)
H = dt.timedelta(hours=1)


def rebuild(engine, *ids, gap=8.0, now=NOW):
    return rebuild_customers(engine, ids, now=now, settings=settings(session_gap_hours=gap), tz=TZ)


def snapshot(engine):
    return [rows_of(engine, model) for model in ALL_TABLES]


def two_sessions(engine, ext="c1"):
    """Session A at 10:00 (question, reply) and session B 10 h later (question, reply)."""
    return insert(engine, [msg(ext, T0, "拿铁多少钱？"), msg(ext, T0 + 0.1 * H, "18元", out=True),
                           msg(ext, T0 + 10 * H, "明天能送吗？"), msg(ext, T0 + 10.1 * H, "可以", out=True)])


def test_a_rebuild_with_nothing_new_writes_nothing(engine):
    two_sessions(engine)
    insert(engine, [msg("c2", T0, "我要投诉"), msg("c2", T0 + H, "你自己看", out=True)])
    first = rebuild(engine, "c1", "c2")
    assert (first.customers, first.records, first.created) == (2, 3, 3) and first.events > 0
    before = snapshot(engine)
    again = rebuild(engine, "c1", "c2", now=NOW + H)  # later: built_at would move if anything were rewritten
    assert (again.created, again.updated, again.removed, again.events) == (0, 0, 0, 0)
    assert snapshot(engine) == before
    everyone = rebuild_all(engine, now=NOW + 2 * H, settings=settings(), tz=TZ, batch=1, only_changed=False)
    assert everyone.customers == 2 and snapshot(engine) == before
    nightly = rebuild_all(engine, now=NOW + 2 * H, settings=settings(), tz=TZ, batch=1)
    assert (nightly.customers, nightly.skipped) == (0, 2) and snapshot(engine) == before


def test_a_new_message_rewrites_only_its_record(engine):
    ids = two_sessions(engine)
    rebuild(engine, "c1")
    a_before, b_before = followups(engine, "c1")
    insert(engine, [msg("c1", T0 + 10.2 * H, "那我订货20杯")])
    report = rebuild(engine, "c1", now=NOW + H)
    assert (report.created, report.updated, report.removed) == (0, 1, 0)
    a_after, b_after = followups(engine, "c1")
    assert tuple(a_after) == tuple(a_before)
    assert b_after.id == b_before.id and b_after.first_message_id == ids[2]
    assert {f["value"] for f in b_after.facts} >= {"20", "订货"} and b_after.message_count == 3


def test_a_note_survives_a_rebuild_that_merges_two_sessions(engine):
    ids = two_sessions(engine)
    rebuild(engine, "c1")
    _, b = followups(engine, "c1")
    save_edit(engine, external_userid="c1", record_id=b.id, editor="rep1", now=NOW, note="客户要送到公司",
              corrections={"next_step": "明早十点前送到"})
    # A message 5 h after A and 5 h before B: one session now.
    insert(engine, [msg("c1", T0 + 5 * H, "地址是人民路1号")])
    report = rebuild(engine, "c1", now=NOW + H)
    assert (report.records, report.removed) == (1, 1)
    (view,) = records_for(engine, "c1")
    assert view.record.first_message_id == ids[0] and view.record.last_message_id == ids[3]
    assert view.note == "客户要送到公司" and view.next_step == "明早十点前送到"
    assert view.corrected == frozenset({"next_step"}) and view.edited_by == "rep1"
    assert view.record.next_step != "明早十点前送到"  # the built record itself is untouched


def test_when_two_edits_end_on_one_record_the_newest_shows_and_a_split_gives_each_back(engine):
    two_sessions(engine)
    rebuild(engine, "c1")
    a, b = followups(engine, "c1")
    save_edit(engine, external_userid="c1", record_id=b.id, editor="rep2", now=NOW + H, note="B 的备注")
    save_edit(engine, external_userid="c1", record_id=a.id, editor="rep1", now=NOW, note="A 的备注")
    rebuild(engine, "c1", gap=12)  # a wider gap merges A and B
    (merged,) = records_for(engine, "c1")
    assert merged.note == "B 的备注" and merged.edited_by == "rep2"
    rebuild(engine, "c1", gap=8)  # and apart again
    newest, oldest = records_for(engine, "c1")
    assert (oldest.note, newest.note) == ("A 的备注", "B 的备注")


def test_a_session_whose_messages_are_all_recalled_disappears(engine):
    ids = two_sessions(engine)
    rebuild(engine, "c1")
    revoke(engine, ids[2], T0 + 10.3 * H)
    revoke(engine, ids[3], T0 + 10.3 * H)
    report = rebuild(engine, "c1")
    assert (report.records, report.removed) == (1, 1)
    (view,) = records_for(engine, "c1")
    assert view.record.first_message_id == ids[0]
    assert all(e.message_id not in ids[2:] for e in events(engine, "c1"))


def test_events_carry_the_home_store_and_follow_its_change(engine):
    two_sessions(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(CustomerLayer.__table__).values(external_userid="c1", layer="active",
                                                               home_store="BJ001"))
    rebuild(engine, "c1")
    assert {e.store_code for e in events(engine, "c1")} == {"BJ001"}
    with engine.begin() as conn:
        conn.execute(sa.update(CustomerLayer.__table__).values(home_store="SH002"))
    report = rebuild(engine, "c1")
    assert report.events == len(events(engine, "c1")) and {e.store_code for e in events(engine, "c1")} == {"SH002"}


def test_missing_customers_are_reported_and_lose_their_records(engine):
    two_sessions(engine)
    rebuild(engine, "c1")
    report = rebuild(engine, "nobody")
    assert report.missing == ["nobody"] and report.customers == 0
    with engine.begin() as conn:  # messages moved to another customer (a mobile relinked)
        conn.execute(sa.update(CrmMessage.__table__).values(external_userid="c9"))
    progress: list[tuple[int, int]] = []
    everyone = rebuild_all(engine, now=NOW, settings=settings(), tz=TZ, progress=lambda d, t: progress.append((d, t)))
    assert followups(engine, "c1") == [] and events(engine, "c1") == []
    assert len(followups(engine, "c9")) == 2 and everyone.removed == 2
    assert progress[0] == (0, 2) and progress[-1] == (2, 2)


def test_latest_records_show_each_customers_newest_record_with_its_edit(engine):
    two_sessions(engine, "c1")
    insert(engine, [msg("c2", T0, "在吗")])
    rebuild(engine, "c1", "c2")
    _, b = followups(engine, "c1")
    save_edit(engine, external_userid="c1", record_id=b.id, editor="rep1", now=NOW,
              corrections={"open_questions": ["送货时间？", {"text": "  "}]})
    latest = latest_records(engine, ["c1", "c2", "c3"])
    assert set(latest) == {"c1", "c2"}
    assert latest["c1"].record.id == b.id and latest["c1"].open_questions == [{"text": "送货时间？"}]
    assert latest["c2"].first_question == "在吗"


def test_edits_are_validated_with_chinese_reasons_and_lose_nothing(engine):
    two_sessions(engine)
    insert(engine, [msg("c2", T0, "在吗")])
    rebuild(engine, "c1", "c2")
    a, _ = followups(engine, "c1")
    (other,) = followups(engine, "c2")
    save_edit(engine, external_userid="c1", record_id=a.id, editor="rep1", now=NOW, note="第一次",
              corrections={"next_step": "打电话"})
    before = rows_of(engine, FollowUpEdit)
    for kwargs, words in [
        (dict(record_id=other.id, note="x"), "没有这条跟进记录"),
        (dict(record_id=a.id, corrections={"facts": []}), "不能修改"),
        (dict(record_id=a.id, note="字" * 2001), "最多 2000 个字"),
        (dict(record_id=a.id, corrections={"next_step": 5}), "必须是文字"),
        (dict(record_id=a.id, corrections={"open_questions": "不是列表"}), "列表"),
        (dict(record_id=a.id, note="a\x00b"), "控制字符"),
        (dict(record_id=a.id), "没有要保存的修改"),
    ]:
        with pytest.raises(EditRefused, match=words):
            save_edit(engine, external_userid="c1", editor="rep1", now=NOW, **kwargs)
    assert rows_of(engine, FollowUpEdit) == before
    # Saving only a note keeps the correction; None drops a correction.
    view = save_edit(engine, external_userid="c1", record_id=a.id, editor="rep2", now=NOW + H, note="第二次")
    assert (view.note, view.next_step, view.edited_by) == ("第二次", "打电话", "rep2")
    view = save_edit(engine, external_userid="c1", record_id=a.id, editor="rep2", now=NOW + H,
                     corrections={"next_step": None})
    assert view.next_step == a.next_step and view.corrected == frozenset() and view.note == "第二次"
    assert len(rows_of(engine, FollowUpEdit)) == 1


def test_tables_untouched_by_reads(engine):
    two_sessions(engine)
    rebuild(engine, "c1")
    before = snapshot(engine)
    records_for(engine, "c1", limit=1, offset=1)
    latest_records(engine, ["c1"])
    assert snapshot(engine) == before
    assert len(rows_of(engine, FollowUp)) == 2 and len(rows_of(engine, ServiceEvent)) > 0


def test_a_large_first_build_reads_back_equal(engine):
    """Over 200 rows go in by COPY on PostgreSQL: what was written must read back equal to what the
    builder makes, or the next rebuild would rewrite it. Mutation tried: JSON columns copied with
    ``str(value)`` instead of JSON (failed: the copy was refused / the rebuild rewrote rows)."""
    rows = []
    for c in range(40):
        for k in range(12):
            rows.append(msg(f"big{c}", T0 + dt.timedelta(hours=10 * (k // 2) + k % 2, minutes=c),
                            "你好，订货30杯拿铁，下周三要？" if k % 2 == 0 else "好的，18元一杯，你自己看",
                            out=k % 2 == 1, userid="rep1" if k % 2 else None))
    insert(engine, rows)
    first = rebuild_all(engine, now=NOW, settings=settings(), tz=TZ)
    assert first.created > 200 and first.events > 200
    before = snapshot(engine)
    again = rebuild_all(engine, now=NOW + H, settings=settings(), tz=TZ)
    assert (again.created, again.updated, again.removed, again.events) == (0, 0, 0, 0)
    assert snapshot(engine) == before
    (view, *_) = records_for(engine, "big0")
    assert {f["value"] for f in view.record.facts} >= {"订货", "30", "下周三", "18"}


class _Reads:
    """Spy on the customers a rebuild loads messages for."""

    def __init__(self, monkeypatch):
        from scrm.crm import service

        self.ids: list[str] = []
        real = service._load_messages

        def spy(conn, ids, bounds):
            loaded = real(conn, ids, bounds)
            self.ids.extend(loaded)
            return loaded

        monkeypatch.setattr(service, "_load_messages", spy)


def test_the_nightly_pass_reads_only_customers_whose_records_can_change(engine, monkeypatch):
    """The nightly rebuild (``rebuild_all`` as ``run_nightly_rebuild`` calls it) leaves quiet customers
    unread, yet updates a customer whose next step the clock alone flips (their question waits past
    ``no_reply_hours``), one who got a message, one whose message was recalled, one who got a message
    and a recall at once, and one whose home store moved; ``only_changed=False`` reads everyone.

    Mutations tried on scrm/crm/service.py, each seen to fail here: the clock check removed (the
    waiting customer kept 'open-questions'); the count check removed (the new message and the
    recall were missed: the linked call and the recall rows are dated before the build); the
    created_at check removed (the message + recall pair was missed);
    the store check removed (the moved customer kept the old store)."""
    quiet = ("q1", "q2")
    for ext in quiet:
        two_sessions(engine, ext)
    waiting = insert(engine, [msg("w1", NOW - 0.5 * H, "拿铁多少钱？")])
    grows = two_sessions(engine, "g1")
    recalled = two_sessions(engine, "r1")
    pair = two_sessions(engine, "p1")
    insert(engine, [msg("s1", T0, "你好"), msg("s1", T0 + 0.1 * H, "您好", out=True)])
    first = rebuild(engine, "q1", "q2", "w1", "g1", "r1", "p1", "s1")
    assert first.customers == 7
    (w,) = followups(engine, "w1")
    assert w.next_step_rule == "open-questions"  # built at NOW: only half an hour waited

    reads = _Reads(monkeypatch)
    nothing = rebuild_all(engine, now=NOW + 0.5 * H, settings=settings(), tz=TZ)
    assert reads.ids == [] and nothing.skipped == 7  # an hour waited: the no-reply step (2 h) cannot hold yet

    later = NOW + 3 * H
    # a call imported long ago and linked now that its mobile is known (its created_at is old)
    insert(engine, [msg("g1", T0 + 10.2 * H, "再来20杯", channel="call") | {"created_at": T0}])
    revoke(engine, recalled[2], T0 + 10.3 * H, created_at=T0 + 10.3 * H)
    insert(engine, [msg("p1", T0 + 10.2 * H, "再来20杯") | {"created_at": later}])
    revoke(engine, pair[2], T0 + 10.3 * H, created_at=later)
    with engine.begin() as conn:
        conn.execute(sa.insert(CustomerLayer.__table__).values(external_userid="s1", layer="A", home_store="S9"))
    nightly = rebuild_all(engine, now=later, settings=settings(), tz=TZ)
    assert sorted(reads.ids) == ["g1", "p1", "r1", "s1", "w1"]
    assert nightly.customers == 5 and nightly.skipped == 2
    (w,) = followups(engine, "w1")
    assert w.next_step_rule == "no-reply" and waiting
    assert followups(engine, "g1")[1].message_count == 3
    assert followups(engine, "r1")[1].message_count == 1
    assert followups(engine, "p1")[1].message_count == 2
    assert {e.store_code for e in events(engine, "s1")} == {"S9"}

    reads.ids.clear()
    settled = rebuild_all(engine, now=later + 24 * H, settings=settings(), tz=TZ)
    assert reads.ids == [] and settled.skipped == 7  # the flipped step was written: nothing waits any more

    everyone = rebuild_all(engine, now=later + 24 * H, settings=settings(), tz=TZ, only_changed=False)
    assert sorted(reads.ids) == ["g1", "p1", "q1", "q2", "r1", "s1", "w1"]
    assert (everyone.customers, everyone.created, everyone.updated, everyone.removed) == (7, 0, 0, 0) and grows
