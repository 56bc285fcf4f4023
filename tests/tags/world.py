"""A small corp for the tag-sync tests: the sandbox (WeCom) with members, customers and follow
relations, scrm's database with the same relations (fetched through the real client, as a contact
event does), stores, and customer_layers rows written directly (the layering pass is not under test).
"""

from __future__ import annotations

import datetime as dt
import itertools

from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scrm.contacts import service as contacts
from scrm.contacts.models import FollowRelation
from scrm.layers.models import CustomerLayer
from scrm.layers.rules import Condition, Count, Layer, RuleSet, TagRule, TagSettings
from scrm.layers.tagsync import LocalRateLimiter, SyncReport, reconcile_rule_tags, sync_dirty_tags
from scrm.sandbox import Sandbox, create_sandbox_app
from scrm.stores.models import Store
from scrm.tags import service as tag_library
from scrm.tags.models import RuleTag, RuleTagMark
from scrm.wecom.client import WeComClient

CORP, SECRET = "wwtagsync", "tag-secret"
GROUP = "scrm自动标签"
MARK = "externalcontact/mark_tag"
NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def ruleset(*, dormant_name: str = "沉睡", layer_tag: str | None = "分层·{name}") -> RuleSet:
    return RuleSet(
        layers=[Layer(id="new", name="新客", operation="欢迎"),
                Layer(id="first", name="首购", operation="复购券"),
                Layer(id="dormant", name=dormant_name, operation="唤醒")],
        default_layer="new",
        tags=TagSettings(layer_tag=layer_tag, rules=[
            TagRule(id="clicker", name="近7天点击未下单", when=Condition(unique_clicks=Count(min=1, within_days=7))),
            TagRule(id="big", name="高客单", when=Condition(orders=Count(min=1))),
        ]),
    )


class World:
    def __init__(self, engine: Engine, clock):
        self.engine = engine
        self.clock = clock
        self.sandbox = Sandbox(CORP, SECRET, clock=clock)
        for userid, name in (("zhangsan", "张三"), ("lisi", "李四")):
            self.sandbox.add_member(userid, name)
        self.api = TestClient(create_sandbox_app(self.sandbox), base_url="http://sandbox")
        self.client = WeComClient(CORP, SECRET, "http://sandbox/cgi-bin/", http=self.api, sleep=lambda s: None)
        self.rules = ruleset()
        self.now = NOW
        self._seq = itertools.count(1)
        with engine.begin() as conn:
            conn.execute(insert(Store.__table__), [
                {"code": "BJ001", "name": "国贸店", "city": "北京", "status": "open"},
                {"code": "SH001", "name": "静安店", "city": "上海", "status": "open"},
            ])

    # -- the corp ------------------------------------------------------------------------------
    def customer(self, name: str, *, userids: tuple[str, ...] = ("zhangsan",), layer: str = "new",
                 store: str | None = "BJ001", bits: int = 0) -> str:
        """A customer followed by ``userids`` in WeCom, fetched into scrm, with a dirty layer row."""
        c = self.sandbox.add_customer(name)
        for u in userids:
            self.sandbox.add_follow(u, c.external_userid)
        self.fetch(c.external_userid)
        self.set_layer(c.external_userid, layer, store=store, bits=bits)
        return c.external_userid

    def fetch(self, eid: str) -> None:
        """What a contact event does: externalcontact/get into follow_relations (tag_ids included)."""
        detail = self.client.get_external_contact(eid)
        with Session(self.engine) as s:
            contacts.apply_contact_detail(s, detail)
            s.commit()

    def set_layer(self, eid: str, layer: str, *, store: str | None = "BJ001", bits: int = 0,
                  dirty: bool = True) -> None:
        """What the layering pass does: the row, recomputed now (a new computed_at), dirty."""
        computed = self.now + dt.timedelta(microseconds=next(self._seq))
        values = dict(layer=layer, home_store=store, tag_bits=bits, computed_at=computed, tags_dirty=dirty)
        with self.engine.begin() as conn:
            done = conn.execute(update(CustomerLayer.__table__)
                                .where(CustomerLayer.__table__.c.external_userid == eid).values(**values)).rowcount
            if not done:
                conn.execute(insert(CustomerLayer.__table__).values(external_userid=eid, since=self.now, **values))

    def mark_dirty(self, eid: str) -> None:
        row = self.layer_row(eid)
        self.set_layer(eid, row["layer"], store=row["home_store"], bits=row["tag_bits"])

    # -- running -------------------------------------------------------------------------------
    def sync(self, *, limit: int = 1000, rate=None, client=None) -> SyncReport:
        return sync_dirty_tags(self.engine, client or self.client, self.rules, now=self.now, limit=limit,
                               rate=rate or LocalRateLimiter(10_000, clock=self.clock, sleep=self.advance),
                               group_name=GROUP)

    def tag_event(self):
        """What the dispatch does on a change_external_tag event, then the lead's hook."""
        library = self.client.get_corp_tags()
        with Session(self.engine) as s:
            tag_library.apply_tag_library(s, library)
            s.commit()
        return reconcile_rule_tags(self.engine, self.client, self.rules, now=self.now)

    def advance(self, seconds: float) -> None:
        self.clock.t += seconds

    # -- reading -------------------------------------------------------------------------------
    def calls(self, path: str = MARK) -> int:
        return sum(1 for _m, p in self.sandbox.api_calls if p == path)

    def wecom_tags(self, eid: str, userid: str = "zhangsan") -> set[str]:
        """Names of the tags on the relation in WeCom (the sandbox)."""
        f = self.sandbox.follows[(userid, eid)]
        return {self.sandbox.tags[t].name for t in f.tag_ids}

    def group(self):
        return next(g for g in self.sandbox.tag_groups.values() if g.group_name == GROUP)

    def tag_id(self, name: str, group: str = GROUP) -> str:
        g = next(g for g in self.sandbox.tag_groups.values() if g.group_name == group)
        return next(t for t in g.tag_ids if self.sandbox.tags[t].name == name)

    def scrm_tag_ids(self, eid: str, userid: str = "zhangsan") -> list[str]:
        with Session(self.engine) as s:
            rel = s.execute(select(FollowRelation).where(FollowRelation.userid == userid,
                                                         FollowRelation.external_userid == eid)).scalar_one()
            return list(rel.tag_ids)

    def layer_row(self, eid: str) -> dict:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(CustomerLayer.__table__)
                                     .where(CustomerLayer.__table__.c.external_userid == eid)).mappings().one())

    def dirty(self, eid: str) -> bool:
        return bool(self.layer_row(eid)["tags_dirty"])

    def rule_tags(self) -> dict[str, tuple[str, str]]:
        with Session(self.engine) as s:
            return {r.key: (r.tag_id, r.name) for r in s.execute(select(RuleTag)).scalars()}

    def marks(self, eid: str) -> dict[str, RuleTagMark]:
        with Session(self.engine) as s:
            return {m.key: m for m in s.execute(select(RuleTagMark).where(RuleTagMark.external_userid == eid))
                    .scalars()}
