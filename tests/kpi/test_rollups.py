"""The loop from post to money at the data level, on SQLite and PostgreSQL: a post with a tracked
link, a counted click, an order, and the figures a manager reads under store, group, post and
template; refunds, replays, the window, previews, late clicks, withdrawn deliveries, racing
refreshes and a rebuild."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from scrm.kpi.models import KpiBuyerDay, KpiDaily, OrderAttributionRow
from scrm.kpi.report import AttributionRule, Dimension
from scrm.kpi.rollups import COARSE, rebuild_rollups, refresh_rollups, watermarks
from scrm.sop.models import PostStatus
from tests.kpi.test_coarse_rollups import coarse_disagreements, coarse_rows
from tests.kpi.world import TZ, WINDOW, World, at
from tests.waiting import run_threads


@pytest.fixture
def world(engine) -> World:
    """Store SH001 with group g1 (members wm_a, wm_b, wm_c), store BJ001 with group g2; wm_a was
    added by SH001's staff QR code, wm_b by BJ001's; a breakfast post with a link in g1 on 12-01."""
    w = World(engine)
    w.store("SH001", "上海一店")
    w.store("BJ001", "北京一店")
    w.group("g1", "SH001", name="上海一店福利群", members=["wm_a", "wm_b", "wm_c"], joined=at("2026-11-20 09:00"))
    w.group("g2", "BJ001", name="北京一店福利群", members=["wm_d"], joined=at("2026-11-20 09:00"))
    w.customer("wm_a", state="st:SH001:1", added=at("2026-11-20 09:00"))
    w.customer("wm_b", state="st:BJ001:2", added=at("2026-11-20 09:00"))
    w.customer("wm_c")
    w.customer("wm_d")
    w.post_id, w.code = w.post("g1", "breakfast", at("2026-12-01 08:00"), code="kBREAKFAST1")
    return w


def test_click_then_order_three_hours_later_is_gmv_of_that_store_group_post_and_template(world):
    """The must-show: the order 3 h after wm_a's counted click counts under SH001, g1, the post and
    breakfast; the post counts as delivered to g1's 3 customers with 1 click and 1 unique click.
    Tried: letting the customer's store win over the click (the group, post and template rows had
    no order)."""
    w = world
    w.click(w.code, at("2026-12-01 09:00"), "wm_a")
    w.order("SO-1", "wm_a", at("2026-12-01 12:00"), 12900)
    w.refresh()
    for by, key in ((Dimension.store, "SH001"), (Dimension.group, "g1"), (Dimension.post, str(w.post_id)),
                    (Dimension.template, "breakfast"), (Dimension.day, "2026-12-01")):
        row = w.row(by, key)
        assert row is not None, by
        assert (row.orders, row.gmv_fen, row.buyers, row.unique_clicks, row.clicks) == (1, 12900, 1, 1, 1), by
    post = w.row(Dimension.post, str(w.post_id))
    assert (post.posts_delivered, post.members_reached, post.store_code) == (1, 3, "SH001")
    assert post.ctr_per_member == pytest.approx(1 / 3)
    assert w.row(Dimension.store, "SH001").label == "上海一店"
    assert w.row(Dimension.group, "g1").label == "上海一店福利群"
    assert "08:00" in post.label and "breakfast" in post.label
    why = w.attribution("SO-1")
    assert (why.rule, why.post_id, why.chat_id, why.template_id, why.store_code, why.link_code) == (
        AttributionRule.last_click, w.post_id, "g1", "breakfast", "SH001", "kBREAKFAST1")
    assert "3 小时" in why.reason and "上海一店福利群" in why.reason


def test_a_refund_lowers_the_gmv_where_the_order_counts_and_a_replayed_order_changes_nothing(world):
    """A partial refund (reported a day later) lowers net GMV on the order's day and row; the same
    order and refund reported again change no figure. Tried: keying the refund one day later (a
    12-02 row appeared) and attributing the refund's order again without checking it already was
    (the refresh failed on the duplicate attribution)."""
    w = world
    w.click(w.code, at("2026-12-01 09:00"), "wm_a")
    w.order("SO-1", "wm_a", at("2026-12-01 12:00"), 12900)
    w.refresh()
    w.refund("RF-1", "SO-1", 4000, at("2026-12-02 10:00"))
    w.refresh()
    row = w.row(Dimension.post, str(w.post_id))
    assert (row.gmv_fen, row.refunds_fen, row.net_gmv_fen, row.refunded_orders, row.orders) == (12900, 4000, 8900, 1, 1)
    assert w.row(Dimension.day, "2026-12-02") is None  # nothing happened on the refund's day but the refund
    before = w.rollup_rows()
    again = w.order("SO-1", "wm_a", at("2026-12-01 12:00"), 12900)
    w.refund("RF-1", "SO-1", 4000, at("2026-12-02 10:00"))
    assert again.created is False
    w.refresh()
    w.refresh()
    assert w.rollup_rows() == before
    w.refund("RF-2", "SO-1", 8900, at("2026-12-03 10:00"))
    w.refresh()
    row = w.row(Dimension.post, str(w.post_id))
    assert (row.net_gmv_fen, row.refunded_orders) == (0, 1)


def test_an_order_thirty_hours_after_the_click_falls_back_to_the_customers_store(world):
    """Outside the 24 h window the click earns nothing: wm_b's order goes to BJ001, the store whose
    QR code added wm_b (not SH001, whose group wm_b is in and whose post wm_b clicked).
    Tried: a window test without its lower bound (the post kept the 30 h order)."""
    w = world
    w.click(w.code, at("2026-12-01 09:00"), "wm_b")
    w.order("SO-30H", "wm_b", at("2026-12-02 15:00"), 5000)
    w.order("SO-23H", "wm_b", at("2026-12-02 08:00"), 3000)
    w.refresh()
    late, early = w.attribution("SO-30H"), w.attribution("SO-23H")
    assert (late.rule, late.store_code, late.post_id) == (AttributionRule.customer_store, "BJ001", None)
    assert "北京一店" in late.reason and "二维码" in late.reason
    assert (early.rule, early.post_id) == (AttributionRule.last_click, w.post_id)
    assert w.row(Dimension.store, "BJ001").gmv_fen == 5000
    assert w.row(Dimension.post, str(w.post_id)).gmv_fen == 3000
    # wm_c came in through no QR code but is a member of SH001's group: SH001, by membership.
    w.order("SO-C", "wm_c", at("2026-12-05 10:00"), 700)
    w.refresh()
    c = w.attribution("SO-C")
    assert (c.rule, c.store_code, c.chat_id) == (AttributionRule.customer_store, "SH001", None)
    assert "上海一店福利群" in c.reason


def test_preview_and_bot_clicks_never_attribute(world):
    """A link preview carrying the customer (a 1:1 link unfurled by WeChat), a bot and a repeat
    are recorded, counted as no unique click, and never earn the order.
    Tried: attributing on any click with the customer, in the click query and the pure rule together
    (the preview earned SO-P; either alone is still caught by the other)."""
    w = world
    w.click(w.code, at("2026-12-01 09:00"), "wm_a", counted=False, agent="preview")
    w.click(w.code, at("2026-12-01 09:05"), "wm_a", counted=False, agent="bot")
    w.click(w.code, at("2026-12-01 09:10"), "wm_a", counted=False)  # a repeat: a person, not counted
    w.order("SO-P", "wm_a", at("2026-12-01 10:00"), 4200)
    w.refresh()
    why = w.attribution("SO-P")
    assert (why.rule, why.store_code, why.post_id) == (AttributionRule.customer_store, "SH001", None)
    post = w.row(Dimension.post, str(w.post_id))
    assert (post.clicks, post.unique_clicks, post.orders) == (1, 0, 0)


def test_a_click_flushed_after_its_order_was_attributed_moves_the_order(world):
    """Write-behind: the order is rolled up before its click reaches link_clicks; when the click
    arrives the order moves from the customer's store to the post — its order, GMV, refund and
    buyer — and nothing is left behind. Tried: moving the order without its refund (the post
    showed no refund) and without its buyer-day (the post had no buyer)."""
    w = world
    w.order("SO-LATE", "wm_a", at("2026-12-01 12:00"), 9900)
    w.refund("RF-L", "SO-LATE", 1000, at("2026-12-01 13:00"))
    w.refresh()
    assert w.attribution("SO-LATE").rule is AttributionRule.customer_store
    assert w.row(Dimension.store, "SH001").net_gmv_fen == 8900
    w.click(w.code, at("2026-12-01 09:00"), "wm_a")  # flushed late
    report = w.refresh()
    assert report.reattributed == 1
    why = w.attribution("SO-LATE")
    assert (why.rule, why.post_id) == (AttributionRule.last_click, w.post_id)
    post = w.row(Dimension.post, str(w.post_id))
    assert (post.orders, post.gmv_fen, post.refunds_fen, post.refunded_orders, post.buyers) == (1, 9900, 1000, 1, 1)
    # The store row is SH001's either way (the post's group is SH001's); the unattributed-post row is gone.
    assert w.row(Dimension.post, "") is None
    totals = w.table(Dimension.store).totals
    assert (totals.orders, totals.gmv_fen, totals.refunds_fen, totals.buyers) == (1, 9900, 1000, 1)


def test_a_post_that_stops_being_delivered_is_taken_out(world):
    """A mass send first recorded as sent and later found over quota no longer counts as delivered.
    Tried: only adding deliveries (the post stayed delivered)."""
    w = world
    w.refresh()
    assert w.row(Dimension.post, str(w.post_id)).posts_delivered == 1
    w.set_status(w.post_id, PostStatus.over_quota)
    report = w.refresh()
    assert report.posts_withdrawn == 1
    assert w.row(Dimension.post, str(w.post_id)) is None
    unsent, _ = w.post("g2", "lunch", at("2026-12-01 11:00"), status=PostStatus.expired)
    w.refresh()
    assert w.row(Dimension.post, str(unsent)) is None


def test_unmatched_orders_count_by_link_code_and_as_one_buyer_each(world):
    """An order that matched no customer still counts under the post its link code names, and two
    unmatched orders are two buyers. Tried: one buyer key for every unmatched order (two
    unmatched orders were one repeat buyer)."""
    w = world
    a = w.order("SO-U1", None, at("2026-12-01 10:00"), 1000, link_code="kBREAKFAST1")
    w.order("SO-U2", None, at("2026-12-01 11:00"), 2000, **{"from": "kBREAKFAST1"})
    assert a.matched is False
    w.refresh()
    post = w.row(Dimension.post, str(w.post_id))
    assert (post.orders, post.buyers, post.repeat_buyers, post.gmv_fen) == (2, 2, 0, 3000)
    assert w.attribution("SO-U1").rule is AttributionRule.from_param


def test_buyers_are_distinct_over_the_range_and_repeat_buyers_need_two_orders(world):
    """wm_a buys on two days (one buyer, a repeat buyer over the range; one buyer each day); the
    totals count buyers over the range, not the sum of days. Tried: summing buyers of daily rows
    (totals said 3 buyers)."""
    w = world
    w.order("SO-1", "wm_a", at("2026-12-01 10:00"), 1000)
    w.order("SO-2", "wm_a", at("2026-12-02 10:00"), 1000)
    w.order("SO-3", "wm_b", at("2026-12-02 11:00"), 1000)
    w.refresh()
    page = w.table(Dimension.day)
    assert [(r.key, r.buyers, r.repeat_buyers) for r in page.rows] == [("2026-12-01", 1, 0), ("2026-12-02", 2, 0)]
    assert (page.totals.buyers, page.totals.repeat_buyers, page.totals.orders) == (2, 1, 3)
    sh = w.row(Dimension.store, "SH001")
    assert (sh.buyers, sh.repeat_buyers, sh.repeat_rate) == (1, 1, 1.0)


def test_a_clerks_scope_sees_only_their_store(world):
    """Every query honours f.stores: BJ001's clerk sees BJ001's figures and orders only, an empty
    scope sees nothing. Tried: dropping the store condition from the totals (the clerk's totals
    held SH001's GMV)."""
    w = world
    w.click(w.code, at("2026-12-01 09:00"), "wm_a")
    w.order("SO-1", "wm_a", at("2026-12-01 12:00"), 12900)
    w.order("SO-2", "wm_b", at("2026-12-01 12:00"), 500)
    w.order("SO-3", None, at("2026-12-01 12:00"), 77)  # unattributed: only the unscoped view has it
    w.refresh()
    from scrm.kpi import queries
    from scrm.kpi.report import KpiFilter

    f = KpiFilter(dt.date(2026, 12, 1), dt.date(2026, 12, 1), stores=frozenset({"BJ001"}))
    page = queries.kpi_table(w.engine, f, Dimension.store, tz=TZ)
    assert [r.key for r in page.rows] == ["BJ001"]
    assert (page.totals.gmv_fen, page.totals.orders) == (500, 1)
    assert [r.key for r in queries.kpi_table(w.engine, f, Dimension.post, tz=TZ).rows] == [""]
    orders, total = queries.order_attributions(w.engine, f, limit=10, offset=0)
    assert (total, [o.order_id for o in orders]) == (1, ["SO-2"])
    nobody = KpiFilter(dt.date(2026, 12, 1), dt.date(2026, 12, 1), stores=frozenset())
    assert queries.kpi_table(w.engine, nobody, Dimension.store, tz=TZ).total_rows == 0
    assert queries.order_attributions(w.engine, nobody, limit=10, offset=0) == ([], 0)
    everyone = KpiFilter(dt.date(2026, 12, 1), dt.date(2026, 12, 1))
    page = queries.kpi_table(w.engine, everyone, Dimension.store, tz=TZ)
    assert {r.key: r.label for r in page.rows} == {"SH001": "上海一店", "BJ001": "北京一店", "": "未归属"}
    assert page.totals.gmv_fen == 12900 + 500 + 77


def test_pages_hold_every_row_once_in_a_stable_order(world):
    """limit/offset page through the rows ordered by net GMV, then unique clicks, then key, and
    total_rows counts them all. Tried: ordering by net GMV alone (the clicked posts were not first)."""
    w = world
    posts = [w.post("g2", f"t{i}", at(f"2026-12-0{i + 1} 09:00")) for i in range(7)]
    for n, (_, code) in ((2, posts[3]), (1, posts[5])):
        for i in range(n):
            w.click(code, at("2026-12-07 10:00"), f"wm_k{i}")
    w.refresh()
    seen = []
    for offset in range(0, 10, 3):
        page = w.table(Dimension.post, limit=3, offset=offset)
        assert page.total_rows == 8
        seen += [r.key for r in page.rows]
    rest = sorted([w.post_id] + [p for i, (p, _) in enumerate(posts) if i not in (3, 5)])
    assert seen == [str(posts[3][0]), str(posts[5][0])] + [str(p) for p in rest]


def test_two_refreshes_racing_do_not_double_count(world):
    """Two processes refreshing at once (here: threads with their own connections) take turns on
    the lock row and count every click and order once. Tried: reading the watermark before taking
    the lock (both rolled up the same chunk: 2x clicks)."""
    w = world
    for i in range(60):
        w.click(w.code, at("2026-12-01 09:00") + dt.timedelta(minutes=i), f"wm_x{i % 5}", counted=i < 5)
    for i in range(20):
        w.order(f"SO-{i}", "wm_a", at("2026-12-01 10:00") + dt.timedelta(minutes=i), 100)
    results = run_threads([lambda: refresh_rollups(w.engine, tz=TZ, window=WINDOW, chunk=10)] * 3)
    assert sum(r.clicks for r in results) == 60
    assert sum(r.orders for r in results) == 20
    post = w.row(Dimension.post, str(w.post_id))
    assert (post.clicks, post.unique_clicks, post.posts_delivered) == (60, 5, 1)
    totals = w.table(Dimension.store).totals
    assert (totals.orders, totals.gmv_fen, totals.buyers, totals.repeat_buyers) == (20, 2000, 1, 1)
    with w.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(OrderAttributionRow.__table__)).scalar_one() == 20
    assert coarse_disagreements(w.engine) == []  # the coarse tables moved with kpi_daily, chunk by chunk


def test_rebuild_gives_the_same_figures_as_the_incremental_refreshes(world):
    """Rolled up in many small refreshes (with a late click among them) or rebuilt at once: the
    same rollups. Tried: a rebuild that kept kpi_post_deliveries (no post was delivered again)."""
    w = world
    w.click(w.code, at("2026-12-01 09:00"), "wm_a")
    w.order("SO-1", "wm_a", at("2026-12-01 12:00"), 12900)
    w.refresh()
    w.order("SO-2", "wm_b", at("2026-12-01 12:30"), 800)
    w.refresh()
    w.click(w.code, at("2026-12-01 12:10"), "wm_b")  # late: SO-2 moves to the post
    w.refund("RF-1", "SO-1", 900, at("2026-12-03 10:00"))
    w.refresh()
    w.post("g2", "lunch", at("2026-12-02 11:30"))
    w.refresh()

    def snapshot():
        with w.engine.connect() as conn:
            d, b = KpiDaily.__table__, KpiBuyerDay.__table__
            daily = sorted(tuple(r)[1:] for r in conn.execute(select(d)) if any(tuple(r)[6:]))
            buyers = sorted(tuple(r)[1:] for r in conn.execute(select(b)))
            atts = sorted(tuple(r)[:12] for r in conn.execute(select(OrderAttributionRow.__table__)))
        return daily, buyers, atts, [coarse_rows(w.engine, table) for table, _ in COARSE]

    incremental = snapshot()
    report = rebuild_rollups(w.engine, tz=TZ, window=WINDOW)
    assert (report.orders, report.refunds, report.posts_added) == (2, 1, 2)
    assert snapshot() == incremental
    assert incremental[3][0] and coarse_disagreements(w.engine) == []
    assert watermarks(w.engine)["orders"] >= 2


def test_the_window_and_the_zone_are_the_callers(world):
    """A 2 h window turns the 3 h-old click into no click; the local day is the corp's (an order
    at 23:30 UTC on 11-30 is 12-01 in Shanghai). Tried: local days in UTC (12-01 had one order)."""
    w = world
    w.click(w.code, at("2026-12-01 09:00"), "wm_a")
    w.order("SO-1", "wm_a", at("2026-12-01 12:00"), 100)
    w.order("SO-UTC", "wm_c", dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC), 100)
    w.refresh(window=dt.timedelta(hours=2))
    assert w.attribution("SO-1").rule is AttributionRule.customer_store
    assert w.row(Dimension.day, "2026-12-01").orders == 2
