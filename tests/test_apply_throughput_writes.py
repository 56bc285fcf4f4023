"""A join, a leave or a tag event re-reads the whole group or tag library from WeCom; only what
changed is written. Before, every member's row (every tag's row) was rewritten on every event: a
store group of 200 cost 200 UPDATEs per join, which is what bench/apply.py showed the database
spending its time on.

Mutations checked: groups.service._set_changed always setting ``updated_at`` failed
test_a_join_writes_the_new_member_only (an UPDATE of every old member, 1 statement instead of 0);
tags.service.apply_tag_library looking each tag up with session.get again (no preload) failed the
tag test (50 SELECTs); tags' _set_changed always setting ``updated_at`` failed it too (3 UPDATE
statements, every tag rewritten).
"""

from __future__ import annotations

import time

from sqlalchemy import event
from sqlmodel import Session, select

from scrm.groups.models import GroupMember, MemberState
from scrm.groups.service import apply_group_chat
from scrm.tags.models import Tag
from scrm.tags.service import apply_tag_library


class Statements:
    """The SQL statements an engine ran while counting."""

    def __init__(self, engine):
        self.engine, self.seen = engine, []

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._on)

    def _on(self, conn, cursor, statement, parameters, context, executemany):
        self.seen.append(statement)

    def count(self, verb: str, table: str) -> int:
        return sum(1 for s in self.seen if s.lstrip().upper().startswith(verb) and table in s)


def chat(members: list[str], t0: int) -> dict:
    return {"chat_id": "wr1", "name": "国贸店福利群", "owner": "zhangsan", "create_time": t0, "member_version": "v",
            "member_list": [{"userid": m, "type": 1 if m == "zhangsan" else 2, "join_time": t0 + i, "join_scene": 3}
                            for i, m in enumerate(members)]}


def test_a_join_writes_the_new_member_only(sqlite_engine):
    t0 = int(time.time()) - 3600
    first = ["zhangsan"] + [f"wm{i}" for i in range(9)]
    with Session(sqlite_engine) as s:
        apply_group_chat(s, chat(first, t0))
        s.commit()
    with Session(sqlite_engine) as s:
        before = {m.member_id: m.updated_at for m in s.exec(select(GroupMember))}
    with Statements(sqlite_engine) as st, Session(sqlite_engine) as s:
        changes = apply_group_chat(s, chat(first + ["wm_new"], t0))
        s.commit()
    assert changes == {"joined": ["wm_new"], "left": []}
    assert st.count("INSERT", "group_members") == 1
    assert st.count("UPDATE", "group_members") == 0
    with Session(sqlite_engine) as s:
        rows = {m.member_id: m for m in s.exec(select(GroupMember))}
    assert {m: r.updated_at for m, r in rows.items() if m in before} == before  # untouched members kept
    assert rows["wm_new"].state == MemberState.member


def test_a_leave_and_a_rejoin_are_still_written(sqlite_engine):
    t0 = int(time.time()) - 3600
    with Session(sqlite_engine) as s:
        apply_group_chat(s, chat(["zhangsan", "wm1", "wm2"], t0))
        s.commit()
    with Session(sqlite_engine) as s:
        assert apply_group_chat(s, chat(["zhangsan", "wm1"], t0), quit_scene=0)["left"] == ["wm2"]
        s.commit()
    with Session(sqlite_engine) as s:
        assert apply_group_chat(s, chat(["zhangsan", "wm1", "wm2"], t0))["joined"] == ["wm2"]
        s.commit()
    with Session(sqlite_engine) as s:
        back = s.exec(select(GroupMember).where(GroupMember.member_id == "wm2")).one()
    assert (back.state, back.left_at, back.quit_scene) == (MemberState.member, None, None)


def library(names: dict[str, str]) -> list[dict]:
    return [{"group_id": "g1", "group_name": "门店", "create_time": 1_700_000_000,
             "tag": [{"id": i, "name": n, "create_time": 1_700_000_000} for i, n in names.items()]}]


def test_a_tag_event_reads_the_library_once_and_writes_the_renamed_tag_only(sqlite_engine):
    names = {f"t{i}": f"店{i}" for i in range(50)}
    with Session(sqlite_engine) as s:
        apply_tag_library(s, library(names))
        s.commit()
    with Session(sqlite_engine) as s:
        before = {t.tag_id: t.updated_at for t in s.exec(select(Tag))}
    with Statements(sqlite_engine) as st, Session(sqlite_engine) as s:
        assert apply_tag_library(s, library({**names, "t7": "国贸旗舰店"})) == 50
        s.commit()
    assert st.count("SELECT", "tags") <= 2  # the library and its groups, not one query per tag
    assert st.count("UPDATE", "tags") == 1
    with Session(sqlite_engine) as s:
        after = {t.tag_id: t for t in s.exec(select(Tag))}
    assert after["t7"].name == "国贸旗舰店" and after["t7"].updated_at != before["t7"]
    assert all(after[t].updated_at == before[t] for t in before if t != "t7")


def test_a_tag_missing_from_the_library_is_marked_deleted(sqlite_engine):
    with Session(sqlite_engine) as s:
        apply_tag_library(s, library({"t1": "店1", "t2": "店2"}))
        s.commit()
    with Session(sqlite_engine) as s:
        apply_tag_library(s, library({"t1": "店1"}))
        s.commit()
    with Session(sqlite_engine) as s:
        assert {t.tag_id: t.deleted for t in s.exec(select(Tag))} == {"t1": False, "t2": True}
