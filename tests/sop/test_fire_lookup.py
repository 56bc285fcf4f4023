"""A mass send whose answer was lost: the sender looks for the task in WeCom before sending again,
so a group never gets two tasks for one post, and a batch is never taken for another batch of the
same owner with the same content (their groups would never get theirs).

A stand-in WeCom with get_groupmsg_list_v2 (paged, 2 a page) and get_groupmsg_send_result."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from scrm.sop import jobs
from scrm.sop.models import PostStatus, SopPost
from scrm.sop.sender import SopSender
from scrm.wecom.errors import TransportError
from tests.sop.test_fire_batching import NOW, TEMPLATES, TZ, seed, statuses


class WeCom:
    """Tasks by msgid; ``lose_answers``: the next calls create the task but raise a timeout, and
    the task shows in the listing only from ``visible_after`` (WeCom wrote it late)."""

    def __init__(self, clock):
        self.clock = clock
        self.tasks: dict[str, dict] = {}
        self.lose_answers = 0
        self.late = dt.timedelta(0)

    def add_msg_template(self, body: dict) -> dict:
        msgid = f"msg{len(self.tasks) + 1}"
        self.tasks[msgid] = {"body": body, "created": self.clock(), "visible": self.clock() + self.late}
        if self.lose_answers:
            self.lose_answers -= 1
            raise TransportError("read timeout", path="externalcontact/add_msg_template")
        return {"msgid": msgid, "fail_list": []}

    def get_groupmsg_list_v2(self, *, creator: str, start_time: int, end_time: int, cursor: str = "",
                             **_: object) -> dict:
        now = self.clock()
        items = [{"msgid": m, "creator": creator, "text": t["body"].get("text"),
                  "attachments": t["body"].get("attachments") or []}
                 for m, t in self.tasks.items() if t["body"]["sender"] == creator and t["visible"] <= now
                 and start_time <= t["created"].timestamp() <= end_time]
        at = int(cursor or 0)
        return {"group_msg_list": items[at:at + 2], "next_cursor": str(at + 2) if at + 2 < len(items) else ""}

    def get_groupmsg_send_result(self, msgid: str, userid: str, cursor: str = "") -> dict:
        return {"send_list": [{"chat_id": c, "userid": userid, "status": 0}
                              for c in self.tasks[msgid]["body"]["chat_id_list"]], "next_cursor": ""}

    def chats_with_tasks(self) -> list[str]:
        return [c for t in self.tasks.values() for c in t["body"]["chat_id_list"]]


def fire_and_send(engine, sender, now) -> None:
    queued: list[list[int]] = []
    jobs.fire(engine, queued.append, now=now)
    for job in queued:
        sender.send(job)


def test_a_task_wecom_wrote_late_is_found_at_the_retry_not_sent_again(engine):
    """The call timed out, the task was not listed yet (retry later, scheduled 2 minutes on); at the
    retry it is listed: the posts are recorded sent with its msgid and no second task is made.
    Mutation tried: looking since min(scheduled_for) (the old lookup: a retry moved it past the
    first attempt) -> the task is not seen, a second one is created."""
    seed(engine, owners=1, per_owner=4)
    clock = {"now": NOW}
    wecom = WeCom(lambda: clock["now"])
    sender = SopSender(engine, wecom, lambda: TEMPLATES, tz=TZ, clock=lambda: clock["now"])
    wecom.lose_answers, wecom.late = 1, dt.timedelta(seconds=30)
    fire_and_send(engine, sender, clock["now"])
    assert statuses(engine) == {PostStatus.planned: 4} and len(wecom.tasks) == 1
    clock["now"] = NOW + dt.timedelta(minutes=3)
    fire_and_send(engine, sender, clock["now"])
    assert len(wecom.tasks) == 1 and sorted(wecom.chats_with_tasks()) == [f"wr00-{g:03d}" for g in range(4)]
    c = SopPost.__table__.c
    with engine.connect() as conn:
        assert {(r.status, r.msgid) for r in conn.execute(select(c.status, c.msgid))} == {(PostStatus.sent, "msg1")}


def test_another_batch_with_the_same_content_is_not_taken_for_this_one(engine):
    """The owner's earlier tasks with the same text (other groups, several pages of the listing)
    are not this batch: its groups still get their task, once.
    Mutation tried: matching on content alone (no look at the task's chats) -> the batch is
    recorded sent with another task's msgid and its groups never get one."""
    seed(engine, owners=1, per_owner=3)
    clock = {"now": NOW}
    wecom = WeCom(lambda: clock["now"])
    for k in range(5):  # earlier batches of the same owner and text (yesterday's groups, say)
        wecom.add_msg_template({"chat_type": "group", "sender": "bot0", "chat_id_list": [f"wrold{k}"],
                                "text": {"content": "早上好，今天第二杯半价"}, "attachments": []})
    sender = SopSender(engine, wecom, lambda: TEMPLATES, tz=TZ, clock=lambda: clock["now"])
    c = SopPost.__table__.c
    with engine.begin() as conn:  # a retried post: attempts > 1 makes the sender look first
        conn.execute(SopPost.__table__.update().values(attempts=1))
    fire_and_send(engine, sender, clock["now"])
    assert statuses(engine) == {PostStatus.sent: 3}
    assert sorted(wecom.chats_with_tasks()) == sorted([f"wrold{k}" for k in range(5)] +
                                                      [f"wr00-{g:03d}" for g in range(3)])
    with engine.connect() as conn:
        assert {r.msgid for r in conn.execute(select(c.msgid))} == {"msg6"}


def test_a_found_task_missing_some_groups_sends_none_of_them_twice(engine):
    """The lost answer's task holds only some of the batch's groups (WeCom refused the others):
    found at the retry, those are sent, the others failed, and no group gets a second task."""
    seed(engine, owners=1, per_owner=3)
    clock = {"now": NOW}
    wecom = WeCom(lambda: clock["now"])
    sender = SopSender(engine, wecom, lambda: TEMPLATES, tz=TZ, clock=lambda: clock["now"])
    real_add = wecom.add_msg_template

    def drops_one(body):
        return real_add({**body, "chat_id_list": body["chat_id_list"][:2]})

    wecom.add_msg_template = drops_one  # type: ignore[method-assign]
    wecom.lose_answers, wecom.late = 1, dt.timedelta(seconds=30)
    fire_and_send(engine, sender, clock["now"])
    clock["now"] = NOW + dt.timedelta(minutes=3)
    fire_and_send(engine, sender, clock["now"])
    assert len(wecom.tasks) == 1
    assert statuses(engine) == {PostStatus.sent: 2, PostStatus.failed: 1}
