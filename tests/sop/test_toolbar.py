"""The chat toolbar page driven by Playwright in headless Chromium on a 390x844 phone.

On the sandbox corp, a day with three posts per group (one mass send, two owner tasks): the
sandbox confirms the mass sends for the owners, owners get one reminder each, and the page sends
the owner tasks with simulated sends (and says so). The ledger ends with every post sent exactly
once, no limit exceeded, and a second press of Send changes nothing.

On a real corp, inside a faked WeCom client (a user agent with ``wxwork``, the JS-SDK scripts
served as a stub ``wx`` whose sendChatMessage answers what the test says and counts calls): a
failed or cancelled send leaves the post due; a send goes once; a session that lapses after the
claim never leads to a second send and ends ``unconfirmed``; outside WeCom nothing is marked."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import textwrap
import threading
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import uvicorn
from sqlalchemy import func
from sqlmodel import Session, select

from scrm.config import SopSettings
from scrm.sandbox import serve
from scrm.sop import jobs, owner_posts
from scrm.sop.models import PostStatus, SopPost
from scrm.sop.reminders import send_reminders
from scrm.sop.sender import SopSender
from scrm.sync.service import full_sync
from scrm.web.toolbar import ToolbarConfig, toolbar_router
from tests.conftest import REQUIRE
from tests.pipeline_harness import harness
from tests.waiting import join_worker, wait_until
from workers import actors

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
TZ = ZoneInfo("Asia/Shanghai")
DAY = dt.date(2026, 11, 24)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = "<img src=x onerror=alert(1)>"
SHOTS = Path("/tmp/shots")
PHONE = {"width": 390, "height": 844}
WECOM_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Mobile/15E148 wxwork/4.1.30 MicroMessenger/7.0.1 Language/zh")
SDK = ["https://res.wx.qq.com/**", "https://open.work.weixin.qq.com/**"]
# The JS-SDK as the page sees it inside WeCom: agentConfig and getCurExternalChat answer as
# window.__STUB says; sendChatMessage asks the test (window.__sendChatMessage), which counts it.
STUB_WX = """(function () {
  var cfg = window.__STUB || {};
  window.wx = window.wx || {};
  wx.agentConfig = function (o) { setTimeout(function () {
    if (cfg.agentConfig === "fail") o.fail({ errMsg: "agentConfig:fail" }); else o.success({}); }, 0); };
  wx.invoke = function (name, args, cb) {
    if (name === "getCurExternalChat") {
      setTimeout(function () { cb({ err_msg: "getCurExternalChat:ok", chatId: cfg.chat }); }, 0); return; }
    if (name === "sendChatMessage") {
      window.__sendChatMessage(JSON.stringify(args)).then(function (r) { cb({ err_msg: r }); }); return; }
    cb({ err_msg: name + ":fail" });
  };
})();"""

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
    return dt.datetime.combine(DAY, dt.time(hour, minute), tzinfo=TZ).astimezone(dt.UTC)


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
def corp_is_sandbox():
    """The toolbar's ToolbarConfig.sandbox: a real corp unless a test parametrizes it to True."""
    return False


@pytest.fixture
def sandbox_day(engine, redis_url, tmp_path, corp_is_sandbox):
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
            templates=load, clock=lambda: clock["now"], sandbox=corp_is_sandbox)))
        web = uvicorn.Server(uvicorn.Config(h.app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=web.run, daemon=True)
        thread.start()
        wait_until(lambda: web.started, timeout=20, what="the toolbar's web server to start")
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
    join_worker(h.worker)
    return counts


def ledger(engine):
    with Session(engine) as s:
        return {p.id: p for p in s.exec(select(SopPost).where(SopPost.day == DAY))}


ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


@pytest.fixture
def browser(day):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


class WeCom:
    """A faked WeCom client for one browser context: its user agent, and the JS-SDK scripts
    served as a stub ``wx``. ``replies`` are the err_msg answers sendChatMessage gives in turn
    (then ok); ``sends`` counts every sendChatMessage call, across reloads; ``on_send`` runs
    before the answer (e.g. the session lapses)."""

    def __init__(self, chat: str | None, *, agent_config: str = "ok", sdk: str = "stub"):
        self.chat, self.agent_config, self.sdk = chat, agent_config, sdk
        self.replies: list[str] = []
        self.sends: list[dict] = []
        self.on_send = None

    def install(self, context) -> None:
        context.add_init_script(f"window.__STUB = {json.dumps({'chat': self.chat, 'agentConfig': self.agent_config})};")
        context.expose_function("__sendChatMessage", self._send)
        for pattern in SDK:
            if self.sdk == "stub":
                context.route(pattern, lambda route: route.fulfill(
                    status=200, content_type="application/javascript", body=STUB_WX))
            else:  # the scripts don't load (blocked, offline, WeCom's CDN down)
                context.route(pattern, lambda route: route.abort())

    def _send(self, args: str) -> str:
        self.sends.append(json.loads(args))
        if self.on_send is not None:
            self.on_send()
        return self.replies.pop(0) if self.replies else "sendChatMessage:ok"


def login(browser, sandbox_url, base, userid, *, wecom: WeCom | None = None, context=None):
    """Sign in through the sandbox's OAuth page in a 390x844 tab (inside the faked WeCom client
    when ``wecom`` is given), and wait until the page has loaded the day's posts."""
    if context is None:
        context = browser.new_context(viewport=PHONE, user_agent=WECOM_UA if wecom else None)
        if wecom is not None:
            wecom.install(context)
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{sandbox_url}/sandbox/oauth/authorize?userid={userid}&redirect_uri={base}/toolbar&state=toolbar")
    page.wait_for_url(f"{base}/toolbar")
    page.wait_for_selector("#group option", state="attached")
    page.wait_for_function("document.getElementById('day').textContent !== ''")
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


def api(page, post_id, action, body):
    """The page's own API called directly from the page (its cookie, its user agent)."""
    return page.evaluate(
        """([id, action, body]) => fetch('/toolbar/api/posts/' + id + '/' + action, {method: 'POST',
             headers: {'Content-Type': 'application/json', 'X-Requested-With': 'scrm-toolbar'},
             body: JSON.stringify(body)}).then(r => r.json().then(b => [r.status, b]))""", [post_id, action, body])


def row(engine, post_id) -> SopPost:
    with Session(engine) as s:
        return s.get(SopPost, post_id)


def shot(page, name) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def the_post(h, chat_id, template_id) -> int:
    return next(p.id for p in ledger(h.engine).values() if p.chat_id == chat_id and p.template_id == template_id)


def owner_task_due(h, sop, clock, hour) -> None:
    """Plan the day and fire at ``hour``:05 (15:05: flash, a one-message post, is due; lunch has expired)."""
    jobs.plan_ahead(h.engine, sop, now=clock["now"])
    clock["now"] = local(hour, 5)
    fire(h, clock)


@pytest.mark.parametrize("corp_is_sandbox", [True])
def test_a_day_of_three_posts_per_group_ends_with_each_sent_exactly_once(day, browser, corp_is_sandbox):
    """The sandbox corp: sends are simulated, and the page says so. Another owner's claim of a
    *due* post is 403 with the row unchanged (mutation tried: claim() without its owner check;
    owner_b then got 409, or the post, and this failed)."""
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

    ctx_a, page_a, dialogs = login(browser, sandbox_url, base, "owner_a")
    assert "模拟发送" in page_a.locator("#mode").inner_text() and page_a.locator("#mode").is_visible()
    assert page_a.locator(".post button").first.inner_text() == "模拟发送"
    shot(page_a, "toolbar-sandbox-simulated")
    # The hostile group name and post text show as text: no script ran, no element was injected.
    options = page_a.locator("#group option").all_inner_texts()
    assert f"A店2群{HOSTILE}" in options
    # owner_b can't claim owner_a's post while it is due, even by calling the API directly.
    ctx_b, page_b, _ = login(browser, sandbox_url, base, "owner_b")
    lunch_a2 = the_post(h, chats[1], "lunch")
    before = row(h.engine, lunch_a2)
    assert before.status == PostStatus.due
    status, body = api(page_b, lunch_a2, "claim", {"chat_id": chats[1]})
    assert status == 403 and "别的群主" in body["detail"]
    after = row(h.engine, lunch_a2)
    assert (after.status, after.sent_by, after.claimed_by) == (PostStatus.due, None, None)

    assert send_due(page_a, chats[0]) == 1
    assert send_due(page_a, chats[1]) == 1
    assert "模拟发送" in page_a.locator(".post .msg").first.inner_text()
    sent_once = {i: (p.status, p.sent_by, p.sent_at) for i, p in ledger(h.engine).items()}
    # A second press (the requests replayed) changes nothing.
    lunch_a = the_post(h, chats[0], "lunch")
    status, body = api(page_a, lunch_a, "claim", {"chat_id": chats[0]})
    assert status == 409 and "已经发过了" in body["detail"]
    assert api(page_a, lunch_a, "confirm", {}) == [200, {"status": "sent", "changed": False, "sent_by": "owner_a"}]
    assert {i: (p.status, p.sent_by, p.sent_at) for i, p in ledger(h.engine).items()} == sent_once
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


@pytest.mark.parametrize(("reply", "words"), [("sendChatMessage:fail", "没有发出：企业微信没有完成发送"),
                                              ("sendChatMessage:cancel", "已取消")])
def test_in_wecom_a_failed_or_cancelled_send_leaves_the_post_due_and_offers_send_again(day, browser, reply, words):
    """Mutation tried: the page not releasing when the first message does not go (the post
    stayed held, no Send offered), and this failed."""
    h, sop, clock, chats, base, sandbox_url = day
    owner_task_due(h, sop, clock, 15)
    flash = the_post(h, chats[0], "flash")
    wecom = WeCom(chats[0])
    wecom.replies = [reply]
    _, page, _ = login(browser, sandbox_url, base, "owner_a", wecom=wecom)
    assert page.locator("#mode").is_hidden() and page.locator("#where").inner_text() == "（当前群）"
    card = page.locator(f'.post[data-post-id="{flash}"]')
    card.locator("button.send").click()
    page.wait_for_selector(f'.post[data-post-id="{flash}"] .msg >> text={words}')
    assert len(wecom.sends) == 1 and wecom.sends[0]["msgtype"] == "text"
    p = row(h.engine, flash)
    assert (p.status, p.sent_by, p.claimed_by, p.sent_at) == (PostStatus.due, None, None, None)
    assert card.locator(".badge").get_attribute("data-status") == "due"
    assert "sendChatMessage" not in card.locator(".msg").inner_text().split("企业微信返回：")[0]
    # Send is offered again, and works.
    card.locator("button.send").click()
    page.wait_for_selector(f'.post[data-post-id="{flash}"] .badge[data-status="sent"]')
    assert len(wecom.sends) == 2 and row(h.engine, flash).status == PostStatus.sent


def test_in_wecom_a_send_is_recorded_once_and_cannot_be_sent_again(day, browser):
    h, sop, clock, chats, base, sandbox_url = day
    owner_task_due(h, sop, clock, 15)
    flash = the_post(h, chats[0], "flash")
    wecom = WeCom(chats[0])
    _, page, _ = login(browser, sandbox_url, base, "owner_a", wecom=wecom)
    # The chat is the one WeCom says the toolbar is in: the picker is locked to it.
    assert page.locator("#group").is_disabled() and page.locator("#group").input_value() == chats[0]
    page.locator(f'.post[data-post-id="{flash}"] button.send').click()
    page.wait_for_selector(f'.post[data-post-id="{flash}"] .badge[data-status="sent"]')
    assert "已放进群聊" in page.locator(f'.post[data-post-id="{flash}"] .msg').inner_text()
    assert len(wecom.sends) == 1 and "15:00 秒杀" in wecom.sends[0]["text"]["content"]
    p = row(h.engine, flash)
    assert (p.status, p.sent_by) == (PostStatus.sent, "owner_a")
    sent = (p.status, p.sent_by, p.sent_at)
    # A second tap: there is no button; a reload: still none; the API replayed: refused.
    assert page.locator(f'.post[data-post-id="{flash}"] button').count() == 0
    page.reload()
    page.wait_for_selector(f'.post[data-post-id="{flash}"] .badge[data-status="sent"]')
    assert page.locator(f'.post[data-post-id="{flash}"] button').count() == 0
    status, body = api(page, flash, "claim", {"chat_id": chats[0]})
    assert status == 409 and "已经发过了" in body["detail"]
    p = row(h.engine, flash)
    assert (p.status, p.sent_by, p.sent_at) == sent and len(wecom.sends) == 1


def test_in_wecom_a_link_that_fails_after_the_text_went_is_recorded_sent_never_resent(day, browser):
    h, sop, clock, chats, base, sandbox_url = day
    owner_task_due(h, sop, clock, 12)
    lunch = the_post(h, chats[0], "lunch")
    wecom = WeCom(chats[0])
    wecom.replies = ["sendChatMessage:ok", "sendChatMessage:fail"]
    _, page, _ = login(browser, sandbox_url, base, "owner_a", wecom=wecom)
    page.locator(f'.post[data-post-id="{lunch}"] button.send').click()
    page.wait_for_selector(f'.post[data-post-id="{lunch}"] .badge[data-status="sent"]')
    card = page.locator(f'.post[data-post-id="{lunch}"]')
    assert "链接「午餐券」没有发出" in card.locator(".msg").inner_text()
    manual = card.locator(".manual").inner_text()  # what to add by hand: the tracked link
    shot(page, "toolbar-partial-send")
    p = row(h.engine, lunch)
    link = p.content["attachments"][0]["link"]["url"]
    assert "午餐券" in manual and link in manual and link.startswith(base + "/t/")
    assert (p.status, p.sent_by) == (PostStatus.sent, "owner_a") and "链接「午餐券」" in p.error
    assert [m["msgtype"] for m in wecom.sends] == ["text", "news"]  # the text went once, never again
    assert card.locator("button").count() == 0


@pytest.mark.parametrize(("lost", "why"), [("session", "登录已过期"), ("network", "网络不通")])
def test_a_confirm_that_does_not_arrive_never_leads_to_a_second_send_and_ends_unconfirmed(day, browser, lost, why):
    """The session lapses after the claim (the stub deletes the cookie as WeCom sends), or the
    network drops the confirm. Mutation tried: the page releasing the post when confirm fails;
    the network case then ends ``due`` (offered again as unsent) and this test fails."""
    h, sop, clock, chats, base, sandbox_url = day
    owner_task_due(h, sop, clock, 15)
    flash = the_post(h, chats[0], "flash")
    wecom = WeCom(chats[0])
    context, page, _ = login(browser, sandbox_url, base, "owner_a", wecom=wecom)
    confirms = "**/toolbar/api/posts/*/confirm"
    if lost == "session":
        wecom.on_send = context.clear_cookies  # the session is gone by the time the page confirms
    else:
        page.route(confirms, lambda route: route.abort())
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    card = page.locator(f'.post[data-post-id="{flash}"]')
    card.locator("button.send").click()
    page.wait_for_selector(f'.post[data-post-id="{flash}"] .msg >> text=没能记下发送结果')
    assert card.locator(".badge").inner_text() == "发送结果待确认"
    assert why in card.locator(".msg").inner_text() and "不要重复发送" in card.locator(".msg").inner_text()
    assert card.locator("button").count() == 0  # Send is not offered again
    if lost == "session":
        shot(page, "toolbar-result-pending")
    assert [u.rsplit("/", 1)[1] for u in requests if "/toolbar/api/posts/" in u] == ["claim", "confirm"]  # no release
    p = row(h.engine, flash)
    assert (p.status, p.claimed_by, p.sent_by) == (PostStatus.sending, "owner_a", None)

    # The lease lapses: the scheduler reports it unconfirmed, never due.
    clock["now"] = clock["now"] + owner_posts.LEASE + dt.timedelta(seconds=1)
    assert fire(h, clock)["unconfirmed"] == 1
    p = row(h.engine, flash)
    assert (p.status, p.claimed_by, p.sent_by) == (PostStatus.unconfirmed, "owner_a", None)

    # Signed in again, the owner is asked whether it reached the group; nothing can be sent.
    wecom.on_send = None
    page.unroute(confirms)
    _, page, _ = login(browser, sandbox_url, base, "owner_a", context=context)
    card = page.locator(f'.post[data-post-id="{flash}"]')
    assert "发到群里了吗" in card.locator(".ask").inner_text()
    assert card.locator("button.send").count() == 0
    shot(page, "toolbar-unconfirmed")
    card.locator('button[data-answer="sent"]').click()
    page.wait_for_selector(f'.post[data-post-id="{flash}"] .badge[data-status="sent"]')
    p = row(h.engine, flash)
    assert (p.status, p.sent_by) == (PostStatus.sent, "owner_a")
    assert len(wecom.sends) == 1  # the stub's send counter never reached 2


def test_an_owner_who_says_a_lapsed_post_did_not_go_can_send_it_again(day, browser):
    h, sop, clock, chats, base, sandbox_url = day
    owner_task_due(h, sop, clock, 15)
    flash = the_post(h, chats[0], "flash")
    # A page showed the post (fixing its content), claimed it and died mid-send.
    owner_posts.day_posts(h.engine, "owner_a", now=clock["now"], tz=TZ, link_base=base,
                          templates=lambda: jobs.load_templates(sop.templates_dir, sop))
    owner_posts.claim(h.engine, flash, "owner_a", chats[0], now=clock["now"])
    clock["now"] = clock["now"] + owner_posts.LEASE
    assert fire(h, clock)["unconfirmed"] == 1
    wecom = WeCom(chats[0])
    _, page, _ = login(browser, sandbox_url, base, "owner_a", wecom=wecom)
    card = page.locator(f'.post[data-post-id="{flash}"]')
    card.locator('button[data-answer="not_sent"]').click()
    page.wait_for_selector(f'.post[data-post-id="{flash}"] button.send')
    assert row(h.engine, flash).status == PostStatus.due and wecom.sends == []


@pytest.mark.parametrize("where", ["a plain browser", "JS-SDK scripts blocked", "agentConfig refused"])
def test_on_a_real_corp_outside_wecom_nothing_can_be_marked_sent(day, browser, where):
    """Mutations tried: the page simulating whenever the JS-SDK is missing (the old behaviour:
    all three cases failed), and claim() without its outside-WeCom check (the plain browser's
    direct claim was accepted and this failed)."""
    h, sop, clock, chats, base, sandbox_url = day
    owner_task_due(h, sop, clock, 15)
    flash = the_post(h, chats[0], "flash")
    wecom = {"a plain browser": None, "JS-SDK scripts blocked": WeCom(chats[0], sdk="abort"),
             "agentConfig refused": WeCom(chats[0], agent_config="fail")}[where]
    _, page, _ = login(browser, sandbox_url, base, "owner_a", wecom=wecom)
    page.wait_for_selector("#mode.refused")
    notice = page.locator("#mode").inner_text()
    assert "企业微信" in notice and "聊天工具栏" in notice and "模拟" not in notice
    assert page.locator(f'.post[data-post-id="{flash}"] .badge').get_attribute("data-status") == "due"
    assert page.locator("button").count() == 0
    if where == "a plain browser":
        shot(page, "toolbar-refused-outside-wecom")
        status, body = api(page, flash, "claim", {"chat_id": chats[0]})  # the server refuses too
        assert status == 403 and "企业微信" in body["detail"]
    p = row(h.engine, flash)
    assert (p.status, p.sent_by, p.claimed_by) == (PostStatus.due, None, None)
    assert wecom is None or wecom.sends == []


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
        for action in ("claim", "confirm", "release"):
            assert anon.post(f"/toolbar/api/posts/{post_id}/{action}", json={"chat_id": chats[0]},
                             headers={"X-Requested-With": "scrm-toolbar"}).status_code == 401
        # A forged cookie and a made-up code are refused too.
        anon.cookies.set("scrm_owner", "owner_a")
        assert anon.get("/toolbar/api/posts").status_code == 401
        refused = anon.get("/toolbar", params={"code": "made-up"})
        assert refused.status_code == 403 and "登录已过期或失败" in refused.text
