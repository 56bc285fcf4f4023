"""End to end through the sandbox with a controllable clock: templates on disk -> plan in the
ledger -> due posts claimed -> mass sends created in WeCom (the sandbox) -> the owner confirms ->
delivery read back. Real Redis broker and worker; SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import textwrap
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select

from scrm.config import SopSettings
from scrm.groups.models import CustomerGroup
from scrm.sop import jobs
from scrm.sop.models import SopPost, TrackedLink
from scrm.sop.sender import SopSender
from scrm.stores.models import Store
from scrm.sync.service import full_sync
from tests.pipeline_harness import harness
from tests.waiting import join_worker
from workers import actors

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 24)  # a Tuesday

BREAKFAST = """\
    id: breakfast
    name: 工作日早餐
    priority: 90
    days: {weekdays: [mon, tue, wed, thu, fri]}
    steps:
      - at: "08:00"
        channel: mass_send
        text: "{{ store.name }}早安！今天 8:00-10:00 拿铁 9.9 元。"
        attachments:
          - link: {title: 早餐券, url: "https://m.example.com/coupon/breakfast"}
"""
LUNCH = """\
    id: lunch
    name: 午餐推荐
    priority: 40
    steps:
      - {at: "12:00", channel: mass_send, text: 午餐套餐上新}
"""
FLASH = """\
    id: flash
    name: 下午秒杀
    priority: 70
    steps:
      - {at: "15:00", channel: owner_task, text: "{{ group.name }} 15:00 秒杀开始"}
"""


def local(hour, minute=0, second=0, day=DAY):
    return dt.datetime.combine(day, dt.time(hour, minute, second), tzinfo=TZ).astimezone(dt.UTC)


def write_templates(folder, **files):
    for name, body in files.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(body), encoding="utf-8")


def posts(engine, *where):
    with Session(engine) as s:
        return list(s.exec(select(SopPost).where(*where).order_by(SopPost.chat_id, SopPost.slot)))


@pytest.fixture
def setup(engine, redis_url, tmp_path):
    clock = {"now": local(6)}
    with harness(engine, redis_url) as h:
        sb = h.sandbox
        sb.clock = lambda: clock["now"].timestamp()  # WeCom and scrm share the test's clock
        sb.add_member("owner_a", "A店店长")
        sb.add_member("owner_b", "B店店长")
        groups = [sb.create_group("owner_a", "A店福利1群"), sb.create_group("owner_a", "A店福利2群"),
                  sb.create_group("owner_b", "B店福利群")]
        full_sync(engine, h.client)
        with Session(engine) as s:
            s.add(Store(code="A", name="南京西路店", city="上海"))
            s.add(Store(code="B", name="国贸店", city="北京"))
            for g, code in zip(groups, "AAB", strict=True):
                row = s.get(CustomerGroup, g.chat_id)
                row.store_code = code
                s.add(row)
            s.commit()
        folder = tmp_path / "sop_templates"
        folder.mkdir()
        write_templates(folder, breakfast=BREAKFAST, lunch=LUNCH, flash=FLASH)
        sop = SopSettings(templates_dir=folder, spread_minutes=20)
        sender = SopSender(engine, h.client, lambda: jobs.load_templates(folder, sop), tz=TZ,
                           link_base="http://scrm", clock=lambda: clock["now"])
        actors.set_sop_sender(sender)
        h.start_worker()
        try:
            yield h, sop, clock, sender, [g.chat_id for g in groups], folder
        finally:
            actors.set_sop_sender(None)


def fire(h, clock):
    counts = jobs.fire(h.engine, lambda ids: actors.send_sop_posts.send(ids), now=clock["now"])
    h.broker.join("sop", timeout=20_000)
    join_worker(h.worker)
    return counts


def test_a_day_of_posts_reaches_the_right_groups_at_the_right_times(setup):
    h, sop, clock, sender, chats, _ = setup
    [today, _tomorrow] = jobs.plan_ahead(h.engine, sop, now=clock["now"])
    assert today.inserted == 6  # 3 groups x (breakfast + flash); lunch loses the one mass send a day
    assert today.plan.dropped_counts[("lunch", "1", "mass_send_quota")] == 3
    planned = posts(h.engine, SopPost.day == DAY)
    assert {(p.template_id, p.channel) for p in planned} == {("breakfast", "mass_send"), ("flash", "owner_task")}
    assert all(local(8) <= p.scheduled_for < local(8, 20) for p in planned if p.template_id == "breakfast")

    clock["now"] = local(7, 59)
    assert fire(h, clock).get("mass_send", 0) == 0
    assert h.sandbox.templates == {}  # nothing sent before its time

    clock["now"] = local(8, 25)
    assert fire(h, clock)["mass_send"] == 3
    tasks = list(h.sandbox.templates.values())
    # The link is tracked per group, so each group's post is its own add_msg_template task.
    assert sorted((t.creator, [r["chat_id"] for r in t.results[t.creator]]) for t in tasks) == sorted(
        [("owner_a", [chats[0]]), ("owner_a", [chats[1]]), ("owner_b", [chats[2]])])
    texts = sorted((t.creator, t.text["content"]) for t in tasks)
    assert texts == [("owner_a", "南京西路店早安！今天 8:00-10:00 拿铁 9.9 元。")] * 2 + [
        ("owner_b", "国贸店早安！今天 8:00-10:00 拿铁 9.9 元。")]
    links = [t.attachments[0]["link"]["url"] for t in tasks]
    assert len(set(links)) == 3 and all(u.startswith("http://scrm/t/") for u in links)
    # A customer taps the card: counted for that group, then on to the real page.
    r = h.web.get(links[0][len("http://scrm"):], follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == "https://m.example.com/coupon/breakfast"
    with Session(h.engine) as s:
        [clicked] = [link for link in s.exec(select(TrackedLink)) if link.clicks]
    assert clicked.clicks == 1 and clicked.template_id == "breakfast" and clicked.day == DAY
    assert h.web.get("/t/nosuchcode", follow_redirects=False).status_code == 404
    sent = posts(h.engine, SopPost.template_id == "breakfast", SopPost.day == DAY)
    assert [(p.status, bool(p.msgid), p.sent_by) for p in sent] == [("sent", True, p.sender) for p in sent]

    # Firing again sends nothing twice.
    clock["now"] = local(8, 40)
    assert fire(h, clock).get("mass_send", 0) == 0
    assert len(h.sandbox.templates) == 3

    # Owner A confirms; B has not yet. Delivery is read back.
    for t in tasks:
        if t.creator == "owner_a":
            h.sandbox.confirm_mass_send(t.msgid)
    assert sender.poll_results() == {"confirmed": 2}
    status = {p.chat_id: p.status for p in posts(h.engine, SopPost.template_id == "breakfast", SopPost.day == DAY)}
    assert status == {chats[0]: "confirmed", chats[1]: "confirmed", chats[2]: "sent"}

    # 15:00: the owner tasks fall due (the owner sends them from the toolbar page).
    clock["now"] = local(15, 21)
    counts = fire(h, clock)
    assert counts["owner_task"] == 3
    assert {p.status for p in posts(h.engine, SopPost.template_id == "flash", SopPost.day == DAY)} == {"due"}
    # Unsent by the end of their window, they expire.
    clock["now"] = local(18, 30)
    assert fire(h, clock)["expired"] == 3


def test_group_over_wecom_quota_is_recorded_as_such_not_retried(setup):
    h, sop, clock, sender, chats, _ = setup
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    clock["now"] = local(8, 25)
    fire(h, clock)
    # B's group already received another mass message today (e.g. from the WeCom admin console).
    h.sandbox.mass_received[(h.sandbox.day(), chats[2])] = 1
    for t in list(h.sandbox.templates.values()):
        h.sandbox.confirm_mass_send(t.msgid)
    assert sender.poll_results() == {"confirmed": 2, "over_quota": 1}
    [b] = posts(h.engine, SopPost.chat_id == chats[2], SopPost.template_id == "breakfast", SopPost.day == DAY)
    assert b.status == "over_quota" and b.errcode == 3
    clock["now"] = local(9, 0)
    fire(h, clock)
    assert len(h.sandbox.templates) == 3  # not sent again
    # The rest of B's day still runs on the other channel.
    assert [p.status for p in posts(h.engine, SopPost.chat_id == chats[2], SopPost.template_id == "flash",
                                    SopPost.day == DAY)] == ["planned"]


def test_same_content_goes_out_in_one_call_per_owner(setup):
    h, sop, clock, sender, chats, _ = setup
    sender.link_base = ""  # untracked links: A's two groups get identical content
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    clock["now"] = local(8, 25)
    fire(h, clock)
    tasks = list(h.sandbox.templates.values())
    assert sorted((t.creator, sorted(r["chat_id"] for r in t.results[t.creator])) for t in tasks) == sorted(
        [("owner_a", sorted(chats[:2])), ("owner_b", [chats[2]])])


def test_template_change_updates_future_posts_and_leaves_sent_ones(setup):
    h, sop, clock, sender, chats, folder = setup
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    clock["now"] = local(8, 25)
    fire(h, clock)
    breakfast = (SopPost.template_id == "breakfast", SopPost.day == DAY)
    before = {p.chat_id: (p.id, p.msgid) for p in posts(h.engine, *breakfast)}
    # The operator moves the flash sale to 16:00 and drops store A from it; breakfast text changes too.
    write_templates(folder, flash=FLASH.replace('"15:00"', '"16:00"').replace(
        "priority: 70", "priority: 70\n    targets: {exclude_stores: [A]}"),
        breakfast=BREAKFAST.replace("早安", "早上好"))
    clock["now"] = local(9, 0)
    [today, _] = jobs.plan_ahead(h.engine, sop, now=clock["now"])
    assert today.removed == 3 and today.inserted == 1
    flash = posts(h.engine, SopPost.template_id == "flash", SopPost.day == DAY)
    assert [(p.chat_id, p.scheduled_for.astimezone(TZ).hour) for p in flash] == [(chats[2], 16)]
    after = {p.chat_id: (p.id, p.msgid) for p in posts(h.engine, *breakfast)}
    assert after == before  # sent posts stay as they were


def test_broken_templates_leave_the_plan_as_it_was(setup):
    h, sop, clock, sender, chats, folder = setup
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    n = len(posts(h.engine))
    (folder / "flash.yaml").write_text("id: flash\nname: [unclosed\n", encoding="utf-8")
    assert jobs.plan_ahead(h.engine, sop, now=clock["now"]) == []
    assert len(posts(h.engine)) == n


def test_rate_limited_send_is_retried_later_in_its_window_and_sent_once(setup):
    h, sop, clock, sender, chats, _ = setup
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    # WeCom answers 45009 to every add_msg_template for a while (past the client's own backoff).
    h.sandbox.inject_fault("externalcontact/add_msg_template", 45009, times=12)
    clock["now"] = local(8, 25)
    fire(h, clock)
    breakfast = posts(h.engine, SopPost.template_id == "breakfast", SopPost.day == DAY)
    assert {p.status for p in breakfast} == {"planned"} and h.sandbox.templates == {}
    assert all(p.error == "errcode 45009" for p in breakfast)
    h.sandbox.faults.clear()
    clock["now"] = local(8, 30)  # the retry time has come
    fire(h, clock)
    assert {p.status for p in posts(h.engine, SopPost.template_id == "breakfast", SopPost.day == DAY)} == {"sent"}
    assert len(h.sandbox.templates) == 3


def test_timeout_after_wecom_created_the_task_does_not_send_twice(setup):
    h, sop, clock, sender, chats, _ = setup
    from scrm.wecom.errors import TransportError

    class LosesAnswers:
        """The request reaches WeCom, the answer is lost (a read timeout)."""

        def __init__(self, client):
            self.client = client

        def add_msg_template(self, payload):
            self.client.add_msg_template(payload)
            raise TransportError("read timeout", path="externalcontact/add_msg_template")

        def __getattr__(self, name):
            return getattr(self.client, name)

    sender.client = LosesAnswers(h.client)
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    clock["now"] = local(8, 25)
    fire(h, clock)
    assert len(h.sandbox.templates) == 3  # one task per group, created once
    breakfast = posts(h.engine, SopPost.template_id == "breakfast", SopPost.day == DAY)
    assert {p.status for p in breakfast} == {"sent"}
    assert {p.msgid for p in breakfast} == set(h.sandbox.templates)  # found in get_groupmsg_list_v2


ROBOT = """\
    id: robot
    name: 机器人推送
    priority: 60
    steps:
      - at: "12:00"
        channel: group_robot
        text: "{{ store.name }} 午间福利"
        attachments:
          - link: {title: 午餐券, url: "https://m.example.com/lunch"}
"""


def give_robot(h, chat_id: str) -> str:
    """A robot added to the group in WeCom, and its webhook key configured in scrm."""
    key = h.sandbox.add_group_robot(chat_id)
    with Session(h.engine) as s:
        g = s.get(CustomerGroup, chat_id)
        g.robot_webhook_key = key
        s.add(g)
        s.commit()
    return key


def test_robot_posts_go_through_the_groups_robot_or_fall_back_to_the_owner(setup):
    h, sop, clock, sender, chats, folder = setup
    write_templates(folder, robot=ROBOT)
    give_robot(h, chats[0])
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    clock["now"] = local(12, 25)
    counts = fire(h, clock)
    assert counts["group_robot"] == 1 and counts["owner_task"] == 2  # no robot in the other two groups
    [message, card] = h.sandbox.robot_messages
    assert message["chat_id"] == chats[0] and message["text"]["content"] == "南京西路店 午间福利"
    assert card["news"]["articles"][0]["url"].startswith("http://scrm/t/")
    robot_posts = {p.chat_id: p for p in posts(h.engine, SopPost.template_id == "robot", SopPost.day == DAY)}
    assert (robot_posts[chats[0]].status, robot_posts[chats[0]].sent_by) == ("sent", "group_robot")
    assert robot_posts[chats[1]].status == robot_posts[chats[2]].status == "due"
    clock["now"] = local(12, 40)
    fire(h, clock)
    assert len(h.sandbox.robot_messages) == 2  # never posted twice


def test_robot_refused_by_rate_limit_is_retried_later_once(setup):
    h, sop, clock, sender, chats, folder = setup
    write_templates(folder, robot=ROBOT)
    key = give_robot(h, chats[0])
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    h.sandbox.robot_message_times[key] = [local(12, 24, 50).timestamp()] * 20  # the robot's 20 this minute
    clock["now"] = local(12, 25)
    fire(h, clock)
    [robot] = posts(h.engine, SopPost.template_id == "robot", SopPost.chat_id == chats[0], SopPost.day == DAY)
    assert robot.status == "planned" and h.sandbox.robot_messages == []
    clock["now"] = local(12, 30)
    fire(h, clock)
    assert len(h.sandbox.robot_messages) == 2
    [robot] = posts(h.engine, SopPost.template_id == "robot", SopPost.chat_id == chats[0], SopPost.day == DAY)
    assert robot.status == "sent"
