"""The 用户分层 page in headless Chromium on a 390 px phone and a 1280 px desktop, served by uvicorn on
an SQLite database seeded like test_dashboard_layers: nothing wider than the screen (the flow matrix
and store table scroll in their own box), both charts drawn with visible marks (a bar per layer, a
stacked bar per day with moves), the flow cells shaded darker for larger counts, hostile store names
and rule ids shown as text (no script runs), and a clerk seeing only their store (403 for another).
Screenshots go to /tmp/shots/layers-*.png.

Mutations tried (each made the named test fail, then was undone):
- ``.scroll`` left off the flow matrix's wrapper: test_layers_page_fits_and_draws[390] (page scrolls sideways);
- hbar_chart drawing every bar with width 0: test_layers_page_fits_and_draws (no visible marks);
- ``shade`` returning the same colour for every count: test_layers_page_fits_and_draws (cells not ordered by shade);
- ``| safe`` on the store name in the store table: test_hostile_names_run_no_script.
"""

from __future__ import annotations

import socket
import threading

import pytest
import uvicorn
from fastapi import FastAPI

from scrm.db import make_engine
from scrm.web.dashboard import LayerQueries, dashboard_router
from tests.conftest import REQUIRE
from tests.waiting import wait_until
from tests.web.test_dashboard import HOSTILE_STORE, STORES, TODAY, TZ, FakeSource, principal_of
from tests.web.test_dashboard_browser import ARGS, CHARTS, CHROMIUM, LAYOUT, SHOTS
from tests.web.test_dashboard_layers import HOSTILE_RULE, NAMES, seed


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if CHROMIUM is None:
        if REQUIRE:
            pytest.fail("chromium is not installed but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed")
    from scrm.db import migrate

    url = f"sqlite:///{tmp_path_factory.mktemp('layers') / 'scrm.db'}"
    migrate(url)
    engine = make_engine(url)
    seed(engine)
    app = FastAPI()
    app.include_router(dashboard_router(FakeSource(), principal_of, tz=TZ, stores=lambda: list(STORES),
                                        today=lambda: TODAY, layers=LayerQueries(engine, tz=TZ, names=lambda: NAMES)))
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
        engine.dispose()


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


# Each shaded flow cell: its count and the alpha of its background.
SHADES = """() => Array.from(document.querySelectorAll('#flows td[style]')).map((td) => {
  const m = getComputedStyle(td).backgroundColor.match(/rgba?\\(([^)]+)\\)/);
  const parts = m ? m[1].split(',').map(Number) : [];
  return {n: Number(td.innerText.replace(/,/g, '')), alpha: parts.length === 4 ? parts[3] : 1};
})"""


@pytest.mark.parametrize("width", [390, 1280])
def test_layers_page_fits_and_draws(browser, site, width):
    context, page, _ = open_page(browser, "boss", width)
    try:
        response = page.goto(f"{site}/dashboard/layers")
        assert response.status == 200
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / f"layers-{width}.png"), full_page=True)
        assert page.evaluate(LAYOUT) == []
        charts = page.evaluate(CHARTS)
        assert len(charts) == 2
        layers_chart, moves_chart = charts
        assert not layers_chart["empty"] and layers_chart["marks"] == 6  # a bar per layer (each has customers)
        assert not moves_chart["empty"] and moves_chart["marks"] >= 5  # days 26-30 have moves
        for chart in charts:
            assert chart["width"] >= (300 if width == 390 else 450)
        shades = page.evaluate(SHADES)
        assert len(shades) >= 5
        by_count = sorted(shades, key=lambda s: s["n"])
        assert all(a["alpha"] <= b["alpha"] for a, b in zip(by_count, by_count[1:], strict=False))
        assert by_count[0]["alpha"] < by_count[-1]["alpha"]
        assert "新客" in page.inner_text("#flows") and "新进入" in page.inner_text("#flows")
        # the layer's operation is the card's tooltip and subtitle
        card = page.locator('.kpi[data-layer="dormant"]')
        assert card.get_attribute("title") == "唤醒券" and "唤醒券" in card.inner_text()
    finally:
        context.close()


def test_hostile_names_run_no_script(browser, site):
    context, page, dialogs = open_page(browser, "boss", 1280)
    try:
        page.goto(f"{site}/dashboard/layers")
        assert HOSTILE_STORE in page.inner_text("#layer-stores")
        assert HOSTILE_RULE in page.inner_text("#layer-rules")
        assert dialogs == []
        assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0
    finally:
        context.close()


def test_clerk_sees_only_their_store(browser, site):
    context, page, dialogs = open_page(browser, "clerk", 390)
    try:
        page.goto(f"{site}/dashboard/layers")
        body = page.inner_text("main")
        assert "南京西路店" in body and "script" not in body and "国贸" not in body
        assert page.locator("select[name=store]").count() == 0
        assert page.evaluate(LAYOUT) == []
        page.screenshot(path=str(SHOTS / "layers-clerk-390.png"), full_page=True)
        assert page.goto(f"{site}/dashboard/layers?store=S2").status == 403
        assert "没有权限" in page.inner_text("main")
        assert page.goto(f"{site}/api/kpi/layers?store=S2").status == 403
        assert dialogs == []
    finally:
        context.close()
