"""A store chain for the page tests, inserted directly: stores in 上海, 北京 and 广州, staff and
group QR codes (real QR images as data: URLs), groups with members, employees with names."""

from __future__ import annotations

import base64
import datetime as dt
import os

import segno
from sqlmodel import Session

from scrm.config import RoutingSettings
from scrm.contacts.models import Employee
from scrm.groups.models import CustomerGroup, GroupMember, MemberState
from scrm.stores.models import CodeStatus, Store, StoreCode, StoreStatus
from scrm.web.app import create_app
from scrm.wecom.crypto import CallbackCrypto

KEY = base64.b64encode(os.urandom(32)).decode().rstrip("=")
UPDATED = dt.datetime(2026, 11, 24, 3, 53, tzinfo=dt.UTC)  # 11:53 in Shanghai
HOSTILE = "<script>alert(1)</script>"


def qr(text: str) -> str:
    return segno.make(text, error="m").png_data_uri(scale=6, border=2)


def seed(engine) -> None:
    with Session(engine) as s:
        s.add(Employee(userid="zhangsan", name="张三"))
        s.add(Employee(userid="lisi", name="李四"))
        s.add(Employee(userid="wangwu", name="王五"))
        s.add(Store(code="SLT", name="南京西路店", city="上海", address="南京西路 1 号",
                    latitude=31.2304, longitude=121.4737))
        # 北京: four open stores; three have a group live code: BJ4 has the most room, BJ2 comes first
        # by code, BJ3 is next to the closed OLD01. BJ1 has none.
        s.add(Store(code="BJ1", name="国贸店", city="北京", latitude=39.9087, longitude=116.4605))
        s.add(Store(code="BJ2", name="望京店", city="北京", latitude=39.9960, longitude=116.4700))
        s.add(Store(code="BJ3", name="西单店", city="北京", latitude=39.9130, longitude=116.3740))
        s.add(Store(code="BJ4", name="中关村店", city="北京", latitude=39.9830, longitude=116.3160))
        # Closed, next to 西单: its old posters should lead to BJ3.
        s.add(Store(code="OLD01", name="西四店", city="北京", latitude=39.9240, longitude=116.3730,
                    status=StoreStatus.closed))
        s.add(Store(code="GZ1", name="天河店", city="广州"))  # open, no group yet
        groups = {"chat_slt": ("zhangsan", "SLT"), "chat_bj2": ("lisi", "BJ2"), "chat_bj3": ("lisi", "BJ3"),
                  "chat_bj4": ("lisi", "BJ4"), "chat_old": ("lisi", "OLD01")}
        for chat_id, (owner, store) in groups.items():
            s.add(CustomerGroup(chat_id=chat_id, name=f"{store}福利群", owner_userid=owner, store_code=store))
        for chat_id, members in (("chat_bj2", 150), ("chat_bj3", 100), ("chat_bj4", 5)):
            for i in range(members):
                s.add(GroupMember(chat_id=chat_id, member_id=f"wm{i}", state=MemberState.member))
        s.add(StoreCode(store_code="SLT", kind="group", state="sg:SLT", config_id="cfg-slt", qr_code=qr("group SLT"),
                        chat_ids=["chat_slt"], updated_at=UPDATED))
        s.add(StoreCode(store_code="SLT", kind="staff", userid="zhangsan", state="st:SLT:1", config_id="cfg-zs",
                        qr_code=qr("staff zhangsan")))
        s.add(StoreCode(store_code="SLT", kind="staff", userid="wangwu", state="st:SLT:2", config_id="cfg-ww",
                        qr_code=qr("staff wangwu")))
        s.add(StoreCode(store_code="SLT", kind="staff", userid="lisi", state="st:SLT:3", status=CodeStatus.failed,
                        error="errcode 41054: user not activated"))
        s.add(StoreCode(store_code="BJ2", kind="group", state="sg:BJ2", config_id="cfg-bj2", qr_code=qr("group BJ2"),
                        chat_ids=["chat_bj2"]))
        s.add(StoreCode(store_code="BJ3", kind="group", state="sg:BJ3", config_id="cfg-bj3", qr_code=qr("group BJ3"),
                        chat_ids=["chat_bj3"]))
        s.add(StoreCode(store_code="BJ4", kind="group", state="sg:BJ4", config_id="cfg-bj4", qr_code=qr("group BJ4"),
                        chat_ids=["chat_bj4"]))
        s.add(StoreCode(store_code="OLD01", kind="group", state="sg:OLD01", config_id="cfg-old",
                        qr_code=qr("group OLD01"), chat_ids=["chat_old"]))
        s.commit()


def make_app(engine, **kw):
    kw.setdefault("routing_settings", RoutingSettings())
    return create_app(crypto=CallbackCrypto("tok", KEY, "wwpagescorp"), engine=engine, send=lambda ids: None, **kw)


