"""The dashboard's queries beyond the KPI table: GMV decomposed against the previous period, the
"why this post" list, and the ``scrm kpi`` commands; and (PostgreSQL) an order committed late by
a slow transaction is not skipped by the watermark."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from scrm.kpi import queries
from scrm.kpi.cli import kpi_app
from scrm.kpi.report import AttributionRule, Dimension, KpiFilter
from scrm.orders.models import Order
from tests.kpi.world import TZ, World, at
from tests.waiting import wait_until

runner = CliRunner()


@pytest.fixture
def world(engine) -> World:
    """SH001 with group g1 (4 customers), BJ001 with g2 (2 customers); a post with a link in g1."""
    w = World(engine)
    w.store("SH001", "上海一店")
    w.store("BJ001", "北京一店")
    w.group("g1", "SH001", members=["wm_a", "wm_b", "wm_c", "wm_d"], joined=at("2026-11-01 09:00"))
    w.group("g2", "BJ001", members=["wm_e", "wm_f"], joined=at("2026-11-01 09:00"))
    for ext in ("wm_a", "wm_b", "wm_c", "wm_d", "wm_e", "wm_f"):
        w.customer(ext)
    w.post_id, w.code = w.post("g1", "breakfast", at("2026-12-01 08:00"))
    return w


def test_gmv_decomposes_into_customers_conversion_repeat_and_order_value(world):
    """Week 12-01..07 against 11-24..30 for SH001: 4 customers either week; this week 2 buyers with
    3 orders worth 6000 (one refunded by 1000: net 5000), last week 1 buyer with 1 order of 1000.
    Tried: counting buyer-days instead of distinct buyers (3 buyers this week) and gross instead of
    net GMV (6000)."""
    w = world
    w.order("SO-1", "wm_a", at("2026-12-01 10:00"), 2000)
    w.order("SO-2", "wm_a", at("2026-12-03 10:00"), 2000)
    w.order("SO-3", "wm_b", at("2026-12-03 11:00"), 2000)
    w.refund("RF-1", "SO-3", 1000, at("2026-12-04 09:00"))
    w.order("SO-0", "wm_c", at("2026-11-25 10:00"), 1000)
    w.order("SO-E", "wm_e", at("2026-12-02 10:00"), 300)
    w.refresh()
    week = KpiFilter(dt.date(2026, 12, 1), dt.date(2026, 12, 7))
    rows = {d.key: d for d in queries.gmv_decomposition(world.engine, week, Dimension.store, tz=TZ)}
    sh = rows["SH001"]
    assert (sh.current.customers, sh.current.buyers, sh.current.orders, sh.current.gmv_fen) == (4, 2, 3, 5000)
    assert (sh.previous.customers, sh.previous.buyers, sh.previous.orders, sh.previous.gmv_fen) == (4, 1, 1, 1000)
    assert sh.current.conversion == pytest.approx(0.5) and sh.current.repeat == pytest.approx(1.5)
    assert sh.change("conversion") == pytest.approx(1.0)  # 1/4 -> 2/4
    assert sh.change("gmv_fen") == pytest.approx(4.0)
    assert (sh.label, rows["BJ001"].current.gmv_fen, rows["BJ001"].current.customers) == ("上海一店", 300, 2)
    assert [d.key for d in queries.gmv_decomposition(world.engine, week, Dimension.store, tz=TZ)][0] == "SH001"
    # A clerk of BJ001 sees BJ001 only.
    mine = queries.gmv_decomposition(world.engine, KpiFilter(week.start, week.end, frozenset({"BJ001"})),
                                     Dimension.store, tz=TZ)
    assert [d.key for d in mine] == ["BJ001"]


def test_gmv_by_group_counts_the_groups_members_and_what_its_posts_earned(world):
    """By group: g1's customers are its 4 members (one left before the week: 3 + the leaver is
    not counted), the buyer is the one whose click on g1's post earned the order.
    Tried: counting members who left before the period (g1 had 4 customers)."""
    w = world
    from sqlalchemy import update

    from scrm.groups.models import GroupMember

    gm = GroupMember.__table__
    with w.engine.begin() as conn:
        conn.execute(update(gm).where(gm.c.member_id == "wm_d").values(state="left", left_at=at("2026-11-20 09:00")))
    w.click(w.code, at("2026-12-01 09:00"), "wm_a")
    w.order("SO-1", "wm_a", at("2026-12-01 10:00"), 2000)
    w.refresh()
    week = KpiFilter(dt.date(2026, 12, 1), dt.date(2026, 12, 7))
    rows = {d.key: d for d in queries.gmv_decomposition(w.engine, week, Dimension.group, tz=TZ)}
    g1 = rows["g1"]
    assert (g1.store_code, g1.current.customers, g1.current.buyers, g1.current.gmv_fen) == ("SH001", 3, 1, 2000)
    assert rows["g2"].current.customers == 2
    with pytest.raises(queries.KpiQueryError):
        queries.gmv_decomposition(w.engine, week, Dimension.post, tz=TZ)


def test_the_why_list_shows_each_order_with_its_rule_newest_first(world):
    """Tried: ordering by order id (SO-1, paid earlier, came first)."""
    w = world
    w.click(w.code, at("2026-12-01 09:00"), "wm_a")
    w.order("SO-2", "wm_a", at("2026-12-01 11:00"), 2000)
    w.order("SO-1", "wm_b", at("2026-12-01 10:00"), 1000)
    w.refresh()
    rows, total = queries.order_attributions(w.engine, KpiFilter(dt.date(2026, 12, 1), dt.date(2026, 12, 1)),
                                             limit=10, offset=0)
    assert total == 2
    assert [(r.order_id, r.rule, r.amount_fen) for r in rows] == [
        ("SO-2", AttributionRule.last_click, 2000), ("SO-1", AttributionRule.customer_store, 1000)]
    assert rows[0].paid_at == at("2026-12-01 11:00") and rows[0].click_at == at("2026-12-01 09:00")
    only_post, n = queries.order_attributions(w.engine, KpiFilter(dt.date(2026, 12, 1), dt.date(2026, 12, 1),
                                                                  template_id="breakfast"), limit=10, offset=0)
    assert (n, [r.order_id for r in only_post]) == (1, ["SO-2"])


@pytest.fixture
def cli_db(world, db_url, monkeypatch):
    from scrm.config import reset_settings_cache
    from scrm.db import dispose_engines

    monkeypatch.setenv("SCRM_DATABASE__URL", db_url)
    monkeypatch.setenv("SCRM_SOP__TIMEZONE", "Asia/Shanghai")
    reset_settings_cache()
    yield world
    dispose_engines()
    reset_settings_cache()


def test_the_commands_refresh_and_rebuild_and_say_what_they_did(cli_db):
    """Tried: printing an empty report instead of the refresh's (it said 0 orders)."""
    w = cli_db
    w.click(w.code, at("2026-12-01 09:00"), "wm_a")
    w.order("SO-1", "wm_a", at("2026-12-01 10:00"), 2000)
    result = runner.invoke(kpi_app, ["refresh"])
    assert result.exit_code == 0, result.output
    assert "1 clicks, 1 orders attributed (0 moved by late clicks), 0 refunds, 1 posts delivered" in result.output
    again = runner.invoke(kpi_app, ["refresh"])
    assert "0 clicks, 0 orders attributed" in again.output
    rebuilt = runner.invoke(kpi_app, ["rebuild"])
    assert rebuilt.exit_code == 0 and "rebuilt in " in rebuilt.output
    assert "1 clicks, 1 orders attributed" in rebuilt.output
    assert w.row(Dimension.post, str(w.post_id)).gmv_fen == 2000


def test_an_order_committed_late_is_not_skipped(world, db_url):
    """PostgreSQL hands out ids at insert and commits in any order: an order inserted first but
    committed after a later one must still be rolled up. The refresh waits for the slow insert
    (a SHARE lock on the table), then takes both.
    Tried: reading max(id) without the lock (SO-SLOW was never attributed, even by a second refresh)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers: no id commits out of order")
    w = world
    o = Order.__table__

    def row(order_id: str) -> dict:
        return dict(source="shop", order_id=order_id, paid_at=at("2026-12-01 10:00"), amount_fen=100, refunded_fen=0,
                    items=[], external_userid="wm_a", matched_by="external_userid", created_at=at("2026-12-01 10:00"))

    slow = w.engine.connect()
    tx = slow.begin()
    slow.execute(insert(o).values(row("SO-SLOW")))  # takes the smaller id, not committed
    w.order("SO-FAST", "wm_a", at("2026-12-01 10:05"), 100)
    done = threading.Event()
    reports = []

    def refresh() -> None:
        reports.append(w.refresh())
        done.set()

    threading.Thread(target=refresh, daemon=True).start()
    try:
        assert not done.wait(0.5), "the refresh did not wait for the insert in flight"
    finally:
        tx.commit()
        slow.close()
    wait_until(done.is_set, timeout=20, what="the refresh")
    w.refresh()
    assert w.attribution("SO-SLOW") is not None and w.attribution("SO-FAST") is not None
    assert reports[0].orders == 2
