"""Journeys through the ledger and the sandbox (SQLite and PostgreSQL), with a controllable clock.

Mutations tried (each made the named test fail, then was restored):
- expire_left_layer not called from scrm.sop.jobs.fire: test_a_customer_who_left_dormant_...
  failed (the message became due);
- the planner's ``done`` check dropped: re-planning still inserted nothing (the day was taken by
  the first row), so test_a_change_to_dormant_... also asserts that the second run reports only
  the survey (never planned) and not the winback again; without that assertion the mutation
  passed, with it the test fails;
- the sender's poll keyed by ``chat_id`` only (as for groups): the mass-send test stayed ``sent``
  instead of ``confirmed``;
- single_msg_template sending ``chat_type: group``: the sandbox made a task for the owner's groups
  instead, and the mass-send test failed on the task's chat_type.
"""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session

from scrm.journeys.jobs import run_journey_plan
from scrm.journeys.planner import DAY_TAKEN, step_key
from scrm.sop.models import PostStatus, SopPost
from tests.journeys.conftest import TZ, D, customer_rows, fire, local, move


def test_a_change_to_dormant_is_planned_once_for_three_days_later_at_ten(corp):
    h, settings, clock, sender, load, (wang, li), _ = corp
    move(h.engine, wang, "dormant", local(D, 3, 30))
    clock["now"] = local(D, 4)
    report = run_journey_plan(h.engine, settings, now=clock["now"])
    rows = customer_rows(h.engine)
    assert report is not None and report.inserted == 1
    [row] = rows
    assert (row.chat_id, row.day, row.template_id, row.channel, row.sender, row.slot) == (
        wang, D + dt.timedelta(days=3), "dormant-winback", "owner_task", "owner_a", 1)
    assert row.scheduled_for.astimezone(TZ) == dt.datetime.combine(D + dt.timedelta(days=3), dt.time(10), tzinfo=TZ)
    # The survey wanted the same day and lost it, reported with the journey that won.
    assert [(d.journey_id, d.reason, d.detail) for d in report.dropped_list] == [
        ("dormant-survey", DAY_TAKEN, "dormant-winback")]

    # Re-planning the next day plans nothing new, and writes nothing twice.
    clock["now"] = local(D + dt.timedelta(days=1), 4)
    again = run_journey_plan(h.engine, settings, now=clock["now"])
    assert again is not None and (again.inserted, again.conflicts) == (0, 0)
    # The survey never got a row, so it is reported again; the winback, planned, is not a candidate.
    assert [(d.journey_id, d.reason) for d in again.dropped_list] == [("dormant-survey", DAY_TAKEN)]
    assert [r.id for r in customer_rows(h.engine)] == [row.id]

    # D+3 10:05: the fire job makes it due for the owner (no worker involved).
    clock["now"] = local(D + dt.timedelta(days=3), 10, 5)
    sends: list[int] = []
    counts = fire(h, clock, sends)
    assert counts.get("owner_task") == 1 and sends == []
    with Session(h.engine) as s:
        assert s.get(SopPost, row.id).status == PostStatus.due


def test_a_customer_who_left_dormant_before_the_day_does_not_get_it(corp):
    h, settings, clock, sender, load, (wang, li), _ = corp
    move(h.engine, wang, "dormant", local(D, 3))
    run_journey_plan(h.engine, settings, now=local(D, 4))
    [row] = customer_rows(h.engine)
    move(h.engine, wang, "repeat", local(D + dt.timedelta(days=2), 12), from_layer="dormant")  # came back, ordered
    clock["now"] = local(D + dt.timedelta(days=3), 10, 1)
    counts = fire(h, clock)
    assert counts["left_layer"] == 1 and "owner_task" not in counts
    with Session(h.engine) as s:
        after = s.get(SopPost, row.id)
    assert after.status == PostStatus.expired and after.error == "客户已离开「沉睡」分层，这条消息不再发送"
    # Planning again after they left plans nothing for the old change.
    report = run_journey_plan(h.engine, settings, now=clock["now"])
    assert report is not None and report.inserted == 0 and len(customer_rows(h.engine)) == 1


def test_a_customer_who_left_while_the_message_waited_for_the_owner_does_not_get_it(corp):
    """Due on the owner's page, then the customer orders: the next fire takes it off the page."""
    h, settings, clock, sender, load, (wang, li), _ = corp
    move(h.engine, wang, "dormant", local(D, 3))
    run_journey_plan(h.engine, settings, now=local(D, 4))
    clock["now"] = local(D + dt.timedelta(days=3), 10, 1)
    fire(h, clock)
    [row] = customer_rows(h.engine)
    assert row.status == PostStatus.due
    move(h.engine, wang, "repeat", local(D + dt.timedelta(days=3), 10, 30), from_layer="dormant")
    clock["now"] = local(D + dt.timedelta(days=3), 10, 31)
    assert fire(h, clock)["left_layer"] == 1
    assert customer_rows(h.engine)[0].status == PostStatus.expired


def test_the_database_holds_one_journey_message_per_customer_per_day(corp):
    """Two planners that each decided on a different journey for the same day: one row."""
    h, settings, clock, sender, load, (wang, li), _ = corp
    move(h.engine, wang, "dormant", local(D, 3))
    journeys = load()
    both = [run_journey_plan(h.engine, settings, now=local(D, 4), journeys={jid: journeys[jid]})
            for jid in ("dormant-survey", "dormant-winback")]
    assert [r.inserted for r in both if r] == [1, 0]
    [row] = customer_rows(h.engine)
    assert row.template_id == "dormant-survey"
    # The winback was not silently lost: the second run reports the day as taken.
    assert [(d.journey_id, d.reason) for d in both[1].dropped_list] == [("dormant-winback", DAY_TAKEN)]


def test_a_mass_send_journey_reaches_the_sandbox_as_a_single_chat_send_and_is_confirmed_on_poll(corp):
    h, settings, clock, sender, load, (wang, li), _ = corp
    move(h.engine, li, "first_time", local(D, 9), from_layer="new")
    run_journey_plan(h.engine, settings, now=local(D, 10))
    [row] = customer_rows(h.engine)
    assert (row.template_id, row.channel, row.mass_seq, row.step_key) == (
        "first-order-thanks", "mass_send", 1, step_key(_change_id(h.engine), "first_time"))
    clock["now"] = local(D + dt.timedelta(days=1), 11, 1)
    sends: list[int] = []
    assert fire(h, clock, sends)["mass_send"] == 1 and sends == [row.id]
    assert sender.send(sends)["sent"] == 1
    [task] = h.sandbox.templates.values()
    assert (task.chat_type, task.creator) == ("single", "owner_a")
    assert [r["external_userid"] for r in task.results["owner_a"]] == [li]
    assert "小李，谢谢你昨天的第一杯" in task.text["content"]
    link = task.attachments[0]["link"]["url"]
    assert link.startswith("http://scrm/t/")  # a tracked link: the coupon's clicks count
    assert sender.poll_results() == {}  # not confirmed by the owner yet
    h.sandbox.confirm_mass_send(task.msgid, "owner_a")
    assert sender.poll_results() == {"confirmed": 1}
    assert customer_rows(h.engine)[0].status == PostStatus.confirmed


def _change_id(engine) -> int:
    from sqlmodel import select

    from scrm.layers.models import LayerChange

    with Session(engine) as s:
        return s.exec(select(LayerChange.id)).one()
