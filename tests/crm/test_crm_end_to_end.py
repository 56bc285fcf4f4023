"""Issue 14's must-show, end to end (SQLite and PostgreSQL), through the sandbox, the importers, the
signed records API, the debounced rebuild job and the rep's page as create_app mounts it:

1. 刘洋 adds the rep 张伟, who types his mobile into WeCom as ``138-0013-8000``; the contact callback
   indexes it. The sample chats (WeCom chat-archive JSON lines), calls (``+86 138 0013 8000``) and
   SMS (``8613800138000``) are imported and marked for a rebuild; one debounced job builds the
   records.
2. The customer page shows one merged timeline (chat, call and SMS in one stream) and the five
   follow-up records the sample story expects; the recalled message's text appears nowhere.
3. Re-importing all three files changes nothing: not a message, not a record, not a service event.
4. A new SMS through ``POST /api/crm/records`` (mobile written ``+86-138-0013-8000``) is one more
   session; a caller nobody knew becomes a customer when a rep types his number, and his call links
   to him (the contact callback's hook).
5. The other rep's customer is 403 for 张伟; that customer's hostile message shows escaped to her rep.

Mutations tried (each made this test fail, then was restored): the contact hook linking nothing
(``crm_link_hook``: the stranger's call stayed unmatched); the importer's in-batch recall not
blanking its original (the recall count and the page's text were off).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from scrm.auth import service as auth_service
from scrm.auth.roles import Role
from scrm.auth.throttle import MemoryThrottle
from scrm.config import Settings
from scrm.crm.hooks import crm_link_hook
from scrm.crm.ingest import import_calls, import_chats, import_sms
from scrm.crm.jobs import drain_crm
from scrm.crm.models import CrmMessage, FollowUp, ServiceEvent
from scrm.crm.queue import crm_notifier
from scrm.crm.service import records_for
from scrm.orders.signing import RedisNonces, Verifier, sign
from scrm.web.app import create_app
from scrm.web.auth_routes import AuthConfig
from tests.pipeline_harness import harness
from workers import actors

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "crm" / "samples"
TZ = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
LIU, CHEN, STRANGER = "wmCrmSampleLiuYang0001", "wmCrmSampleChenJing0002", "wmCrmStrangerCaller0004"
PASSWORD = "crm-e2e-password"
CRM_SECRET = "crm-e2e-secret"


def snapshot(engine) -> dict[str, list[tuple]]:
    """Every row of the CRM's tables, as plain tuples (ids, times and content)."""
    out: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        for model in (CrmMessage, FollowUp, ServiceEvent):
            t = model.__table__
            rows = conn.execute(select(t).order_by(t.c.id)).all()
            out[t.name] = [tuple(json.dumps(v, sort_keys=True, default=str) if isinstance(v, dict | list) else v
                                 for v in row) for row in rows]
    return out


def sign_in(web: TestClient, userid: str) -> None:
    web.cookies.clear()
    token = re.search(r'name="csrf_token" value="([^"]+)"', web.get("/login").text)
    assert token, "the sign-in page has a CSRF token"
    r = web.post("/login", data={"userid": userid, "password": PASSWORD, "csrf_token": token.group(1),
                                 "next": "/crm"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def signed(body: dict) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body, ensure_ascii=False).encode()
    ts, nonce = str(int(time.time())), secrets.token_hex(8)
    return raw, {"content-type": "application/json", "x-scrm-timestamp": ts, "x-scrm-nonce": nonce,
                 "x-scrm-signature": sign(CRM_SECRET, ts, nonce, raw)}


def channels_on_page(html: str, source_ids: list[str]) -> bool:
    return all(s in html for s in source_ids)


def test_sample_story_one_timeline_records_idempotent_recall_scope_and_escaping(engine, redis_url):
    settings = Settings(crm={"rules_dir": ROOT / "crm", "debounce_seconds": 5})
    with harness(engine, redis_url) as h:
        sb = h.sandbox
        h.redis.delete("scrm:crm:dirty", "scrm:crm:scheduled")
        scheduled: list[int] = []
        mark = crm_notifier(h.redis, settings, schedule=scheduled.append)
        h.processor.on_contact_changed = crm_link_hook(engine, mark)  # as scrm.runtime wires it

        def rebuild_job() -> None:
            """What the crm_rebuild_dirty actor runs when the scheduled job comes due."""
            drain_crm(engine, h.redis, settings, now=NOW, schedule=scheduled.append)

        sb.add_member("sales_zhang", "张伟")
        sb.add_member("sales_li", "李娜")
        h.start_worker()

        # 1. The customers add their reps; the reps type the mobiles as people do.
        for eid, name, rep in ((LIU, "刘洋", "sales_zhang"), (CHEN, "陈静", "sales_li")):
            sb.add_customer(name, external_userid=eid)
            sb.add_employee(rep, external_userid=eid)
        sb.employee_edits_customer("sales_zhang", LIU, remark_mobiles=["138-0013-8000"])
        sb.employee_edits_customer("sales_li", CHEN, remark_mobiles=["13900139000"])
        h.drain()

        chats = import_chats(engine, SAMPLES / "chats.jsonl", now=NOW)
        calls = import_calls(engine, SAMPLES / "calls.csv", now=NOW, tz=TZ)
        sms = import_sms(engine, SAMPLES / "sms.csv", now=NOW, tz=TZ)
        assert (chats.created, chats.revoked, chats.refused) == (25, 1, 0)
        assert (calls.created, calls.unmatched, calls.refused) == (5, 1, 0), "137-0013-7000 is nobody's yet"
        assert (sms.created, sms.refused) == (3, 0)
        scheduled.clear()
        mark(sorted(chats.customers | calls.customers | sms.customers))
        assert len(scheduled) == 1, "the import's marks schedule one debounced rebuild job"
        rebuild_job()

        # The mobile written three ways is one customer: all of 刘洋's calls and SMS are his.
        with Session(engine) as s:
            liu = s.exec(select(CrmMessage.channel, CrmMessage.source_id).where(
                CrmMessage.external_userid == LIU)).all()
        assert {sid for ch, sid in liu if ch == "call"} == {"CC20261110-0001", "CC20261125-0004",
                                                             "CC20261125-0005"}
        assert {sid for ch, sid in liu if ch == "sms"} == {"SMS-7f3a-0001", "SMS-7f3a-0002"}

        # 2. The records: five sessions, with the channels, facts and open question of the story.
        records = sorted(records_for(engine, LIU), key=lambda v: v.record.started_at)
        assert [sorted(v.record.channels) for v in records] == [
            ["chat"], ["call", "sms"], ["chat"], ["call", "chat"], ["chat"]]
        assert [v.record.userid for v in records[:4]] == ["sales_zhang"] * 4
        first = records[0]
        assert "团购价多少钱一杯" in first.first_question
        assert "企业团购下单指南" in first.last_reply
        facts = {(f["kind"], f["value"]) for f in first.record.facts}
        assert {("price", "18"), ("price", "16"), ("date", "下周三"), ("intent", "订货")} <= facts, facts
        assert not any("3000" in str(f["value"]) for f in first.record.facts), "the recalled budget is no fact"
        complaint_intents = {f["value"] for f in records[3].record.facts if f["kind"] == "intent"}
        assert {"退款", "投诉"} <= complaint_intents, records[3].record.facts
        assert [q["text"] for q in records[4].open_questions] == [
            "下个月我们还想订300杯拿铁，有没有更优惠的年度合作价格？"]
        assert records[4].next_step, "an unanswered question gets a next step"
        for v in records:  # each fact links to a message of this customer
            for f in v.record.facts:
                with Session(engine) as s:
                    assert s.get(CrmMessage, f["message_id"]).external_userid == LIU

        auth_service.add_user(engine, "sales_zhang", name="张伟", password=PASSWORD, role=Role.sales_rep, stores=[])
        auth_service.add_user(engine, "sales_li", name="李娜", password=PASSWORD, role=Role.sales_rep, stores=[])
        app = create_app(crypto=h.crypto, engine=engine, send=actors.enqueue_callbacks,
                         auth=AuthConfig(engine=engine, secret="crm-e2e-session", base_url="http://scrm",
                                         throttle=MemoryThrottle()),
                         crm_verifier=Verifier(secret=CRM_SECRET, nonces=RedisNonces(h.redis, "scrm:crm:e2e:")),
                         on_crm_messages=mark, crm_settings=settings.crm, timezone="Asia/Shanghai")
        with TestClient(app, base_url="http://scrm") as web:
            sign_in(web, "sales_zhang")
            page = web.get(f"/crm/customers/{LIU}")
            assert page.status_code == 200, page.text
            html = page.text
            # One stream: chat, call and SMS entries on the same page, and the records' questions.
            for text in ("团购价多少钱一杯", "确认订货", "收到，确认。", "退款什么时候到账",
                         "有没有更优惠的年度合作价格"):
                assert text in html, text
            assert "预算最多3000元" not in html, "a recalled message's text appears nowhere"
            assert "已撤回" in html

            # 3. Re-import: nothing changes.
            before = snapshot(engine)
            again = [import_chats(engine, SAMPLES / "chats.jsonl", now=NOW),
                     import_calls(engine, SAMPLES / "calls.csv", now=NOW, tz=TZ),
                     import_sms(engine, SAMPLES / "sms.csv", now=NOW, tz=TZ)]
            assert [r.created for r in again] == [0, 0, 0] and not any(r.customers for r in again)
            mark([LIU, CHEN])  # even a rebuild asked for by hand writes nothing
            rebuild_job()
            assert snapshot(engine) == before

            # 4a. A new SMS through the signed API, the mobile written another way: a sixth session.
            raw, headers = signed({"records": [{
                "channel": "sms", "id": "SMS-7f3a-0100", "mobile": "+86-138-0013-8000", "userid": "sales_zhang",
                "direction": "in", "sent_at": "2026-11-30T09:15:00+08:00",
                "content": "张经理，年度合作价格有结果了吗？"}]})
            scheduled.clear()
            r = web.post("/api/crm/records", content=raw, headers=headers)
            assert r.status_code == 200, r.text
            assert len(scheduled) == 1, "the API marked 刘洋 for the debounced rebuild"
            rebuild_job()
            assert len(records_for(engine, LIU)) == 6
            assert "年度合作价格有结果了吗" in web.get(f"/crm/customers/{LIU}").text

            # 4b. The unknown caller adds 李娜, who types his number: his call links to him.
            sb.add_customer("王先生", external_userid=STRANGER)
            sb.add_employee("sales_li", external_userid=STRANGER)
            sb.employee_edits_customer("sales_li", STRANGER, remark_mobiles=["137 0013 7000"])
            scheduled.clear()
            h.drain()
            with Session(engine) as s:
                call = s.exec(select(CrmMessage).where(CrmMessage.source_id == "CC20261120-0003")).one()
            assert call.external_userid == STRANGER
            assert scheduled, "the linked customer is marked for a rebuild"
            rebuild_job()
            assert [v.record.channels for v in records_for(engine, STRANGER)] == [["call"]]

            # 5. Scope: 陈静 is 李娜's customer.
            other = web.get(f"/crm/customers/{CHEN}")
            assert other.status_code == 403 and "权限" in other.text
            assert CHEN not in web.get("/crm").text
            sign_in(web, "sales_li")
            chen = web.get(f"/crm/customers/{CHEN}")
            assert chen.status_code == 200
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in chen.text
            assert "<script>alert(1)</script>" not in chen.text
            assert "{{7*7}}" in chen.text and "会员卡是49元" not in chen.text
