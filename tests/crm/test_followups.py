"""The pure builder on hand-made timelines: what a rep reads in each record.

Each test names the mutation tried on scrm/crm/followups.py and seen to fail it."""

from __future__ import annotations

import datetime as dt
import random

from scrm.crm.followups import BusinessHours, Msg, build, excerpt
from tests.crm.builders import TZ, local, rules

RULES = rules()
HOURS = BusinessHours.parse("09:00-21:00", [1, 2, 3, 4, 5, 6, 7], TZ)
T0 = local(2026, 11, 23, 10)  # Monday 10:00 Shanghai


def m(i, minutes, text="", *, out=False, userid=None, channel="chat", revoked=False, msgtype="text"):
    return Msg(id=i, channel=channel, direction="out" if out else "in", sent_at=T0 + dt.timedelta(minutes=minutes),
               msgtype=msgtype, content="" if revoked else text,
               userid=userid or ("rep1" if out else None), revoked=revoked)


def run(msgs, now=None, gap=8.0):
    return build(msgs, RULES, session_gap_hours=gap, hours=HOURS, now=now or T0 + dt.timedelta(days=30))


def test_a_record_summarises_its_session_and_each_fact_links_to_its_message():
    """Mutations tried: facts taken with the session's first message id (failed: the price links to
    message 1); de-duplication by value only (failed: the quantity 18 was dropped
    as a repeat of the price 18); a rep tie going to the later writer (failed: rep2);
    last reply taken from any outbound message (failed: the recalled reply showed)."""
    built = run([
        m(1, 0, "你好，我想团购30杯生椰拿铁，下周三要，多少钱？"),
        m(2, 3, "团购价每杯18元", out=True),
        m(3, 5, "好的，30杯生椰拿铁"),
        m(4, 6, "能开发票吗？"),
        m(5, 9, "可以开的，稍等", out=True, userid="rep2"),
        m(6, 10, "那就下单，再加18杯，12月5号送", out=False),
        m(7, 11, "我收到了，我们会准时送到", out=True, revoked=True),
    ])
    (r,) = built.records
    assert r.first_question == "你好，我想团购30杯生椰拿铁，下周三要，多少钱？" and r.first_question_message_id == 1
    assert r.last_reply == "可以开的，稍等" and r.last_reply_message_id == 5
    facts = {(f["rule_id"], f["value"]): f["message_id"] for f in r.facts}
    assert facts == {("intent-order", "订货"): 1, ("quantity", "30"): 1, ("product-coffee", "生椰拿铁"): 1,
                     ("date", "下周三"): 1, ("price", "18"): 2, ("intent-invoice", "开发票"): 4,
                     ("date", "12月5号"): 6, ("quantity", "18"): 6}
    assert r.message_count == 6 and r.first_message_id == 1 and r.last_message_id == 7
    assert r.open_questions == []  # 6 is not a question; 1 and 4 were answered after
    # rep1 and rep2 wrote one (live) reply each: the tie goes to the one who wrote first.
    assert r.userid == "rep1"


def test_open_questions_are_the_customers_questions_after_the_last_reply():
    """Mutation tried: open questions = every question (failed: the answered 1 stayed open)."""
    built = run([m(1, 0, "有没有燕麦拿铁？"), m(2, 2, "有的", out=True), m(3, 4, "几点关门？"), m(4, 5, "好的"),
                 m(5, 6, "能送到公司吗")])
    (r,) = built.records
    assert [q["message_id"] for q in r.open_questions] == [3, 5]
    assert r.open_questions[0]["text"] == "几点关门？"


def test_sessions_split_past_the_gap_and_not_at_it():
    """Mutation tried: ``<=`` -> ``<`` in sessions (failed: the exactly-8-h message opened a record)."""
    built = run([m(1, 0, "在吗"), m(2, 8 * 60, "在的", out=True), m(3, 16 * 60 + 1, "明天来拿")])
    assert [(r.first_message_id, r.last_message_id) for r in built.records] == [(1, 2), (3, 3)]
    assert built.records[1].channels == ["chat"] and built.records[1].userid is None


def test_recalled_messages_keep_their_place_and_add_nothing():
    """A recall keeps a session together (its place) but gives no text, fact, question or rep; a
    session of recalled messages only makes no record; ``revoke`` rows are not messages.
    Mutations tried: revoked messages counted in message_count (failed: 3 not 2); the all-recalled
    session kept (failed: two records); revoke rows kept in the timeline (failed: a third record)."""
    built = run([
        m(1, 0, "我要投诉", revoked=True),
        m(2, 7 * 60, "", revoked=True, out=True, userid="rep9"),  # bridges 1 and 3 (each 7 h apart)
        m(3, 14 * 60, "拿铁多少钱？"),
        m(4, 14 * 60 + 1, "18元", out=True),
        m(5, 30 * 60, "", revoked=True),
        m(6, 30 * 60 + 1, "", msgtype="revoke"),
        m(7, 45 * 60, "", msgtype="revoke"),
    ])
    assert len(built.records) == 1
    (r,) = built.records
    assert (r.first_message_id, r.last_message_id, r.message_count) == (1, 4, 2)
    assert r.userid == "rep1"  # rep9's reply was recalled
    assert all(f["rule_id"] != "intent-complaint" for f in r.facts)
    assert r.first_question_message_id == 3
    waits = [e for e in built.events if e.kind == "wait"]
    assert [e.message_id for e in waits] == [3]


def test_next_step_is_the_first_rule_that_holds_with_its_facts_filled_in():
    """Mutations tried: the last matching rule wins (failed: 'order' instead of 'order-with-date');
    placeholders left unfilled (failed: '{date}' in the text)."""
    built = run([m(1, 0, "订货50杯美式，12月5日要"), m(2, 1, "好的收到", out=True)])
    (r,) = built.records
    assert r.next_step_rule == "order-with-date"
    assert r.next_step.startswith("12月5日前确认订单：美式 50 杯")
    complaint = run([m(1, 0, "我要投诉，订的货没到"), m(2, 1, "抱歉", out=True)]).records[0]
    assert complaint.next_step_rule == "complaint"
    quiet = run([m(1, 0, "谢谢"), m(2, 1, "不客气", out=True)]).records[0]
    assert quiet.next_step_rule is None and quiet.next_step == RULES.default_next_step


def test_no_reply_hours_counts_from_now():
    """Mutation tried: no_reply_hours ignored (failed: 'no-reply' chosen 1 minute after)."""
    msgs = [m(1, 0, "好的，谢谢")]
    assert run(msgs, now=T0 + dt.timedelta(minutes=1)).records[0].next_step_rule is None
    assert run(msgs, now=T0 + dt.timedelta(hours=3)).records[0].next_step_rule == "no-reply"


def test_service_events_first_response_waits_and_risky_replies():
    """Mutations tried: a turn per customer message (failed: 3 waits); waiting counted in wall
    time (failed: the night reply waited 13 h, not 1 h); risky phrases searched in customer
    messages too (failed: an extra risky event)."""
    built = run([
        m(1, 0, "有没有优惠？"), m(2, 1, "你自己看菜单吧"),  # the customer says it: not a risky reply
        m(3, 5, "你自己看菜单", out=True),
        m(4, 10 * 60 + 30, "几点开门？"),  # 20:30 local
        m(5, 23 * 60 + 30, "九点开门，保证赚钱", out=True),  # 09:30 local next day
        m(6, 23 * 60 + 40, "好"),
    ])
    kinds = [(e.kind, e.message_id, e.business_seconds) for e in built.events if e.kind != "risky"]
    assert ("first_response", 1, 300) in kinds and ("first_response", 4, None) not in kinds
    waits = [(mid, s) for k, mid, s in kinds if k == "wait"]
    assert waits == [(1, 300), (4, 3600), (6, None)]
    risky = sorted((e.message_id, e.rule_id, e.phrase) for e in built.events if e.kind == "risky")
    assert risky == [(3, "rude-impatient", "你自己看"), (5, "risky-promise", "保证赚钱")]
    # 4 (10.5 h after 3) and 5 (13 h after 4) each open a session; 4's first response is 5, the
    # reply in the next session (1 business hour); 6 opens nothing (5 is in its session) but waits.
    assert [(e.message_id, e.business_seconds) for e in built.events if e.kind == "first_response"] == [
        (1, 300), (4, 3600), (6, None)]


def test_same_messages_in_any_order_build_the_same():
    """Mutation tried: sorting by sent_at only (failed: messages sent in one minute came out in the
    shuffled order)."""
    msgs = [m(i, i // 3, f"第{i}条，多少钱？" if i % 2 else "好的", out=i % 4 == 0) for i in range(1, 30)]
    first = run(msgs)
    for seed in range(5):
        shuffled = msgs[:]
        random.Random(seed).shuffle(shuffled)
        again = run(shuffled)
        assert [r.content() for r in again.records] == [r.content() for r in first.records]
        assert [e.key() for e in again.events] == [e.key() for e in first.events]


def test_a_long_message_is_scanned_on_its_head_only_and_excerpts_stay_short():
    text = "a" * 100_000 + "18元"
    (r,) = run([m(1, 0, text)]).records
    assert r.facts == []
    assert len(excerpt(text)) <= 120
