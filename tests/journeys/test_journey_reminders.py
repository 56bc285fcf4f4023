"""The owner's reminder lists a due journey message by the customer's name and the journey's name,
never by the customer's external_userid (mutation tried: the reminder line built from chat_id as
for groups — the external_userid showed and the test failed)."""

from __future__ import annotations

import datetime as dt

from scrm.journeys.jobs import run_journey_plan
from scrm.sop import jobs
from scrm.sop.reminders import send_reminders
from tests.journeys.conftest import HOSTILE, TZ, D, local, move


def test_a_due_journey_message_is_in_the_owners_reminder(corp):
    h, settings, clock, sender, load, (wang, li), _ = corp
    move(h.engine, wang, "dormant", local(D, 3))
    run_journey_plan(h.engine, settings, now=local(D, 4))
    clock["now"] = local(D + dt.timedelta(days=3), 10, 1)
    counts = jobs.fire(h.engine, lambda ids: None, now=clock["now"], remind=lambda now: send_reminders(
        h.engine, h.client, toolbar_url="http://scrm/toolbar", tz=TZ, now=now, agent_id=1000002, journeys=load))
    assert counts["reminders"] == 1
    [message] = h.sandbox.app_messages
    card = message["textcard"]
    assert message["touser"] == "owner_a" and card["title"] == "有 1 条客户消息待发送"
    assert card["description"] == f"客户 小王{HOSTILE} · 10:00 沉睡唤醒"
    assert wang not in card["description"]
