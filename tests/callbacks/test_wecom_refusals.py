"""WeCom refusals that are answers, not outages, end the job: no retry, no traceback, the row done
with what happened in ``last_error``.

- 40050 (chat not found) / 49008 (dismissed) on groupchat/get: the group is marked gone /
  dismissed, as a full sync would.
- 40096 (invalid external_userid) on externalcontact/get: what the add/edit event itself carries
  (UserID, ExternalUserID, State) is stored.

Runs through the pipeline harness: the sandbox posts signed callbacks to the receiver, a dramatiq
worker on real Redis applies them.
"""

from __future__ import annotations

import logging
import time

import pytest
from sqlmodel import Session, select

from scrm.callbacks import dispatch
from scrm.callbacks.models import CallbackInbox, InboxStatus
from scrm.contacts.models import Customer, FollowRelation
from scrm.groups.models import CustomerGroup, GroupStatus
from scrm.wecom.events import render_event
from tests.pipeline_harness import CORP, harness
from tests.recording_log import RecordingLog

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


@pytest.fixture
def h(engine, redis_url, monkeypatch):
    with harness(engine, redis_url) as h:
        h.sandbox.add_member("zhangsan", "张三")
        h.log = RecordingLog()
        monkeypatch.setattr(dispatch, "log", h.log)
        h.start_worker()
        yield h


def rows(engine, model, *where):
    with Session(engine) as s:
        return list(s.exec(select(model).where(*where)))


def count_calls(h, name):
    """Count the worker's calls of one WeComClient method (a retry would call it again)."""
    calls = []
    real = getattr(h.client, name)

    def counted(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    setattr(h.client, name, counted)
    return calls


def chat_update(chat_id, **fields):
    return render_event(CORP, "change_external_chat", "update", int(time.time()), ChatId=chat_id,
                        UpdateDetail="add_member", **fields)


def stored_group(h, name="三里屯店福利群1"):
    """A group scrm has stored as active (through a member-joined callback)."""
    group = h.sandbox.create_group("zhangsan", name)
    h.sandbox.invite_to_group(group.chat_id, name="李先生")
    h.drain()
    [g] = rows(h.engine, CustomerGroup, CustomerGroup.chat_id == group.chat_id)
    assert g.status == GroupStatus.active
    return group.chat_id


def test_40050_marks_the_group_gone_and_ends_the_job_after_one_attempt(h, caplog):
    """Tried: the old worker (40050 raised) retried it with a traceback: the drain timed out on
    the retries and attempts grew; with mark_missing not marking, the status stayed active."""
    chat_id = stored_group(h)
    with h.sandbox.lock:
        del h.sandbox.groups[chat_id]  # WeCom no longer has it; no callback said so
    calls = count_calls(h, "get_group_chat")
    caplog.set_level(logging.WARNING)
    h.sandbox.poster.post(chat_update(chat_id, LastMemVer="v1", CurMemVer="v2"))
    h.drain()

    [g] = rows(h.engine, CustomerGroup, CustomerGroup.chat_id == chat_id)
    assert g.status == GroupStatus.gone
    [row] = rows(h.engine, CallbackInbox, CallbackInbox.id == max(r.id for r in rows(h.engine, CallbackInbox)))
    assert (row.status, row.attempts) == (InboxStatus.done, 1)
    assert "40050" in row.last_error and "marked gone" in row.last_error
    assert calls == [(chat_id,)]  # asked once: no retry was queued
    # One warning naming corp, chat and inbox row; no traceback from the worker.
    [(event, fields)] = h.log.at("warning")
    assert event == "callback_ended_by_wecom"
    assert (fields["corp_id"], fields["chat_id"], fields["inbox_id"], fields["errcode"]) == (
        CORP, chat_id, row.id, 40050)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_40050_for_a_chat_scrm_never_stored_ends_the_job_and_stores_nothing(h):
    """The reproduction from the issue: a group-change event for a chat the sandbox does not know."""
    h.sandbox.poster.post(chat_update("wrNoSuchChat0001"))
    h.drain()
    [row] = rows(h.engine, CallbackInbox)
    assert (row.status, row.attempts) == (InboxStatus.done, 1)
    assert "40050" in row.last_error and "not stored" in row.last_error
    assert rows(h.engine, CustomerGroup) == []


def test_49008_marks_the_group_dismissed_and_ends_the_job(h):
    chat_id = stored_group(h, "望京店福利群1")
    with h.sandbox.lock:
        h.sandbox.groups[chat_id].dismissed = True  # dismissed; the dismiss callback is late
    h.sandbox.poster.post(chat_update(chat_id))
    h.drain()
    [g] = rows(h.engine, CustomerGroup)
    assert g.status == GroupStatus.dismissed
    [row] = rows(h.engine, CallbackInbox, CallbackInbox.id == max(r.id for r in rows(h.engine, CallbackInbox)))
    assert (row.status, row.attempts) == (InboxStatus.done, 1) and "49008" in row.last_error


def test_40096_stores_the_follow_relation_and_state_the_event_carries(h):
    """Tried: the old worker (40096 -> nothing stored, last_error NULL) fails every assertion
    here; dropping the note keeps the relation but fails on last_error."""
    way = h.client.add_contact_way(type=1, scene=2, state="st:BJ001:1", user=["zhangsan"])
    h.sandbox.inject_fault("externalcontact/get", 40096, times=1)
    scan = h.sandbox.scan_contact_way(way["config_id"], name="王小姐", welcome_code=False)
    h.drain()
    eid = scan["external_userid"]

    [rel] = rows(h.engine, FollowRelation, FollowRelation.external_userid == eid)
    assert (rel.userid, rel.state, rel.status) == ("zhangsan", "st:BJ001:1", "active")
    assert rel.added_at is not None
    [cust] = rows(h.engine, Customer, Customer.external_userid == eid)
    assert cust.status == "active"  # its name is not known: WeCom would not say
    [row] = rows(h.engine, CallbackInbox)
    assert (row.status, row.attempts) == (InboxStatus.done, 1)
    assert "40096" in row.last_error and "zhangsan" in row.last_error and eid in row.last_error
    [(event, fields)] = h.log.at("warning")
    assert (event, fields["external_userid"], fields["userid"], fields["inbox_id"]) == (
        "callback_ended_by_wecom", eid, "zhangsan", row.id)


def test_40096_on_an_edit_keeps_what_was_stored(h):
    """An edit event WeCom then refuses to describe: the stored relation (remark, state, time)
    is kept, not blanked."""
    way = h.client.add_contact_way(type=1, scene=2, state="st:SH001:2", user=["zhangsan"])
    scan = h.sandbox.scan_contact_way(way["config_id"], name="赵女士", welcome_code=False)
    eid = scan["external_userid"]
    h.sandbox.employee_edits_customer("zhangsan", eid, remark="老顾客")
    h.drain()
    [before] = rows(h.engine, FollowRelation)
    assert before.remark == "老顾客"
    h.sandbox.inject_fault("externalcontact/get", 40096, times=1)
    # Another edit a little later (its own CreateTime: the same plaintext would be a WeCom retry).
    h.sandbox.poster.post(render_event(CORP, "change_external_contact", "edit_external_contact",
                                       int(time.time()) + 5, UserID="zhangsan", ExternalUserID=eid))
    h.drain()
    [after] = rows(h.engine, FollowRelation)
    assert (after.remark, after.state, after.added_at, after.status) == (
        "老顾客", "st:SH001:2", before.added_at, "active")
    last = max(rows(h.engine, CallbackInbox), key=lambda r: r.id)
    assert last.status == InboxStatus.done and "40096" in last.last_error
