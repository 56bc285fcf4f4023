"""The tag-event path as the lead wires it: the sandbox's admin console posts change_external_tag,
the dispatch (``Processor``) re-reads the library with ``apply_tag_library`` and calls the
``on_tag_library_changed`` hook, which runs ``reconcile_rule_tags``; the next sync follows.
Mutation tried: the hook not wired (the deleted tag's customers are not marked dirty: fails)."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import insert, select

from scrm.callbacks.dispatch import Processor
from scrm.callbacks.models import CallbackInbox
from scrm.db import utcnow
from scrm.layers.tagsync import reconcile_rule_tags
from tests.tags.world import World

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


def deliver(world: World, processor: Processor) -> None:
    """Store the callbacks the sandbox holds in the inbox and apply them, as the worker does."""
    for d in list(world.sandbox.callbacks):
        with world.engine.begin() as conn:
            conn.execute(insert(CallbackInbox.__table__).values(
                dedup_key=hashlib.sha256(d.plaintext.encode()).hexdigest(), corp_id=world.sandbox.corp_id,
                event="change_external_tag", plaintext=d.plaintext, received_at=utcnow(), status="pending"))
            inbox_id = conn.execute(select(CallbackInbox.__table__.c.id)
                                    .order_by(CallbackInbox.__table__.c.id.desc())).first()[0]
        processor.process(inbox_id)
    world.sandbox.callbacks.clear()


def test_a_tag_event_reconciles_through_the_dispatch_hook(engine, clock):
    world = World(engine, clock)
    world.sandbox.hold_callbacks()
    processor = Processor(engine, world.client, on_tag_library_changed=lambda: reconcile_rule_tags(
        engine, world.client, world.rules, now=world.now))
    a = world.customer("阿青")
    world.sync()
    renamed = world.tag_id("门店·国贸店")
    world.sandbox.admin_edit_tag(renamed, name="国贸旗舰店")
    world.sandbox.admin_delete_tag(world.tag_id("分层·新客"))
    deliver(world, processor)
    assert world.rule_tags()["store:BJ001"] == (renamed, "国贸旗舰店")
    assert "layer:new" not in world.rule_tags() and world.dirty(a)
    world.sync()
    assert world.wecom_tags(a) == {"分层·新客", "国贸旗舰店", "区域·北京"} and not world.dirty(a)
