"""`scrm sop plan`: the operator's dry run, against groups in a real (SQLite) database."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from scrm.config import reset_settings_cache
from scrm.db import dispose_engines, make_engine, migrate
from scrm.groups.models import CustomerGroup
from scrm.stores.models import Store

BREAKFAST = """\
id: breakfast
name: 工作日早餐
priority: 90
days: {weekdays: [mon, tue, wed, thu, fri]}
steps:
  - {at: "08:00", channel: mass_send, text: "{{ store.name }}早安"}
  - {at: "08:30", channel: owner_task, text: 第二条}
"""
LATE = """\
id: late
name: 夜宵
steps:
  - {at: "22:30", text: 夜宵来了}
"""


def local(hour, minute=0, day=dt.date(2026, 11, 24)):
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=dt.timezone(dt.timedelta(hours=8)))


@pytest.fixture
def clock(monkeypatch):
    """The time `scrm sop plan` plans as of (posts whose window has ended are not planned)."""
    now = {"now": local(0, 0, dt.date(2026, 11, 23))}
    monkeypatch.setattr("scrm.db.utcnow", lambda: now["now"].astimezone(dt.UTC))
    return now


@pytest.fixture
def cli(tmp_path, monkeypatch, clock):
    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    monkeypatch.setenv("SCRM_DATABASE__URL", url)
    monkeypatch.setenv("SCRM_SOP__SPREAD_MINUTES", "0")
    monkeypatch.setenv("COLUMNS", "200")
    reset_settings_cache()
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as s:
        s.add(Store(code="A", name="南京西路店", city="上海"))
        for i in range(3):
            s.add(CustomerGroup(chat_id=f"wr{i}", name=f"A店{i}群", owner_userid="owner_a", store_code="A"))
        s.add(CustomerGroup(chat_id="wrX", name="无主群", owner_userid=None))
        s.commit()
    engine.dispose()
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / "breakfast.yaml").write_text(BREAKFAST, encoding="utf-8")
    from scrm.cli import app

    yield lambda *args: CliRunner().invoke(app, ["sop", *args, "--path", str(folder)]), folder
    dispose_engines()
    reset_settings_cache()


def test_plan_shows_who_gets_what_when_and_what_was_dropped(cli):
    run, folder = cli
    r = run("plan", "--date", "2026-11-24")  # a Tuesday
    assert r.exit_code == 0, r.output
    assert "2026-11-24 (周二): 3 posts planned for 4 groups" in r.output
    # The second step is 30 min after the first: dropped for spacing (60 min by default).
    assert "3 too close to another post" in r.output
    assert "dropped: wr1 breakfast/2 08:30: too close to another post" in r.output
    assert "dropped: wrX breakfast/1 08:00: group has no owner" in r.output
    # A small plan lists every post: time, group, template/step, channel, sending account.
    row = next(line for line in r.output.splitlines() if "A店0群 wr0" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")] == ["08:00:00", "A店0群 wr0", "breakfast/1",
                                                                    "mass_send", "owner_a"]
    saturday = run("plan", "--date", "2026-11-28")
    assert "no template runs on this day" in saturday.output


def test_plan_counts_groups_without_a_store_and_posts_whose_time_has_passed(cli, clock, tmp_path):
    run, folder = cli
    engine = make_engine(f"sqlite:///{tmp_path / 'scrm.db'}")
    with Session(engine) as s:
        s.add(CustomerGroup(chat_id="wrN", name="内测群", owner_userid="owner_a"))  # no store
        s.commit()
    engine.dispose()
    r = run("plan", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")[3:-1]]
            for line in r.output.splitlines() if "breakfast (工作日早餐)" in line}
    # The template prints the store's name (in step 1): none of it for wrN, which has no store.
    assert rows["1"][-2:] == ["3", "1 group has no owner, 1 group has no store"]
    assert rows["2"][-2:] == ["0", "1 group has no owner, 1 group has no store, 3 too close to another post"]
    assert "dropped: wrN breakfast/1 08:00: group has no store" in r.output

    clock["now"] = local(11, 10)  # the 08:00 window closed at 11:00; the 08:30 one is open until 11:30
    r = run("plan", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    assert "2026-11-24 (周二): 3 posts planned for 5 groups" in r.output
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")[3:-1]]
            for line in r.output.splitlines() if "breakfast (工作日早餐)" in line}
    assert rows["1"][-2:] == ["0", "1 group has no owner, 1 group has no store, 3 time already passed"]
    assert rows["2"][-2:] == ["3", "1 group has no owner, 1 group has no store"]
    assert "dropped: wr0 breakfast/1 08:00: time already passed" in r.output


def test_plan_explains_one_group_and_refuses_broken_templates(cli):
    run, folder = cli
    (folder / "late.yaml").write_text(LATE, encoding="utf-8")
    r = run("plan", "--date", "2026-11-24", "--group", "wr1")  # a step at 22:30 is in quiet hours
    assert r.exit_code == 2 and "late.yaml:" in r.output and "quiet" in r.output
    (folder / "late.yaml").write_text("id: late\nname: [oops\n", encoding="utf-8")
    r = run("plan", "--date", "2026-11-24")
    assert r.exit_code == 2 and "late.yaml:" in r.output and "fix them first" in r.output
    (folder / "late.yaml").unlink()
    r = run("plan", "--date", "2026-11-24", "--group", "wr1")
    assert r.exit_code == 0
    assert "A店1群 wr1" in r.output and "A店0群 wr0" not in r.output
    assert "dropped: wr1 breakfast/2 08:30: too close to another post" in r.output
    assert "dropped: wr0" not in r.output
    r = run("plan", "--date", "2026-11-24", "--group", "nope")
    assert r.exit_code == 2 and "unknown chat id" in r.output
    r = run("plan", "--date", "24/11/2026")
    assert r.exit_code == 2 and "is not a date" in r.output


def test_budget_shows_used_planned_left_by_channel_and_a_group_over_wecom_quota(cli, tmp_path):
    import datetime as dt

    from scrm.cli import app
    from scrm.sop.models import SopPost

    def run(*args):
        return CliRunner().invoke(app, ["sop", *args])

    engine = make_engine(f"sqlite:///{tmp_path / 'scrm.db'}")
    at = dt.datetime(2026, 11, 24, 0, 0, tzinfo=dt.UTC)
    base = dict(day=dt.date(2026, 11, 24), template_digest="d", sender="owner_a", scheduled_for=at,
                window_ends_at=at + dt.timedelta(hours=3), step_key="1")
    with Session(engine) as s:
        s.add(SopPost(chat_id="wr0", slot=1, mass_seq=1, template_id="breakfast", channel="mass_send",
                      status="over_quota", errcode=3, **base))
        s.add(SopPost(chat_id="wr0", slot=2, template_id="lunch", channel="owner_task", status="sent", **base))
        s.add(SopPost(chat_id="wr0", slot=3, template_id="flash", channel="owner_task", status="planned", **base))
        s.add(SopPost(chat_id="wr1", slot=1, mass_seq=1, template_id="breakfast", channel="mass_send",
                      status="confirmed", **base))
        s.add(SopPost(chat_id="wr1", slot=2, template_id="flash", channel="owner_task", status="unconfirmed", **base))
        s.commit()
    engine.dispose()
    r = run("budget", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in r.output.splitlines() if line.startswith("│ A店")}
    # wr0: WeCom's quota hit on the mass send; the rest of its day runs as owner tasks.
    assert rows["A店0群 wr0"] == ["owner_a", "1/1/0", "1 over_quota (of 1)", "1 planned, 1 used", "-",
                                  "over WeCom's quota"]
    # wr1: an owner's claim lapsed without a word: maybe sent, neither used nor open.
    assert rows["A店1群 wr1"] == ["owner_a", "1/0/1", "1 used (of 1)", "1 unconfirmed", "-",
                                  "1 unconfirmed (maybe sent)"]
    assert "5 posts in the ledger for 2 groups" in r.output
    [account] = [[c.strip() for c in line.split("│")[1:-1]] for line in r.output.splitlines()
                 if line.startswith("│ owner_a")]
    assert account == ["owner_a", "2", "5", "2", "1", "1"]  # groups, posts, sent, waiting, failed/expired/quota
    assert "nothing planned" in run("budget", "--date", "2026-11-25").output


def test_robot_command_sets_and_removes_a_groups_robot_without_printing_the_key(cli, tmp_path):
    from scrm.cli import app

    def run(*args):
        return CliRunner().invoke(app, ["sop", "robot", *args])

    key = "0123456789abcdef0123456789abcdef0123"
    r = run("wr0", "--webhook", f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={key}")
    assert r.exit_code == 0 and "robot set (key 0123…0123)" in r.output and key not in r.output
    engine = make_engine(f"sqlite:///{tmp_path / 'scrm.db'}")
    with Session(engine) as s:
        assert s.get(CustomerGroup, "wr0").robot_webhook_key == key
    assert run("wr0", "--remove").exit_code == 0
    with Session(engine) as s:
        assert s.get(CustomerGroup, "wr0").robot_webhook_key is None
    engine.dispose()
    assert run("wr0", "--webhook", "https://example.com/?x=1").exit_code == 2
    assert run("nope", "--webhook", key).exit_code == 2
    assert run("wr0").exit_code == 2


def test_day_budget_counts_each_group_and_account_from_the_ledger(engine):
    """The figures behind `scrm sop budget`, per group (used/open/left, by channel, problems) and
    per sending account (its own posts; a group that changed owner counts for both). Tried: an
    unconfirmed post counted as used, ``confirmed`` left out of used, and the accounts' groups
    taken from the last row's sender: each fails here."""
    from collections import Counter

    from scrm.sop.budget import AccountBudget, GroupBudget, day_budget
    from scrm.sop.models import PostStatus as S
    from scrm.sop.models import SopPost
    from scrm.sop.planner import Limits

    day = dt.date(2026, 11, 24)
    at = dt.datetime(2026, 11, 24, 0, 0, tzinfo=dt.UTC)
    rows = [  # chat, channel, status, sender
        ("wr0", "mass_send", S.over_quota, "owner_a"), ("wr0", "owner_task", S.sent, "owner_a"),
        ("wr0", "owner_task", S.planned, "owner_a"),
        ("wr1", "mass_send", S.confirmed, "owner_a"), ("wr1", "owner_task", S.unconfirmed, "owner_a"),
        ("wr1", "group_robot", S.expired, "owner_a"),
        ("wr2", "owner_task", S.failed, "owner_a"), ("wr2", "owner_task", S.due, "owner_a"),
        ("wrM", "owner_task", S.sent, "owner_a"), ("wrM", "group_robot", S.sending, "owner_b"),
    ]
    with Session(engine) as s:
        for chat in ("wr0", "wr1", "wr2"):
            s.add(CustomerGroup(chat_id=chat, name=f"A店{chat[-1]}群", owner_userid="owner_a"))
        slots: Counter = Counter()
        for chat, channel, status, sender in rows:
            slots[chat] += 1
            s.add(SopPost(day=day, chat_id=chat, slot=slots[chat], template_id=f"t{slots[chat]}", step_key="1",
                          template_digest="d", channel=channel, status=status, sender=sender,
                          mass_seq=1 if channel == "mass_send" else None, scheduled_for=at,
                          window_ends_at=at + dt.timedelta(hours=3)))
        s.add(SopPost(day=day + dt.timedelta(days=1), chat_id="wr0", slot=1, template_id="t1", step_key="1",
                      template_digest="d", channel="owner_task", sender="owner_a", scheduled_for=at,
                      window_ends_at=at))  # another day: not counted
        s.commit()

    budget = day_budget(engine, day, Limits(max_posts_per_group_per_day=3, max_groups_per_bot=3))
    assert budget.posts == 10
    assert budget.groups == [  # by name, then chat id (wrM has no group row: no name)
        GroupBudget("wrM", "", "owner_a, owner_b", posts=2, used=1, open=1, left=1,
                    channels={"owner_task": Counter(used=1), "group_robot": Counter(sending=1)}),
        GroupBudget("wr0", "A店0群", "owner_a", posts=3, used=1, open=1, left=0,
                    channels={"mass_send": Counter(over_quota=1), "owner_task": Counter(used=1, planned=1)},
                    problems={S.over_quota: 1}),
        GroupBudget("wr1", "A店1群", "owner_a", posts=3, used=1, open=0, left=0,
                    channels={"mass_send": Counter(used=1), "owner_task": Counter(unconfirmed=1),
                              "group_robot": Counter(expired=1)},
                    problems={S.expired: 1, S.unconfirmed: 1}),
        GroupBudget("wr2", "A店2群", "owner_a", posts=2, used=0, open=1, left=1,
                    channels={"owner_task": Counter(failed=1, due=1)}, problems={S.failed: 1}),
    ]
    assert list(budget.groups[2].problems) == [S.expired, S.unconfirmed]  # in the order a person reads them
    assert budget.accounts == [
        AccountBudget("owner_a", groups=4, posts=9, sent=3, waiting=2, bad=3, over_capacity=True),
        AccountBudget("owner_b", groups=1, posts=1, sent=0, waiting=1, bad=0, over_capacity=False),
    ]
    one = day_budget(engine, day, Limits(), chat_ids=["wr1"])
    assert [g.chat_id for g in one.groups] == ["wr1"] and one.posts == 3
    assert day_budget(engine, day + dt.timedelta(days=2), Limits()).groups == []


def test_plan_names_a_post_the_ledger_has_no_mass_send_for(cli, tmp_path):
    """The dry run fits the plan to the ledger as the scheduler does: wr0's ledger already holds its
    mass sequence number (on an owner task), so its breakfast mass send is listed as dropped with
    the reason in words. Tried: plan_command without fit_to_ledger (the post was listed as planned)."""
    from scrm.sop.models import PostStatus, SopPost

    run, folder = cli
    engine = make_engine(f"sqlite:///{tmp_path / 'scrm.db'}")
    noon = local(12, 0).astimezone(dt.UTC)
    with Session(engine) as s:
        s.add(SopPost(day=dt.date(2026, 11, 24), chat_id="wr0", slot=1, mass_seq=1, template_id="old", step_key="1",
                      template_digest="d", channel="owner_task", sender="owner_a", status=PostStatus.sent,
                      scheduled_for=noon, window_ends_at=noon + dt.timedelta(hours=3)))
        s.commit()
    engine.dispose()
    r = run("plan", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    assert "dropped: wr0 breakfast/1 08:00: the ledger already holds the day's mass send" in r.output
    assert "2026-11-24 (周二): 2 posts planned for 4 groups, 1 already in the ledger" in r.output
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")[3:-1]]
            for line in r.output.splitlines() if "breakfast (工作日早餐)" in line}
    assert rows["1"][-2:] == ["2", "1 the ledger already holds the day's mass send, 1 group has no owner"]
