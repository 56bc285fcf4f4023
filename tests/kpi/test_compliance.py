"""Owner compliance (scrm.kpi.compliance.owner_compliance) on SQLite and PostgreSQL.

The corp: owner_a 张店长 has chat_a and chat_a2 (store S1) and chat_n (no store); owner_b 李店长
has chat_b (store S2). Posts are written as the planner and the sender leave them (an owner task
``due`` with its content fixed; a mass send ``sent`` with WeCom's msgid), then moved on by the real
ledger functions: the owner's claim/confirm and lapsed claims (scrm.sop.owner_posts), the
scheduler's expiry (scrm.sop.service.expire_overdue), and the mass-send results poll
(SopSender.poll_results, against a stand-in WeCom).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session

from scrm.contacts import service as contacts
from scrm.groups import service as groups
from scrm.kpi.compliance import owner_compliance
from scrm.kpi.report import KpiFilter, OwnerCompliance
from scrm.sop import owner_posts
from scrm.sop.models import PostStatus, SopPost
from scrm.sop.sender import SopSender
from scrm.sop.service import expire_overdue
from scrm.stores.csvio import StoreRow, import_stores
from scrm.stores.groups import assign_groups

TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 24)
RANGE = KpiFilter(DAY, DAY)
CONTENT = {"text": {"content": "午餐套餐来了"}, "attachments": []}


def local(hour: int, minute: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=TZ).astimezone(dt.UTC)


AT = local(12)  # the posts' planned time
WINDOW_END = local(15)
EVENING = local(20)  # when the manager looks: every window of the day has ended


_owner_compliance = owner_compliance


@pytest.fixture(autouse=True, params=["raw", "rollups"])
def path(request, monkeypatch):
    """Every test runs twice: straight from the ledger, and from the day rollups rebuilt at the
    query's ``now`` (scrm.kpi.funnel_rollups): the two must agree (a group or template filter
    always reads the ledger). Mutation tried on the rollup path: ``store_code or ''`` dropped on
    the way back (the no-store row sorted and compared as ''): the S1/none test failed."""
    from scrm.kpi.funnel_rollups import rebuild_funnel_rollups

    def query(engine, f, *, tz, now=None, **kw):
        if request.param == "raw":
            return _owner_compliance(engine, f, tz=tz, now=now, use_rollups=False, **kw)
        rebuild_funnel_rollups(engine, tz=tz, now=now)
        return _owner_compliance(engine, f, tz=tz, use_rollups=True, **kw)

    monkeypatch.setitem(globals(), "owner_compliance", query)
    return request.param


@pytest.fixture
def corp(engine):
    with Session(engine) as s:
        contacts.upsert_employee(s, "owner_a", "张店长")
        contacts.upsert_employee(s, "owner_b", "李店长")
        for chat_id, owner in [("chat_a", "owner_a"), ("chat_a2", "owner_a"), ("chat_n", "owner_a"),
                               ("chat_b", "owner_b")]:
            groups.apply_group_chat(s, {"chat_id": chat_id, "name": chat_id, "owner": owner,
                                        "member_list": [{"userid": owner, "type": 1}]})
        s.commit()
    import_stores(engine, [StoreRow(code="S1", name="南京西路店"), StoreRow(code="S2", name="国贸店")])
    assign_groups(engine, "S1", ["chat_a", "chat_a2"])
    assign_groups(engine, "S2", ["chat_b"])
    return engine


def owner_task(engine, chat_id: str, sender: str, slot: int, *, day: dt.date = DAY, at: dt.datetime = AT,
               window_ends_at: dt.datetime = WINDOW_END, channel: str = "owner_task",
               template_id: str = "lunch") -> int:
    """An owner task as the scheduler leaves it once its time came: due, content fixed."""
    with Session(engine) as s:
        post = SopPost(day=day, chat_id=chat_id, slot=slot, template_id=template_id, step_key=str(slot),
                       template_digest="d", channel=channel, sender=sender, scheduled_for=at,
                       window_ends_at=window_ends_at, status=PostStatus.due, content=CONTENT)
        s.add(post)
        s.commit()
        assert post.id is not None
        return post.id


def mass_send(engine, chat_id: str, sender: str, slot: int, msgid: str) -> int:
    """A mass send as the sender leaves it: the WeCom task created, waiting for the owner."""
    with Session(engine) as s:
        post = SopPost(day=DAY, chat_id=chat_id, slot=slot, mass_seq=1, template_id="breakfast", step_key="1",
                       template_digest="d", channel="mass_send", sender=sender, scheduled_for=AT,
                       window_ends_at=WINDOW_END, status=PostStatus.sent, msgid=msgid, content=CONTENT,
                       sent_by=sender, sent_at=AT + dt.timedelta(minutes=1))
        s.add(post)
        s.commit()
        assert post.id is not None
        return post.id


class GroupMsgResults:
    """WeCom's get_groupmsg_task / get_groupmsg_send_result: per msgid, the owner's confirmation
    and each group's result (1 delivered, 3 over the group's quota) with its send time."""

    def __init__(self):
        self.results: dict[str, tuple[str, list[dict]]] = {}

    def owner_confirmed(self, msgid: str, owner: str, chat_id: str, status: int, at: dt.datetime) -> None:
        self.results[msgid] = (owner, [{"chat_id": chat_id, "status": status, "send_time": int(at.timestamp())}])

    def get_groupmsg_task(self, msgid, cursor=""):
        owner = self.results.get(msgid, ("", []))[0]
        return {"task_list": [{"userid": owner, "status": 2}] if owner else []}

    def get_groupmsg_send_result(self, msgid, userid, cursor=""):
        return {"send_list": self.results[msgid][1]}


def poll(engine, wecom: GroupMsgResults, now: dt.datetime) -> dict[str, int]:
    return SopSender(engine, wecom, lambda: {}, tz=TZ, clock=lambda: now).poll_results()


def send_from_toolbar(engine, post_id: int, owner: str, chat_id: str, at: dt.datetime) -> None:
    owner_posts.claim(engine, post_id, owner, chat_id, now=at)
    owner_posts.confirm(engine, post_id, owner, now=at + dt.timedelta(minutes=1))


def figures(engine, f: KpiFilter = RANGE, now: dt.datetime = EVENING) -> dict[tuple[str | None, str], tuple]:
    rows = owner_compliance(engine, f, tz=TZ, now=now)
    return {(r.store_code, r.owner_userid): (r.due, r.sent_on_time, r.expired, r.over_quota, r.unconfirmed)
            for r in rows}


def test_a_post_sent_within_its_window_is_on_time_one_sent_after_is_not(corp):
    """Mutations tried: owner tasks on time without ``sent_at <= window_ends_at`` (the late one
    counted), and mass sends on time on ``sent_at`` (task created) instead of ``confirmed_at`` (the
    owner's late confirmation counted). Each failed."""
    in_time = owner_task(corp, "chat_a", "owner_a", 1)
    send_from_toolbar(corp, in_time, "owner_a", "chat_a", AT + dt.timedelta(minutes=5))
    # Claimed near the end of the window; the page died; the owner says after the window that it went.
    late = owner_task(corp, "chat_a", "owner_a", 2)
    owner_posts.claim(corp, late, "owner_a", "chat_a", now=WINDOW_END - dt.timedelta(minutes=2))
    assert owner_posts.lapse_claims(corp, WINDOW_END + dt.timedelta(minutes=4)) == [late]
    owner_posts.confirm(corp, late, "owner_a", now=WINDOW_END + dt.timedelta(minutes=30))
    # Mass sends: owner_a confirms chat_a2's in 群发助手 at 13:00, owner_b confirms chat_b's at 16:00.
    wecom = GroupMsgResults()
    mass_send(corp, "chat_a2", "owner_a", 1, "msg_a2")
    mass_send(corp, "chat_b", "owner_b", 1, "msg_b")
    wecom.owner_confirmed("msg_a2", "owner_a", "chat_a2", 1, local(13))
    wecom.owner_confirmed("msg_b", "owner_b", "chat_b", 1, local(16))
    assert poll(corp, wecom, local(17)) == {"confirmed": 2}

    assert figures(corp) == {("S1", "owner_a"): (3, 2, 0, 0, 0), ("S2", "owner_b"): (1, 0, 0, 0, 0)}
    rows = owner_compliance(corp, RANGE, tz=TZ, now=EVENING)
    assert rows[0] == OwnerCompliance("owner_a", "张店长", "S1", 3, 2, 0, 0, 0)
    assert rows[0].on_time_rate == pytest.approx(2 / 3) and rows[1].on_time_rate == 0


def test_expired_over_quota_and_unconfirmed_are_counted(corp):
    """Mutations tried: ``unconfirmed`` without the mass sends the owner never confirmed (chat_b's
    stayed uncounted), and without the window condition on them (counted at 14:00 already);
    ``expired`` or ``over_quota`` counting ``failed`` too (the failed posts counted). Each failed."""
    owner_task(corp, "chat_a", "owner_a", 1)  # never sent
    assert expire_overdue(corp, WINDOW_END + dt.timedelta(minutes=1)) == 1
    lapsed = owner_task(corp, "chat_a", "owner_a", 2)
    owner_posts.claim(corp, lapsed, "owner_a", "chat_a", now=AT + dt.timedelta(minutes=10))
    assert owner_posts.lapse_claims(corp, AT + dt.timedelta(minutes=20)) == [lapsed]
    failed = [owner_task(corp, "chat_a2", "owner_a", 2), owner_task(corp, "chat_b", "owner_b", 2)]
    with Session(corp) as s:  # the content could not be rendered: the sender marks them failed
        for post_id in failed:
            s.get(SopPost, post_id).status = PostStatus.failed
        s.commit()
    wecom = GroupMsgResults()
    mass_send(corp, "chat_a2", "owner_a", 1, "msg_a2")
    mass_send(corp, "chat_b", "owner_b", 1, "msg_b")  # owner_b never confirms it
    wecom.owner_confirmed("msg_a2", "owner_a", "chat_a2", 3, local(13))  # the group had its mass message today
    assert poll(corp, wecom, local(17)) == {"over_quota": 1}

    assert figures(corp) == {("S1", "owner_a"): (4, 0, 1, 1, 1), ("S2", "owner_b"): (2, 0, 0, 0, 1)}
    # At 14:00 chat_b's mass send can still be confirmed: due, not yet unconfirmed.
    assert figures(corp, now=local(14))[("S2", "owner_b")] == (2, 0, 0, 0, 0)


def test_only_owner_posts_whose_time_has_come_in_the_range_are_due(corp):
    """Mutations tried: without ``scheduled_for <= now`` (the 18:00 post was due at 14:00), without
    the channel condition (the robot's post counted), the range ending a day later (the 25th's
    post counted). Each failed."""
    owner_task(corp, "chat_a", "owner_a", 1)
    owner_task(corp, "chat_a", "owner_a", 2, at=local(18), window_ends_at=local(21))
    owner_task(corp, "chat_a2", "owner_a", 1, channel="group_robot")
    for day in (DAY - dt.timedelta(days=1), DAY + dt.timedelta(days=1)):
        owner_task(corp, "chat_a2", "owner_a", 1, day=day, at=local(12, day=day), window_ends_at=local(15, day=day))

    assert figures(corp, now=local(14)) == {("S1", "owner_a"): (1, 0, 0, 0, 0)}
    assert figures(corp, now=EVENING) == {("S1", "owner_a"): (2, 0, 0, 0, 0)}
    two_days = KpiFilter(DAY - dt.timedelta(days=1), DAY)
    later = local(12, day=DAY + dt.timedelta(days=2))
    assert figures(corp, two_days, now=later) == {("S1", "owner_a"): (3, 0, 0, 0, 0)}
    assert owner_compliance(corp, KpiFilter(dt.date(2026, 11, 1), dt.date(2026, 11, 2)), tz=TZ, now=EVENING) == []


def test_a_clerk_scoped_to_s1_sees_only_s1_and_filters_narrow(corp):
    """Mutation tried: the query without the ``f.stores`` condition: owner_b's S2 row and the
    storeless chat_n's row were shown to the S1 clerk; failed."""
    owner_task(corp, "chat_a", "owner_a", 1)
    owner_task(corp, "chat_a2", "owner_a", 1, template_id="dinner")
    owner_task(corp, "chat_n", "owner_a", 1)
    owner_task(corp, "chat_b", "owner_b", 1)

    everything = owner_compliance(corp, RANGE, tz=TZ, now=EVENING)
    assert [(r.store_code, r.owner_userid, r.owner_name, r.due) for r in everything] == [
        ("S1", "owner_a", "张店长", 2), ("S2", "owner_b", "李店长", 1), (None, "owner_a", "张店长", 1)]
    s1 = KpiFilter(DAY, DAY, stores=frozenset({"S1"}))
    assert figures(corp, s1) == {("S1", "owner_a"): (2, 0, 0, 0, 0)}
    assert figures(corp, KpiFilter(DAY, DAY, stores=frozenset())) == {}
    assert figures(corp, KpiFilter(DAY, DAY, stores=frozenset({"S1"}), chat_id="chat_b")) == {}
    assert figures(corp, KpiFilter(DAY, DAY, chat_id="chat_a2")) == {("S1", "owner_a"): (1, 0, 0, 0, 0)}
    assert figures(corp, KpiFilter(DAY, DAY, template_id="dinner")) == {("S1", "owner_a"): (1, 0, 0, 0, 0)}
