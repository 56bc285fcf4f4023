"""A small world for the CRM page and query tests: two sales reps, a manager, a clerk and an
operator (local accounts), stores, tags, layers, customers followed by one rep or the other, and
their chats, calls and SMS written straight into ``crm_messages`` (the table contract), records
built by the real ``rebuild_customers``. Also an app with sign-in installed and the CRM router,
and a sign-in helper for TestClient."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from scrm.auth import service as auth_service
from scrm.auth.models import RoleGrant, User
from scrm.auth.roles import Role
from scrm.auth.throttle import MemoryThrottle
from scrm.config import CrmSettings
from scrm.contacts.models import Customer, Employee, FollowRelation, FollowStatus
from scrm.crm import service
from scrm.crm.models import CrmMessage
from scrm.layers.models import CustomerLayer
from scrm.layers.queries import LayerNames
from scrm.orders.models import CustomerMobile
from scrm.stores.models import Store
from scrm.tags.models import Tag, TagGroup
from scrm.web.auth_routes import AuthConfig, csrf_token, current_principal, install_auth
from scrm.web.crm_pages import crm_router

TZ = ZoneInfo("Asia/Shanghai")
RULES_DIR = Path(__file__).resolve().parents[2] / "crm"
PASSWORD = "crm pages password"
TODAY = dt.date(2026, 11, 30)
NOW = dt.datetime(2026, 11, 30, 6, 0, tzinfo=dt.UTC)  # 14:00 in Shanghai
HOSTILE = ["<script>alert(1)</script>", "{{7*7}}", "<img src=x onerror=alert(1)>"]
NAMES = LayerNames(order=("vip", "new"), names={"vip": "高价值客户", "new": "新客"},
                   operations={"vip": "专人跟进", "new": "首单券"}, loaded=True)

_ids = itertools.count(1)


def settings() -> CrmSettings:
    return CrmSettings(rules_dir=RULES_DIR)


def local(day: int, hour: int, minute: int = 0, month: int = 11) -> dt.datetime:
    """A Shanghai wall-clock time in 2026 as aware UTC."""
    return dt.datetime(2026, month, day, hour, minute, tzinfo=TZ).astimezone(dt.UTC)


def message(external_userid: str | None, at: dt.datetime, text: str = "", *, out: bool = False,
            userid: str | None = None, channel: str = "chat", msgtype: str | None = None, mobile: str | None = None,
            duration: int | None = None, payload: dict | None = None, revoked: bool = False) -> dict[str, Any]:
    n = next(_ids)
    return dict(channel=channel, source_id=f"p{n}", external_userid=external_userid, mobile=mobile,
                userid=userid, direction="out" if out else "in", sent_at=at,
                msgtype=msgtype or ("text" if channel == "chat" else channel), content="" if revoked else text,
                payload={} if revoked else (payload or {}), roomid=None, duration_seconds=duration,
                revoked_at=at if revoked else None, created_at=at)


def insert_messages(engine: Engine, rows: list[dict[str, Any]]) -> list[int]:
    t = CrmMessage.__table__
    out = []
    with engine.begin() as conn:
        for row in rows:
            out.append(conn.execute(sa.insert(t).values(**row).returning(t.c.id)).scalar_one())
    return out


def add_rows(engine: Engine, model: Any, rows: list[dict[str, Any]]) -> None:
    if rows:
        with engine.begin() as conn:
            conn.execute(sa.insert(model.__table__), rows)


def follow(userid: str, external_userid: str, *, remark: str | None = None, tags: list[str] | None = None,
           status: str = FollowStatus.active.value) -> dict[str, Any]:
    return dict(userid=userid, external_userid=external_userid, remark=remark, description=None, state=None,
                oper_userid=None, tag_ids=tags or [], remark_mobiles=[], status=status, added_at=None,
                removed_by=None, updated_at=NOW)


def customer(external_userid: str, name: str, mobiles: list[str] | None = None) -> dict[str, Any]:
    return dict(external_userid=external_userid, name=name, unionid=None, avatar=None, corp_name=None,
                mobiles=mobiles or [], status="active", created_at=NOW, updated_at=NOW)


def seed(engine: Engine, *, with_users: bool = True) -> dict[str, Any]:
    """The world the page tests read. Returns the message ids worth pointing at."""
    add_rows(engine, Store, [dict(code="S1", name="南京西路店", city="上海", address="", status="open", updated_at=NOW),
                             dict(code="S2", name="国贸店", city="北京", address="", status="open", updated_at=NOW)])
    add_rows(engine, Employee, [dict(userid=u, name=n, is_bot=False, active=True, created_at=NOW, updated_at=NOW)
                                for u, n in (("repA", "销售小陈"), ("repB", "销售小王"), ("boss", "王经理"))])
    add_rows(engine, TagGroup, [dict(group_id="g1", name="意向", deleted=False, updated_at=NOW)])
    add_rows(engine, Tag, [dict(tag_id="t1", group_id="g1", name="高意向", deleted=False, updated_at=NOW),
                           dict(tag_id="t2", group_id="g1", name="已下单", deleted=False, updated_at=NOW),
                           dict(tag_id="t3", group_id="g1", name="已删除的标签", deleted=True, updated_at=NOW)])
    add_rows(engine, Customer, [customer("cA1", "张三"), customer("cA2", "李四"), customer("cB1", "王五"),
                                customer("cAB", "共享客户"), customer("cGone", "已删客户"),
                                customer("cEvil", HOSTILE[0])])
    add_rows(engine, FollowRelation, [
        follow("repA", "cA1", remark="张三-拿铁大客户", tags=["t1", "t3"]), follow("repA", "cA2"),
        follow("repB", "cB1", tags=["t2"]), follow("repA", "cAB"), follow("repB", "cAB", tags=["t2"]),
        follow("repA", "cGone", status=FollowStatus.deleted_by_customer.value), follow("repA", "cEvil")])
    add_rows(engine, CustomerMobile, [
        dict(mobile="+8613800138000", external_userid="cA1", source="remark", created_at=NOW),
        dict(mobile="+8613912345678", external_userid="cB1", source="order", created_at=NOW),
        dict(mobile="+8613700001111", external_userid="cGone", source="order", created_at=NOW)])
    add_rows(engine, CustomerLayer, [
        dict(external_userid="cA1", layer="vip", rule_id=None, home_store="S1", tag_bits=0, since=NOW,
             computed_at=NOW, tags_dirty=False),
        dict(external_userid="cB1", layer="new", rule_id=None, home_store="S2", tag_bits=0, since=NOW,
             computed_at=NOW, tags_dirty=False)])
    ids = insert_messages(engine, [
        message("cA1", local(28, 10, 0), "你好，想订 20 杯生椰拿铁，下周三能送到吗？"),
        message("cA1", local(28, 10, 5), "可以的，20 杯 18 元一杯", out=True, userid="repA"),
        message("cA1", local(28, 10, 6), "这条消息会撤回", out=True, userid="repA", revoked=True),
        message("cA1", local(29, 15, 0), "", channel="call", userid="repA", out=True, mobile="+8613800138000",
                duration=192, payload={"status": "answered"}),
        message("cA1", local(30, 9, 0), "您的订单已确认", channel="sms", userid="repA", out=True,
                mobile="+8613800138000", payload={"status": "delivered"}),
        message("cA1", local(30, 9, 30), " ".join(HOSTILE)),
        message("cB1", local(29, 11, 0), "王五的秘密订单：500 杯美式", channel="sms", mobile="+8613912345678"),
        message("cB1", local(29, 11, 5), "收到", out=True, userid="repB"),
        message("cB1", local(29, 11, 10), "<b>爱买不买</b>，别问了", out=True, userid="repB"),
        message("cAB", local(27, 9, 0), "共享客户的问题？"),
        message("cA1", local(27, 8, 0), "订单链接 https://shop.example.com/o/" + "x" * 160),
        message(None, local(27, 9, 0), "没人认领的短信", channel="sms", mobile="+8613600000000"),
    ])
    add_rows(engine, CrmMessage, [dict(channel="chat", source_id="revoke-3", external_userid="cA1", mobile=None,
                                       userid="repA", direction="out", sent_at=local(28, 10, 7), msgtype="revoke",
                                       content="", payload={"pre_msgid": "p3"}, roomid=None, duration_seconds=None,
                                       revoked_at=None, created_at=NOW)])
    service.rebuild_customers(engine, ["cA1", "cB1", "cAB"], now=NOW, settings=settings(), tz=TZ)
    if with_users:
        add_users(engine)
    return {"first": ids[0], "reply": ids[1], "revoked": ids[2], "call": ids[3], "sms": ids[4], "hostile": ids[5],
            "b_secret": ids[6], "risky": ids[8], "long": ids[10]}


_hash: list[str] = []  # one argon2 hash of PASSWORD for every test (hashing is slow on purpose)


def add_users(engine: Engine) -> None:
    """Local accounts: reps repA and repB, manager boss, clerk (store S1) and op (operator)."""
    users = (("repA", "", Role.sales_rep, ""), ("repB", "", Role.sales_rep, ""), ("boss", "", Role.manager, ""),
             ("clerk", "店员小张", Role.store_staff, "S1"), ("op", "运营小李", Role.operator, ""))
    if not _hash:
        auth_service.add_user(engine, "hash-probe", password=PASSWORD)
        with engine.begin() as conn:
            _hash.append(conn.execute(sa.select(User.__table__.c.password_hash)
                                      .where(User.__table__.c.userid == "hash-probe")).scalar_one())
            conn.execute(sa.delete(User.__table__).where(User.__table__.c.userid == "hash-probe"))
    add_rows(engine, User, [dict(userid=u, name=n, password_hash=_hash[0], disabled=False, created_at=NOW,
                                 last_sign_in_at=None) for u, n, _, _ in users])
    add_rows(engine, RoleGrant, [dict(userid=u, role=r.value, store_code=code, created_at=NOW)
                                 for u, _, r, code in users])


def make_app(engine: Engine, *, base_url: str = "http://scrm", names: LayerNames = NAMES) -> FastAPI:
    """An app with sign-in (local accounts) and the CRM router, as create_app mounts it."""
    app = FastAPI()
    install_auth(app, AuthConfig(engine=engine, secret="crm-pages-test-secret", base_url=base_url,
                                 throttle=MemoryThrottle(), home="/crm"))
    app.include_router(crm_router(engine, current_principal, tz=TZ, csrf=csrf_token, crm_settings=settings(),
                                  layer_names=lambda: names, today=lambda: TODAY, clock=lambda: NOW))
    return app


_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def sign_in(client, userid: str) -> None:
    """Sign ``userid`` in through the local-account form (its CSRF cookie and token included)."""
    client.cookies.clear()
    page = client.get("/login")
    token = _TOKEN.search(page.text)
    assert token, "the sign-in page has no CSRF token"
    response = client.post("/login", data={"userid": userid, "password": PASSWORD, "csrf_token": token.group(1),
                                           "next": "/crm"}, follow_redirects=False)
    assert response.status_code == 303, response.text


def page_token(html: str) -> str:
    """The CSRF token of a record's edit form on a customer page."""
    for found in _TOKEN.finditer(html):
        return found.group(1)
    raise AssertionError("no form with a CSRF token on the page")
