"""The demo week: `scrm run`'s first start fills the sandbox's demo chain with seven days of posts,
clicks and orders, played through the planner, the scheduler's fire, the sender, the toolbar's
claim/confirm, the /t/ redirect and the signed order API, so the dashboard has figures.

The stack is the sandbox corp in this process: the scrm web app (callbacks), the sandbox's HTTP
API, scrm's WeCom client, a real Redis and a dramatiq worker, with the demo chain synced and set
up as `scrm run` does. ``NOW`` is fixed (Monday 2026-11-30, Shanghai), so the week is Mon 23 to
Sun 29: weekday breakfasts (mass send) and flash sales (owner task, tracked link), Friday's member
day, weekend recipes.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from scrm.callbacks.dispatch import Processor
from scrm.config import SANDBOX_CORP_ID, Settings, SopSettings, WebSettings, WeComSettings
from scrm.demo import set_up_demo_chain
from scrm.demo_week import DemoWeekRefused, simulate_demo_week
from scrm.kpi.queries import kpi_table
from scrm.kpi.report import UNATTRIBUTED, Dimension, KpiFilter
from scrm.orders.models import Order, Refund
from scrm.sandbox import Sandbox, create_sandbox_app, seed_demo
from scrm.sop.models import LinkClick, PostStatus, SopPost, TrackedLink
from scrm.sync.service import full_sync
from scrm.web.app import create_app
from scrm.wecom.client import WeComClient
from scrm.wecom.crypto import CallbackCrypto
from tests.waiting import join_worker
from workers import actors
from workers.broker import make_redis_broker, setup_broker

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
ROOT = Path(__file__).parent.parent
TZ = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2026, 11, 30, 10, 0, tzinfo=TZ)
WEEK = [dt.date(2026, 11, 23) + dt.timedelta(days=n) for n in range(7)]
SECRET = "demo-week-secret"
TOKEN = "demoWeekToken"
AES_KEY = base64.b64encode(os.urandom(32)).decode().rstrip("=")


def settings_for(corp_id: str = SANDBOX_CORP_ID, **orders) -> Settings:
    return Settings(
        wecom=WeComSettings(corp_id=corp_id, secret=SECRET, callback_token=TOKEN, encoding_aes_key=AES_KEY),
        sop=SopSettings(templates_dir=ROOT / "sop_templates"),
        web=WebSettings(public_url="http://scrm"),
        **({"orders": orders} if orders else {}),
    )


class Stack:
    """The sandbox corp and scrm in one process, as `scrm run` wires them."""

    def __init__(self, engine, redis_url: str):
        import redis

        self.engine = engine
        self.settings = settings_for()
        self.broker = setup_broker(make_redis_broker(redis_url))
        self.redis = redis.Redis.from_url(redis_url)
        app = create_app(crypto=CallbackCrypto(TOKEN, AES_KEY, SANDBOX_CORP_ID), engine=engine,
                         send=actors.enqueue_callbacks)
        self.web = TestClient(app, base_url="http://scrm").__enter__()
        self.sandbox = Sandbox(SANDBOX_CORP_ID, SECRET, callback_token=TOKEN, encoding_aes_key=AES_KEY,
                               callback_url="http://scrm/wecom/callback", callback_http=self.web)
        self.sandbox_http = TestClient(create_sandbox_app(self.sandbox), base_url="http://sandbox").__enter__()
        self.client = WeComClient(SANDBOX_CORP_ID, SECRET, "http://sandbox/cgi-bin/", redis=self.redis,
                                  http=self.sandbox_http, sleep=lambda s: None)
        actors.set_processor(Processor(engine, self.client, welcome_text="欢迎光临"))
        import dramatiq

        self.worker = dramatiq.Worker(self.broker, worker_timeout=50, worker_threads=2)
        self.worker.start()
        demo = seed_demo(self.sandbox)
        full_sync(engine, self.client)
        set_up_demo_chain(engine, self.client, demo, corp_is_sandbox=True)

    def simulate(self, **kw):
        kw.setdefault("now", NOW.astimezone(dt.UTC))
        return simulate_demo_week(self.engine, kw.pop("settings", self.settings), sandbox=self.sandbox,
                                  client=self.client, redis=self.redis, **kw)

    def close(self) -> None:
        try:
            self.broker.join("callbacks", timeout=20_000)
            join_worker(self.worker)
        finally:
            self.worker.stop(timeout=10_000)  # never wait dramatiq's default ten minutes
            actors.set_processor(None)
            self.web.__exit__(None, None, None)
            self.sandbox_http.__exit__(None, None, None)
            self.broker.close()
            self.redis.close()


@pytest.fixture
def stack(engine, redis_url):
    s = Stack(engine, redis_url)
    try:
        yield s
    finally:
        s.close()


def count(engine, model, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model.__table__).where(*where)).scalar_one()


def ledger(engine):
    c = SopPost.__table__.c
    with engine.connect() as conn:
        return conn.execute(select(c.day, c.status, c.channel, c.content, c.sent_at, c.confirmed_at)
                            .where(c.day.in_(WEEK))).all()


def test_a_week_of_posts_clicks_and_orders_through_the_real_paths(stack):
    """Mutations tried, each made this test fail: owners never sending owner tasks (``_owner_send``
    returning at once: no owner task delivered, weekend days without delivered posts); the clicks
    sent without a User-Agent (every click a bot); the shop's retry sent with a new order id
    (stored twice: one order more than signed requests allow); refunds skipped (no refund row)."""
    report = stack.simulate()
    assert report is not None and report.days == 7, report
    rows = ledger(stack.engine)
    delivered_days = {r.day for r in rows if r.status in (PostStatus.sent, PostStatus.confirmed)}
    assert delivered_days == set(WEEK)
    # delivered posts, missed owner tasks, mass sends some owner never confirmed, as a real week has them
    assert {(r.channel, r.status) for r in rows} >= {
        ("mass_send", PostStatus.confirmed), ("mass_send", PostStatus.sent),
        ("owner_task", PostStatus.sent), ("owner_task", PostStatus.expired)}
    assert report.mass_unconfirmed == sum(r.channel == "mass_send" and r.status == PostStatus.sent for r in rows) > 0
    # delivery happened on its own day, at the simulated time (not at the moment the test ran)
    for r in rows:
        at = r.confirmed_at or r.sent_at
        if r.status in (PostStatus.sent, PostStatus.confirmed) and at is not None:
            assert at.replace(tzinfo=dt.UTC).astimezone(TZ).date() == r.day

    # Clicks came through /t/ and the write-behind: rows with an agent verdict; previews and bots
    # recorded but not counted; repeats recorded, counted once; some carry the customer.
    k = LinkClick.__table__.c
    with stack.engine.connect() as conn:
        clicks = conn.execute(select(k.code, k.clicked_at, k.agent, k.counted, k.reason, k.external_userid)).all()
        links = {r.code: r.day for r in conn.execute(select(TrackedLink.__table__.c.code,
                                                            TrackedLink.__table__.c.day))}
    assert clicks and all(c.code in links for c in clicks)
    assert {c.agent for c in clicks} == {"person", "preview", "bot"}
    assert not any(c.counted for c in clicks if c.agent != "person")
    assert any(c.reason == "repeat" and not c.counted for c in clicks)
    assert any(c.external_userid for c in clicks if c.counted)
    for c in clicks:  # clicked in the simulated week, on the day its post went out
        assert c.clicked_at.replace(tzinfo=dt.UTC).astimezone(TZ).date() == links[c.code]
    assert report.clicks == len(clicks) and report.unique_clicks == sum(c.counted for c in clicks)

    # Orders came through the signed API: matched by external_userid, unionid and mobile, one
    # unmatched; the order sent twice is stored once; a refund exists.
    o = Order.__table__.c
    with stack.engine.connect() as conn:
        orders = conn.execute(select(o.order_id, o.paid_at, o.amount_fen, o.matched_by, o.external_userid,
                                     o.link_code)).all()
    assert len(orders) == report.orders >= 5
    assert {r.matched_by for r in orders} >= {"external_userid", "mobile", None}
    assert sum(r.external_userid is None for r in orders) == report.unmatched_orders == 1
    assert all(990 <= r.amount_fen <= 3900 + 2590 for r in orders)
    assert all(WEEK[0] <= r.paid_at.replace(tzinfo=dt.UTC).astimezone(TZ).date() <= WEEK[-1] for r in orders)
    assert len({r.order_id for r in orders}) == len(orders)
    assert report.replays_unchanged == 1
    # Every stored order and refund came with its own signed request (a nonce kept in Redis); the
    # order the shop reported again made one more request and stored nothing.
    nonces = stack.redis.keys("scrm:orders:nonce:*")
    assert len(nonces) == len(orders) + report.refunds + 1
    assert count(stack.engine, Refund) == report.refunds == 2
    assert report.gmv_fen == sum(r.amount_fen for r in orders)
    assert report.notes == ["orders.secret is not set: the demo's orders were signed with a one-off secret"]
    line = report.line()
    assert "7 days" in line and "orders" in line and "GMV ¥" in line

    # The dashboard's rollups hold the week: GMV under named stores, groups, posts and templates,
    # and in all exactly what the shop reported, refunds included.
    week = KpiFilter(WEEK[0], WEEK[-1])
    for by in (Dimension.store, Dimension.group, Dimension.post, Dimension.template):
        page = kpi_table(stack.engine, week, by, tz=TZ)
        assert any(row.key != UNATTRIBUTED and row.gmv_fen > 0 for row in page.rows), (by, page.rows)
        assert page.totals.gmv_fen == report.gmv_fen and page.totals.refunds_fen == report.refunds_fen
        assert page.totals.unique_clicks == report.unique_clicks
    days = kpi_table(stack.engine, week, Dimension.day, tz=TZ).rows
    assert len(days) == 7 and all(row.posts_delivered > 0 for row in days)


def test_today_is_left_to_the_live_scheduler_and_a_second_run_changes_nothing(stack):
    """`scrm run` starts at 19:00: the live scheduler has planned today (the morning's posts too
    late, dropped); the week before is played without touching today; `scrm run` again (that day,
    or the next) plays nothing. Also: with SCRM_ORDERS__SECRET set, the demo shop signs with it.
    Mutations tried: planning ahead from each simulated morning (``plan_days_ahead`` left as is:
    today was re-planned as of yesterday, its morning posts back in the ledger); the marker check
    removed (the second week's clicks were recorded on top of the first's; the orders, by their
    ids, were not); the settings' orders secret ignored (the one-off note appeared)."""
    from scrm.sop.jobs import plan_ahead

    evening = NOW.replace(hour=19).astimezone(dt.UTC)
    plan_ahead(stack.engine, stack.settings.sop, now=evening)
    today = count(stack.engine, SopPost, SopPost.day == NOW.date())
    first = stack.simulate(settings=settings_for(secret="shop-shared-secret"), now=evening)
    assert first is not None and first.orders > 0 and first.notes == []
    assert count(stack.engine, SopPost, SopPost.day == NOW.date()) == today
    tables = (SopPost, LinkClick, Order, Refund, TrackedLink)
    before = [count(stack.engine, t) for t in tables]
    again = [stack.simulate(), stack.simulate(now=(NOW + dt.timedelta(days=1)).astimezone(dt.UTC))]
    assert [count(stack.engine, t) for t in tables] == before
    assert again == [None, None]


def test_it_refuses_a_corp_that_is_not_the_sandbox(sqlite_engine, redis_url):
    """A simulated week never counts as a real corp's history. Mutation tried: the corp check
    removed (it went on to play the week for the real corp id)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    real = Sandbox("wwrealcorp0001", SECRET)
    for settings, sandbox in ((settings_for("wwrealcorp0001"), real), (settings_for(), real)):
        with pytest.raises(DemoWeekRefused, match="only simulated in the sandbox corp"):
            simulate_demo_week(sqlite_engine, settings, sandbox=sandbox, client=None, redis=r,
                               now=NOW.astimezone(dt.UTC))
    r.close()
    assert count(sqlite_engine, SopPost) == 0 and count(sqlite_engine, Order) == 0


def test_the_same_seed_tells_the_same_week_in_another_corp(tmp_path, redis_url):
    """Two fresh sandbox corps (other chat ids, other jitter) with the same seed and day: the same
    figures. Mutation tried: a choice drawn from one shared ``random.Random`` in the order the
    posts came from the database (sorted by their random chat ids): the figures differed."""
    from scrm.db import make_engine, migrate

    figures = []
    for n in range(2):
        url = f"sqlite:///{tmp_path / f'scrm{n}.db'}"
        migrate(url)
        engine = make_engine(url)
        s = Stack(engine, redis_url)
        try:
            r = s.simulate()
        finally:
            s.close()
            engine.dispose()
        figures.append((r.posts, r.delivered, r.expired, r.mass_unconfirmed, r.clicks, r.unique_clicks,
                        r.not_counted, r.orders, r.unmatched_orders, r.gmv_fen, r.refunds, r.refunds_fen))
    assert figures[0] == figures[1]
