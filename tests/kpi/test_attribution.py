"""The attribution rule as a pure function: examples of each rule and a property test against an
oracle written from the rule's statement (README / the module docstring), not from the code.

Mutations tried (each made a test here fail, then was undone):
- the window's lower bound ``<`` made ``<=`` (a click exactly 24 h before paying earned the order);
- the tie-break on equal click times dropped (the earlier click id won: property test);
- ``from`` read before ``link_code`` (``test_link_code_wins_over_from``);
- bare store codes compared case-sensitively (``sh001`` was not SH001: property test);
- a customer store that is not a known store accepted (the property test's ``GONE`` store).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from scrm.kpi.attribution import (
    ClickFact,
    CustomerStore,
    Directory,
    LinkFact,
    OrderFacts,
    PostFact,
    attribute,
)
from scrm.kpi.report import AttributionRule

TZ = ZoneInfo("Asia/Shanghai")
W = dt.timedelta(hours=24)
PAID = dt.datetime(2026, 12, 1, 12, 0, tzinfo=TZ)

DIRECTORY = Directory(
    links={"L1": LinkFact("L1", 1, "g1", "breakfast"), "L2": LinkFact("L2", 2, "g2", "lunch")},
    posts={1: PostFact(1, "g1", "breakfast", PAID - dt.timedelta(hours=4)), 2: PostFact(2, "g2", "lunch", None),
           3: PostFact(3, "g1", "dinner", None)},
    group_stores={"g1": "SH001", "g2": None, "g3": "BJ001"},
    group_names={"g1": "上海<群>", "g2": "无门店群", "g3": "北京群"},
    stores={"SH001": "上海一店", "BJ001": "北京一店"},
)


def order(ext="wm_a", *, link_code=None, from_param=None, paid=PAID) -> OrderFacts:
    return OrderFacts(1, "shop", "SO-1", paid, 1000, ext, link_code, from_param)


def click(cid, code, hours_before, ext="wm_a", counted=True) -> ClickFact:
    return ClickFact(cid, code, PAID - dt.timedelta(hours=hours_before), counted, ext)


def decide(o, clicks=(), cs=None, window=W):
    return attribute(o, clicks, cs, DIRECTORY, window=window, tz=TZ)


def test_the_last_counted_click_in_the_window_wins():
    a = decide(order(), [click(1, "L2", 5), click(2, "L1", 3), click(3, "L2", 1, counted=False),
                         click(4, "L2", 0.5, ext="wm_b")])
    assert (a.rule, a.post_id, a.chat_id, a.template_id, a.store_code, a.click_id) == (
        AttributionRule.last_click, 1, "g1", "breakfast", "SH001", 2)
    assert a.reason.startswith("下单前 3 小时点击了模板 breakfast 的帖子链接（群「上海<群>」，12 月 1 日 08:00 发出）")


def test_the_window_is_open_at_its_start_and_closed_at_the_payment():
    assert decide(order(), [click(1, "L1", 24)]).rule is AttributionRule.unattributed
    assert decide(order(), [click(1, "L1", 23.99)]).rule is AttributionRule.last_click
    assert decide(order(), [click(1, "L1", 0)]).rule is AttributionRule.last_click
    assert decide(order(), [click(1, "L1", -0.01)]).rule is AttributionRule.unattributed


def test_link_code_wins_over_from():
    a = decide(order(link_code="L2", from_param="store:BJ001"))
    assert (a.rule, a.post_id, a.store_code, a.link_code) == (AttributionRule.from_param, 2, None, "L2")


def test_what_from_may_name():
    cases = {"L1": (1, "g1", "SH001"), "post:3": (3, "g1", "SH001"), "post-2": (2, "g2", None),
             "chat:g3": (None, "g3", "BJ001"), "store:BJ001": (None, None, "BJ001"), "bj001": (None, None, "BJ001")}
    for raw, expected in cases.items():
        a = decide(order(from_param=raw))
        assert (a.rule, (a.post_id, a.chat_id, a.store_code)) == (AttributionRule.from_param, expected), raw
    a = decide(order(from_param="wechat-moments"), cs=CustomerStore("SH001", "qr", "st:SH001:1"))
    assert (a.rule, a.store_code) == (AttributionRule.customer_store, "SH001")
    assert "from 参数 wechat-moments不对应" in a.reason and "二维码" in a.reason


def test_an_unmatched_order_is_attributed_only_by_what_it_carries():
    assert decide(order(None, link_code="L1"), [click(1, "L1", 1, ext=None)]).rule is AttributionRule.from_param
    a = decide(order(None), [click(1, "L1", 1, ext=None)], cs=CustomerStore("SH001", "qr"))
    assert a.rule is AttributionRule.unattributed
    assert a.reason.startswith("未归属：订单未匹配到客户")


def test_a_group_member_goes_to_the_groups_store():
    a = decide(order(), cs=CustomerStore("BJ001", "group", "g3"))
    assert (a.rule, a.store_code, a.chat_id) == (AttributionRule.customer_store, "BJ001", None)
    assert "北京群" in a.reason


# -- the property ---------------------------------------------------------------------------------
def oracle(o: OrderFacts, clicks: list[ClickFact], cs: CustomerStore | None, window: dt.timedelta):
    """(rule, post, chat, store, click id) straight from the rule's statement."""
    if o.external_userid is not None:
        mine = sorted((c for c in clicks if c.counted and c.external_userid == o.external_userid
                       and c.code in ("L1", "L2") and o.paid_at - window < c.clicked_at <= o.paid_at),
                      key=lambda c: (c.clicked_at, c.click_id))
        if mine:
            link = {"L1": (1, "g1", "SH001"), "L2": (2, "g2", None)}[mine[-1].code]
            return ("last_click", *link, mine[-1].click_id)
    named = {"L1": (1, "g1", "SH001"), "L2": (2, "g2", None), "post:1": (1, "g1", "SH001"),
             "post-1": (1, "g1", "SH001"), "post:2": (2, "g2", None), "post-3": (3, "g1", "SH001"),
             "chat:g1": (None, "g1", "SH001"), "chat:g3": (None, "g3", "BJ001"),
             "store:SH001": (None, None, "SH001"), "store:bj001": (None, None, "BJ001"),
             "sh001": (None, None, "SH001"), "BJ001": (None, None, "BJ001")}
    if o.link_code in ("L1", "L2"):
        return ("from_param", *named[o.link_code], None)
    if o.from_param in named:
        return ("from_param", *named[o.from_param], None)
    if o.external_userid is not None and cs is not None and cs.store_code in ("SH001", "BJ001"):
        return ("customer_store", None, None, cs.store_code, None)
    return ("unattributed", None, None, None, None)


customers = st.sampled_from(["wm_a", "wm_b", None])
clicks_st = st.lists(st.builds(
    lambda cid, code, minutes, ext, counted: ClickFact(cid, code, PAID - dt.timedelta(minutes=minutes), counted, ext),
    st.integers(1, 50), st.sampled_from(["L1", "L2", "X9"]),
    st.one_of(st.sampled_from([0, 24 * 60, 24 * 60 - 1, -1]), st.integers(-120, 30 * 60)),
    customers, st.booleans()), max_size=8)
froms = st.sampled_from([None, "L1", "L2", "X9", "post:1", "post-1", "post:2", "post-3", "post:99", "chat:g1",
                         "chat:g3", "chat:nope", "store:SH001", "store:bj001", "store:NOPE", "sh001", "BJ001",
                         "garbage", ""])
stores = st.sampled_from([None, CustomerStore("SH001", "qr", "st:SH001:1"), CustomerStore("BJ001", "group", "g3"),
                          CustomerStore("GONE", "qr", "st:GONE:1")])


@settings(max_examples=400, deadline=None)
@given(ext=customers, clicks=clicks_st, link_code=st.sampled_from([None, "L1", "L2", "X9"]), from_param=froms,
       cs=stores, window_hours=st.sampled_from([1, 24, 72]))
def test_attribution_matches_the_rule(ext, clicks, link_code, from_param, cs, window_hours):
    window = dt.timedelta(hours=window_hours)
    # click ids are unique in the database
    seen: set[int] = set()
    clicks = [c for c in clicks if not (c.click_id in seen or seen.add(c.click_id))]
    o = order(ext, link_code=link_code, from_param=from_param)
    a = attribute(o, clicks, cs, DIRECTORY, window=window, tz=TZ)
    assert (str(a.rule), a.post_id, a.chat_id, a.store_code, a.click_id) == oracle(o, clicks, cs, window)
    assert a.reason and (a.order_id, a.amount_fen, a.paid_at) == ("SO-1", 1000, PAID)
