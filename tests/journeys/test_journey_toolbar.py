"""The dormant journey's message on the owner's toolbar page in a 1:1 chat, in headless Chromium
at 390x844: planned from a layer change at D, due at D+3 10:00, shown for that customer, claimed,
sent and confirmed; a hostile customer name renders as text.

- On the sandbox corp the page simulates the chats: the owner picks the customer from the
  "1:1 客户消息" list and taps 模拟发送.
- Inside a faked WeCom client (user agent ``wxwork``, a stub ``wx`` whose getContext says
  ``single_chat_tools`` and getCurExternalContact gives the customer), the page locks to that
  customer, says 发送给客户, and sendChatMessage is called exactly once.

Mutations tried (each made a test here fail, then was restored): the page's getContext branch
removed (it asked getCurExternalChat, got no group and refused to send: the WeCom test failed);
owner_posts._customer_posts not called from day_posts (the page listed no customer: both failed);
claim()'s follow check for customers inverted (403 on the owner's own message: both failed).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
import uvicorn
from sqlmodel import Session

from scrm.journeys.jobs import run_journey_plan
from scrm.sandbox import serve
from scrm.sop.models import PostStatus, SopPost
from scrm.web.toolbar import ToolbarConfig, toolbar_router
from tests.conftest import REQUIRE
from tests.journeys.conftest import HOSTILE, TZ, D, customer_rows, fire, local, move
from tests.waiting import wait_until

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path("/tmp/shots")
PHONE = {"width": 390, "height": 844}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
WECOM_UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Mobile/15E148 wxwork/4.1.30 MicroMessenger/7.0.1 Language/zh")
SDK = ["https://res.wx.qq.com/**", "https://open.work.weixin.qq.com/**"]
# The JS-SDK inside a 1:1 chat: getContext says single_chat_tools, getCurExternalContact gives the
# customer; sendChatMessage asks the test (which counts it); anything else fails.
STUB_WX = """(function () {
  var cfg = window.__STUB || {};
  window.wx = window.wx || {};
  wx.agentConfig = function (o) { setTimeout(function () { o.success({}); }, 0); };
  wx.invoke = function (name, args, cb) {
    if (name === "getContext") {
      setTimeout(function () { cb({ err_msg: "getContext:ok", entry: "single_chat_tools" }); }, 0); return; }
    if (name === "getCurExternalContact") {
      setTimeout(function () { cb({ err_msg: "getCurExternalContact:ok", userId: cfg.customer }); }, 0); return; }
    if (name === "sendChatMessage") {
      window.__sendChatMessage(JSON.stringify(args)).then(function (r) { cb({ err_msg: r }); }); return; }
    cb({ err_msg: name + ":fail" });
  };
})();"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=[True, False], ids=["sandbox-corp", "in-wecom"])
def served(request, corp):
    """The corp's scrm with the toolbar (knowing the journeys) over HTTP, and the sandbox's OAuth."""
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        if REQUIRE:
            pytest.fail("chromium is not installed but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed")
    h, settings, clock, sender, load, customers, chat = corp
    sandbox_server = serve(h.sandbox, "127.0.0.1", 0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    h.app.api.include_router(toolbar_router(ToolbarConfig(
        engine=h.engine, client=h.client, corp_id=h.sandbox.corp_id, agent_id=1000002, secret="journey-toolbar",
        base_url=base, authorize_url=f"{sandbox_server.base_url}/sandbox/oauth/authorize", tz=TZ,
        templates=lambda: {}, clock=lambda: clock["now"], sandbox=request.param, journeys=load)))
    web = uvicorn.Server(uvicorn.Config(h.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    wait_until(lambda: web.started, timeout=20, what="the toolbar's web server to start")
    try:
        yield corp, base, sandbox_server.base_url, request.param
    finally:
        web.should_exit = True
        thread.join(5)
        sandbox_server.stop()


def test_the_dormant_message_is_sent_from_the_toolbar_in_the_customers_1to1_chat(served):
    (h, settings, clock, sender, load, (wang, li), chat), base, sandbox_url, on_sandbox = served
    move(h.engine, wang, "dormant", local(D, 3))
    run_journey_plan(h.engine, settings, now=local(D, 4))
    clock["now"] = local(D + dt.timedelta(days=3), 10, 5)
    fire(h, clock)
    [row] = customer_rows(h.engine)
    assert row.status == PostStatus.due

    from playwright.sync_api import sync_playwright

    sends: list[dict] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(viewport=PHONE, user_agent=None if on_sandbox else WECOM_UA)
        if not on_sandbox:
            context.add_init_script(f"window.__STUB = {json.dumps({'customer': wang})};")
            context.expose_function("__sendChatMessage", lambda args: sends.append(json.loads(args)) or
                                    "sendChatMessage:ok")
            for pattern in SDK:
                context.route(pattern, lambda route: route.fulfill(status=200, content_type="application/javascript",
                                                                   body=STUB_WX))
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{sandbox_url}/sandbox/oauth/authorize?userid=owner_a&redirect_uri={base}/toolbar&state=toolbar")
        page.wait_for_url(f"{base}/toolbar")
        page.wait_for_function("document.getElementById('day').textContent !== ''")
        if on_sandbox:
            options = page.locator("#group option").all_inner_texts()
            assert f"小王{HOSTILE}（1:1）" in options and "A店福利群" in options
            page.select_option("#group", wang)
        card = page.locator(f'.post[data-post-id="{row.id}"]')
        card.wait_for()
        assert page.locator("#heading").inner_text() == "今天的客户消息"
        text = card.locator(".text").inner_text()
        assert text.startswith(f"小王{HOSTILE}，好久不见～南京西路店给你留了一张回归券")  # shown as text
        assert "链接：回归专享 8 元券" in card.inner_text() and "沉睡唤醒" in card.inner_text()
        assert page.locator("img").count() == 0 and dialogs == []  # the hostile name injected nothing
        button = card.locator("button")
        assert button.inner_text() == ("模拟发送" if on_sandbox else "发送给客户")
        SHOTS.mkdir(parents=True, exist_ok=True)
        name = "journey-toolbar-1to1-" + ("sandbox" if on_sandbox else "wecom")
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        button.click()
        page.wait_for_selector(f'.post[data-post-id="{row.id}"] .badge[data-status="sent"]')
        page.screenshot(path=str(SHOTS / f"{name}-sent.png"), full_page=True)
        browser.close()

    with Session(h.engine) as s:
        after = s.get(SopPost, row.id)
    assert (after.status, after.sent_by, after.claimed_by) == (PostStatus.sent, "owner_a", "owner_a")
    assert after.content["text"]["content"].startswith(f"小王{HOSTILE}，好久不见")
    assert after.content["attachments"][0]["link"]["url"].startswith(base + "/t/")  # tracked: clicks count
    if not on_sandbox:
        assert [m["msgtype"] for m in sends] == ["text", "news"]  # once: the text, then the coupon card
