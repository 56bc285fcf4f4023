"""The dashboard in headless Chromium on a 390 px phone and a 1280 px desktop, served by uvicorn
with the fake KpiSource of test_dashboard: nothing wider than the screen (wide tables scroll in
their own box), both charts drawn with visible marks, hostile store and group names shown as
text (no script runs), and a store clerk seeing only their store (403 page for another).
Screenshots go to /tmp/shots/dashboard-*.png.

Mutations tried (each made the named test fail, then was undone):
- ``.scroll { overflow-x: auto }`` removed from dashboard_base.html: test_overview_fits_and_draws[390]
  (the page scrolls sideways);
- the GMV chart given no labels (its 暂无数据 state): test_overview_fits_and_draws at both widths;
- ``| safe`` on the store name in the decomposition table: test_hostile_names_run_no_script (the name
  is no longer shown as text: the browser ran it as a script).
"""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

from tests.conftest import REQUIRE
from tests.waiting import wait_until
from tests.web.test_dashboard import HOSTILE_GROUP, HOSTILE_STORE, STORES, TODAY, TZ, FakeSource, principal_of

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
SHOTS = Path("/tmp/shots")

# Nothing in <main> sticks out of the viewport, except inside a .scroll box (which itself fits);
# the page never scrolls sideways.
LAYOUT = """() => {
  const vw = document.documentElement.clientWidth, bad = [];
  document.querySelectorAll('main *').forEach((el) => {
    if (el.closest('.scroll') && !el.classList.contains('scroll')) return;
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > vw + 1 || r.left < -1))
      bad.push(el.tagName + '.' + el.className + ' spans ' + r.left + '..' + r.right);
  });
  const sw = document.documentElement.scrollWidth;
  if (sw > vw) bad.push('page scrolls sideways: ' + sw + ' > ' + vw);
  return bad;
}"""

# Per chart: its drawn width and how many of its marks (line dots, bars) have a visible size.
CHARTS = """() => Array.from(document.querySelectorAll('svg.chart')).map((svg) => {
  const box = svg.getBoundingClientRect();
  const marks = Array.from(svg.querySelectorAll('circle.pt, rect.bar, polyline.line'))
    .map((m) => m.getBoundingClientRect()).filter((r) => r.width > 0.5 && r.height > 0.5);
  return {width: box.width, height: box.height, marks: marks.length, empty: svg.classList.contains('empty')};
})"""


@pytest.fixture(scope="module")
def site():
    if CHROMIUM is None:
        if REQUIRE:
            pytest.fail("chromium is not installed but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed")
    from scrm.web.dashboard import dashboard_router

    app = FastAPI()
    app.include_router(dashboard_router(FakeSource(), principal_of, tz=TZ, stores=lambda: list(STORES),
                                        today=lambda: TODAY))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="the web server to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def open_page(browser, user: str, width: int):
    context = browser.new_context(viewport={"width": width, "height": 844 if width < 600 else 900},
                                  extra_http_headers={"x-test-user": user}, device_scale_factor=1)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return context, page, dialogs


@pytest.mark.parametrize("width", [390, 1280])
def test_overview_fits_and_draws(browser, site, width):
    context, page, _ = open_page(browser, "boss", width)
    try:
        response = page.goto(f"{site}/dashboard")
        assert response.status == 200
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / f"dashboard-{width}.png"), full_page=True)
        assert page.evaluate(LAYOUT) == []
        charts = page.evaluate(CHARTS)
        assert len(charts) == 2
        for chart in charts:
            assert not chart["empty"]
            assert chart["width"] >= (300 if width == 390 else 450) and chart["height"] >= 150
            assert chart["marks"] >= 7  # a line or bars for each of the 7 days
        # the headline figures show in Chinese with yuan
        assert "GMV" in page.inner_text(".kpis") and "¥" in page.inner_text(".kpis")
        for path in ("/dashboard/table?by=group", "/dashboard/funnel", "/dashboard/compliance",
                     "/dashboard/orders", "/dashboard/table?by=post&start=2026-11-01"):
            assert page.goto(site + path).status == 200
            assert page.evaluate(LAYOUT) == [], path
            if width == 390:
                name = path.split("?")[0].strip("/").replace("/", "-")
                page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=name != "dashboard-orders")
    finally:
        context.close()


def test_hostile_names_run_no_script(browser, site):
    context, page, dialogs = open_page(browser, "boss", 1280)
    try:
        page.goto(f"{site}/dashboard")
        assert HOSTILE_STORE in page.inner_text("#decomposition")
        page.goto(f"{site}/dashboard/table?by=group")
        assert HOSTILE_GROUP in page.inner_text("#kpi")
        page.goto(f"{site}/dashboard/funnel")
        assert HOSTILE_STORE in page.inner_text("#funnel")
        page.goto(f"{site}/dashboard?group=" + '"><img src=x onerror=alert(2)>')
        assert page.input_value("input[name=group]") == '"><img src=x onerror=alert(2)>'
        assert dialogs == []
        assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0
    finally:
        context.close()


def test_clerk_sees_only_their_store(browser, site):
    context, page, dialogs = open_page(browser, "clerk", 390)
    try:
        page.goto(f"{site}/dashboard")
        body = page.inner_text("main")
        assert "南京西路店" in body and "script" not in body and "国贸" not in body
        assert page.locator("select[name=store]").count() == 0
        assert len(page.evaluate(CHARTS)) == 2
        page.screenshot(path=str(SHOTS / "dashboard-clerk-390.png"), full_page=True)
        response = page.goto(f"{site}/dashboard/table?store=S2")
        assert response.status == 403 and "你只能查看自己门店的数据" in page.inner_text("main")
        api = page.goto(f"{site}/api/kpi/summary?store=S2")
        assert api.status == 403
        assert dialogs == []
    finally:
        context.close()
