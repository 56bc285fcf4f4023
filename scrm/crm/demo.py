"""The CRM part of ``scrm run``'s demo (sandbox corp only): one store member becomes a sales rep,
types two customers' mobiles into WeCom (the contact callbacks index them), and a week of chats,
calls and SMS with three of their customers goes through the real importers and the record builder,
so /crm has a rep's customers, a merged timeline, follow-up records and service-quality figures.

Played once per data dir (the messages' ids are fixed; a second start finds them and plays nothing)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from scrm.auth.roles import Role
from scrm.auth.service import grant
from scrm.crm.ingest import import_calls, import_chats, import_sms
from scrm.crm.models import CrmMessage
from scrm.crm.service import rebuild_customers

PREFIX = "demo-crm-"


@dataclass(frozen=True)
class CrmDemo:
    rep: str
    rep_name: str
    customers: int
    messages: int
    records: int

    def line(self) -> str:
        return (f"{self.rep_name} ({self.rep}) is a sales rep: {self.messages} chat/call/SMS messages with "
                f"{self.customers} customers imported, {self.records} follow-up records built (/crm)")


def _stories(customers: list[str], rep: str, at: Callable[[int, int, int], dt.datetime]):
    """(chat lines, call rows, SMS rows, mobiles typed by the rep) for up to three customers."""
    chats: list[dict] = []
    calls: list[list[str]] = []
    sms: list[list[str]] = []
    mobiles: dict[str, str] = {}

    def say(eid: str, n: int, when: dt.datetime, text: str, *, out: bool) -> None:
        chats.append({"msgid": f"{PREFIX}{eid}-{n}", "action": "send", "from": rep if out else eid,
                      "tolist": [eid] if out else [rep], "roomid": "", "msgtime": int(when.timestamp() * 1000),
                      "msgtype": "text", "text": {"content": text}})

    if customers:  # a company order: asked, priced, confirmed by call and SMS
        c = customers[0]
        mobiles[c] = "138 0000 1001"
        say(c, 1, at(6, 10, 5), "你好，我们公司周五开会，想订50杯拿铁，团购价多少钱一杯？", out=False)
        say(c, 2, at(6, 10, 20), "您好！50杯拿铁团购价每杯20元，周五上午可以送到。", out=True)
        say(c, 3, at(6, 10, 31), "好的，那就下单吧，能开发票吗？", out=False)
        say(c, 4, at(6, 10, 40), "可以开发票，我稍后电话跟您确认送货地址。", out=True)
        calls.append([f"{PREFIX}call-1", "+86 138 0000 1001", rep, "out", at(6, 11, 0).isoformat(), "240",
                      "answered", "确认周五上午10点送到公司前台，开普通发票"])
        sms.append([f"{PREFIX}sms-1", "8613800001001", rep, "out", at(6, 11, 10).isoformat(),
                    "【咖啡】您的团购订单：拿铁50杯，每杯20元，合计1000元，周五上午10点送达。"])
    if len(customers) > 1:  # a complaint answered late the next morning, with a careless reply
        c = customers[1]
        mobiles[c] = "139-0000-1002"
        say(c, 1, at(3, 20, 40), "今天下午买的美式是凉的，太差了，可以退款吗？", out=False)
        say(c, 2, at(2, 11, 30), "不知道怎么回事，你自己看下小票吧", out=True)
        calls.append([f"{PREFIX}call-2", "13900001002", "", "in", at(2, 12, 0).isoformat(), "0", "missed", ""])
        calls.append([f"{PREFIX}call-3", "+8613900001002", rep, "out", at(2, 12, 5).isoformat(), "95",
                      "answered", "客户投诉美式是凉的，已道歉并同意退款18元"])
    if len(customers) > 2:  # a question nobody has answered yet
        say(customers[2], 1, at(1, 15, 12), "你们的会员卡怎么办理？有没有充值优惠？", out=False)
    return chats, calls, sms, mobiles


def play_crm_demo(engine: Engine, settings, sandbox, demo: dict, *, wait_applied: Callable[[], None],
                  now: dt.datetime) -> CrmDemo | None:
    """None when there is nothing to play (no demo, or played before)."""
    stores = demo.get("stores") or []
    if not stores or len(stores[0]["staff"]) < 2:
        return None
    with engine.connect() as conn:
        if conn.execute(select(func.count()).where(CrmMessage.__table__.c.source_id.like(PREFIX + "%"))).scalar():
            return None
    store = stores[0]
    rep = store["staff"][1]  # not the group owner: a member who looks after customers one to one
    theirs = [eid for k, eid in enumerate(store["customers"]) if store["staff"][k % len(store["staff"])] == rep][:3]
    if not theirs:
        return None
    tz = ZoneInfo(settings.sop.timezone)
    today = now.astimezone(tz).date()

    def at(days_ago: int, hour: int, minute: int) -> dt.datetime:
        return dt.datetime.combine(today - dt.timedelta(days=days_ago), dt.time(hour, minute), tz)

    chats, calls, sms, mobiles = _stories(theirs, rep, at)
    for eid, mobile in mobiles.items():  # the rep types the number into WeCom, as reps do
        sandbox.employee_edits_customer(rep, eid, remark_mobiles=[mobile])
    wait_applied()
    header_calls = "call_id,mobile,userid,direction,started_at,duration_seconds,status,summary"
    header_sms = "sms_id,mobile,userid,direction,sent_at,content"
    reports = [
        import_chats(engine, [json.dumps(c, ensure_ascii=False) for c in chats], now=now),
        import_calls(engine, [header_calls, *(",".join(row) for row in calls)], now=now, tz=tz),
        import_sms(engine, [header_sms, *(",".join(row) for row in sms)], now=now, tz=tz),
    ]
    touched = set().union(*(r.customers for r in reports))
    built = rebuild_customers(engine, sorted(touched), now=now, settings=settings.crm, tz=tz)
    grant(engine, rep, Role.sales_rep)
    member = sandbox.members.get(rep)
    return CrmDemo(rep=rep, rep_name=member.name if member is not None else rep, customers=len(touched),
                   messages=sum(r.created for r in reports), records=built.records)

