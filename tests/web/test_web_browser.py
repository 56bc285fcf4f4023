"""The clerk's staff QR page and its posters in headless Chromium on a 390x844 phone and in print:
every QR code fits its card, nothing is wider than the screen, the printout has no operator notes,
and a poster is one A4 page."""

from __future__ import annotations

import re
import shutil
import socket
import threading

import pytest
import uvicorn

from tests.conftest import REQUIRE
from tests.waiting import wait_until
from tests.web.shop import make_app, seed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]

# Every img.qr's box inside its card (1 px of rounding allowed); every element inside the viewport.
LAYOUT = """(cardSel) => {
  const vw = document.documentElement.clientWidth, bad = [];
  document.querySelectorAll('img.qr').forEach((img) => {
    const card = img.closest(cardSel);
    if (!card) { bad.push('qr outside any ' + cardSel); return; }
    const q = img.getBoundingClientRect(), c = card.getBoundingClientRect();
    if (q.width < 100) bad.push('qr only ' + q.width + 'px wide');
    if (q.left < c.left - 1 || q.right > c.right + 1 || q.top < c.top - 1 || q.bottom > c.bottom + 1)
      bad.push('qr ' + JSON.stringify([q.left, q.right]) + ' overflows card ' + JSON.stringify([c.left, c.right]));
  });
  document.querySelectorAll('main *').forEach((el) => {
    const r = el.getBoundingClientRect();
    if (r.width && r.right > vw + 1) bad.push(el.tagName + '.' + el.className + ' ends at ' + r.right);
  });
  const sw = document.documentElement.scrollWidth;
  if (sw > vw) bad.push('page scrolls sideways: ' + sw);
  return {bad: bad, qrs: document.querySelectorAll('img.qr').length};
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The seeded app on a real port (one server and database for the module: the tests only read)."""
    from sqlmodel import SQLModel

    from scrm.db import make_engine

    if CHROMIUM is None:
        if REQUIRE:
            pytest.fail("chromium is not installed but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed")
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('web') / 'scrm.db'}")
    SQLModel.metadata.create_all(engine)
    seed(engine)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="the web server to start")
    try:
        yield f"http://127.0.0.1:{port}"
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


@pytest.fixture
def phone(browser, site):
    """A fresh 390x844 tab that cannot reach anything but scrm (the pages must work offline)."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.route(re.compile(r"^(?!http://127\.0\.0\.1|data:)"), lambda route: route.abort())
    yield page, site
    context.close()


def layout(page, card=".card"):
    return page.evaluate(LAYOUT, card)


def test_the_staff_page_fits_a_phone_and_prints_without_operator_notes(phone):
    page, site = phone
    page.goto(f"{site}/s/SLT")
    page.wait_for_load_state("load")
    screen = layout(page)
    assert screen["bad"] == [] and screen["qrs"] == 3  # the group code and two staff codes
    assert page.locator(".operator").first.is_visible()  # clerks are told whom to ask...
    assert "errcode" not in page.locator("body").inner_text()  # ...but not WeCom's error text

    page.emulate_media(media="print")
    printed = layout(page)
    assert printed["bad"] == [] and printed["qrs"] == 3
    assert page.locator(".operator").count() >= 1
    assert all(not el.is_visible() for el in page.locator(".operator").all())
    text = page.locator("body").inner_text()
    for hidden in ("errcode", "scrm stores", "运营人员", "打印这一页", "打印成 A4 海报", "二维码暂不可用"):
        assert hidden not in text, hidden
    assert "张三" in text and "王五" in text and "更新于 2026-11-24 11:53" in text


@pytest.mark.parametrize("query", ["code=group", "staff=zhangsan"])
def test_a_poster_is_one_big_code_on_one_a4_page(phone, query):
    page, site = phone
    page.goto(f"{site}/s/SLT/poster?{query}")
    page.wait_for_load_state("load")
    screen = layout(page, ".poster")
    assert screen["bad"] == [] and screen["qrs"] == 1
    page.emulate_media(media="print")
    assert layout(page, ".poster")["bad"] == []
    assert not page.locator("button").is_visible()
    pdf = page.pdf(format="A4", prefer_css_page_size=True)
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1  # one sheet
    page.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 dpi
    side = page.locator("img.qr").bounding_box()["width"]
    assert side > 794 * 0.6  # the code fills the sheet's width


@pytest.mark.parametrize("path", ["/", "/g/SLT", "/l", "/l?city=北京", "/g/OLD01", "/t/nope"])
def test_customer_pages_fit_a_phone(phone, path):
    page, site = phone
    page.goto(site + path)
    page.wait_for_load_state("load")
    assert layout(page)["bad"] == []
