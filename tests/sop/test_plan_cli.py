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
    monkeypatch.setattr("scrm.db.utcnow", lambda: now["now"].astimezone(dt.timezone.utc))
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

    from scrm.sop.models import SopPost

    from scrm.cli import app

    def run(*args):
        return CliRunner().invoke(app, ["sop", *args])

    engine = make_engine(f"sqlite:///{tmp_path / 'scrm.db'}")
    at = dt.datetime(2026, 11, 24, 0, 0, tzinfo=dt.timezone.utc)
    base = dict(day=dt.date(2026, 11, 24), template_digest="d", sender="owner_a", scheduled_for=at,
                window_ends_at=at + dt.timedelta(hours=3), step_key="1")
    with Session(engine) as s:
        s.add(SopPost(chat_id="wr0", slot=1, mass_seq=1, template_id="breakfast", channel="mass_send",
                      status="over_quota", errcode=3, **base))
        s.add(SopPost(chat_id="wr0", slot=2, template_id="lunch", channel="owner_task", status="sent", **base))
        s.add(SopPost(chat_id="wr0", slot=3, template_id="flash", channel="owner_task", status="planned", **base))
        s.add(SopPost(chat_id="wr1", slot=1, mass_seq=1, template_id="breakfast", channel="mass_send",
                      status="confirmed", **base))
        s.commit()
    engine.dispose()
    r = run("budget", "--date", "2026-11-24")
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in r.output.splitlines() if line.startswith("│ A店")}
    # wr0: WeCom's quota hit on the mass send; the rest of its day runs as owner tasks.
    assert rows["A店0群 wr0"] == ["owner_a", "1/1/0", "1 over_quota (of 1)", "1 planned, 1 used", "-",
                                  "over WeCom's quota"]
    assert rows["A店1群 wr1"] == ["owner_a", "1/0/2", "1 used (of 1)", "-", "-", "-"]
    assert "4 posts in the ledger for 2 groups" in r.output
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
