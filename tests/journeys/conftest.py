"""Journeys against the sandbox: a corp with an owner, customers they follow and a group of theirs,
the shipped journeys (plus a low-priority one on the same day as dormant-winback), a SopSender
that knows the journeys, and a clock shared by scrm and the sandbox. Layer changes are written
straight into ``layer_changes`` / ``customer_layers`` (the layering pass is another part)."""

from __future__ import annotations

import datetime as dt
import shutil
import textwrap
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select

from scrm.config import Settings, SopSettings
from scrm.journeys.jobs import load_journeys
from scrm.layers.models import CustomerLayer, LayerChange
from scrm.sop import jobs
from scrm.sop.models import Audience, SopPost
from scrm.sop.sender import SopSender
from scrm.stores.models import Store
from scrm.sync.service import full_sync
from tests.pipeline_harness import harness
from workers import actors

TZ = ZoneInfo("Asia/Shanghai")
D = dt.date(2026, 11, 2)  # the day the customer turns dormant
SHIPPED = Path(__file__).resolve().parents[2] / "journeys"
HOSTILE = "<img src=x onerror=alert(1)>"
# Same trigger and day as dormant-winback (priority 80), lower priority: it must lose the day.
SURVEY = """\
    id: dormant-survey
    name: 沉睡问卷
    priority: 20
    trigger: {to_layer: dormant}
    delay_days: 3
    at: "15:00"
    channel: owner_task
    text: "{{ customer.name }}，方便填个问卷吗？"
"""


def local(day, hour=0, minute=0):
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=TZ).astimezone(dt.UTC)


def move(engine, eid, to_layer, at, *, from_layer="active", home_store="A"):
    """The layering pass's writes for one move: a layer_changes row and the current layer."""
    with Session(engine) as s:
        s.add(LayerChange(external_userid=eid, from_layer=from_layer, to_layer=to_layer, rule_id="r",
                          home_store=home_store, changed_at=at))
        row = s.get(CustomerLayer, eid) or CustomerLayer(external_userid=eid, layer=to_layer)
        row.layer, row.since, row.home_store = to_layer, at, home_store
        s.add(row)
        s.commit()


def customer_rows(engine):
    with Session(engine) as s:
        return list(s.exec(select(SopPost).where(SopPost.audience == Audience.customer).order_by(SopPost.id)))


@pytest.fixture
def corp(engine, redis_url, tmp_path):
    clock = {"now": local(D, 6)}
    with harness(engine, redis_url) as h:
        sb = h.sandbox
        sb.clock = lambda: clock["now"].timestamp()
        sb.add_member("owner_a", "张三")
        sb.add_member("owner_b", "李四")
        wang = sb.add_customer(f"小王{HOSTILE}")
        li = sb.add_customer("小李")
        sb.add_follow("owner_a", wang.external_userid)
        sb.add_follow("owner_a", li.external_userid)
        group = sb.create_group("owner_a", "A店福利群", [wang.external_userid])
        full_sync(engine, h.client)
        with Session(engine) as s:
            s.add(Store(code="A", name="南京西路店", city="上海"))
            s.commit()
        folder = tmp_path / "journeys"
        shutil.copytree(SHIPPED, folder)
        (folder / "dormant-survey.yaml").write_text(textwrap.dedent(SURVEY), encoding="utf-8")
        settings = Settings(sop=SopSettings(templates_dir=tmp_path / "none", spread_minutes=0),
                            journeys={"templates_dir": folder}, layers={"rules_dir": tmp_path / "no-layers"})
        load = lambda: load_journeys(folder, settings.sop)  # noqa: E731
        sender = SopSender(engine, h.client, lambda: {}, tz=TZ, link_base="http://scrm", clock=lambda: clock["now"],
                           journeys=load)
        actors.set_sop_sender(sender)
        try:
            yield h, settings, clock, sender, load, (wang.external_userid, li.external_userid), group.chat_id
        finally:
            actors.set_sop_sender(None)


def fire(h, clock, sends=None):
    """The scheduler's fire job; the claimed mass sends are kept for the test to send."""
    out = [] if sends is None else sends
    return jobs.fire(h.engine, out.extend, now=clock["now"])
