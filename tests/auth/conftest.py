"""Fixtures for sign-in: two stores, a sandbox corp whose members sign in through its OAuth2 and web
login pages (in-process), and an app with sign-in installed and a few pages guarded by role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from sqlmodel import Session

from scrm.auth import service
from scrm.auth.roles import Principal, Role
from scrm.auth.throttle import MemoryThrottle
from scrm.contacts.models import Employee
from scrm.sandbox import Sandbox, create_sandbox_app
from scrm.stores.models import Store
from scrm.web.auth_routes import AuthConfig, check_csrf, csrf_token, install_auth, require_api, require_page
from scrm.wecom.client import WeComClient

CORP = "wwauthtestcorp"
AGENT = 1000002
BASE = "http://127.0.0.1:8000"  # the sandbox redirects only to 127.0.0.1 / localhost
SECRET = "test-session-secret"
PASSWORD = "correct horse battery"
WECOM_UA = "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 wxwork/4.1.30 MicroMessenger/7.0.1 Language/zh"
DESKTOP_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/130 Safari/537.36"


def seed_stores(engine):
    with Session(engine) as s:
        s.add(Store(code="BJ001", name="三里屯店", city="北京"))
        s.add(Store(code="SH001", name="南京西路店", city="上海"))
        s.add(Employee(userid="zhangsan", name="张三"))
        s.commit()
    return engine


@pytest.fixture
def stores(engine):
    """Stores BJ001 and SH001, and the synced member 张三 (zhangsan), on SQLite and PostgreSQL
    (migrated): for the service and the CLI."""
    return seed_stores(engine)


SignedIn = Annotated[Principal, Depends(require_page())]
ManagerPage = Annotated[Principal, Depends(require_page(Role.manager))]
StorePage = Annotated[Principal, Depends(require_page(Role.manager, Role.store_staff))]
KpiApi = Annotated[Principal, Depends(require_api(Role.manager, Role.operator, Role.store_staff))]
StoreApi = Annotated[Principal, Depends(require_api(Role.manager, Role.store_staff))]
ManagerApi = Annotated[Principal, Depends(require_api(Role.manager))]


def guarded_pages(app: FastAPI) -> None:
    """Pages as the dashboard will guard them."""

    @app.get("/kpi", response_class=HTMLResponse)
    def anyone(request: Request, who: SignedIn):
        return f"<p>你好 {who.name}</p>"

    @app.get("/kpi/all", response_class=HTMLResponse)
    def managers(who: ManagerPage):
        return "<p>全部门店</p>"

    @app.get("/kpi/store/{code}", response_class=HTMLResponse)
    def one_store(code: str, who: StorePage):
        who.require_store(code)
        return f"<p>{code}</p>"

    @app.get("/api/kpi/stores")
    def visible(who: KpiApi):
        v = who.visible_stores()
        return {"userid": who.userid, "stores": None if v is None else sorted(v)}

    @app.get("/api/kpi/store/{code}")
    def store_api(code: str, who: StoreApi):
        who.require_store(code)
        return {"store": code}

    @app.get("/api/kpi/managers")
    def managers_api(who: ManagerApi):
        return {"ok": True}

    @app.get("/kpi/form", response_class=HTMLResponse)
    def form(request: Request, who: SignedIn):
        return f'<form method="post" action="/kpi/note"><input name="csrf_token" value="{csrf_token(request)}"></form>'

    @app.post("/kpi/note", dependencies=[Depends(check_csrf)])
    def post_note(who: SignedIn):
        return {"saved": True}


@dataclass
class Site:
    web: TestClient
    sandbox: Sandbox
    sandbox_http: TestClient
    engine: object
    cfg: AuthConfig


def make_site(engine, *, base_url: str = BASE, wecom: bool = True):
    sandbox = Sandbox(CORP, "auth-corp-secret")
    sandbox.add_member("zhangsan", "张三")
    sandbox.add_member("lisi", "李四")
    sandbox.add_member("newbie", "新人")
    sandbox_http = TestClient(create_sandbox_app(sandbox), base_url="http://sandbox")
    client = WeComClient(CORP, "auth-corp-secret", "http://sandbox/cgi-bin/", http=sandbox_http, sleep=lambda s: None)
    cfg = AuthConfig(engine=engine, secret=SECRET, base_url=base_url, session_max_age_seconds=3600,
                     client=client if wecom else None, corp_id=CORP, agent_id=AGENT,
                     oauth_authorize_url="http://sandbox/sandbox/oauth/authorize",
                     sso_login_url="http://sandbox/sandbox/sso/login", throttle=MemoryThrottle(limit=5))
    app = FastAPI()
    install_auth(app, cfg)
    guarded_pages(app)
    return Site(TestClient(app, base_url=base_url), sandbox, sandbox_http, engine, cfg)


@pytest.fixture
def users(sqlite_engine):
    """The pages' tests (SQLite: what they test is above the database): the stores, and a local
    manager (boss), a clerk of BJ001 (clerk), zhangsan (WeCom) a manager, lisi (WeCom) a clerk of
    SH001; newbie has no grants."""
    engine = seed_stores(sqlite_engine)
    service.add_user(engine, "boss", name="老板", password=PASSWORD, role=Role.manager)
    service.add_user(engine, "clerk", name="店员甲", password=PASSWORD, role=Role.store_staff, stores=["BJ001"])
    service.grant(engine, "zhangsan", Role.manager)
    service.grant(engine, "lisi", Role.store_staff, ["SH001"])
    return engine


@pytest.fixture
def site(users):
    s = make_site(users)
    with s.web:
        yield s
    s.sandbox_http.close()


def sign_in(web: TestClient, userid: str, password: str = PASSWORD, next_url: str = "/kpi"):
    """The local form, as a browser fills it: GET the page (CSRF cookie and token), POST it."""
    import re

    page = web.get("/login", params={"next": next_url}, headers={"user-agent": DESKTOP_UA})
    token = re.search(r'name="csrf_token" value="([^"]*)"', page.text).group(1)
    return web.post("/login", data={"userid": userid, "password": password, "csrf_token": token, "next": next_url},
                    follow_redirects=False)


@pytest.fixture(autouse=True)
def quick_hashes(monkeypatch):
    """argon2id with small parameters, so the many sign-ins here take milliseconds; the production
    parameters are tested in test_passwords.py (tests that need them use the ``real_hashes`` marker)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    monkeypatch.setattr(service, "_hasher", PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),)))
    monkeypatch.setattr(service, "_dummy", None)
