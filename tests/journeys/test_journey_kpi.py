"""A 1:1 journey message in the ledger changes no group figure (SQLite and PostgreSQL): the group
table (posts delivered, members reached, clicks), the owners' compliance and the post labels read
group posts only; the journey's coupon clicks still count, under its journey and post, no group.

Mutations tried: the ``audience == group`` filters taken out of the delivery rollup (both: the
customer appeared as a group with a delivered post: failed; either one alone is covered by the other,
the chats listed and the posts read, and the test passed); out of the compliance query (the owner's due
count went from 1 to 2: failed); the click rollup's customer chat blanking removed (a group row
keyed by the customer's id appeared: failed)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import insert

from scrm.kpi.compliance import owner_compliance
from scrm.kpi.report import Dimension, KpiFilter
from scrm.sop.models import Audience, PostStatus, SopPost, TrackedLink
from tests.kpi.world import TZ, World, at


def group_figures(w: World):
    """Every group's row (the "" row is "no group": where a journey's clicks go)."""
    return sorted((r.key, r.posts_delivered, r.members_reached, r.clicks, r.unique_clicks)
                  for r in w.table(Dimension.group).rows if r.key)


def compliance(w: World):
    f = KpiFilter(dt.date(2026, 11, 1), dt.date(2026, 12, 31))
    return [(r.owner_userid, r.store_code, r.due, r.sent_on_time) for r in owner_compliance(
        w.engine, f, tz=TZ, now=at("2026-12-02 00:00"), use_rollups=False)]


def test_a_journey_message_changes_no_group_figure(engine):
    w = World(engine)
    w.store("SH001", "上海一店")
    w.group("g1", "SH001", name="上海一店福利群", members=["wm_a", "wm_b"], joined=at("2026-11-20 09:00"))
    w.customer("wm_a", state="st:SH001:1", added=at("2026-11-20 09:00"))
    _, code = w.post("g1", "breakfast", at("2026-12-01 08:00"), code="kBREAKFAST1")
    w.click(code, at("2026-12-01 08:30"), "wm_b")
    w.refresh()
    groups, owners = group_figures(w), compliance(w)
    assert groups == [("g1", 1, 2, 1, 1)] and owners == [("owner", "SH001", 1, 1)]

    sent = at("2026-12-01 10:00")
    with engine.begin() as conn:
        post_id = conn.execute(insert(SopPost.__table__).values(
            day=dt.date(2026, 12, 1), audience=Audience.customer, chat_id="wm_a", slot=1, template_id="dormant-winback",
            step_key="lc:1:dormant", template_digest="d", channel="owner_task", sender="owner", scheduled_for=sent,
            window_ends_at=sent + dt.timedelta(hours=3), status=PostStatus.sent, sent_at=sent, sent_by="owner",
        ).returning(SopPost.__table__.c.id)).scalar_one()
        conn.execute(insert(TrackedLink.__table__).values(code="kJOURNEY1", post_id=post_id, position=0, chat_id="wm_a",
                                                          template_id="dormant-winback", day=dt.date(2026, 12, 1),
                                                          url="https://m.example.com/coupon"))
    w.click("kJOURNEY1", at("2026-12-01 10:30"), "wm_a")
    w.refresh()

    assert group_figures(w) == groups
    no_group = w.row(Dimension.group, "")
    assert no_group is not None and (no_group.clicks, no_group.posts_delivered, no_group.members_reached) == (1, 0, 0)
    assert compliance(w) == owners
    journey = w.row(Dimension.template, "dormant-winback")
    assert journey is not None and (journey.clicks, journey.unique_clicks, journey.posts_delivered) == (1, 1, 0)
    post = w.row(Dimension.post, str(post_id))
    assert post is not None and "1:1 客户消息" in post.label and "wm_a" not in post.label
