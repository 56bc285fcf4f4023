"""The managers' dashboard (scrm/web/dashboard.py) on a fake KpiSource with hand-made figures: the
pages in Chinese with the source's figures, the scope of each role on pages, CSV and JSON, the
filter handed to the source, pagination, CSV content, and hostile names escaped everywhere.

Mutations tried (each made the named tests fail, then was undone):
- resolve_scope ignoring the principal's stores (``stores = None``): test_clerk_sees_only_their_store_on_pages,
  _in_csv_and_json and test_clerk_asking_for_another_store_is_refused fail;
- the ``may_see_kpis`` check removed: test_sales_rep_is_refused_everywhere fails;
- the anonymous redirect answering a 403 page instead: test_anonymous_is_sent_to_sign_in fails;
- yuan() dividing by 10 instead of 100: test_overview_shows_the_source_figures and
  test_each_page_is_chinese_with_the_source_figures fail;
- a default range of 8 days: test_default_range_is_the_last_seven_local_days (and four more) fail;
- the table's offset computed as ``page * per_page``: test_table_pagination_asks_the_source_for_the_page,
  test_table_sorts_by_a_column_across_pages (and two more) fail;
- csv_safe returning the text unchanged: test_csv_guards_formulas_and_has_bom fails; the BOM left out:
  that test and the other CSV tests fail;
- ``| safe`` on the store name in dashboard_table.html: test_hostile_names_are_escaped_in_html fails;
- the orders export reading only the first batch: test_csv_export_fetches_every_row fails.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass, replace
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from scrm.auth.roles import Principal, Role
from scrm.kpi.report import (
    AttributionRule,
    Dimension,
    GmvDecomposition,
    GmvFactors,
    KpiFilter,
    KpiPage,
    KpiRow,
    OrderAttribution,
    OwnerCompliance,
    StaffCodeFunnel,
    StoreFunnel,
)
from scrm.web.dashboard import dashboard_router

TZ = ZoneInfo("Asia/Shanghai")
TODAY = dt.date(2026, 11, 30)
HOSTILE_STORE = '<script>alert("店")</script>'
HOSTILE_GROUP = "<img src=x onerror=alert(1)>群'\"A"
FORMULA_TEMPLATE = "=HYPERLINK(\"http://evil.example\",\"点我\")"
STORES = [("S1", "南京西路店"), ("S2", HOSTILE_STORE), ("S3", "+国贸店")]
GROUPS = {"g1": ("S1", "南京西路1群"), "g2": ("S2", HOSTILE_GROUP), "g3": ("S3", "@国贸群")}
TEMPLATES = {"t1": "早餐券", "t2": FORMULA_TEMPLATE}
CUSTOMERS = {"S1": 100, "S2": 200, "S3": 50}

PRINCIPALS = {
    "boss": Principal("boss", "王经理", frozenset({Role.manager})),
    "op": Principal("op", "运营小李", frozenset({Role.operator})),
    "clerk": Principal("clerk", "店员小张", frozenset({Role.store_staff}), frozenset({"S1"})),
    "clerk2": Principal("clerk2", "店员小赵", frozenset({Role.store_staff}), frozenset({"S1", "S3"})),
    "rep": Principal("rep", "销售小陈", frozenset({Role.sales_rep})),
}


def principal_of(request: Request) -> Principal | None:
    """Tests sign in with a header naming one of PRINCIPALS."""
    return PRINCIPALS.get(request.headers.get("x-test-user", ""))


@dataclass(frozen=True)
class Fact:
    """One (day, group, template, post) cell of attributed figures."""

    day: dt.date
    chat_id: str
    template_id: str
    post_id: int
    posts_delivered: int
    members_reached: int
    clicks: int
    unique_clicks: int
    orders: int
    buyers: int
    repeat_buyers: int
    gmv_fen: int
    refunds_fen: int
    refunded_orders: int

    @property
    def store(self) -> str:
        return GROUPS[self.chat_id][0]


def make_facts() -> list[Fact]:
    """Figures for November 2026: S1's group posts t1 every day, S2's group t2 on even days, S3's
    group t1 on days divisible by 3; numbers vary with the day so every day differs."""
    facts = []
    for n in range(1, 31):
        day = dt.date(2026, 11, n)
        facts.append(Fact(day, "g1", "t1", 1000 + n, 2, 300, 20 + n, 10 + n, 2, 2, 1 if n % 5 == 0 else 0,
                          12_345 * n, 100 if n == 29 else 0, 1 if n == 29 else 0))
        if n % 2 == 0:
            facts.append(Fact(day, "g2", "t2", 2000 + n, 1, 150, 5, 4, 1, 1, 0, 9_900, 0, 0))
        if n % 3 == 0:
            facts.append(Fact(day, "g3", "t1", 3000 + n, 1, 80, 3, 3, 0, 0, 0, 0, 0, 0))
    return facts


FIELDS = ("posts_delivered", "members_reached", "clicks", "unique_clicks", "orders", "buyers", "repeat_buyers",
          "gmv_fen", "refunds_fen", "refunded_orders")


def add(row: KpiRow, fact: Fact) -> KpiRow:
    return replace(row, **{name: getattr(row, name) + getattr(fact, name) for name in FIELDS})


class FakeSource:
    """A KpiSource over make_facts(), honouring the filter (dates, stores, group, template) the way
    the real queries promise to, and recording every call."""

    def __init__(self, facts: list[Fact] | None = None, orders: int = 120):
        self.facts = make_facts() if facts is None else facts
        self.calls: list[tuple] = []
        self.orders = [OrderAttribution(
            order_id=f"O{i:04d}" if i != 7 else "-1+2", source="shop", rule=AttributionRule.last_click,
            reason=f"下单前 {i % 24} 小时点击了 早餐券", store_code=["S1", "S2", "S3"][i % 3],
            chat_id=["g1", "g2", "g3"][i % 3], post_id=1000 + i, template_id="t1", link_code=f"L{i}",
            click_at=dt.datetime(2026, 11, 29, 0, 30, tzinfo=dt.UTC),
            paid_at=dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC), amount_fen=1000 + i) for i in range(orders)]

    def matching(self, f: KpiFilter) -> list[Fact]:
        return [x for x in self.facts if f.start <= x.day <= f.end and (f.stores is None or x.store in f.stores)
                and (f.chat_id is None or x.chat_id == f.chat_id)
                and (f.template_id is None or x.template_id == f.template_id)]

    def kpi_table(self, f: KpiFilter, by: Dimension, *, limit: int, offset: int) -> KpiPage:
        self.calls.append(("kpi_table", f, by, limit, offset))
        rows: dict[str, KpiRow] = {}
        totals = KpiRow(key="", label="合计")
        for x in self.matching(f):
            key, label, store = {
                Dimension.day: (x.day.isoformat(), x.day.isoformat(), None),
                Dimension.store: (x.store, dict(STORES)[x.store], x.store),
                Dimension.group: (x.chat_id, GROUPS[x.chat_id][1], x.store),
                Dimension.template: (x.template_id, TEMPLATES[x.template_id], None),
                Dimension.post: (str(x.post_id), f"{x.day} 08:00", x.store),
            }[by]
            rows[key] = add(rows.get(key) or KpiRow(key=key, label=label, store_code=store), x)
            totals = add(totals, x)
        ordered = [rows[k] for k in sorted(rows)]
        return KpiPage(ordered[offset:offset + limit], len(ordered), totals)

    def factors(self, f: KpiFilter, key: str, by: Dimension) -> GmvFactors:
        facts = [x for x in self.matching(f) if (x.store if by == Dimension.store else x.chat_id) == key]
        customers = CUSTOMERS[key] if by == Dimension.store else CUSTOMERS[GROUPS[key][0]] // 2
        return GmvFactors(customers, sum(x.buyers for x in facts), sum(x.orders for x in facts),
                          sum(x.gmv_fen for x in facts))

    def gmv_decomposition(self, f: KpiFilter, by: Dimension) -> list[GmvDecomposition]:
        self.calls.append(("gmv_decomposition", f, by))
        keys = [c for c, _ in STORES] if by == Dimension.store else list(GROUPS)
        out = []
        for key in keys:
            store = key if by == Dimension.store else GROUPS[key][0]
            if f.stores is not None and store not in f.stores:
                continue
            label = dict(STORES)[key] if by == Dimension.store else GROUPS[key][1]
            out.append(GmvDecomposition(key, label, store, self.factors(f, key, by),
                                        self.factors(f.previous(), key, by)))
        return out

    def order_attributions(self, f: KpiFilter, *, limit: int, offset: int) -> tuple[list[OrderAttribution], int]:
        self.calls.append(("order_attributions", f, limit, offset))
        rows = [o for o in self.orders if f.stores is None or o.store_code in f.stores]
        return rows[offset:offset + limit], len(rows)

    def store_funnel(self, f: KpiFilter) -> list[StoreFunnel]:
        self.calls.append(("store_funnel", f))
        rows = [
            StoreFunnel("S1", "南京西路店", 57, 41, [StaffCodeFunnel("zhangsan", "张三", 30, 22),
                                                   StaffCodeFunnel("wangwu", "=王五", 27, 19)],
                        35, 6, 2, 390, 1, 3),
            StoreFunnel("S2", HOSTILE_STORE, 8, 8, [StaffCodeFunnel("evil", HOSTILE_GROUP, 8, 8)], 5, 1, 1, 12, 0, 0),
        ]
        return [r for r in rows if f.stores is None or r.store_code in f.stores]

    def owner_compliance(self, f: KpiFilter) -> list[OwnerCompliance]:
        self.calls.append(("owner_compliance", f))
        rows = [OwnerCompliance("zhangsan", "张三", "S1", 21, 18, 2, 1, 0),
                OwnerCompliance("evil", HOSTILE_GROUP, "S2", 7, 0, 7, 0, 0)]
        return [r for r in rows if f.stores is None or r.store_code in f.stores]

    def filters(self, name: str) -> list[KpiFilter]:
        return [c[1] for c in self.calls if c[0] == name]


def make_client(source: FakeSource) -> TestClient:
    app = FastAPI()
    app.include_router(dashboard_router(source, principal_of, tz=TZ, stores=lambda: list(STORES),
                                        today=lambda: TODAY))
    return TestClient(app, base_url="http://scrm", follow_redirects=False)


@pytest.fixture
def source():
    return FakeSource()


@pytest.fixture
def client(source):
    with make_client(source) as c:
        yield c


def as_(user: str) -> dict[str, str]:
    return {"x-test-user": user}


def text_of(html: str) -> str:
    """The page's visible text, roughly (tags dropped, entities of digits untouched)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def read_csv(body: bytes) -> list[list[str]]:
    assert body.startswith(b"\xef\xbb\xbf"), "CSV must start with a UTF-8 BOM for Excel"
    return list(csv.reader(io.StringIO(body[3:].decode("utf-8"))))


# --- the pages show the source's figures ---------------------------------------------------------


def expected_week(source: FakeSource, stores=None) -> KpiRow:
    f = KpiFilter(dt.date(2026, 11, 24), TODAY, stores)
    return source.kpi_table(f, Dimension.day, limit=0, offset=0).totals


def test_overview_shows_the_source_figures(client, source):
    week = expected_week(FakeSource())
    r = client.get("/dashboard", headers=as_("boss"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = text_of(r.text)
    assert "经营看板" in page and "概览" in page
    # GMV of the week, in yuan with two decimals from fen
    assert week.gmv_fen == sum(12_345 * n for n in range(24, 31)) + 9_900 * 4
    assert f"¥{week.gmv_fen / 100:,.2f}" in page
    assert f"¥{week.net_gmv_fen / 100:,.2f}" in page  # the refund of the 29th taken off
    assert f"{week.unique_clicks:,}" in page
    assert "¥1.00" in page  # refunds
    # the change against the previous 7 days (Nov 17-23)
    prev = KpiFilter(dt.date(2026, 11, 17), dt.date(2026, 11, 23))
    assert source.filters("kpi_table")[1] == prev
    before = FakeSource().kpi_table(prev, Dimension.day, limit=0, offset=0).totals
    assert f"较上期 ▲ {(week.clicks / before.clicks - 1) * 100:.1f}%" in page
    # headline figures with no denominator in the previous period show as —; orders per post shown
    assert "复购率" in page and "客单价" in page and "每帖独立点击" in page
    # the decomposition table has a row per store with its customers and conversion
    assert "GMV 拆解" in page and "南京西路店" in page and "100" in page
    # top templates, by net GMV: 早餐券 first
    top = re.search(r'<table class="data" id="templates">(.*?)</table>', r.text, re.S).group(1)
    assert top.index("早餐券") < top.index("HYPERLINK")
    # two charts, with one point/bar per day of the 7
    assert r.text.count('class="pt"') == 2 * 7
    assert r.text.count('class="bar"') == 2 * 7


def test_decomposition_shows_which_factor_moved(client, source):
    """S2 posts every other day: in Nov 24-30 it has 4 order days vs 3 in Nov 17-23, so its
    conversion rose by a third and its order value stayed: conversion is the mover."""
    r = client.get("/dashboard", headers=as_("boss"))
    table = re.search(r'<table class="data" id="decomposition">(.*?)</table>', r.text, re.S).group(1)
    s2 = [row for row in table.split("<tr>") if "&lt;script&gt;" in row][0]
    cells = re.findall(r"<td(.*?)</td>", s2, re.S)
    conversion = cells[2]
    assert 'class="mover"' in conversion and "2.0%" in conversion and "▲ 33.3%" in conversion
    assert 'class="up"' in conversion
    assert "▼" not in cells[4]  # order value unchanged
    r = client.get("/dashboard?decompose=group", headers=as_("boss"))
    assert source.calls[-2][0] == "gmv_decomposition" and source.calls[-2][2] == Dimension.group
    assert "南京西路1群" in r.text


def test_default_range_is_the_last_seven_local_days(client, source):
    client.get("/dashboard", headers=as_("boss"))
    f = source.filters("kpi_table")[0]
    assert (f.start, f.end, f.stores, f.chat_id, f.template_id) == (dt.date(2026, 11, 24), TODAY, None, None, None)


def test_the_filter_passed_to_the_source_is_the_one_asked(client, source):
    r = client.get("/dashboard/table?start=2026-11-03&end=2026-11-09&store=S1&group=g1&template=t1&by=post",
                   headers=as_("boss"))
    assert r.status_code == 200
    call = source.calls[-1]
    assert call[1] == KpiFilter(dt.date(2026, 11, 3), dt.date(2026, 11, 9), frozenset({"S1"}), "g1", "t1")
    assert call[2] == Dimension.post
    # the form shows what was asked and links keep it
    assert 'value="2026-11-03"' in r.text and 'value="2026-11-09"' in r.text
    assert '<option value="S1" selected>' in r.text
    assert "start=2026-11-03&amp;end=2026-11-09&amp;store=S1&amp;group=g1&amp;template=t1" in r.text
    for path, name in (("/dashboard/funnel", "store_funnel"), ("/dashboard/compliance", "owner_compliance"),
                       ("/dashboard/orders", "order_attributions")):
        client.get(path + "?start=2026-11-01&end=2026-11-02&store=S3", headers=as_("op"))
        assert source.filters(name)[-1] == KpiFilter(dt.date(2026, 11, 1), dt.date(2026, 11, 2), frozenset({"S3"}))


@pytest.mark.parametrize("query, message", [
    ("start=2026-13-01", "不是有效日期"), ("start=2026-11-10&end=2026-11-01", "结束日期早于开始日期"),
    ("start=2024-01-01&end=2026-11-01", "日期范围最长"), ("by=week", "不支持按"), ("page=0", "页码"),
    ("sort=__class__", "不能按"),
])
def test_bad_filters_get_a_chinese_error(client, source, query, message):
    r = client.get(f"/dashboard/table?{query}", headers=as_("boss"))
    assert r.status_code == 400 and message in r.text and "筛选条件有误" in r.text
    api = client.get(f"/api/kpi/summary?{query}", headers=as_("boss"))
    if "by=" not in query and "page=" not in query and "sort=" not in query:
        assert api.status_code == 422 and message in api.json()["detail"]


def test_each_page_is_chinese_with_the_source_figures(client):
    r = client.get("/dashboard/funnel", headers=as_("boss"))
    page = text_of(r.text)
    assert r.status_code == 200 and "门店漏斗" in page
    assert "57" in page and "390 / 400" in page and "每群上限 200 人" in page and "97.5%" in page
    assert "张三" in page and "按店员二维码" in page
    r = client.get("/dashboard/compliance", headers=as_("boss"))
    page = text_of(r.text)
    assert "群主执行" in page and "张三" in page and "85.7%" in page  # 18 of 21 on time
    r = client.get("/dashboard/orders", headers=as_("boss"))
    page = text_of(r.text)
    assert "订单归因" in page and "O0000" in page and "最近点击" in page and "下单前 0 小时点击了 早餐券" in page
    assert "2026-11-29 08:30" in page and "2026-11-29 11:00" in page  # click and payment in Shanghai time
    assert "¥10.00" in page
    assert "共 120 笔订单" in page
    r = client.get("/dashboard/table?by=store", headers=as_("boss"))
    page = text_of(r.text)
    assert "明细" in page and "南京西路店" in page and "合计" in page and "共 3 行" in page
    for path in ("/dashboard", "/dashboard/table", "/dashboard/funnel", "/dashboard/compliance", "/dashboard/orders"):
        html = client.get(path, headers=as_("boss")).text
        assert all(f'href="{p}?' in html for p in ("/dashboard", "/dashboard/table", "/dashboard/funnel",
                                                  "/dashboard/compliance", "/dashboard/orders"))


def test_none_ratios_show_as_a_dash():
    source = FakeSource(facts=[])
    with make_client(source) as c:
        r = c.get("/dashboard", headers=as_("boss"))
    assert r.status_code == 200
    assert "暂无数据" in r.text  # both charts are zero lines, tables empty
    kpi = re.search(r'data-metric="average_order_fen">(.*?)</div>\s*</div>', r.text, re.S)
    assert kpi and '<div class="v">—</div>' in kpi.group(0)
    assert "这段时间还没有送达帖子、点击或订单" in r.text


# --- pagination and sorting ---------------------------------------------------------------------


def test_table_pagination_asks_the_source_for_the_page(client, source):
    r = client.get("/dashboard/table?by=post&start=2026-11-01&end=2026-11-30&page=2", headers=as_("boss"))
    assert r.status_code == 200
    _, f, by, limit, offset = source.calls[-1]
    assert (by, limit, offset) == (Dimension.post, 50, 50)
    total = 30 + 15 + 10
    assert f"第 2 / 2 页，共 {total} 行" in text_of(r.text)
    assert "上一页" in r.text and "下一页" not in r.text
    rows = re.search(r'id="kpi">(.*?)</table>', r.text, re.S).group(1).count("<tr>") - 1  # header; totals: tr.total
    assert rows == total - 50
    api = client.get("/api/kpi/table?by=post&start=2026-11-01&end=2026-11-30&page=1&per_page=20",
                     headers=as_("boss")).json()
    assert (api["page"], api["pages"], api["total_rows"], len(api["rows"])) == (1, 3, total, 20)


def test_orders_pagination(client, source):
    r = client.get("/dashboard/orders?page=3", headers=as_("boss"))
    assert source.calls[-1][2:] == (50, 100)
    assert "O0100" in r.text and "O0099" not in r.text and "第 3 / 3 页" in text_of(r.text)
    api = client.get("/api/kpi/orders?page=2&per_page=7", headers=as_("boss")).json()
    assert api["total"] == 120 and [o["order_id"] for o in api["rows"]][0] == "-1+2"


def test_table_sorts_by_a_column_across_pages(client, source):
    r = client.get("/dashboard/table?by=day&start=2026-11-01&end=2026-11-30&sort=gmv_fen", headers=as_("boss"))
    body = re.search(r'id="kpi">(.*?)</table>', r.text, re.S).group(1)
    days = re.findall(r"<td>(2026-11-\d\d)", body)
    assert days[:3] == ["2026-11-30", "2026-11-29", "2026-11-28"]
    r = client.get("/dashboard/table?by=day&start=2026-11-01&end=2026-11-30&sort=gmv_fen&order=asc",
                   headers=as_("boss"))
    assert re.findall(r"<td>(2026-11-\d\d)", r.text)[0] == "2026-11-01"


# --- scope ----------------------------------------------------------------------------------------

PAGES = ["/dashboard", "/dashboard/table?by=store", "/dashboard/funnel", "/dashboard/compliance",
         "/dashboard/orders"]
CSVS = ["summary", "table", "decomposition", "templates", "funnel", "staff", "compliance", "orders"]
APIS = ["summary", "table?by=store", "decomposition", "funnel", "compliance", "orders"]


def test_clerk_sees_only_their_store_on_pages(client, source):
    for path in PAGES:
        r = client.get(path, headers=as_("clerk"))
        assert r.status_code == 200, path
        assert "&lt;script&gt;" not in r.text and "S2" not in text_of(r.text), path
        assert "+国贸店" not in r.text
    assert all(c[1].stores == frozenset({"S1"}) for c in source.calls)
    # the store is fixed: no store choice in the form
    r = client.get("/dashboard", headers=as_("clerk"))
    assert '<select name="store">' not in r.text and '<span class="fixed">南京西路店</span>' in r.text


def test_clerk_sees_only_their_store_in_csv_and_json(client, source):
    for table in CSVS:
        r = client.get(f"/dashboard/export/{table}.csv", headers=as_("clerk"))
        assert r.status_code == 200, table
        assert "S2" not in r.content.decode("utf-8-sig") and "script" not in r.content.decode("utf-8-sig"), table
    for api in APIS:
        r = client.get(f"/api/kpi/{api}", headers=as_("clerk"))
        assert r.status_code == 200, api
        assert r.json()["filter"]["stores"] == ["S1"]
        assert "S2" not in r.text and "script" not in r.text, api
    assert all(c[1].stores == frozenset({"S1"}) for c in source.calls)


def test_clerk_asking_for_another_store_is_refused(client, source):
    for path in PAGES:
        sep = "&" if "?" in path else "?"
        r = client.get(f"{path}{sep}store=S2", headers=as_("clerk"))
        assert r.status_code == 403, path
        assert "你只能查看自己门店的数据" in r.text and "没有权限" in r.text
    for table in CSVS:
        assert client.get(f"/dashboard/export/{table}.csv?store=S2", headers=as_("clerk")).status_code == 403
    for api in APIS:
        sep = "&" if "?" in api else "?"
        r = client.get(f"/api/kpi/{api}{sep}store=S2", headers=as_("clerk"))
        assert r.status_code == 403 and r.json() == {"detail": "你只能查看自己门店的数据"}
    assert source.calls == []  # nothing was even asked
    # their own store, asked explicitly, is fine; a clerk of two stores picks among them
    assert client.get("/dashboard?store=S1", headers=as_("clerk")).status_code == 200
    r = client.get("/dashboard", headers=as_("clerk2"))
    assert source.calls[-1][1].stores == frozenset({"S1", "S3"})
    assert '<option value="S3">' in r.text and '<option value="S2">' not in r.text
    assert client.get("/api/kpi/summary?store=S3", headers=as_("clerk2")).status_code == 200
    assert client.get("/api/kpi/summary?store=S2", headers=as_("clerk2")).status_code == 403


def test_managers_and_operators_see_every_store(client, source):
    for user in ("boss", "op"):
        r = client.get("/dashboard/table?by=store", headers=as_(user))
        assert "南京西路店" in r.text and "&lt;script&gt;" in r.text and "+国贸店" in r.text
        assert source.calls[-1][1].stores is None
        assert client.get("/api/kpi/summary?store=S2", headers=as_(user)).json()["filter"]["stores"] == ["S2"]


def test_sales_rep_is_refused_everywhere(client, source):
    for path in PAGES + [f"/dashboard/export/{t}.csv" for t in CSVS]:
        r = client.get(path, headers=as_("rep"))
        assert r.status_code == 403 and "没有查看经营数据的权限" in r.text, path
    for api in APIS:
        r = client.get(f"/api/kpi/{api}", headers=as_("rep"))
        assert r.status_code == 403 and r.json()["detail"] == "你的账号没有查看经营数据的权限"
    assert source.calls == []


def test_anonymous_is_sent_to_sign_in(client, source):
    r = client.get("/dashboard/table?by=store&start=2026-11-01")
    assert r.status_code == 302
    assert r.headers["location"] == "/login?next=%2Fdashboard%2Ftable%3Fby%3Dstore%26start%3D2026-11-01"
    for path in PAGES + ["/dashboard/export/orders.csv"]:
        r = client.get(path)
        assert r.status_code == 302 and r.headers["location"].startswith("/login?next=%2Fdashboard"), path
    for api in APIS:
        r = client.get(f"/api/kpi/{api}")
        assert r.status_code == 401 and r.json() == {"detail": "请先登录"}
    assert source.calls == []


# --- CSV ------------------------------------------------------------------------------------------


def test_csv_has_chinese_headers_and_the_page_figures(client, source):
    r = client.get("/dashboard/export/table.csv?by=store&start=2026-11-24&end=2026-11-30", headers=as_("boss"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="kpi-table-store-2026-11-24-2026-11-30.csv"'
    rows = read_csv(r.content)
    assert rows[0][:3] == ["编号", "名称", "门店"] and "GMV（元）" in rows[0] and "复购率" in rows[0]
    s1 = next(row for row in rows if row[0] == "S1")
    week = expected_week(FakeSource(), frozenset({"S1"}))
    assert s1[rows[0].index("GMV（元）")] == f"{week.gmv_fen / 100:.2f}"
    assert s1[rows[0].index("独立点击")] == str(week.unique_clicks)
    summary = read_csv(client.get("/dashboard/export/summary.csv", headers=as_("boss")).content)
    assert summary[0][0] == "指标" and summary[0][1] == "本期（2026-11-24~2026-11-30）"
    assert ["送达帖子", "21", "19"] == summary[1][:3]  # 14 + 4 + 3 and 14 + 3 + 2
    orders = read_csv(client.get("/dashboard/export/orders.csv", headers=as_("boss")).content)
    assert orders[0][:5] == ["订单号", "来源", "支付时间", "金额（元）", "归因规则"]
    assert orders[1][:5] == ["O0000", "shop", "2026-11-29 11:00", "10.00", "最近点击"] and len(orders) == 121
    assert orders[1][-1] == "2026-11-29 08:30"  # the click, in Shanghai time


def test_csv_guards_formulas_and_has_bom(client):
    templates = read_csv(client.get("/dashboard/export/templates.csv", headers=as_("boss")).content)
    assert ["t2", "'" + FORMULA_TEMPLATE] == templates[2][:2]
    table = read_csv(client.get("/dashboard/export/table.csv?by=store", headers=as_("boss")).content)
    assert [HOSTILE_STORE, "'+国贸店"] == [r[1] for r in table[1:] if r[0] in ("S2", "S3")]
    groups = read_csv(client.get("/dashboard/export/decomposition.csv?by=group", headers=as_("boss")).content)
    assert "'@国贸群" in [r[1] for r in groups] and HOSTILE_GROUP in [r[1] for r in groups]
    staff = read_csv(client.get("/dashboard/export/staff.csv", headers=as_("boss")).content)
    assert "'=王五" in [r[3] for r in staff]
    orders = read_csv(client.get("/dashboard/export/orders.csv", headers=as_("boss")).content)
    assert "'-1+2" in [r[0] for r in orders]
    # our own negative numbers are not text: a refund-only day has a negative net GMV cell
    source = FakeSource(facts=[Fact(TODAY, "g1", "t1", 1, 0, 0, 0, 0, 0, 0, 0, 0, 500, 1)])
    with make_client(source) as c:
        rows = read_csv(c.get("/dashboard/export/table.csv?by=day", headers=as_("boss")).content)
    assert rows[1][rows[0].index("净GMV（元）")] == "-5.00"


def test_csv_export_fetches_every_row(client, source):
    many = FakeSource(orders=2500)
    with make_client(many) as c:
        rows = read_csv(c.get("/dashboard/export/orders.csv", headers=as_("boss")).content)
    assert len(rows) == 2501 and len({r[0] for r in rows[1:]}) == 2500


def test_unknown_export_is_a_chinese_400(client):
    r = client.get("/dashboard/export/secrets.csv", headers=as_("boss"))
    assert r.status_code == 400 and "没有名为「secrets」的表格" in r.text


# --- escaping -------------------------------------------------------------------------------------


def test_hostile_names_are_escaped_in_html(client):
    pages = [client.get(p, headers=as_("boss")).text for p in
             ["/dashboard", "/dashboard/table?by=store", "/dashboard/table?by=group", "/dashboard/funnel",
              "/dashboard/compliance", "/dashboard?decompose=group"]]
    everything = "".join(pages)
    assert "<script>alert" not in everything and "<img src=x" not in everything
    assert "&lt;script&gt;alert(&#34;店&#34;)&lt;/script&gt;" in everything
    assert "&lt;img src=x onerror=alert(1)&gt;群&#39;&#34;A" in everything
    # a hostile group id typed in the filter comes back escaped in the form and the links
    r = client.get('/dashboard?group="><script>x</script>', headers=as_("boss"))
    assert "<script>x" not in r.text and 'value="&#34;&gt;&lt;script&gt;x&lt;/script&gt;"' in r.text


def test_hostile_names_are_escaped_in_json(client):
    r = client.get("/api/kpi/table?by=store", headers=as_("boss"))
    assert HOSTILE_STORE in [row["label"] for row in r.json()["rows"]]  # JSON carries the name as is


# --- JSON API -------------------------------------------------------------------------------------


def test_json_api_has_the_same_figures(client, source):
    week = expected_week(FakeSource())
    s = client.get("/api/kpi/summary", headers=as_("boss")).json()
    assert s["current"]["gmv_fen"] == week.gmv_fen and s["current"]["net_gmv_fen"] == week.net_gmv_fen
    assert s["filter"] == {"start": "2026-11-24", "end": "2026-11-30", "stores": None, "group": None,
                           "template": None}
    assert s["previous_filter"]["start"] == "2026-11-17" and len(s["days"]) == 7
    assert s["change"]["clicks"] == pytest.approx(week.clicks / FakeSource().kpi_table(
        KpiFilter(dt.date(2026, 11, 17), dt.date(2026, 11, 23)), Dimension.day, limit=0, offset=0).totals.clicks - 1)
    assert [t["key"] for t in s["top_templates"]] == ["t1", "t2"]
    d = client.get("/api/kpi/decomposition?by=group", headers=as_("boss")).json()
    g2 = next(r for r in d["rows"] if r["key"] == "g2")
    assert g2["main_mover"] == "conversion" and g2["change"]["order_value_fen"] == 0
    f = client.get("/api/kpi/funnel", headers=as_("boss")).json()
    assert f["rows"][0]["fill_rate"] == 390 / 400 and f["rows"][0]["staff"][0]["name"] == "张三"
    c = client.get("/api/kpi/compliance", headers=as_("boss")).json()
    assert c["rows"][0]["on_time_rate"] == 18 / 21
    o = client.get("/api/kpi/orders?per_page=2", headers=as_("boss")).json()
    assert o["rows"][0]["rule"] == "last_click" and o["pages"] == 60


def test_json_api_is_in_the_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    for name in ("summary", "table", "decomposition", "funnel", "compliance", "orders"):
        op = schema["paths"][f"/api/kpi/{name}"]["get"]
        assert op["summary"] and {"401", "403", "422"} <= set(op["responses"])
        assert "$ref" in op["responses"]["200"]["content"]["application/json"]["schema"]
    row = schema["components"]["schemas"]["KpiRowOut"]["properties"]
    assert "独立点击" in row["unique_clicks"]["description"]
    assert not any(p.startswith("/dashboard") for p in schema["paths"])


def test_in_the_real_app(tmp_path):
    """Included into the production app (create_app), the router answers and the app's own
    exception handler keeps the API's JSON errors."""
    from sqlmodel import SQLModel

    from scrm.db import make_engine
    from tests.web.shop import make_app

    engine = make_engine(f"sqlite:///{tmp_path / 'scrm.db'}")
    SQLModel.metadata.create_all(engine)
    app = make_app(engine)
    app.api.include_router(dashboard_router(FakeSource(), principal_of, tz=TZ, stores=lambda: list(STORES),
                                            today=lambda: TODAY))
    with TestClient(app, base_url="http://scrm", follow_redirects=False) as c:
        assert c.get("/dashboard", headers=as_("boss")).status_code == 200
        assert c.get("/api/kpi/summary", headers={"accept": "text/html"}).json() == {"detail": "请先登录"}
        assert c.get("/dashboard?store=S2", headers=as_("clerk")).status_code == 403
        assert "/api/kpi/summary" in c.get("/openapi.json").json()["paths"]
    engine.dispose()



def test_real_queries_behind_every_view(engine):
    """KpiQueries (the real source) on the seeded store chain, SQLite and PostgreSQL: every page,
    CSV and API answers, the funnel shows the stores' members against the cap, a clerk's scope
    holds."""
    from scrm.web.dashboard import KpiQueries
    from tests.web.shop import seed

    seed(engine)
    app = FastAPI()
    app.include_router(dashboard_router(KpiQueries(engine, tz=TZ, cap=200), principal_of, tz=TZ,
                                        stores=lambda: [("BJ2", "望京店"), ("BJ3", "西单店"), ("S1", "南京西路店")],
                                        today=lambda: TODAY))
    with TestClient(app, base_url="http://scrm", follow_redirects=False) as c:
        for path in PAGES + [f"/dashboard/export/{t}.csv" for t in CSVS] + [f"/api/kpi/{a}" for a in APIS]:
            assert c.get(path, headers=as_("boss")).status_code == 200, path
        funnel = c.get("/api/kpi/funnel", headers=as_("boss")).json()["rows"]
        bj2 = next(r for r in funnel if r["store_code"] == "BJ2")
        assert (bj2["members"], bj2["groups"], bj2["cap"]) == (150, 1, 200)
        assert "150 / 200" in text_of(c.get("/dashboard/funnel", headers=as_("boss")).text)
        clerk = c.get("/api/kpi/funnel", headers=as_("clerk")).json()
        assert clerk["filter"]["stores"] == ["S1"] and all(r["store_code"] == "S1" for r in clerk["rows"])


def test_the_crm_tab_is_offered_only_to_who_may_open_it(client):
    """Managers get the 客户跟进 tab; a clerk or an operator would be refused there (403), so they
    don't see it. Mutation tried: ``crm_link`` always true: the clerk's page showed the tab."""
    assert 'href="/crm"' in client.get("/dashboard", headers=as_("boss")).text
    for user in ("clerk", "op"):
        assert 'href="/crm"' not in client.get("/dashboard", headers=as_(user)).text, user
