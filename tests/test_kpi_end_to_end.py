"""Issue 12's must-show, end to end, on the sandbox's demo chain after its simulated week:

1. Through the real redirect and the signed order API: a customer opens a delivered SOP post's
   tracked link (with their customer token), buys two hours later; after the click write-behind
   and the rollups the order's GMV is under that post's store, group, post and template; a
   partial refund lowers the net GMV there; the same order reported again changes nothing.
2. In headless Chromium, the production app wiring (sign-in + dashboard): a manager signs in
   and sees the whole week's GMV (the shop's orders summed independently, from the orders
   table) with both charts drawn; a store clerk sees only their store (the store filter fixed,
   the JSON API's rows only theirs) and gets 403 on another store's page and API; a hostile
   store name and group name are shown as text, never run.

Mutation tried: the dashboard's scope ignoring the clerk's stores (``resolve_scope`` giving
``stores = None``): the browser test failed (the clerk's API rows named every store).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import func, select, update

from scrm.auth import service as users
from scrm.auth.roles import Role
from scrm.auth.throttle import MemoryThrottle
from scrm.clicks.flush import flush_until_empty
from scrm.clicks.secret import customer_link
from scrm.config import SANDBOX_CORP_ID
from scrm.groups.models import CustomerGroup, GroupMember
from scrm.kpi.queries import kpi_table
from scrm.kpi.report import Dimension, KpiFilter
from scrm.kpi.rollups import refresh_rollups
from scrm.orders.models import Order
from scrm.orders.signing import RedisNonces, Verifier, sign
from scrm.sop.models import PostStatus, SopPost, TrackedLink
from scrm.stores.models import Store
from scrm.web.app import create_app
from scrm.web.auth_routes import AuthConfig
from scrm.wecom.crypto import CallbackCrypto
from tests.auth.conftest import PASSWORD
from tests.conftest import REQUIRE
from tests.test_demo_week import AES_KEY, NOW, TOKEN, TZ, WEEK, Stack
from tests.waiting import wait_until
from workers import actors

ORDER_SECRET = "e2e-order-secret"
CLICK_SECRET = "e2e-click-secret"
WINDOW = dt.timedelta(hours=24)
WECHAT_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
             "Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path("/tmp/shots")


def signed(body: dict) -> tuple[bytes, dict]:
    raw = json.dumps(body, ensure_ascii=False).encode()
    ts, nonce = str(int(time.time())), secrets.token_hex(12)
    return raw, {"Content-Type": "application/json", "X-Scrm-Timestamp": ts, "X-Scrm-Nonce": nonce,
                 "X-Scrm-Signature": sign(ORDER_SECRET, ts, nonce, raw)}


def one_row(rows, key: str):
    found = [r for r in rows if r.key == key]
    assert len(found) == 1, f"no single row {key!r} in {[r.key for r in rows]}"
    return found[0]


def test_a_post_click_and_order_land_under_the_right_store_group_post_and_template(engine, redis_url):
    from fastapi.testclient import TestClient

    stack = Stack(engine, redis_url)
    try:
        assert stack.simulate() is not None
        today = NOW.date()
        post_c, link_c, member_c = SopPost.__table__.c, TrackedLink.__table__.c, GroupMember.__table__.c
        with engine.connect() as conn:
            link = conn.execute(
                select(link_c.code.label("code"), link_c.post_id.label("post_id"), link_c.chat_id.label("chat_id"),
                       link_c.template_id.label("template_id"))
                .join(SopPost.__table__, post_c.id == link_c.post_id)
                .where(post_c.status.in_([PostStatus.sent, PostStatus.confirmed]))
                .order_by(link_c.post_id)).first()
            assert link is not None, "the demo week delivered no post with a tracked link"
            store = conn.execute(select(CustomerGroup.__table__.c.store_code)
                                 .where(CustomerGroup.__table__.c.chat_id == link.chat_id)).scalar_one()
            customer = conn.execute(select(member_c.member_id).where(
                member_c.chat_id == link.chat_id, member_c.member_type == 2).order_by(member_c.member_id)).scalar()
        assert store and customer, "the post's group has a store and a customer member"

        clicked_at = dt.datetime.combine(today, dt.time(9, 0), TZ).astimezone(dt.UTC)
        app = create_app(crypto=CallbackCrypto(TOKEN, AES_KEY, SANDBOX_CORP_ID), engine=engine,
                         send=actors.enqueue_callbacks, click_redis=stack.redis, clicks_secret=CLICK_SECRET,
                         orders_verifier=Verifier(secret=ORDER_SECRET, nonces=RedisNonces(stack.redis)),
                         clock=lambda: clicked_at)
        with TestClient(app, base_url="http://scrm") as web:
            url = customer_link("http://scrm", link.code, customer, CLICK_SECRET, clicked_at + dt.timedelta(days=7))
            answer = web.get(url.removeprefix("http://scrm"), headers={"User-Agent": WECHAT_UA},
                             follow_redirects=False)
            assert answer.status_code == 302
            assert flush_until_empty(engine, stack.redis, window=WINDOW, batch=100).written >= 1

            order = {"order_id": "E2E-1", "paid_at": (clicked_at + dt.timedelta(hours=2)).isoformat(),
                     "amount_fen": 3200, "items": [{"sku": "latte", "qty": 2}], "external_userid": customer}
            raw, headers = signed(order)
            assert web.post("/api/orders", content=raw, headers=headers).status_code == 201

            def figures():
                refresh_rollups(engine, tz=TZ, window=WINDOW)
                f = KpiFilter(today, today)
                return {by: kpi_table(engine, f, by, limit=500).rows
                        for by in (Dimension.post, Dimension.group, Dimension.store, Dimension.template)}

            rows = figures()
            post = one_row(rows[Dimension.post], str(link.post_id))
            assert (post.orders, post.gmv_fen, post.unique_clicks) == (1, 3200, 1)
            for by, key in ((Dimension.group, link.chat_id), (Dimension.store, store),
                            (Dimension.template, link.template_id)):
                assert (one_row(rows[by], key).orders, one_row(rows[by], key).gmv_fen) == (1, 3200), by

            refund = {"refund_id": "E2E-1-R", "order_id": "E2E-1", "amount_fen": 1600,
                      "refunded_at": (clicked_at + dt.timedelta(hours=5)).isoformat()}
            raw, headers = signed(refund)
            assert web.post("/api/orders/refunds", content=raw, headers=headers).status_code == 201
            post = one_row(figures()[Dimension.post], str(link.post_id))
            assert (post.gmv_fen, post.refunds_fen, post.net_gmv_fen) == (3200, 1600, 1600)

            raw, headers = signed(order)  # the shop reports the same order again (newly signed)
            again = web.post("/api/orders", content=raw, headers=headers)
            assert again.status_code == 200 and again.json()["created"] is False
            rows = figures()
            post = one_row(rows[Dimension.post], str(link.post_id))
            assert (post.orders, post.gmv_fen, post.net_gmv_fen) == (1, 3200, 1600)
            assert one_row(rows[Dimension.store], store).net_gmv_fen == 1600
    finally:
        stack.close()


@pytest.fixture
def dashboard_site(sqlite_engine, redis_url):
    if CHROMIUM is None:
        if REQUIRE:
            pytest.fail("chromium is not installed but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed")
    engine = sqlite_engine
    stack = Stack(engine, redis_url)
    server = None
    try:
        assert stack.simulate() is not None
        stores = [s for s, in engine.connect().execute(select(Store.__table__.c.code).order_by(Store.__table__.c.code))]
        clerk_store, other_store = stores[0], stores[1]
        with engine.begin() as conn:  # hostile names, as an operator might paste them
            conn.execute(update(Store.__table__).where(Store.__table__.c.code == clerk_store)
                         .values(name='<img src=x onerror="alert(1)">三里屯'))
            conn.execute(update(CustomerGroup.__table__).where(CustomerGroup.__table__.c.store_code == clerk_store)
                         .values(name="<script>alert(2)</script>福利群"))
        users.add_user(engine, "boss", name="老板", password=PASSWORD, role=Role.manager)
        users.add_user(engine, "clerk", name="店员", password=PASSWORD, role=Role.store_staff, stores=[clerk_store])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        app = create_app(crypto=CallbackCrypto(TOKEN, AES_KEY, SANDBOX_CORP_ID), engine=engine,
                         send=actors.enqueue_callbacks,
                         auth=AuthConfig(engine=engine, secret="e2e-session-secret", base_url=base,
                                         throttle=MemoryThrottle()))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        wait_until(lambda: server.started, timeout=20, what="the web server to start")
        yield engine, base, clerk_store, other_store
    finally:
        if server is not None:
            server.should_exit = True
        stack.close()


def test_manager_and_clerk_dashboards_in_chromium(dashboard_site):
    from playwright.sync_api import sync_playwright

    engine, base, clerk_store, other_store = dashboard_site
    start, end = WEEK[0], WEEK[-1]
    rng = f"start={start}&end={end}"
    first = dt.datetime.combine(start, dt.time(0), TZ).astimezone(dt.UTC)
    last = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(0), TZ).astimezone(dt.UTC)
    c = Order.__table__.c
    with engine.connect() as conn:  # the oracle: what the shop reported, summed from the orders table
        shop_gmv = conn.execute(select(func.sum(c.amount_fen)).where(c.paid_at >= first, c.paid_at < last)
                                ).scalar_one()
    assert shop_gmv, "the demo week reported orders"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            def signed_in(userid: str):
                context = browser.new_context(viewport={"width": 390, "height": 844})
                page = context.new_page()
                page.route(re.compile(r"^(?!http://127\.0\.0\.1|data:)"), lambda route: route.abort())
                dialogs: list[str] = []
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
                page.goto(f"{base}/dashboard?{rng}")
                assert page.url.startswith(f"{base}/login?next=")
                page.fill("#userid", userid)
                page.fill("#password", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(re.compile(re.escape(base) + r"/dashboard\?"))
                return context, page, dialogs

            context, page, dialogs = signed_in("boss")
            gmv = page.locator('[data-metric="gmv_fen"] .v').inner_text()
            assert gmv.replace(",", "") == f"¥{shop_gmv / 100:.2f}"
            for chart in page.locator(".charts svg").all():
                marks = chart.locator("path, rect, circle, polyline").all()
                assert any((m.bounding_box() or {}).get("width", 0) > 0 for m in marks), "an empty chart"
            assert page.locator(".charts svg").count() >= 2
            page.goto(f"{base}/dashboard/table?by=store&{rng}")
            assert '<img src=x onerror="alert(1)">三里屯' in page.locator("main").inner_text()
            page.goto(f"{base}/dashboard/table?by=group&{rng}")
            assert "<script>alert(2)</script>福利群" in page.locator("main").inner_text()
            page.screenshot(path=str(SHOTS / "e2e-manager-groups-390.png"), full_page=True)
            assert dialogs == [], f"a hostile name ran: {dialogs}"
            context.close()

            context, page, dialogs = signed_in("clerk")
            page.screenshot(path=str(SHOTS / "e2e-clerk-390.png"), full_page=True)
            api = page.request.get(f"{base}/api/kpi/table?by=store&{rng}")
            assert api.status == 200
            assert {r["key"] for r in api.json()["rows"]} <= {clerk_store}
            assert page.request.get(f"{base}/api/kpi/summary?store={other_store}&{rng}").status == 403
            refused = page.goto(f"{base}/dashboard?store={other_store}&{rng}")
            assert refused is not None and refused.status == 403
            assert "没有权限" in page.locator("body").inner_text() or "只能查看" in page.locator("body").inner_text()
            page.goto(f"{base}/dashboard/table?by=group&{rng}")
            assert "<script>alert(2)</script>福利群" in page.locator("main").inner_text()
            assert dialogs == []
            context.close()
        finally:
            browser.close()
