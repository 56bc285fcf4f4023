"""What applying one event costs the database, as bench/apply.py's worker pays it: statements and
pool checkouts (each checkout is one pool_pre_ping round trip in production). Before issue 15's
work a contact add with a welcome cost 12 statements over 4 checkouts and a group join 3
checkouts; the behaviour around the counts (welcome sent once and recorded, customer active, a
stored employee's name kept, the join written) is asserted with them.

Mutations checked (each failed here, then restored):
- ``_refresh_status`` ignoring ``known_active`` (its SELECT back): contact add 10 statements > 9;
- ``record_welcome`` reading the row before its UPDATE (a SELECT back): 10 statements > 9;
- ``upsert_follow`` calling ``upsert_employee`` again (SELECT + INSERT of an employee not yet
  stored): 10 statements > 9 in the second test;
- the welcome claimed on a connection of its own instead of the one that read the inbox row: 4 checkouts > 3;
- the group's member version read on a connection of its own in ``_fetch``: 3 checkouts > 2.
"""

from __future__ import annotations

import time

from sqlalchemy import event
from sqlmodel import Session, select

from scrm.callbacks.dispatch import Processor
from scrm.callbacks.models import CallbackInbox, InboxStatus
from scrm.contacts.models import Customer, CustomerStatus, Employee, FollowRelation, FollowStatus, WelcomeSend
from scrm.db import from_unix
from scrm.groups.models import GroupMember
from scrm.wecom.events import CHAT, CONTACT, dedup_key, render_event

VERBS = ("SELECT", "INSERT", "UPDATE", "DELETE")


class Counted:
    """SQL statements and pool checkouts an engine made while counting."""

    def __init__(self, engine):
        self.engine, self.statements, self.checkouts = engine, [], 0

    def _stmt(self, conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(VERBS):
            self.statements.append(statement)

    def _checkout(self, *args):
        self.checkouts += 1

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._stmt)
        event.listen(self.engine.pool, "checkout", self._checkout)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._stmt)
        event.remove(self.engine.pool, "checkout", self._checkout)


class WeCom:
    """WeCom's answers for one contact and one group; records the welcomes sent."""

    def __init__(self, t0: int):
        self.t0, self.welcomes, self.members, self.version = t0, [], ["zhangsan", "wm_old"], "v1"

    def send_welcome_msg(self, code, *, text, attachments=None):
        self.welcomes.append(code)

    def get_external_contact(self, external_userid):
        return {"external_contact": {"external_userid": external_userid, "name": "王女士", "type": 2},
                "follow_user": [{"userid": "zhangsan", "createtime": self.t0, "state": "poster",
                                 "remark_mobiles": []}]}

    def get_group_chat(self, chat_id):
        return {"chat_id": chat_id, "name": "国贸店福利群", "owner": "zhangsan", "create_time": self.t0,
                "member_version": self.version,
                "member_list": [{"userid": m, "type": 1 if m == "zhangsan" else 2, "join_time": self.t0,
                                 "join_scene": 3} for m in self.members]}


def store(engine, xml: str) -> int:
    with Session(engine) as s:
        row = CallbackInbox(dedup_key=dedup_key(xml), corp_id="wwcorp", event=CONTACT if CONTACT in xml else CHAT,
                            change_type="x", plaintext=xml)
        s.add(row)
        s.commit()
        assert row.id is not None
        return row.id


def contact_add(engine, t0: int, external_userid: str) -> int:
    return store(engine, render_event("wwcorp", CONTACT, "add_external_contact", t0, UserID="zhangsan",
                                      ExternalUserID=external_userid, State="poster",
                                      WelcomeCode=f"wc-{external_userid}"))


def test_a_contact_add_with_a_welcome_costs_at_most_9_statements_over_3_checkouts(engine):
    t0 = int(time.time())
    wecom = WeCom(t0)
    proc = Processor(engine, wecom, welcome_text="欢迎")
    with Session(engine) as s:
        s.add(Employee(userid="zhangsan", name="张店长"))
        s.commit()
    first = contact_add(engine, t0, "wm1")
    with Counted(engine) as c:
        proc.process(first)
    assert len(c.statements) <= 9, "\n".join(c.statements)
    assert c.checkouts <= 3
    proc.process(first)  # redelivered: nothing twice
    assert wecom.welcomes == ["wc-wm1"]
    with Session(engine) as s:
        assert s.get(CallbackInbox, first).status == InboxStatus.done
        [welcome] = s.exec(select(WelcomeSend)).all()
        assert (welcome.inbox_id, welcome.outcome, welcome.errcode) == (first, "sent", None)
        cust = s.get(Customer, "wm1")
        assert (cust.name, cust.status) == ("王女士", CustomerStatus.active)
        [rel] = s.exec(select(FollowRelation)).all()
        assert (rel.userid, rel.state, rel.status) == ("zhangsan", "poster", FollowStatus.active)
        assert s.get(Employee, "zhangsan").name == "张店长", "a stored employee's name is kept"


def test_a_contact_add_for_an_employee_not_yet_stored_stores_the_employee(engine):
    t0 = int(time.time())
    proc = Processor(engine, WeCom(t0), welcome_text="欢迎")
    first = contact_add(engine, t0, "wm1")
    with Counted(engine) as c:
        proc.process(first)
    assert len(c.statements) <= 9, "\n".join(c.statements)  # the employee in one INSERT, not SELECT + INSERT
    proc.process(contact_add(engine, t0 + 1, "wm2"))
    with Session(engine) as s:
        [emp] = s.exec(select(Employee)).all()
        assert (emp.userid, emp.name, emp.active, emp.is_bot) == ("zhangsan", "", True, False)
        assert emp.created_at is not None and emp.updated_at is not None
        assert {r.external_userid for r in s.exec(select(FollowRelation))} == {"wm1", "wm2"}


def test_a_removed_relation_stays_lost_when_an_older_add_arrives(engine):
    """The shortcut past the status query applies only to an active relation: an add older than
    the stored removal leaves the customer lost (the query still decides)."""
    t0 = int(time.time())
    proc = Processor(engine, WeCom(t0 - 100), welcome_text="欢迎")
    with Session(engine) as s:
        s.add(Customer(external_userid="wm1", status=CustomerStatus.lost))
        s.add(FollowRelation(userid="zhangsan", external_userid="wm1", status=FollowStatus.deleted_by_customer,
                             removed_at=from_unix(t0), removed_by="customer"))
        s.commit()
    inbox_id = store(engine, render_event("wwcorp", CONTACT, "edit_external_contact", t0 - 50, UserID="zhangsan",
                                          ExternalUserID="wm1"))
    proc.process(inbox_id)
    with Session(engine) as s:
        assert s.get(Customer, "wm1").status == CustomerStatus.lost
        [rel] = s.exec(select(FollowRelation)).all()
        assert rel.status == FollowStatus.deleted_by_customer


def test_a_group_join_reads_the_inbox_row_and_the_group_version_in_one_checkout(engine):
    t0 = int(time.time())
    wecom = WeCom(t0)
    proc = Processor(engine, wecom)
    create = store(engine, render_event("wwcorp", CHAT, "create", t0, ChatId="wr1", CurMemVer="v1"))
    proc.process(create)
    wecom.members.append("wm_new")
    wecom.version = "v2"
    join = store(engine, render_event("wwcorp", CHAT, "update", t0 + 1, ChatId="wr1", UpdateDetail="add_member",
                                      JoinScene=3, MemChangeCnt=1, MemChangeList=["wm_new"], LastMemVer="v1",
                                      CurMemVer="v2"))
    with Counted(engine) as c:
        proc.process(join)
    assert c.checkouts <= 2, "\n".join(c.statements)
    with Session(engine) as s:
        assert "wm_new" in {m.member_id for m in s.exec(select(GroupMember))}
    # The stored version now equals the event's: a redriven copy of the join is "current", not re-fetched.
    again = store(engine, render_event("wwcorp", CHAT, "update", t0 + 2, ChatId="wr1", UpdateDetail="add_member",
                                       JoinScene=3, MemChangeCnt=1, MemChangeList=["wm_new"], LastMemVer="v1",
                                       CurMemVer="v2"))
    wecom.get_group_chat = None  # type: ignore[method-assign]  # a fetch would raise
    with Counted(engine) as c:
        proc.process(again)
    assert c.checkouts <= 2
