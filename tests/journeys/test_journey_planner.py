"""The journey planner against an independent oracle (hypothesis), and the cases an operator
checks by hand: due day and time, left the layer, two journeys on one day, planned once.

Mutations tried (each made a test here fail, then was restored):
- the "latest change only" check removed (a customer who went dormant, active, dormant again got
  two messages): the oracle test and test_only_the_latest_change_counts failed;
- the losers of a day not reported (``losers = []``): test_two_journeys_on_one_day_... failed;
- ``done`` ignored (re-planning planned again): test_a_change_already_planned_is_never_planned_again
  and the oracle test failed.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrm.journeys.planner import (
    DAY_TAKEN,
    LEFT_LAYER,
    NO_OWNER,
    TOO_LATE,
    Change,
    ExistingMessage,
    plan_journeys,
    step_key,
)
from scrm.journeys.template import Journey
from scrm.sop.planner import Limits

TZ = ZoneInfo("Asia/Shanghai")
D = dt.date(2026, 11, 2)
LIMITS = Limits()  # quiet 22:00-08:00, 180-minute window


def journey(jid, to_layer="dormant", delay=3, at="10:00", priority=50, **kw):
    return Journey.model_validate({"id": jid, "name": jid, "trigger": {"to_layer": to_layer, **kw.pop("trigger", {})},
                                   "delay_days": delay, "at": at, "channel": kw.pop("channel", "owner_task"),
                                   "priority": priority, "text": "hi", **kw})


def local(day, hour=9, minute=0):
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=TZ)


def change(cid, who, to="dormant", frm="active", day=D, hour=3):
    return Change(cid, who, frm, to, local(day, hour).astimezone(dt.UTC))


def test_a_change_to_dormant_is_due_three_days_later_at_ten():
    plan = plan_journeys([journey("winback")], [change(1, "wm1")], {"wm1": "dormant"}, {"wm1": "emp1"}, [], LIMITS,
                         now=local(D, 4), tz=TZ)
    [m] = plan.messages
    assert (m.external_userid, m.day, m.at, m.sender, m.step_key) == (
        "wm1", D + dt.timedelta(days=3), dt.datetime.combine(D + dt.timedelta(days=3), dt.time(10)), "emp1",
        step_key(1, "dormant"))
    assert plan.dropped == []


def test_the_due_day_is_the_local_date_of_the_change():
    """23:30 UTC on the 1st is 07:30 on the 2nd in Shanghai: due on the 5th."""
    c = Change(1, "wm1", "active", "dormant", dt.datetime(2026, 11, 1, 23, 30, tzinfo=dt.UTC))
    plan = plan_journeys([journey("winback")], [c], {"wm1": "dormant"}, {"wm1": "emp1"}, [], LIMITS,
                         now=local(D, 8), tz=TZ)
    assert plan.messages[0].day == dt.date(2026, 11, 5)


def test_a_customer_who_left_the_layer_gets_nothing():
    plan = plan_journeys([journey("winback")], [change(1, "wm1"), change(2, "wm1", to="repeat", frm="dormant",
                                                                         day=D + dt.timedelta(days=1))],
                         {"wm1": "repeat"}, {"wm1": "emp1"}, [], LIMITS, now=local(D + dt.timedelta(days=1), 12), tz=TZ)
    assert plan.messages == []
    assert [(d.change_id, d.reason) for d in plan.dropped] == [(1, LEFT_LAYER)]


def test_only_the_latest_change_counts():
    """Dormant, active, dormant again: one message, for the second time they went dormant."""
    changes = [change(1, "wm1"), change(2, "wm1", to="active", frm="dormant", day=D + dt.timedelta(days=1)),
               change(3, "wm1", day=D + dt.timedelta(days=2))]
    plan = plan_journeys([journey("winback")], changes, {"wm1": "dormant"}, {"wm1": "emp1"}, [], LIMITS,
                         now=local(D + dt.timedelta(days=2), 12), tz=TZ)
    assert [m.change_id for m in plan.messages] == [3]


def test_two_journeys_on_one_day_one_message_and_the_loser_is_reported():
    js = [journey("low", priority=10), journey("high", priority=90, at="15:00")]
    plan = plan_journeys(js, [change(1, "wm1")], {"wm1": "dormant"}, {"wm1": "emp1"}, [], LIMITS,
                         now=local(D, 4), tz=TZ)
    assert [m.journey_id for m in plan.messages] == ["high"]
    assert [(d.journey_id, d.reason, d.detail) for d in plan.dropped] == [("low", DAY_TAKEN, "high")]


def test_a_day_already_in_the_ledger_stays_as_it_is():
    existing = [ExistingMessage("wm1", D + dt.timedelta(days=3), "other", "lc:9:dormant")]
    plan = plan_journeys([journey("winback", priority=100)], [change(1, "wm1")], {"wm1": "dormant"},
                         {"wm1": "emp1"}, existing, LIMITS, now=local(D, 4), tz=TZ)
    assert plan.messages == [] and [d.reason for d in plan.dropped] == [DAY_TAKEN]


def test_a_change_already_planned_is_never_planned_again():
    js = [journey("winback")]
    first = plan_journeys(js, [change(1, "wm1")], {"wm1": "dormant"}, {"wm1": "emp1"}, [], LIMITS,
                          now=local(D, 4), tz=TZ)
    existing = [ExistingMessage(m.external_userid, m.day, m.journey_id, m.step_key) for m in first.messages]
    again = plan_journeys(js, [change(1, "wm1")], {"wm1": "dormant"}, {"wm1": "emp1"}, existing, LIMITS,
                          now=local(D + dt.timedelta(days=1), 4), tz=TZ)
    assert len(first.messages) == 1 and again.messages == [] and again.dropped == []


def test_too_late_no_owner_first_placement_and_from_layers():
    late = plan_journeys([journey("winback", delay=0)], [change(1, "wm1")], {"wm1": "dormant"}, {"wm1": "e"}, [],
                         LIMITS, now=local(D, 13, 1), tz=TZ)  # 10:00 + 180 minutes has passed
    assert [d.reason for d in late.dropped] == [TOO_LATE]
    no_owner = plan_journeys([journey("winback")], [change(1, "wm1")], {"wm1": "dormant"}, {}, [], LIMITS,
                             now=local(D, 4), tz=TZ)
    assert [d.reason for d in no_owner.dropped] == [NO_OWNER]
    first = plan_journeys([journey("winback")], [change(1, "wm1", frm=None)], {"wm1": "dormant"}, {"wm1": "e"}, [],
                          LIMITS, now=local(D, 4), tz=TZ)
    assert first.messages == [] and first.dropped == []
    only_new = journey("thanks", to_layer="first_time", trigger={"from_layers": ["new"]})
    plan = plan_journeys([only_new], [change(1, "a", to="first_time", frm="new"),
                                      change(2, "b", to="first_time", frm="dormant")],
                         {"a": "first_time", "b": "first_time"}, {"a": "e", "b": "e"}, [], LIMITS,
                         now=local(D, 4), tz=TZ)
    assert [m.external_userid for m in plan.messages] == ["a"]


# -- the oracle ---------------------------------------------------------------------------------

def oracle(journeys, changes, current, owners, existing, now):
    """Written from the rules, not the code: for every customer, take their newest change; if it
    still holds, every enabled journey it triggers wants a day; per day, nothing if the ledger has
    that day, else the best by priority, time, id. Returns {(customer, day): journey id} and the
    set of (customer, journey id, change id) reported as dropped for any reason."""
    want, dropped = {}, set()
    done = {(e.journey_id, e.step_key) for e in existing}
    busy = {(e.external_userid, e.day) for e in existing}
    for c in changes:
        newer = [o for o in changes if o.external_userid == c.external_userid
                 and (o.changed_at > c.changed_at or (o.changed_at == c.changed_at and o.id > c.id))]
        for j in journeys:
            if not j.enabled or c.to_layer != j.trigger.to_layer:
                continue
            if c.from_layer is None and not j.trigger.on_first_placement:
                continue
            if c.from_layer is not None and j.trigger.from_layers and c.from_layer not in j.trigger.from_layers:
                continue
            if (j.id, f"lc:{c.id}:{c.to_layer}") in done:
                continue
            day = (c.changed_at.astimezone(TZ) + dt.timedelta(days=j.delay_days)).date()
            due = dt.datetime.combine(day, j.clock, tzinfo=TZ)
            end = min(due + dt.timedelta(minutes=180), dt.datetime.combine(day, dt.time(22), tzinfo=TZ))
            if newer or current.get(c.external_userid) != c.to_layer or end <= now or not owners.get(c.external_userid):
                dropped.add((c.external_userid, j.id, c.id))
                continue
            want.setdefault((c.external_userid, day), []).append((-j.priority, j.clock, j.id, c.id))
    result = {}
    for (who, day), options in want.items():
        options.sort()
        keep = [] if (who, day) in busy else options[:1]
        for o in options:
            if o in keep:
                result[(who, day)] = o[2]
            else:
                dropped.add((who, o[2], o[3]))
    return result, dropped


LAYERS = ["new", "first_time", "active", "dormant"]


@st.composite
def scenarios(draw):
    journeys = [journey(f"j{i}", to_layer=draw(st.sampled_from(LAYERS)), delay=draw(st.integers(0, 3)),
                        at=f"{draw(st.integers(8, 21)):02d}:{draw(st.sampled_from([0, 30])):02d}",
                        priority=draw(st.integers(0, 3)) * 30, enabled=draw(st.sampled_from([True, True, False])),
                        trigger={"from_layers": draw(st.lists(st.sampled_from(LAYERS), max_size=2)),
                                 "on_first_placement": draw(st.booleans())})
                for i in range(draw(st.integers(1, 4)))]
    customers = [f"wm{i}" for i in range(draw(st.integers(1, 4)))]
    changes = []
    for cid in range(1, draw(st.integers(1, 10)) + 1):
        changes.append(Change(cid, draw(st.sampled_from(customers)), draw(st.sampled_from([None, *LAYERS])),
                              draw(st.sampled_from(LAYERS)),
                              (local(D, 0) + dt.timedelta(hours=draw(st.integers(0, 96)))).astimezone(dt.UTC)))
    current = {c: draw(st.sampled_from(LAYERS)) for c in customers}
    owners = {c: draw(st.sampled_from([None, "e1", "e2"])) for c in customers}
    existing = []
    for _ in range(draw(st.integers(0, 3))):
        c = draw(st.sampled_from(changes))
        j = draw(st.sampled_from(journeys))
        existing.append(ExistingMessage(c.external_userid, D + dt.timedelta(days=draw(st.integers(0, 6))), j.id,
                                        f"lc:{c.id}:{c.to_layer}"))
    now = local(D, 0) + dt.timedelta(hours=draw(st.integers(0, 150)))
    return journeys, changes, current, owners, existing, now


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_planner_agrees_with_the_oracle(scenario):
    journeys, changes, current, owners, existing, now = scenario
    plan = plan_journeys(journeys, changes, current, owners, existing, LIMITS, now=now, tz=TZ)
    want, dropped = oracle(journeys, changes, current, owners, existing, now)
    assert {(m.external_userid, m.day): m.journey_id for m in plan.messages} == want
    assert len(plan.messages) == len(want)  # one a customer a day
    assert {(d.external_userid, d.journey_id, d.change_id) for d in plan.dropped} == dropped
    # Never a day the ledger already has, never a change planned before.
    busy = {(e.external_userid, e.day) for e in existing}
    assert not any((m.external_userid, m.day) in busy for m in plan.messages)
