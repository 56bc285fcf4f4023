"""A day with three posts per group (one mass send, two owner tasks) through the sandbox: the
sandbox confirms the mass sends for the owners, owners get one reminder each, and the chat toolbar
page, driven by Playwright in headless Chromium, sends the owner tasks. The ledger ends with every
post sent exactly once, no limit exceeded, and a second press of Send changes nothing."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import textwrap
import threading
import time
from zoneinfo import ZoneInfo

import pytest
import uvicorn
from sqlalchemy import func
from sqlmodel import Session, select

from scrm.config import SopSettings
from scrm.sandbox import serve
from scrm.sop import jobs
from scrm.sop.models import SopPost
from scrm.sop.reminders import send_reminders
from scrm.sop.sender import SopSender
from scrm.sync.service import full_sync
from scrm.web.toolbar import ToolbarConfig, toolbar_router
from tests.conftest import REQUIRE
from tests.pipeline_harness import harness
from workers import actors

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 24)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = "<img src=x onerror=alert(1)>"

TEMPLATES = {
    "breakfast": """\
        id: breakfast
        name: 早餐
        priority: 90
        steps:
          - {at: "08:00", channel: mass_send, text: "早安！拿铁 9.9 元"}
    """,
    "lunch": """\
        id: lunch
        name: 午餐
        priority: 80
        steps:
          - at: "12:00"
            channel: owner_task
            text: "午餐套餐来了"
            attachments:
              - link: {title: 午餐券, url: "https://m.example.com/lunch"}
    """,
    "flash": f"""\
        id: flash
        name: 秒杀
        priority: 70
        steps:
          - {{at: "15:00", channel: owner_task, text: "15:00 秒杀 {HOSTILE}"}}
    """,
}


def local(hour, minute=0):
    return dt.datetime.combine(DAY, dt.time(hour, minute), tzinfo=TZ).astimezone(dt.timezone.utc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def day(sandbox_day):
    """The sandbox day, for a test that drives the page in headless Chromium."""
    if CHROMIUM is None:
        if REQUIRE:
            pytest.fail("chromium is not installed but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed")
    return sandbox_day


@pytest.fixture
def sandbox_day(engine, redis_url, tmp_path):
    """scrm (with the toolbar) and the sandbox served over HTTP, three groups, templates on disk."""
    clock = {"now": local(6)}
    with harness(engine, redis_url) as h:
        sb = h.sandbox
        sb.clock = lambda: clock["now"].timestamp()
        sb.add_member("owner_a", "A店店长")
        sb.add_member("owner_b", "B店店长")
        groups = [sb.create_group("owner_a", "A店1群"), sb.create_group("owner_a", f"A店2群{HOSTILE}"),
                  sb.create_group("owner_b", "B店群")]
        full_sync(engine, h.client)
        folder = tmp_path / "tpl"
        folder.mkdir()
        for name, body in TEMPLATES.items():
            (folder / f"{name}.yaml").write_text(textwrap.dedent(body), encoding="utf-8")
        sop = SopSettings(templates_dir=folder, spread_minutes=0)
        load = lambda: jobs.load_templates(folder, sop)  # noqa: E731
        actors.set_sop_sender(SopSender(engine, h.client, load, tz=TZ, clock=lambda: clock["now"]))
        h.start_worker()

        sandbox_server = serve(sb, "127.0.0.1", 0)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        h.app.api.include_router(toolbar_router(ToolbarConfig(
            engine=engine, client=h.client, corp_id=sb.corp_id, agent_id=1000002, secret="toolbar-test-secret",
            base_url=base, authorize_url=f"{sandbox_server.base_url}/sandbox/oauth/authorize", tz=TZ,
            templates=load, clock=lambda: clock["now"])))
        web = uvicorn.Server(uvicorn.Config(h.app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=web.run, daemon=True)
        thread.start()
        while not web.started:
            time.sleep(0.02)
        try:
            yield h, sop, clock, [g.chat_id for g in groups], base, sandbox_server.base_url
        finally:
            web.should_exit = True
            thread.join(5)
            sandbox_server.stop()
            actors.set_sop_sender(None)


def fire(h, clock):
    counts = jobs.fire(h.engine, lambda ids: actors.send_sop_posts.send(ids), now=clock["now"],
                       remind=lambda now: send_reminders(h.engine, h.client, toolbar_url="http://scrm/toolbar",
                                                         tz=TZ, now=now, agent_id=1000002))
    h.broker.join("sop", timeout=20_000)
    h.worker.join()
    return counts


def ledger(engine):
    with Session(engine) as s:
        return {p.id: p for p in s.exec(select(SopPost).where(SopPost.day == DAY))}


def login(browser, sandbox_url, base, userid):
    context = browser.new_context()
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{sandbox_url}/sandbox/oauth/authorize?userid={userid}&redirect_uri={base}/toolbar&state=toolbar")
    page.wait_for_url(f"{base}/toolbar")
    return context, page, dialogs


def send_due(page, chat_id) -> int:
    page.select_option("#group", chat_id)
    buttons = page.locator(".post button")
    n = buttons.count()
    for _ in range(n):
        card = page.locator(".post", has=page.locator("button")).first
        post_id = card.get_attribute("data-post-id")
        card.locator("button").click()
        page.wait_for_selector(f'.post[data-post-id="{post_id}"] .badge[data-status="sent"]')
    return n


def test_a_day_of_three_posts_per_group_ends_with_each_sent_exactly_once(day):
    from playwright.sync_api import sync_playwright

    h, sop, clock, chats, base, sandbox_url = day
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    assert len(ledger(h.engine)) == 9

    # 08:00 mass sends: the sandbox confirms them on the owners' behalf; delivery is read back.
    clock["now"] = local(8, 5)
    assert fire(h, clock)["mass_send"] == 3
    for task in list(h.sandbox.templates.values()):
        h.sandbox.confirm_mass_send(task.msgid)
    actors.get_sop_sender().poll_results()

    # 12:00 owner tasks: one reminder per owner, listing all their due groups.
    clock["now"] = local(12, 5)
    assert fire(h, clock)["owner_task"] == 3
    reminders = {m["touser"]: m for m in h.sandbox.app_messages}
    assert sorted(reminders) == ["owner_a", "owner_b"] and len(h.sandbox.app_messages) == 2
    assert "2 个群" in reminders["owner_a"]["textcard"]["title"]
    assert reminders["owner_a"]["textcard"]["url"] == "http://scrm/toolbar"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        ctx_a, page_a, dialogs = login(browser, sandbox_url, base, "owner_a")
        page_a.wait_for_selector("#group option", state="attached")
        # The hostile group name and post text show as text: no script ran, no element was injected.
        options = page_a.locator("#group option").all_inner_texts()
        assert f"A店2群{HOSTILE}" in options
        assert send_due(page_a, chats[0]) == 1
        assert send_due(page_a, chats[1]) == 1
        sent_once = {i: (p.status, p.sent_by, p.sent_at) for i, p in ledger(h.engine).items()}
        # A second press (the request replayed) changes nothing.
        lunch_a = next(p for p in ledger(h.engine).values() if p.chat_id == chats[0] and p.template_id == "lunch")
        again = page_a.evaluate(
            """([id, chat]) => fetch('/toolbar/api/posts/' + id + '/sent', {method: 'POST',
                 headers: {'Content-Type': 'application/json', 'X-Requested-With': 'scrm-toolbar'},
                 body: JSON.stringify({chat_id: chat})}).then(r => r.json())""", [lunch_a.id, chats[0]])
        assert again == {"status": "sent", "changed": False, "sent_by": "owner_a"}
        assert {i: (p.status, p.sent_by, p.sent_at) for i, p in ledger(h.engine).items()} == sent_once
        # owner_b can't mark owner_a's post, even by calling the API directly.
        ctx_b, page_b, _ = login(browser, sandbox_url, base, "owner_b")
        flash_a = next(p for p in ledger(h.engine).values() if p.chat_id == chats[0] and p.template_id == "flash")
        status = page_b.evaluate(
            """([id, chat]) => fetch('/toolbar/api/posts/' + id + '/sent', {method: 'POST',
                 headers: {'Content-Type': 'application/json', 'X-Requested-With': 'scrm-toolbar'},
                 body: JSON.stringify({chat_id: chat})}).then(r => r.status)""", [flash_a.id, chats[0]])
        assert status == 403
        assert send_due(page_b, chats[2]) == 1

        # 15:00: the second owner task of each group.
        clock["now"] = local(15, 5)
        assert fire(h, clock)["owner_task"] == 3
        assert len(h.sandbox.app_messages) == 4
        page_a.reload()
        page_a.wait_for_selector("#group option", state="attached")
        assert send_due(page_a, chats[0]) == 1 and send_due(page_a, chats[1]) == 1
        text = page_a.locator(".post .text").all_inner_texts()
        assert any(HOSTILE in t for t in text)  # shown literally
        assert page_a.locator("img[src=x]").count() == 0 and dialogs == []
        page_b.reload()
        page_b.wait_for_selector("#group option", state="attached")
        assert send_due(page_b, chats[2]) == 1
        browser.close()

    # The ledger: every post sent exactly once, by its owner; no limit exceeded.
    final = ledger(h.engine)
    assert sorted((p.template_id, p.status) for p in final.values()) == sorted(
        [("breakfast", "confirmed")] * 3 + [("lunch", "sent")] * 3 + [("flash", "sent")] * 3)
    owners = {c: ("owner_a" if i < 2 else "owner_b") for i, c in enumerate(chats)}
    assert all(p.sent_by == owners[p.chat_id] for p in final.values())
    # One mass send per group, never resent (owner_a's two groups share one task: same content).
    assert sorted(r["chat_id"] for t in h.sandbox.templates.values() for r in t.results[t.creator]) == sorted(chats)
    with Session(h.engine) as s:
        per_group = s.exec(select(SopPost.chat_id, func.count()).group_by(SopPost.chat_id, SopPost.day)).all()
    assert max(n for _, n in per_group) == 3
    lunch_post = next(p for p in final.values() if p.template_id == "lunch")
    assert lunch_post.content["attachments"][0]["link"]["url"].startswith(base + "/t/")  # tracked link


def test_the_toolbar_refuses_requests_without_an_owner_identity(sandbox_day):
    import httpx

    h, sop, clock, chats, base, sandbox_url = sandbox_day
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    with httpx.Client(base_url=base) as anon:
        r = anon.get("/toolbar")
        assert r.status_code == 302 and r.headers["location"].startswith(f"{sandbox_url}/sandbox/oauth/authorize?")
        assert "redirect_uri=" in r.headers["location"] and "#wechat_redirect" in r.headers["location"]
        assert anon.get("/toolbar/api/posts").status_code == 401
        post_id = next(iter(ledger(h.engine)))
        assert anon.post(f"/toolbar/api/posts/{post_id}/sent", json={"chat_id": chats[0]},
                         headers={"X-Requested-With": "scrm-toolbar"}).status_code == 401
        # A forged cookie and a made-up code are refused too.
        anon.cookies.set("scrm_owner", "owner_a")
        assert anon.get("/toolbar/api/posts").status_code == 401
        refused = anon.get("/toolbar", params={"code": "made-up"})
        assert refused.status_code == 403 and "登录已过期或失败" in refused.text
