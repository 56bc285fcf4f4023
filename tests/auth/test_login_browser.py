"""The sign-in page in headless Chromium on a 390x844 phone: it fits the screen, the local account
form signs a manager in and lands on ``next``; a clerk is refused a manager's page; in a desktop
browser the WeCom web login goes through the sandbox's member list and back, signed in.
Screenshots: /tmp/shots/login-390.png, /tmp/shots/login-error-390.png, /tmp/shots/no-role-390.png.

Mutations tried: the login page's inputs without ``width: 100%`` and a fixed 480px card
(``.login { width: 480px }``): the layout check failed (the page scrolled sideways); the form
without its csrf_token field: signing in stayed on a 403 page."""

from __future__ import annotations

import re
import shutil
import socket
import threading
from pathlib import Path

import pytest
import uvicorn

from scrm.auth import service
from scrm.auth.roles import Role
from scrm.auth.throttle import MemoryThrottle
from scrm.sandbox import Sandbox, serve
from scrm.web.auth_routes import AuthConfig, install_auth
from scrm.wecom.client import WeComClient
from tests.auth.conftest import AGENT, CORP, PASSWORD, guarded_pages, seed_stores
from tests.conftest import REQUIRE
from tests.waiting import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]
SHOTS = Path("/tmp/shots")

FITS = """() => {
  const vw = document.documentElement.clientWidth, bad = [];
  document.querySelectorAll('main *').forEach((el) => {
    const r = el.getBoundingClientRect();
    if (r.width && r.right > vw + 1) bad.push(el.tagName + '#' + el.id + '.' + el.className + ' ends at ' + r.right);
  });
  if (document.documentElement.scrollWidth > vw) bad.push('page scrolls sideways');
  return bad;
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from fastapi import FastAPI
    from sqlmodel import SQLModel

    from scrm.db import make_engine

    if CHROMIUM is None:
        if REQUIRE:
            pytest.fail("chromium is not installed but SCRM_REQUIRE_SERVICES=1")
        pytest.skip("chromium is not installed")
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('auth') / 'scrm.db'}")
    SQLModel.metadata.create_all(engine)
    seed_stores(engine)
    service.add_user(engine, "boss", name="老板", password=PASSWORD, role=Role.manager)
    service.add_user(engine, "clerk", name="店员甲", password=PASSWORD, role=Role.store_staff, stores=["BJ001"])
    service.grant(engine, "zhangsan", Role.manager)

    sandbox = Sandbox(CORP, "auth-corp-secret")
    sandbox.add_member("zhangsan", "张三")
    sandbox.add_member("lisi", "李四")
    sandbox_server = serve(sandbox, port=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    app = FastAPI()
    install_auth(app, AuthConfig(
        engine=engine, secret="browser-test-secret", base_url=base, client=WeComClient(
            CORP, "auth-corp-secret", sandbox_server.api_base_url), corp_id=CORP, agent_id=AGENT,
        oauth_authorize_url=sandbox_server.base_url + "/sandbox/oauth/authorize",
        sso_login_url=sandbox_server.base_url + "/sandbox/sso/login", throttle=MemoryThrottle()))
    guarded_pages(app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="the web server to start")
    try:
        yield base, sandbox_server.base_url
    finally:
        server.should_exit = True
        thread.join(5)
        sandbox_server.stop()
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
    """A fresh 390x844 tab that reaches nothing but scrm and the sandbox (no CDN)."""
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    page.route(re.compile(r"^(?!http://127\.0\.0\.1|data:)"), lambda route: route.abort())
    yield page, site[0]
    context.close()


def test_the_sign_in_page_fits_a_phone_and_signs_a_manager_in(phone):
    page, base = phone
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{base}/kpi/all")  # not signed in: to the sign-in page, and back after
    assert page.url.startswith(f"{base}/login?next=")
    assert page.evaluate(FITS) == []
    assert page.locator("h1").inner_text() == "登录门店运营后台"
    assert page.locator("#wecom-login").inner_text() == "企业微信扫码登录"
    for box in (page.locator("#userid").bounding_box(), page.locator("button[type=submit]").bounding_box()):
        assert box["height"] >= 44 and box["width"] > 300  # thumb-sized, full width
    page.screenshot(path=str(SHOTS / "login-390.png"), full_page=True)

    page.fill("#userid", "boss")
    page.fill("#password", "wrong password!")
    page.click("button[type=submit]")
    assert page.locator("#error").inner_text() == "账号或密码不正确"
    assert page.input_value("#userid") == "boss" and page.evaluate(FITS) == []
    page.screenshot(path=str(SHOTS / "login-error-390.png"), full_page=True)

    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/kpi/all")
    assert "全部门店" in page.locator("body").inner_text()


def test_a_clerk_is_refused_a_managers_page_and_can_sign_out(phone):
    page, base = phone
    page.goto(f"{base}/login?next=/kpi/all")
    page.fill("#userid", "clerk")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state("load")
    assert page.url == f"{base}/kpi/all"
    text = page.locator("body").inner_text()
    assert "没有权限" in text and "店员甲" in text and "门店店员" in text and "BJ001" in text
    assert page.evaluate(FITS) == []
    page.screenshot(path=str(SHOTS / "no-role-390.png"), full_page=True)
    page.click("text=退出登录")
    page.wait_for_url(f"{base}/login")
    page.goto(f"{base}/kpi")
    assert page.url.startswith(f"{base}/login?next=")


def test_the_wecom_web_login_through_the_sandbox(browser, site):
    base, sandbox = site
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(f"{base}/login?next=/kpi")
        page.click("#wecom-login")
        page.wait_for_url(re.compile(re.escape(sandbox) + r"/sandbox/sso/login\?"))
        page.click("text=以 张三 (zhangsan) 扫码")
        page.wait_for_url(f"{base}/kpi")
        assert "你好 张三" in page.locator("body").inner_text()
    finally:
        context.close()
