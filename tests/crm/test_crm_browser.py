"""The CRM pages in headless Chromium (390 px phone, 1280 px desktop), served by uvicorn with
sign-in installed, on an SQLite database seeded by page_builders (records built by the real
rebuild): rep A signs in through the sign-in form, opens their customer (timeline and follow-up
records visible, hostile message text and a hostile note shown as literal text, no dialog, no
injected element), and opening rep B's customer is a Chinese 403 page. Nothing is wider than the
screen. Screenshots: /tmp/shots/crm_*.png.

Mutations tried (each made the named test fail, then was undone):
- ``| safe`` on the message text in crm_customer.html: test_rep_sees_their_customer_and_hostile_text_stays_text
  (the <script> text was no longer visible: the browser had parsed it as markup);
- queries.require_customer not checking the follow relation (``may_open`` always True):
  test_another_reps_customer_is_a_chinese_403 (rep B's customer opened with 200);
- ``.text`` without ``overflow-wrap``/``word-break`` (the seed has a 200-character link in a message):
  test_rep_sees_their_customer_and_hostile_text_stays_text[390] (the page scrolled sideways: 1525 > 390).
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
from pathlib import Path

import pytest
import uvicorn

from scrm.db import make_engine, migrate
from tests.conftest import REQUIRE
from tests.crm.page_builders import HOSTILE, PASSWORD, make_app, seed
from tests.waiting import wait_until

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
SHOTS = Path("/tmp/shots")

# Nothing in <main> sticks out of the viewport (except inside a .scroll box); no sideways scrolling.
LAYOUT = """() => {
  const vw = document.documentElement.clientWidth, bad = [];
  document.querySelectorAll('main *').forEach((el) => {
    if (el.closest('.scroll') && !el.classList.contains('scroll')) return;
    if (el.closest('details:not([open])') && el.tagName !== 'SUMMARY' && el.tagName !== 'DETAILS') return;
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > vw + 1 || r.left < -1))
      bad.push(el.tagName + '.' + el.className + ' spans ' + r.left + '..' + r.right);
  });
  const sw = document.documentElement.scrollWidth;
  if (sw > vw) bad.push('page scrolls sideways: ' + sw + ' > ' + vw);
  return bad;
}"""
# Text smaller than 12 px is too small on a phone.
TINY = """() => Array.from(document.querySelectorAll('main *')).filter((el) => {
  const own = Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!own) return false;
  const r = el.getBoundingClientRect();
  return r.width > 0 && parseFloat(getComputedStyle(el).fontSize) < 12;
}).map((el) => el.tagName + '.' + el.className + ': ' + el.textContent.trim().slice(0, 20))"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if CHROMIUM is None:
        if REQUIRE:
            pytest.fail("chromium is not installed but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed")
    url = f"sqlite:///{tmp_path_factory.mktemp('crm') / 'scrm.db'}"
    migrate(url)
    engine = make_engine(url)
    ids = seed(engine)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(make_app(engine, base_url=base), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="the web server to start")
    try:
        yield base, ids
    finally:
        server.should_exit = True
        thread.join(5)
        engine.dispose()


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def signed_in(browser, base: str, userid: str, width: int):
    """A fresh tab (reaching nothing but scrm: no CDN) with ``userid`` signed in through the form."""
    context = browser.new_context(viewport={"width": width, "height": 844 if width < 600 else 900},
                                  device_scale_factor=1)
    page = context.new_page()
    page.route(re.compile(r"^(?!http://127\.0\.0\.1|data:|about:)"), lambda route: route.abort())
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{base}/crm")
    assert "/login" in page.url
    page.fill("input[name=userid]", userid)
    page.fill("input[name=password]", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_url(re.compile(r".*/crm$"))
    return context, page, dialogs


@pytest.mark.parametrize("width", [390, 1280])
def test_rep_sees_their_customer_and_hostile_text_stays_text(browser, site, width):
    base, ids = site
    context, page, dialogs = signed_in(browser, base, "repA", width)
    try:
        SHOTS.mkdir(exist_ok=True)
        cards = page.locator("#customers .customer")
        shown = page.inner_text("#customers")
        assert "张三-拿铁大客户" in shown and "王五" not in shown and "已删客户" not in shown
        assert HOSTILE[0] in shown  # a customer named like a script is listed as text
        assert cards.count() == 4
        assert page.evaluate(LAYOUT) == []
        assert page.evaluate(TINY) == []
        page.screenshot(path=str(SHOTS / f"crm_list_{width}.png"), full_page=True)

        page.click("text=张三-拿铁大客户")
        page.wait_for_url(re.compile(r".*/crm/customers/cA1$"))
        timeline = page.inner_text("#timeline")
        assert "聊天" in timeline and "电话" in timeline and "短信" in timeline
        assert "该消息已撤回" in timeline and "这条消息会撤回" not in timeline
        assert "3分12秒" in timeline and "已接通" in timeline
        hostile = page.inner_text(f"#m-{ids['hostile']}")
        for text in HOSTILE:
            assert text in hostile
        records = page.inner_text("#records")
        assert "生椰拿铁" in records and "下一步" in records
        assert page.locator("#records .record").count() >= 1

        # a note with hostile text, through the edit form
        note = "回访备注 " + " ".join(HOSTILE)
        first = page.locator("#records .record").first
        first.locator("summary").click()
        first.locator("textarea[name=note]").fill(note)
        first.locator("button[type=submit]").click()
        page.wait_for_url(re.compile(r".*saved=.*"))
        assert note in page.inner_text("#records .rep-note")
        assert "已保存" in page.inner_text("#records")

        assert dialogs == []
        assert page.evaluate("document.querySelectorAll('main script, main img, main b').length") == 0
        assert "49" not in page.inner_text(f"#m-{ids['hostile']}")
        assert page.evaluate(LAYOUT) == []
        assert page.evaluate(TINY) == []
        page.screenshot(path=str(SHOTS / f"crm_customer_{width}.png"), full_page=True)

        # a key fact's link opens the timeline at its message
        fact = page.locator("#records .key-facts a").first
        fact.click()
        page.wait_for_url(re.compile(r".*msg=\d+#m-\d+$"))
        anchor = page.url.rsplit("#", 1)[1]
        assert page.locator(f"#{anchor}").is_visible()
    finally:
        context.close()


def test_another_reps_customer_is_a_chinese_403(browser, site):
    base, ids = site
    context, page, dialogs = signed_in(browser, base, "repA", 390)
    try:
        response = page.goto(f"{base}/crm/customers/cB1")
        assert response is not None and response.status == 403
        body = page.inner_text("main")
        assert "没有权限" in body and "不是你跟进的客户" in body
        assert "王五" not in body and "秘密订单" not in body
        assert page.evaluate(LAYOUT) == []
        page.screenshot(path=str(SHOTS / "crm_403_390.png"), full_page=True)
    finally:
        context.close()


@pytest.mark.parametrize("width", [390, 1280])
def test_manager_sees_quality_and_every_rep(browser, site, width):
    base, ids = site
    context, page, dialogs = signed_in(browser, base, "boss", width)
    try:
        listing = page.inner_text("#customers")
        assert "王五" in listing and "张三" in listing
        response = page.goto(f"{base}/crm/quality?start=2026-11-24&end=2026-11-30")
        assert response is not None and response.status == 200
        table = page.inner_text("#quality")
        assert "销售小陈" in table and "销售小王" in table
        risky = page.locator("#risky .excerpt").first
        assert risky.locator("mark").inner_text() == "爱买不买"
        assert "<b>" in risky.inner_text()  # the reply's own markup is text
        assert dialogs == []
        assert page.evaluate(LAYOUT) == []
        assert page.evaluate(TINY) == []
        page.screenshot(path=str(SHOTS / f"crm_quality_{width}.png"), full_page=True)
    finally:
        context.close()
