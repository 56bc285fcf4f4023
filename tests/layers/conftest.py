"""Helpers for the layering tests: write an oracle ``World`` into the tables the pass reads, wipe
them between hypothesis examples, and read back what the pass stored."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scrm.contacts.models import Customer, FollowRelation
from scrm.groups.models import CustomerGroup, GroupMember
from scrm.layers.models import CustomerLayer, LayerChange
from scrm.layers.rules import RuleSet
from scrm.orders.models import Order
from scrm.sop.models import LinkClick
from scrm.stores.models import Store
from tests.layers.oracle import World

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)

TABLES = (LayerChange, CustomerLayer, GroupMember, CustomerGroup, LinkClick, Order, FollowRelation, Customer, Store)


def wipe(engine: Engine) -> None:
    with engine.begin() as conn:
        for model in TABLES:
            conn.execute(sa.delete(model.__table__))


def load(engine: Engine, w: World) -> None:
    with engine.begin() as conn:
        if w.stores:
            conn.execute(sa.insert(Store.__table__), [dict(code=c, name=c, city=city) for c, city in w.stores.items()])
        if w.customers:
            conn.execute(sa.insert(Customer.__table__), [dict(external_userid=e, name=e, mobiles=[], status=s)
                                                         for e, s in w.customers.items()])
        if w.follows:
            conn.execute(sa.insert(FollowRelation.__table__), [
                dict(id=i, userid=u, external_userid=e, state=st, status=s, added_at=t, tag_ids=[], remark_mobiles=[])
                for i, u, e, st, s, t in w.follows])
        if w.orders:
            conn.execute(sa.insert(Order.__table__), [
                dict(order_id=f"o{n}", paid_at=t, amount_fen=a, refunded_fen=r, items=[], external_userid=e)
                for n, (e, t, a, r) in enumerate(w.orders)])
        if w.clicks:
            conn.execute(sa.insert(LinkClick.__table__), [
                dict(event_id=f"e{n}", code="c", clicked_at=t, counted=c, external_userid=e)
                for n, (e, t, c) in enumerate(w.clicks)])
        if w.groups:
            conn.execute(sa.insert(CustomerGroup.__table__), [
                dict(chat_id=c, name=c, status=s, store_code=sc, tags=[]) for c, (s, sc) in w.groups.items()])
        if w.members:
            conn.execute(sa.insert(GroupMember.__table__), [
                dict(id=i, chat_id=c, member_id=m, member_type=2, state=s, joined_at=t)
                for i, c, m, s, t in w.members])


def stored(engine: Engine) -> dict[str, tuple[str, str | None, str | None, int]]:
    c = CustomerLayer.__table__.c
    with engine.connect() as conn:
        return {r.external_userid: (r.layer, r.rule_id, r.home_store, r.tag_bits)
                for r in conn.execute(sa.select(c.external_userid, c.layer, c.rule_id, c.home_store, c.tag_bits))}


def rows(engine: Engine, model: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(model.__table__)))


def ruleset(rules: list[dict] | None = None, tags: list[dict] | None = None, **extra: Any) -> RuleSet:
    """The catalogue of the issue's layers with the given rules (first match wins)."""
    layers = [dict(id=i, name=n, operation="op") for i, n in (
        ("new", "新客"), ("first", "首购"), ("repeat", "复购"), ("vip", "高价值"), ("dormant", "沉睡"),
        ("churned", "流失"))]
    return RuleSet.model_validate(dict(layers=layers, default_layer="new", rules=rules or [],
                                       tags=dict(rules=tags or []), **extra))


# The example rules: churned, VIP, repeat, first-time buyer, dormant after 60 silent days.
STANDARD = [
    dict(id="gone", layer="churned", when={"deleted": True}),
    dict(id="vip", layer="vip", when={"gmv": {"min": 2000}}),
    dict(id="dormant", layer="dormant", when={"days_since_last_active": {"min": 60}}),
    dict(id="repeat", layer="repeat", when={"orders": {"min": 2}}),
    dict(id="first", layer="first", when={"orders": {"min": 1, "max": 1}}),
]
