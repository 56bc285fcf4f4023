"""The callback worker tells the CRM about contact events only (a remark mobile may be new), and the
layers about contacts and group joins alike: a group join costs the CRM's link query nothing.
Mutation tried: calling ``on_contact_changed`` for group events too (the join reached the CRM hook)."""

from __future__ import annotations

from tests.pipeline_harness import harness


def test_contact_events_reach_the_crm_hook_group_joins_do_not(engine, redis_url):
    with harness(engine, redis_url) as h:
        sb = h.sandbox
        contacts: list[list[str]] = []
        customers: list[list[str]] = []
        h.processor.on_contact_changed = contacts.append
        h.processor.on_customers_changed = customers.append
        sb.add_member("owner", "群主")
        h.start_worker()
        eid = sb.add_employee("owner", name="顾客").data["external_userid"]
        h.drain()
        assert contacts == [[eid]] and customers == [[eid]]
        chat_id = sb.employee_creates_group("owner", "福利群").data["chat_id"]
        h.drain()
        sb.invite_to_group(chat_id, eid)
        h.drain()
        assert contacts == [[eid]], "a group event is no contact change"
        assert any(eid in ids for ids in customers[1:]), "the layers still hear the join"
