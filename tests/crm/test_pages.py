"""The CRM pages through the app (sign-in installed, local accounts signed in through the form) on
SQLite and PostgreSQL, records built by the real rebuild: who sees what (a rep only their
customers, in the list, the search, the customer page, the edit and the CSV; a manager all; other
roles a Chinese 403), pagination, partial mobile search, the edit form with CSRF (kept across a
rebuild), the timeline's pages and message links, escaping, and the service-quality page and CSV.

Mutations tried (each made the named tests fail, then was undone):
- ``_scope_ids`` without the ``userid == rep`` condition: test_rep_list_shows_only_their_customers,
  test_search_stays_in_the_reps_scope;
- ``_scope_ids`` without the ``status == active`` condition: test_rep_list_shows_only_their_customers
  (cGone listed); ``may_open`` without it: test_another_reps_customer_is_refused_everywhere (cGone opened);
- ``may_open`` answering True for everyone: test_another_reps_customer_is_refused_everywhere;
- the edit's CSRF comparison removed (any token accepted): test_edit_needs_the_csrf_token;
- parse_search keeping the separators (``compact = text``): test_search_by_name_and_partial_mobile;
- the message-mobile part of the search removed: test_search_by_name_and_partial_mobile (cA2 by its SMS);
- the list sorted ``last.asc()``: test_rep_list_shows_only_their_customers, test_list_pages_of_fifty;
- page_of_message counting older messages instead of newer: test_timeline_pages_and_message_links;
- highlight wrapping the raw text (``Markup(text)`` instead of ``escape(text)``):
  test_risky_reply_is_highlighted_after_escaping;
- csv_safe left out of the quality CSV's name column: test_quality_csv_guards_formulas.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from scrm.contacts.models import Customer, Employee, FollowRelation
from scrm.crm import quality, service
from scrm.crm.models import FollowUpEdit
from tests.crm.page_builders import (
    HOSTILE,
    NOW,
    TZ,
    add_rows,
    customer,
    follow,
    insert_messages,
    local,
    make_app,
    message,
    page_token,
    seed,
    settings,
    sign_in,
)


@pytest.fixture
def world(engine):
    ids = seed(engine)
    return engine, ids


@pytest.fixture
def client(world):
    engine, _ = world
    with TestClient(make_app(engine), base_url="http://scrm", follow_redirects=False) as c:
        yield c


def ids_on(html: str) -> list[str]:
    return re.findall(r'class="card customer" data-id="([^"]+)"', html)


def test_rep_list_shows_only_their_customers(client, world):
    engine, _ = world
    sign_in(client, "repA")
    r = client.get("/crm")
    assert r.status_code == 200
    # most recently contacted first, never contacted last (by id); rep B's and a deleted relation's not
    assert ids_on(r.text) == ["cA1", "cAB", "cA2", "cEvil"]
    assert "共 4 位客户" in r.text
    assert "高价值客户" in r.text and "南京西路店" in r.text  # layer by its Chinese name, home store by name
    assert "2026-11-30 09:30" in r.text  # last contact, local time
    latest = service.latest_records(engine, ["cA1", "cAB"])
    assert latest["cA1"].next_step and latest["cA1"].next_step in r.text
    assert latest["cAB"].open_questions and "1 个" in r.text and "共享客户的问题" in r.text
    assert "王五" not in r.text and "已删客户" not in r.text


def test_list_pages_of_fifty(client, world):
    engine, _ = world
    extra = [f"cP{i:03d}" for i in range(110)]
    add_rows(engine, Customer, [customer(e, f"批量{i}") for i, e in enumerate(extra)])
    add_rows(engine, FollowRelation, [follow("repA", e) for e in extra])
    insert_messages(engine, [message(e, local(1, 9, i % 60, month=11).replace(hour=i // 60), "hi")
                             for i, e in enumerate(extra)])
    sign_in(client, "repA")
    seen: list[str] = []
    for number in (1, 2, 3):
        page = client.get(f"/crm?page={number}")
        assert page.status_code == 200
        seen += ids_on(page.text)
        assert f"第 {number} / 3 页" in page.text
    assert len(seen) == 114 and len(set(seen)) == 114
    assert seen[:2] == ["cA1", "cAB"]
    assert seen[2:112] == list(reversed(extra))  # later message first
    assert ids_on(client.get("/crm?page=1").text)[49] == seen[49]
    assert len(ids_on(client.get("/crm?page=3").text)) == 14
    assert client.get("/crm?page=0").status_code == 400


@pytest.mark.parametrize("typed", ["8000", "138 0013", "+86 138", "0086-138-0013-8000", "(138)0013", "张三",
                                   "拿铁大客户"])
def test_search_by_name_and_partial_mobile(client, world, typed):
    sign_in(client, "repA")
    r = client.get("/crm", params={"q": typed})
    assert r.status_code == 200
    assert ids_on(r.text) == ["cA1"], typed


def test_search_finds_a_mobile_known_only_from_messages(client, world):
    engine, _ = world
    insert_messages(engine, [message("cA2", local(29, 8), "短信", channel="sms", mobile="+8613511112222")])
    sign_in(client, "repA")
    assert ids_on(client.get("/crm", params={"q": "1111 2222"}).text) == ["cA2"]
    assert ids_on(client.get("/crm", params={"q": "%"}).text) == []  # LIKE wildcards are text


def test_search_stays_in_the_reps_scope(client, world):
    sign_in(client, "repA")
    for typed in ("5678", "王五", "1111", "13600000000"):  # rep B's customer, a deleted relation, nobody's
        r = client.get("/crm", params={"q": typed})
        assert ids_on(r.text) == [], typed
        assert "只会在你跟进的客户里搜索" in r.text
    sign_in(client, "boss")
    assert ids_on(client.get("/crm", params={"q": "5678"}).text) == ["cB1"]


def test_manager_sees_every_rep_and_filters(client, world):
    sign_in(client, "boss")
    r = client.get("/crm")
    assert set(ids_on(r.text)) == {"cA1", "cA2", "cB1", "cAB", "cEvil"}
    assert "销售小陈" in r.text and "销售小王" in r.text  # the rep filter and who follows each
    assert ids_on(client.get("/crm?rep=repB").text) == ["cB1", "cAB"]
    assert client.get("/crm/customers/cB1").status_code == 200
    assert client.get("/crm/quality").status_code == 200


def test_another_reps_customer_is_refused_everywhere(client, world):
    engine, ids = world
    sign_in(client, "repA")
    record = service.records_for(engine, "cB1")[0].record
    with capture_logs() as logs:
        page = client.get("/crm/customers/cB1")
        token = page_token(client.get("/crm/customers/cA1").text)
        edit = client.post(f"/crm/customers/cB1/records/{record.id}",
                           data={"csrf_token": token, "note": "偷看", "next_step": "", "open_questions": ""})
        gone = client.get("/crm/customers/cGone")
        link = client.get(f"/crm/customers/cB1?msg={ids['b_secret']}")
    for r in (page, edit, gone, link):
        assert r.status_code == 403
        assert "没有权限" in r.text and "不是你跟进的客户" in r.text
        assert "秘密订单" not in r.text and "王五" not in r.text
    refused = [e for e in logs if e.get("event") == "crm_forbidden"]
    assert len(refused) == 4 and all(e["userid"] == "repA" for e in refused)
    assert {e["external_userid"] for e in refused} == {"cB1", "cGone"}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(FollowUpEdit.__table__)).scalar_one() == 0


@pytest.mark.parametrize("userid", ["clerk", "op"])
def test_other_roles_get_a_chinese_403(client, world, userid):
    sign_in(client, userid)
    for path in ("/crm", "/crm/customers/cA1", "/crm/quality", "/crm/quality.csv"):
        r = client.get(path)
        assert r.status_code == 403, path
        assert "没有权限" in r.text and "只对" in r.text
        assert "张三" not in r.text


def test_quality_is_for_managers_only(client, world):
    sign_in(client, "repA")
    for path in ("/crm/quality", "/crm/quality.csv"):
        r = client.get(path)
        assert r.status_code == 403 and "服务质量只对店长/区域经理开放" in r.text


def test_anonymous_is_sent_to_sign_in(client):
    r = client.get("/crm/customers/cA1?page=2")
    assert r.status_code == 302
    assert r.headers["location"] == "/login?next=%2Fcrm%2Fcustomers%2FcA1%3Fpage%3D2"
    assert client.post("/crm/customers/cA1/records/1", data={"note": "x"}).status_code == 302


def test_customer_page_shows_header_timeline_and_records(client, world):
    engine, ids = world
    sign_in(client, "repA")
    r = client.get("/crm/customers/cA1")
    assert r.status_code == 200
    html = r.text
    assert "+8613800138000" in html and "高价值客户" in html and "南京西路店" in html
    assert "高意向" in html and "已删除的标签" not in html  # tags by name, deleted ones left out
    assert "销售小陈" in html and "张三-拿铁大客户" in html
    # the merged timeline, newest first; the recall row itself not shown, the recalled text gone
    order = [int(x) for x in re.findall(r'id="m-(\d+)"', html)]
    assert order == [ids["hostile"], ids["sms"], ids["call"], ids["revoked"], ids["reply"], ids["first"], ids["long"]]
    assert "该消息已撤回" in html and "这条消息会撤回" not in html
    assert "3分12秒" in html and "已接通" in html and "已送达" in html
    assert all(label in html for label in ("聊天", "电话", "短信"))
    assert "共 7 条" in html and "加载更早的消息" not in html
    # the records with their facts linking to the message they came from
    views = service.records_for(engine, "cA1")
    assert len(re.findall(r'class="card record"', html)) == len(views)
    facts = [f for v in views for f in v.record.facts if f.get("message_id")]
    assert facts
    for f in facts:
        assert f'/crm/customers/cA1?msg={f["message_id"]}#m-{f["message_id"]}' in html


def test_timeline_pages_and_message_links(client, world):
    engine, _ = world
    rows = [message("cA2", local(1, 0) + dt.timedelta(minutes=i), f"消息{i}",
                    out=i % 2 == 1, userid="repA" if i % 2 else None) for i in range(250)]
    ids = insert_messages(engine, rows)
    sign_in(client, "repA")
    first = client.get("/crm/customers/cA2")
    shown = [int(x) for x in re.findall(r'id="m-(\d+)"', first.text)]
    assert shown == list(reversed(ids))[:100]
    assert "加载更早的消息" in first.text and 'href="/crm/customers/cA2?page=2#timeline"' in first.text
    third = client.get("/crm/customers/cA2?page=3")
    assert [int(x) for x in re.findall(r'id="m-(\d+)"', third.text)] == list(reversed(ids))[200:]
    assert "加载更早的消息" not in third.text and "查看较新的消息" in third.text
    # a link to the 221st newest message opens the page that has it
    target = list(reversed(ids))[220]
    linked = client.get(f"/crm/customers/cA2?msg={target}")
    assert f'id="m-{target}"' in linked.text and "第 3 / 3 页" in linked.text
    assert 'class="msg in focus"' in linked.text or 'class="msg out focus"' in linked.text
    # another customer's message id does not open anything of theirs
    other = client.get(f"/crm/customers/cA2?msg={ids[0] - 1}")
    assert other.status_code == 200 and "第 1 / 3 页" in other.text


def test_edit_needs_the_csrf_token(client, world):
    engine, _ = world
    sign_in(client, "repA")
    record = service.records_for(engine, "cA1")[0].record
    url = f"/crm/customers/cA1/records/{record.id}"
    for data in ({"note": "没有令牌"}, {"note": "错的令牌", "csrf_token": "0" * 64}):
        r = client.post(url, data=data)
        assert r.status_code == 403 and "请求已过期" in r.text
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(FollowUpEdit.__table__)).scalar_one() == 0


def test_edit_is_saved_and_survives_a_rebuild(client, world):
    engine, _ = world
    sign_in(client, "repA")
    view = service.records_for(engine, "cA1")[-1]  # the oldest: 20 杯生椰拿铁
    token = page_token(client.get("/crm/customers/cA1").text)
    note = "客户要求发票 " + HOSTILE[1]
    r = client.post(f"/crm/customers/cA1/records/{view.record.id}",
                    data={"csrf_token": token, "note": note, "next_step": "周三上午送货前电话确认",
                          "open_questions": "送货时间？\n能开发票吗？"})
    assert r.status_code == 303
    assert r.headers["location"] == f"/crm/customers/cA1?saved={view.record.id}#r-{view.record.id}"
    page = client.get(r.headers["location"].split("#")[0]).text
    assert "已保存" in page and "客户要求发票 {{7*7}}" in page and "周三上午送货前电话确认" in page
    with engine.connect() as conn:
        edit = conn.execute(sa.select(FollowUpEdit.__table__)).mappings().one()
    assert edit["userid"] == "repA" and edit["note"] == note
    assert [q["text"] for q in edit["corrections"]["open_questions"]] == ["送货时间？", "能开发票吗？"]
    service.rebuild_customers(engine, ["cA1"], now=NOW, settings=settings(), tz=TZ)
    after = client.get("/crm/customers/cA1").text
    assert "客户要求发票 {{7*7}}" in after and "周三上午送货前电话确认" in after and "能开发票吗？" in after
    # setting the next step back to the built one drops the correction
    view = service.records_for(engine, "cA1")[-1]  # the same session, rebuilt
    r = client.post(f"/crm/customers/cA1/records/{view.record.id}",
                    data={"csrf_token": token, "note": note, "next_step": view.record.next_step,
                          "open_questions": "送货时间？\n能开发票吗？"})
    assert r.status_code == 303
    again = service.records_for(engine, "cA1")[-1]
    assert "next_step" not in again.corrected and again.next_step == view.record.next_step


def test_bad_edit_keeps_what_was_typed(client, world):
    engine, _ = world
    sign_in(client, "repA")
    record = service.records_for(engine, "cA1")[0].record
    token = page_token(client.get("/crm/customers/cA1").text)
    long_note = "很长的备注" * 500
    r = client.post(f"/crm/customers/cA1/records/{record.id}",
                    data={"csrf_token": token, "note": long_note, "next_step": "我写的下一步", "open_questions": ""})
    assert r.status_code == 400
    assert "备注最多 2000 个字" in r.text
    assert long_note in r.text and "我写的下一步" in r.text  # nothing the rep typed is lost
    gone = client.post("/crm/customers/cA1/records/999999",
                       data={"csrf_token": token, "note": "x", "next_step": "", "open_questions": ""})
    assert gone.status_code == 400 and "没有找到这条跟进记录" in gone.text


def test_hostile_text_is_escaped(client, world):
    _, ids = world
    sign_in(client, "repA")
    html = client.get("/crm/customers/cA1").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html
    assert "{{7*7}}" in html
    listing = client.get("/crm").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing and "<script>alert(1)" not in listing


def test_quality_page_shows_the_quality_figures(client, world):
    engine, _ = world
    sign_in(client, "boss")
    r = client.get("/crm/quality")
    assert r.status_code == 200
    assert "2026-11-24 至 2026-11-30" in r.text  # the last 7 local days by default
    rows = quality.quality_table(engine, by="rep", start=local(24, 0).date(), end=local(30, 12).date(), tz=TZ,
                                 settings=settings(), now=NOW)
    assert rows
    table = r.text[r.text.index('id="quality"'):r.text.index("</table>")]
    for row in rows:
        assert f"<td>{row.sessions}</td><td>{row.answered}</td>" in table
        if row.median_first_response_seconds is not None:
            assert f"{row.median_first_response_seconds / 60:.1f} 分钟" in table
    assert "svg" in r.text and "首次响应时间中位数（分钟）" in r.text
    stores = client.get("/crm/quality?by=store&start=2026-11-24&end=2026-11-30")
    assert "南京西路店" in stores.text and "国贸店" in stores.text
    assert client.get("/crm/quality?start=2026-11-30&end=2026-11-01").status_code == 400
    assert client.get("/crm/quality?by=day").status_code == 400


def test_risky_reply_is_highlighted_after_escaping(client, world):
    sign_in(client, "boss")
    html = client.get("/crm/quality").text
    assert "&lt;b&gt;<mark>爱买不买</mark>&lt;/b&gt;，别问了" in html
    assert "/crm/customers/cB1?msg=" in html


def test_quality_csv_guards_formulas(client, world):
    engine, _ = world
    with engine.begin() as conn:
        conn.execute(sa.update(Employee.__table__).where(Employee.__table__.c.userid == "repB")
                     .values(name="=HYPERLINK(\"http://evil\")"))
    sign_in(client, "boss")
    r = client.get("/crm/quality.csv?start=2026-11-24&end=2026-11-30")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][:3] == ["销售账号", "销售", "会话数"]
    by_key = {row[0]: row for row in rows[1:]}
    assert by_key["repB"][1] == "'=HYPERLINK(\"http://evil\")"
    assert by_key["repA"][1] == "销售小陈"
