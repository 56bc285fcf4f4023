"""Issue 13's must-show, end to end, through the sandbox and the signed order API, with a
controllable clock (SQLite and PostgreSQL):

1. A customer adds a store clerk through the store's QR state; the callback's worker marks them
   for a re-layer (debounced: one scheduled job) and the job puts them in 新客.
2. Their first order (order API) moves them to 首单客, a third order within 30 days to 复购客, and
   60 days of silence (the nightly full pass at a later clock) to 沉睡 — on the way back to 首单客
   once no order is left in the last 30 days. Each move is in the layer history with its rule.
3. After each move the tag sync puts the matching rule tags on the sandbox's follow relation and
   takes the old ones off; a tag the clerk set by hand (outside scrm's tag group) survives it all.
4. The dormant journey plans its 1:1 message once, for three days later at 10:00; the clerk sends
   it from the toolbar page opened in the 1:1 chat (claim, then confirm); planning on the following
   days plans nothing more.

Mutations tried (each made this test fail, then was restored): the order API's layer hook not
called (the customer stayed 新客 after the first order); the tag sync's remove list left empty (分层·新客
stayed on the relation next to 分层·首单客). Planning the journey twice is refused twice over (the
planner skips a change already in the ledger, and the ledger's unique key would refuse the row), so
no single mutation shows here; tests/journeys covers each on its own.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from scrm.config import Settings, SopSettings
from scrm.contacts.models import Customer
from scrm.journeys.jobs import load_journeys, run_journey_plan
from scrm.layers.jobs import drain_relayer, run_full_pass
from scrm.layers.lint import load_ruleset
from scrm.layers.models import CustomerLayer, LayerChange
from scrm.layers.notify import relayer_notifier
from scrm.layers.tagsync import LocalRateLimiter, sync_dirty_tags
from scrm.orders.signing import RedisNonces, Verifier, sign
from scrm.sop import jobs
from scrm.sop.models import Audience, PostStatus, SopPost
from scrm.stores.models import Store
from scrm.web.app import create_app
from scrm.web.toolbar import ToolbarConfig, toolbar_router
from tests.pipeline_harness import harness
from workers import actors

ROOT = Path(__file__).resolve().parents[1]
TZ = ZoneInfo("Asia/Shanghai")
ORDER_SECRET = "layers-e2e-order-secret"
TAG_GROUP = "scrm自动标签"
HAND_TAG = "老客户介绍"
START = dt.datetime(2026, 8, 3, 9, 0, tzinfo=TZ).astimezone(dt.UTC)


def signed(body: dict) -> tuple[bytes, dict]:
    raw = json.dumps(body, ensure_ascii=False).encode()
    ts, nonce = str(int(time.time())), secrets.token_hex(12)
    return raw, {"Content-Type": "application/json", "X-Scrm-Timestamp": ts, "X-Scrm-Nonce": nonce,
                 "X-Scrm-Signature": sign(ORDER_SECRET, ts, nonce, raw)}


def relation_tags(sandbox, userid: str, external_userid: str) -> set[str]:
    """The tag names WeCom (the sandbox) has on the follow relation."""
    follow = sandbox.follow(userid, external_userid)
    return {sandbox.tags[t].name for t in follow.tag_ids if t in sandbox.tags}


def layer_of(engine, external_userid: str) -> str | None:
    with Session(engine) as s:
        row = s.get(CustomerLayer, external_userid)
        return row.layer if row else None


def test_orders_clicks_and_silence_move_a_customer_tags_follow_and_the_dormant_journey_goes_once(
        engine, redis_url, tmp_path):
    clock = {"now": START}
    rules = load_ruleset(ROOT / "layers")
    settings = Settings(sop=SopSettings(templates_dir=tmp_path / "no-sop", spread_minutes=0),
                        layers={"rules_dir": ROOT / "layers", "debounce_seconds": 5, "tag_group_name": TAG_GROUP},
                        journeys={"templates_dir": ROOT / "journeys"})
    with harness(engine, redis_url) as h:
        sb = h.sandbox
        sb.clock = lambda: clock["now"].timestamp()
        h.redis.delete("scrm:layers:dirty", "scrm:layers:scheduled")
        scheduled: list[int] = []
        notify = relayer_notifier(h.redis, settings, schedule=scheduled.append)
        h.processor.on_customers_changed = notify
        with Session(engine) as s:
            s.add(Store(code="A", name="南京西路店", city="上海"))
            s.commit()
        sb.add_member("clerk_a", "店员小周")
        h.start_worker()

        def relayer() -> None:
            drain_relayer(engine, h.redis, settings, now=clock["now"], ruleset=rules, schedule=scheduled.append)

        def sync_tags() -> None:
            report = sync_dirty_tags(engine, h.client, rules, now=clock["now"], limit=1000,
                                     rate=LocalRateLimiter(3000), group_name=TAG_GROUP)
            assert not report.failures, report.failures

        # 1. The customer scans the clerk's store QR code (state st:A:1) and is layered 新客.
        eid = sb.add_employee("clerk_a", name="小周的客人", state="st:A:1").data["external_userid"]
        h.drain()
        with Session(engine) as s:
            assert s.get(Customer, eid) is not None, "the add callback was applied"
        assert len(scheduled) == 1, "the add event scheduled one (delayed) re-layer job"
        relayer()
        assert layer_of(engine, eid) == "new"
        sync_tags()
        assert {"分层·新客", "门店·南京西路店", "区域·上海"} <= relation_tags(sb, "clerk_a", eid)

        # The clerk adds a tag of their own in WeCom, outside scrm's tag group.
        hand = sb.admin_create_tag(HAND_TAG, group_name="店员手工标签").data["tag_id"]
        sb.employee_edits_customer("clerk_a", eid, add_tags=[hand])
        h.drain()
        relayer()  # the edit marked them too: still 新客
        assert layer_of(engine, eid) == "new"

        orders_app = create_app(crypto=h.crypto, engine=engine, send=actors.enqueue_callbacks,
                                orders_verifier=Verifier(secret=ORDER_SECRET, nonces=RedisNonces(h.redis)),
                                on_customers_changed=notify)
        with TestClient(orders_app, base_url="http://scrm") as web:
            def order(n: int, at: dt.datetime, amount_fen: int = 2800) -> None:
                clock["now"] = at
                raw, headers = signed({"order_id": f"L13-{n}", "paid_at": at.isoformat(), "amount_fen": amount_fen,
                                       "items": [{"sku": "latte", "qty": 1}], "external_userid": eid})
                assert web.post("/api/orders", content=raw, headers=headers).status_code == 201
                relayer()

            # 2. First order -> 首单客; the tags follow, the hand-set tag stays.
            order(1, START + dt.timedelta(days=1))
            assert layer_of(engine, eid) == "first_time"
            sync_tags()
            tags = relation_tags(sb, "clerk_a", eid)
            assert "分层·首单客" in tags and "分层·新客" not in tags and HAND_TAG in tags

            # A third order within 30 days -> 复购客.
            order(2, START + dt.timedelta(days=10))
            assert layer_of(engine, eid) == "first_time"
            order(3, START + dt.timedelta(days=20))
            assert layer_of(engine, eid) == "repeat"
            sync_tags()
            tags = relation_tags(sb, "clerk_a", eid)
            assert {"分层·复购客", "30天内下单3次+"} <= tags and "分层·首单客" not in tags and HAND_TAG in tags

        # 3. Sixty days without an order or a click: the nightly pass makes them 沉睡.
        last_order = START + dt.timedelta(days=20)
        clock["now"] = last_order + dt.timedelta(days=59, hours=23)
        run_full_pass(engine, settings, now=clock["now"], ruleset=rules)
        # Not yet dormant; no longer 复购客 either (no order in the last 30 days): back to 首单客.
        assert layer_of(engine, eid) == "first_time", "59 days and 23 hours is not yet 60 days"
        clock["now"] = last_order + dt.timedelta(days=60, minutes=1)
        run_full_pass(engine, settings, now=clock["now"], ruleset=rules)
        assert layer_of(engine, eid) == "dormant"
        with Session(engine) as s:
            history = [(c.from_layer, c.to_layer, c.rule_id) for c in s.exec(
                select(LayerChange).where(LayerChange.external_userid == eid).order_by(LayerChange.id)).all()]
        assert history == [(None, "new", None), ("new", "first_time", "bought"),
                           ("first_time", "repeat", "orders-3-30d"), ("repeat", "first_time", "bought"),
                           ("first_time", "dormant", "quiet-60d")]
        sync_tags()
        tags = relation_tags(sb, "clerk_a", eid)
        assert "分层·沉睡" in tags and not {"分层·复购客", "分层·首单客", "30天内下单3次+"} & tags and HAND_TAG in tags

        # 4. The dormant journey: planned once, for three days later at 10:00 ...
        turned_dormant = clock["now"]
        run_journey_plan(engine, settings, now=clock["now"])
        clock["now"] += dt.timedelta(days=1)
        run_journey_plan(engine, settings, now=clock["now"])
        with Session(engine) as s:
            rows = list(s.exec(select(SopPost).where(SopPost.audience == Audience.customer)).all())
        assert len(rows) == 1
        [post] = rows
        due_day = turned_dormant.astimezone(TZ).date() + dt.timedelta(days=3)
        assert (post.chat_id, post.template_id, post.sender, post.day) == (eid, "dormant-winback", "clerk_a", due_day)
        assert post.scheduled_for.astimezone(TZ).time() == dt.time(10, 0)

        # ... sent by the clerk from the toolbar page opened in the customer's 1:1 chat ...
        clock["now"] = dt.datetime.combine(due_day, dt.time(10, 5), TZ).astimezone(dt.UTC)
        jobs.fire(engine, lambda ids: None, now=clock["now"])
        toolbar_app = create_app(crypto=h.crypto, engine=engine, send=actors.enqueue_callbacks)
        journeys = lambda: load_journeys(ROOT / "journeys", settings.sop)  # noqa: E731
        toolbar_app.api.include_router(toolbar_router(ToolbarConfig(
            engine=engine, client=h.client, corp_id=sb.corp_id, agent_id=1000002, secret="layers-e2e",
            base_url="http://scrm", authorize_url="http://sandbox/sandbox/oauth/authorize", tz=TZ,
            templates=lambda: {}, clock=lambda: clock["now"], sandbox=True, journeys=journeys)))
        with TestClient(toolbar_app, base_url="http://scrm") as web:
            code = sb.oauth_code("clerk_a")  # what WeCom's OAuth hands the page opened in the chat
            assert web.get("/toolbar", params={"code": code, "state": "toolbar"},
                           follow_redirects=False).status_code == 302
            listed = web.get("/toolbar/api/posts").json()
            mine = [p for p in listed["posts"] if p["id"] == post.id]
            assert mine and mine[0]["chat_id"] == eid
            page = {"x-requested-with": "scrm-toolbar"}
            claim = web.post(f"/toolbar/api/posts/{post.id}/claim", json={"chat_id": eid}, headers=page)
            assert claim.status_code == 200, claim.text
            assert claim.json()["content"]["text"]["content"].startswith("小周的客人，好久不见")
            confirm = web.post(f"/toolbar/api/posts/{post.id}/confirm", json={}, headers=page)
            assert confirm.json()["status"] == PostStatus.sent

        # ... and not planned again on the following day.
        clock["now"] += dt.timedelta(days=1)
        run_journey_plan(engine, settings, now=clock["now"])
        with Session(engine) as s:
            rows = list(s.exec(select(SopPost).where(SopPost.audience == Audience.customer)).all())
        assert [(r.id, r.status) for r in rows] == [(post.id, PostStatus.sent)]
