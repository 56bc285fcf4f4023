"""Rule tags applied per follow relation through the real WeComClient against the sandbox, on SQLite
and PostgreSQL: created once in scrm's group, swapped when the layer changes, free when nothing
changed, hand-set tags untouched, failures leave the customer dirty (scrm/layers/tagsync.py).

Each test names the mutation of tagsync.py that was tried to see it fail."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, update
from sqlmodel import Session

from scrm.layers.models import CustomerLayer
from scrm.tags.models import RuleTagFailure
from tests.tags.world import GROUP, World

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


@pytest.fixture
def world(engine, clock) -> World:
    return World(engine, clock)


def test_rule_tags_are_created_once_in_scrms_group_and_applied_to_every_relation(world):
    """Mutations tried: ADD_BATCH = 1 (one add_corp_tag per tag: fails); ``ensure_rule_tags`` taking
    every wanted key as missing (the tags are made again as 分层·新客·2 …: fails); the store key
    dropped from ``desired_tags`` (门店 tag missing: fails)."""
    a = world.customer("阿青", userids=("zhangsan", "lisi"), bits=0b01)
    b = world.customer("宝儿", layer="first", store="SH001")
    report = world.sync()
    assert world.calls("externalcontact/add_corp_tag") == 1  # every tag of the run in one call
    group = world.group()
    assert {world.sandbox.tags[t].name for t in group.tag_ids} == {
        "分层·新客", "分层·首购", "门店·国贸店", "门店·静安店", "区域·北京", "区域·上海", "近7天点击未下单"}
    assert world.wecom_tags(a) == world.wecom_tags(a, "lisi") == {"分层·新客", "门店·国贸店", "区域·北京",
                                                                   "近7天点击未下单"}
    assert world.wecom_tags(b) == {"分层·首购", "门店·静安店", "区域·上海"}
    assert (report.customers, report.relations, report.calls, report.cleaned) == (2, 3, 3, 2)
    assert not world.dirty(a) and not world.dirty(b)
    # scrm's copy of the relation is what WeCom now has, and it knows which tags it put there.
    assert set(world.scrm_tag_ids(a)) == set(world.sandbox.follows[("zhangsan", a)].tag_ids)
    assert set(world.marks(a)) == {"layer:new", "store:BJ001", "city:北京", "tag:clicker"}
    # A third customer with the same tags: nothing created, the same ids.
    c = world.customer("承志")
    before = world.rule_tags()
    world.sync()
    assert world.calls("externalcontact/add_corp_tag") == 1 and world.rule_tags() == before
    assert len([g for g in world.sandbox.tag_groups.values() if g.group_name == GROUP]) == 1
    assert world.wecom_tags(c) == {"分层·新客", "门店·国贸店", "区域·北京"}


def test_a_layer_change_adds_the_new_tag_and_removes_the_old_in_one_call_per_relation(world):
    """Mutation tried: ``remove`` left empty (the old layer tag stays on the relation: fails)."""
    a = world.customer("阿青", userids=("zhangsan", "lisi"), bits=0b01)
    world.sync()
    old = world.rule_tags()["layer:new"][0]
    world.set_layer(a, "dormant", bits=0b10)
    calls = world.calls()
    report = world.sync()
    assert world.calls() - calls == 2 == report.calls  # one per relation: adds and removes together
    for u in ("zhangsan", "lisi"):
        assert world.wecom_tags(a, u) == {"分层·沉睡", "门店·国贸店", "区域·北京", "高客单"}
        assert old not in world.sandbox.follows[(u, a)].tag_ids
    assert (report.added, report.removed) == (4, 4)
    assert "layer:new" not in world.marks(a) and "layer:dormant" in world.marks(a)
    # A store move swaps the store and city tags.
    world.set_layer(a, "dormant", store="SH001", bits=0b10)
    world.sync()
    assert world.wecom_tags(a) == {"分层·沉睡", "门店·静安店", "区域·上海", "高客单"}


def test_unchanged_customers_cost_no_mark_tag_call(world):
    """200 customers synced, then all marked dirty again with the same layer: 0 calls, all cleared.
    Mutation tried: ``add`` not checking what the relation already has (every desired tag re-added:
    200 calls: fails)."""
    ids = [world.customer(f"客{i}", layer=("new", "first")[i % 2], bits=i % 4) for i in range(200)]
    first = world.sync()
    assert first.calls == 200 and first.cleaned == 200
    for eid in ids:
        world.mark_dirty(eid)
    calls = world.calls()
    again = world.sync()
    assert world.calls() - calls == 0 and world.calls("externalcontact/add_corp_tag") == 1
    assert (again.customers, again.unchanged, again.calls, again.cleaned) == (200, 200, 0, 200)
    assert not any(world.dirty(e) for e in ids)


def test_hand_set_tags_inside_and_outside_scrms_group_survive_every_sync(world):
    """Mutations tried: ``remove`` computed over every tag on the relation instead of scrm's rule tags
    (the VIP and 手工重点 tags go: fails); every tag in scrm's group counted as a rule tag (手工重点
    goes: fails)."""
    a = world.customer("阿青", bits=0b01)
    world.sync()
    vip = world.sandbox.admin_create_tag("VIP", group_name="客户等级")["tag_id"]
    mine = world.sandbox.admin_create_tag("手工重点", group_id=world.group().group_id)["tag_id"]
    # Same name as a rule tag but in another group: never adopted, never touched.
    twin = world.sandbox.admin_create_tag("分层·沉睡", group_name="运营手工")["tag_id"]
    world.tag_event()
    world.sandbox.employee_edits_customer("zhangsan", a, add_tags=[vip, mine, twin])
    world.fetch(a)
    for layer, bits in (("dormant", 0b10), ("first", 0), ("new", 0b11)):
        world.set_layer(a, layer, bits=bits)
        world.sync()
        on = set(world.sandbox.follows[("zhangsan", a)].tag_ids)
        assert {vip, mine, twin} <= on, layer
    assert world.rule_tags()["layer:dormant"][0] != twin
    assert world.wecom_tags(a) == {"VIP", "手工重点", "分层·沉睡", "分层·新客", "门店·国贸店", "区域·北京",
                                   "近7天点击未下单", "高客单"}  # the twin stays; the rule tag 分层·沉睡 went


def test_a_failing_relation_leaves_the_customer_dirty_and_behind_the_others(world):
    """A refusal on one of two relations: the other is tagged, the customer stays dirty with the
    reason stored, the next run takes other dirty customers first, and a later success clears it.
    Mutations tried: clearing tags_dirty regardless of failures (fails); ordering the queue by
    computed_at only (the failed customer is taken first: fails)."""
    a = world.customer("阿青", userids=("zhangsan", "lisi"))
    world.sandbox.inject_fault("externalcontact/mark_tag", 60011, times=1)  # no permission for the member
    report = world.sync()
    assert world.dirty(a) and report.left_dirty == 1 and report.cleaned == 0
    (failure,) = report.failures
    other = ({"zhangsan", "lisi"} - {failure.userid}).pop()
    assert (failure.errcode, failure.external_userid) == (60011, a)
    assert "60011" in failure.describe() and "+分层·新客" in failure.describe()
    assert world.wecom_tags(a, other) == {"分层·新客", "门店·国贸店", "区域·北京"}  # the other relation went on
    assert world.wecom_tags(a, failure.userid) == set()
    with Session(world.engine) as s:
        assert s.get(RuleTagFailure, a).errcode == 60011
    b = world.customer("宝儿")
    nxt = world.sync(limit=1)
    assert nxt.customers == 1 and not world.dirty(b) and world.dirty(a)
    world.sync()
    assert not world.dirty(a) and world.wecom_tags(a) == {"分层·新客", "门店·国贸店", "区域·北京"}
    with Session(world.engine) as s:
        assert s.get(RuleTagFailure, a) is None


def test_a_customer_recomputed_during_the_sync_stays_dirty(world):
    """Mutation tried: clearing without the computed_at condition (fails)."""
    a = world.customer("阿青")
    real = world.client

    class Racing:
        def __getattr__(self, name):
            return getattr(real, name)

        def mark_tag(self, userid, external_userid, **kw):
            real.mark_tag(userid, external_userid, **kw)
            world.set_layer(external_userid, "first")  # the pass recomputed them meanwhile

    world.sync(client=Racing())
    assert world.dirty(a)
    world.sync()
    assert not world.dirty(a) and world.wecom_tags(a) == {"分层·首购", "门店·国贸店", "区域·北京"}


def test_a_relation_gone_in_wecom_is_not_a_failure(world):
    """scrm still thinks the relation is active; WeCom answers 84061. Mutation tried: 84061 treated
    as a failure (the customer stays dirty forever: fails)."""
    a = world.customer("阿青", userids=("zhangsan", "lisi"))
    del world.sandbox.follows[("lisi", a)]  # deleted in WeCom; the event has not arrived yet
    report = world.sync()
    assert report.gone == 1 and not report.failures and not world.dirty(a)
    assert world.wecom_tags(a) == {"分层·新客", "门店·国贸店", "区域·北京"}


def test_a_rule_tag_a_person_removed_is_not_put_back_until_it_stops_applying(world):
    """Mutations tried: no override (the layer tag is put back at the next sync: fails); the override
    kept when the tag stops applying (after leaving and re-entering the layer it stays off: fails)."""
    a = world.customer("阿青")
    world.sync()
    new_tag = world.tag_id("分层·新客")
    world.sandbox.employee_edits_customer("zhangsan", a, remove_tags=[new_tag])
    world.fetch(a)  # the edit_external_contact event's fetch
    world.set_layer(a, "new", bits=0b01)  # a condition tag changes; still in the same layer
    report = world.sync()
    assert report.overrides == 1 and not world.dirty(a)
    assert world.wecom_tags(a) == {"门店·国贸店", "区域·北京", "近7天点击未下单"}
    assert world.marks(a)["layer:new"].removed_by_hand_at is not None
    world.mark_dirty(a)
    assert world.sync().calls == 0  # still off, nothing to do
    world.set_layer(a, "first", bits=0b01)
    world.sync()
    assert "layer:new" not in world.marks(a)  # the override ended with the layer
    world.set_layer(a, "new", bits=0b01)
    world.sync()
    assert "分层·新客" in world.wecom_tags(a)


def test_dirty_rows_of_customers_without_active_relations_are_cleared(world):
    """Mutation tried: clearing only customers that have relations (they would be re-read forever:
    fails)."""
    a = world.customer("阿青")
    with world.engine.begin() as conn:
        conn.execute(update(CustomerLayer.__table__).values(tags_dirty=True))
    from scrm.contacts.models import FollowRelation

    with world.engine.begin() as conn:
        conn.execute(update(FollowRelation.__table__).values(status="deleted_by_employee"))
    report = world.sync()
    assert report.relations == 0 and report.calls == 0 and not world.dirty(a)
    with world.engine.connect() as conn:
        assert conn.execute(select(CustomerLayer.__table__.c.tags_dirty)).scalar_one() is False
    assert world.now.tzinfo is dt.UTC
