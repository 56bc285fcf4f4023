"""What people do to rule tags in WeCom is reconciled, not fought (scrm/layers/tagsync.py): a
rename is accepted and kept, a YAML rename edits the same tag, a deleted tag or group is made again
and re-applied. Through the real WeComClient against the sandbox's admin console actions (which
fire change_external_tag callbacks like WeCom; the dispatch's part, re-reading the library, is done
by ``World.tag_event``).

Each test names the mutation of tagsync.py that was tried to see it fail."""

from __future__ import annotations

import pytest

from tests.tags.world import GROUP, World, ruleset

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")

EDIT = "externalcontact/edit_corp_tag"


@pytest.fixture
def world(engine, clock) -> World:
    return World(engine, clock)


def test_a_rule_tag_renamed_in_wecom_keeps_its_id_and_is_not_renamed_back(world):
    """Mutations tried: reconcile not recording the new name (fails on the recorded name);
    rename_rule_tags comparing WeCom's name instead of the rule name (renamed back: fails)."""
    a = world.customer("阿青")
    world.sync()
    tid = world.tag_id("分层·新客")
    result = world.sandbox.admin_edit_tag(tid, name="新朋友")
    assert [d.delivered for d in result.deliveries] == [False]  # the callback was posted (no receiver here)
    report = world.tag_event()
    assert report.renamed == ["layer:new"] and not report.forgotten
    assert world.rule_tags()["layer:new"] == (tid, "新朋友")
    b = world.customer("宝儿")
    world.mark_dirty(a)
    world.sync()
    world.sync()
    assert world.calls(EDIT) == 0 and world.sandbox.tags[tid].name == "新朋友"
    assert "新朋友" in world.wecom_tags(a) and "新朋友" in world.wecom_tags(b)
    assert world.sandbox.follows[("zhangsan", b)].tag_ids.count(tid) == 1


def test_a_rename_in_the_rules_edits_the_same_tag(world):
    """The YAML renames the dormant layer: edit_corp_tag on the same id, no new tag, relations keep it.
    Mutation tried: rename_rule_tags skipping every tag (the tag keeps its old name: fails)."""
    a = world.customer("阿青", layer="dormant")
    world.sync()
    tid = world.tag_id("分层·沉睡")
    world.rules = ruleset(dormant_name="久未到店")
    world.mark_dirty(a)
    report = world.sync()
    assert report.tags_renamed == 1 and report.calls == 0 and world.calls(EDIT) == 1
    assert world.sandbox.tags[tid].name == "分层·久未到店"
    assert world.rule_tags()["layer:dormant"] == (tid, "分层·久未到店")
    assert "分层·久未到店" in world.wecom_tags(a)
    # A person renames it afterwards: accepted; only a later change of the rule renames it again.
    world.sandbox.admin_edit_tag(tid, name="沉睡客")
    world.tag_event()
    world.sync()
    assert world.sandbox.tags[tid].name == "沉睡客"
    world.rules = ruleset(dormant_name="沉睡")
    world.mark_dirty(a)
    world.sync()
    assert world.sandbox.tags[tid].name == "分层·沉睡" and world.calls(EDIT) == 2


def test_a_rule_tag_deleted_in_wecom_is_made_again_and_reapplied(world):
    """Mutation tried: reconcile not marking the carriers dirty (the tag is made again only for the
    next customer who changes: fails)."""
    a = world.customer("阿青", userids=("zhangsan", "lisi"))
    b = world.customer("宝儿", layer="first")
    world.sync()
    tid = world.tag_id("分层·新客")
    world.sandbox.admin_delete_tag(tid)
    assert "分层·新客" not in world.wecom_tags(a)  # WeCom took it off every relation
    report = world.tag_event()
    assert report.forgotten == ["layer:new"] and report.customers_dirtied == 1
    assert world.dirty(a) and not world.dirty(b)
    world.sync()
    new = world.tag_id("分层·新客")
    assert new != tid and world.rule_tags()["layer:new"] == (new, "分层·新客")
    assert "分层·新客" in world.wecom_tags(a) and "分层·新客" in world.wecom_tags(a, "lisi")
    assert not world.dirty(a)


def test_a_tag_deleted_before_its_event_arrived_is_made_again_on_40068(world):
    """mark_tag answers 40068 (the tag is gone, no event processed yet): the library is re-read, the
    tag made again and the relation retried once. Mutation tried: no retry (customer left dirty: fails)."""
    a = world.customer("阿青")
    world.sync()
    world.sandbox.delete_tags(tag_ids=[world.tag_id("门店·国贸店")])
    b = world.customer("宝儿")  # needs 门店·国贸店, which scrm still maps to the deleted id
    report = world.sync()
    assert not report.failures and not world.dirty(b)
    assert world.dirty(a)  # carried the deleted tag: marked dirty by the reconcile
    assert world.wecom_tags(b) == {"分层·新客", "门店·国贸店", "区域·北京"}
    world.sync()  # a was marked dirty by the reconcile: it gets the new tag too
    assert world.wecom_tags(a) == {"分层·新客", "门店·国贸店", "区域·北京"}


def test_scrms_group_deleted_in_wecom_is_made_again(world):
    """Mutation tried: reconcile not noticing the group's deletion (no customer marked dirty: fails)."""
    a = world.customer("阿青")
    world.sync()
    old_group = world.group().group_id
    world.sandbox.admin_delete_tag(old_group)
    report = world.tag_event()
    assert report.group_deleted and report.customers_dirtied == 1 and world.dirty(a)
    world.sync()
    assert world.group().group_id != old_group
    assert world.wecom_tags(a) == {"分层·新客", "门店·国贸店", "区域·北京"} and not world.dirty(a)
    assert world.rule_tags()["group"][0] == world.group().group_id


def test_a_stale_library_read_does_not_make_scrm_forget_a_live_tag(world):
    """A tag event's library read from before scrm made its tags, applied after: the mirror says
    scrm's tags are deleted. Reconcile asks WeCom by id and forgets nothing.
    Mutation tried: trusting the mirror (every rule tag forgotten, customers dirtied: fails)."""
    stale = world.client.get_corp_tags()  # read before scrm made anything
    a = world.customer("阿青")
    world.sync()
    from sqlmodel import Session

    from scrm.layers.tagsync import reconcile_rule_tags
    from scrm.tags import service as tag_library

    with Session(world.engine) as s:
        tag_library.apply_tag_library(s, stale)
        s.commit()
    report = reconcile_rule_tags(world.engine, world.client, world.rules, now=world.now)
    assert not report.forgotten and not report.group_deleted and not world.dirty(a)
    assert set(world.rule_tags()) == {"group", "layer:new", "store:BJ001", "city:北京"}


def test_a_tag_with_a_rule_tags_name_in_scrms_group_is_adopted_but_not_elsewhere(world):
    """A person made 分层·新客 in scrm's group (or scrm crashed after add_corp_tag): scrm uses it.
    The same name in another group is never used. Mutation tried: finding scrm's group by the tag
    names it holds instead of the group's name (the older group's tag is used: fails)."""
    world.sandbox.admin_create_tag("分层·新客", group_name="运营手工")  # listed first by WeCom (older)
    world.advance(1)
    made = world.sandbox.admin_create_tag("分层·新客", group_name=GROUP)
    world.tag_event()
    a = world.customer("阿青")
    world.sync()
    assert world.rule_tags()["layer:new"][0] == made["tag_id"]
    assert world.rule_tags()["group"][0] == made["group_id"]
    assert made["tag_id"] in world.sandbox.follows[("zhangsan", a)].tag_ids
    other = world.tag_id("分层·新客", group="运营手工")
    assert other not in world.sandbox.follows[("zhangsan", a)].tag_ids
