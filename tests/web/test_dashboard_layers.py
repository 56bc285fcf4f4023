"""The 用户分层 page (/dashboard/layers), its CSV files and /api/kpi/layers on the real layer queries
over rows inserted here (SQLite and PostgreSQL), the KPI figures from test_dashboard's fake source:
the figures a manager and a clerk see (expected counts computed here from the seed lists), the
scope (another store is 403 on page, CSV and API; a sales rep 403; nobody signed in sent to sign in),
Chinese layer names with each layer's operation, ids with a notice when the rules cannot be read,
CSV with BOM and formula guard, hostile store names and rule ids shown as text, store pagination.

Mutations tried (each made the named tests fail, then was undone):
- the page passing ``None`` as the stores (``load_layers(layer_source, replace(scope.filter, stores=None))``):
  test_clerk_sees_only_their_store fails (S2's customers counted);
- ``| safe`` on the rule text in dashboard_layers.html: test_hostile_names_are_text fails;
- csv_safe left out of layer_csv's rule id: test_csv_has_bom_and_guards_formulas fails;
- the flow cell showing its row total (``m.row_totals[r]`` in the cell): test_manager_sees_every_store fails;
- the store table's slice ``[number * PER_PAGE:…]``: test_store_table_is_paginated fails;
- LayerNames.name returning the id always: test_manager_sees_every_store (Chinese names) fails.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import insert

from scrm.layers.models import CustomerLayer, LayerChange
from scrm.layers.queries import LayerNames
from scrm.stores.models import Store
from scrm.web.dashboard import LayerQueries, dashboard_router
from tests.layers.test_queries_layers import RULESET
from tests.web.test_dashboard import HOSTILE_STORE, STORES, TODAY, TZ, FakeSource, as_, principal_of, read_csv, text_of

NAMES = LayerNames.of(RULESET)
HOSTILE_RULE = "<img src=x onerror=alert(1)>"
FORMULA_RULE = "=cmd|'/C calc'!A0"
# (store, layer) of each customer now
CUSTOMERS = ([("S1", "new")] * 3 + [("S1", "first")] * 2 + [("S1", "dormant")] + [("S2", "repeat")] * 4
             + [("S2", "ghost")] + [("S3", "churned")] * 2 + [(None, "new")])
SH = ZoneInfo("Asia/Shanghai")


def at(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, tzinfo=SH).astimezone(dt.UTC)


# (store, from, to, rule, when): the week ending TODAY (Nov 24-30) and one change before it
CHANGES = ([("S1", None, "new", None, at(25))] * 3 + [("S1", "new", "first", "r-first", at(26))] * 2
           + [("S1", "first", "dormant", "r-dormant", at(28))] + [("S2", "first", "repeat", "r-repeat", at(27))] * 4
           + [("S2", "repeat", "ghost", HOSTILE_RULE, at(29))] + [("S3", "dormant", "churned", FORMULA_RULE, at(30, 1))]
           + [("S3", None, "new", None, at(20))])


def seed(engine, customers=CUSTOMERS, changes=CHANGES, stores=STORES):
    now = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(insert(Store.__table__), [{"code": c, "name": n, "address": "", "city": "上海", "status": "open",
                                                "updated_at": now} for c, n in stores])
        conn.execute(insert(CustomerLayer.__table__), [
            {"external_userid": f"wm{i}", "layer": layer, "rule_id": None, "home_store": store, "tag_bits": 0,
             "since": now, "computed_at": now, "tags_dirty": False} for i, (store, layer) in enumerate(customers)])
        if changes:
            conn.execute(insert(LayerChange.__table__), [
                {"external_userid": f"wm{i}", "from_layer": a, "to_layer": b, "rule_id": rule, "home_store": store,
                 "changed_at": when} for i, (store, a, b, rule, when) in enumerate(changes)])


def make_client(engine, names=lambda: NAMES, stores=STORES) -> TestClient:
    app = FastAPI()
    app.include_router(dashboard_router(FakeSource(), principal_of, tz=TZ, stores=lambda: list(stores),
                                        today=lambda: TODAY, layers=LayerQueries(engine, tz=TZ, names=names)))
    return TestClient(app, base_url="http://scrm", follow_redirects=False)


@pytest.fixture
def client(engine):
    seed(engine)
    with make_client(engine) as c:
        yield c


def cards(html: str) -> dict[str, str]:
    """layer id → the text of its headline card."""
    card = r'<div class="card kpi" data-layer="([^"]+)"[^>]*>(.*?)</div>\s*(?=<div class="card kpi"|</section>)'
    return {m.group(1): text_of(m.group(2)) for m in re.finditer(card, html, re.S)}


def flow_cells(html: str) -> dict[tuple[str, str], str]:
    """(row name, column name) → the cell's text, read from the #flows table."""
    table = re.search(r'<table class="data flows" id="flows">(.*?)</table>', html, re.S).group(1)
    heads = [text_of(h).strip() for h in re.findall(r"<th scope=\"col\"[^>]*>(.*?)</th>", table, re.S)]
    out = {}
    for row in re.findall(r"<tr>\s*<th scope=\"row\">(.*?)</th>(.*?)</tr>", table, re.S):
        cells = [text_of(c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)]
        out.update({(row[0].strip(), h): c for h, c in zip(heads, cells, strict=True)})
    return out


def test_manager_sees_every_store(client):
    r = client.get("/dashboard/layers", headers=as_("boss"))
    assert r.status_code == 200
    page = text_of(r.text)
    assert "用户分层" in page and "当前各层人数" in page and "层级流向" in page
    expected = Counter(layer for _, layer in CUSTOMERS)
    got = cards(r.text)
    assert list(got) == ["new", "first", "repeat", "dormant", "churned", "ghost"]  # rule set order, then the rest
    for layer, text in got.items():
        n = expected[layer]
        assert f"{NAMES.name(layer)} " in text + " " and f" {n} " in f" {text} "
        assert f"占 {n / len(CUSTOMERS) * 100:.1f}%" in text
    assert "欢迎语和首单券" in got["new"] and "唤醒券" in got["dormant"]  # why the layer exists
    assert "规则中已没有" in got["ghost"]
    assert f"共 {len(CUSTOMERS)} 位客户" in page
    # the flow matrix of the week (the change of Nov 20 is outside it)
    cells = flow_cells(r.text)
    week = [c for c in CHANGES if c[4] >= at(24, 0)]
    for (a, b), n in Counter((c[1], c[2]) for c in week).items():
        assert cells[(NAMES.name(a), NAMES.name(b))] == str(n)
    assert cells[("新进入", "新客")] == "3" and cells[("首购", "复购")] == "4" and cells[("新客", "复购")] == "0"
    # both charts drawn: a bar per layer, stacked bars of the days with moves
    assert r.text.count('class="bar"') >= 6 + 5
    assert "暂无数据" not in r.text.split('id="flows"')[0]


def test_clerk_sees_only_their_store(client):
    r = client.get("/dashboard/layers", headers=as_("clerk"))
    assert r.status_code == 200
    got = cards(r.text)
    s1 = Counter(layer for store, layer in CUSTOMERS if store == "S1")
    assert {k: int(re.search(r" (\d+) ", f" {v} ").group(1)) for k, v in got.items() if k in s1} == dict(s1)
    assert "ghost" not in got and HOSTILE_STORE not in r.text and "+国贸店" not in text_of(r.text)
    assert "共 6 位客户" in text_of(r.text)
    api = client.get("/api/kpi/layers", headers=as_("clerk")).json()
    assert api["total"] == 6 and {x["id"]: x["customers"] for x in api["layers"] if x["customers"]} == dict(s1)
    assert [s["store_code"] for s in api["stores"]] == ["S1"]
    assert {(f["from_layer"], f["to_layer"]): f["moves"] for f in api["flows"]} == {
        (None, "new"): 3, ("new", "first"): 2, ("first", "dormant"): 1}
    rows = read_csv(client.get("/dashboard/export/layer-stores.csv", headers=as_("clerk")).content)
    assert [row[0] for row in rows[1:]] == ["S1"]
    # a clerk of two stores sees both, and may narrow to one
    two = client.get("/api/kpi/layers", headers=as_("clerk2")).json()
    assert two["total"] == 8 and {s["store_code"] for s in two["stores"]} == {"S1", "S3"}
    one = client.get("/api/kpi/layers?store=S3", headers=as_("clerk2")).json()
    assert one["total"] == 2 and one["flows"] == [{"from_layer": "dormant", "from_name": "沉睡", "to_layer": "churned",
                                                   "to_name": "流失", "moves": 1}]


@pytest.mark.parametrize("path", ["/dashboard/layers?store=S2", "/dashboard/export/layers.csv?store=S2",
                                  "/dashboard/export/layer-flows.csv?store=S2", "/api/kpi/layers?store=S2"])
def test_another_store_is_refused(client, path):
    r = client.get(path, headers=as_("clerk"))
    assert r.status_code == 403
    assert "当前各层人数" not in r.text and "复购" not in r.text and not r.content.startswith(b"\xef\xbb\xbf")
    if path.startswith("/api"):
        assert r.json()["detail"]
    else:
        assert "没有权限" in r.text


def test_sales_rep_and_anonymous_are_refused(client):
    for path in ("/dashboard/layers", "/dashboard/export/layers.csv", "/api/kpi/layers"):
        assert client.get(path, headers=as_("rep")).status_code == 403
    r = client.get("/dashboard/layers?store=S1")
    assert r.status_code == 302 and r.headers["location"].startswith("/login?next=%2Fdashboard%2Flayers")
    assert client.get("/api/kpi/layers").status_code == 401


def test_csv_has_bom_and_guards_formulas(client):
    rows = read_csv(client.get("/dashboard/export/layer-rules.csv", headers=as_("boss")).content)
    assert rows[0] == ["规则编号", "规则", "进入层级编号", "进入层级", "人数"]
    by_id = {row[0]: row for row in rows[1:]}
    assert by_id["r-repeat"][1:] == ["r-repeat", "repeat", "复购", "4"]  # no description: the id
    assert by_id["r-first"][1] == "第一单"
    assert "'" + FORMULA_RULE in by_id and by_id["'" + FORMULA_RULE][4] == "1"
    assert by_id[""][1] == "默认层（没有规则命中）" and by_id[""][4] == "3"
    layers = read_csv(client.get("/dashboard/export/layers.csv", headers=as_("boss")).content)
    assert layers[1] == ["new", "新客", "4", f"{4 / len(CUSTOMERS) * 100:.2f}%", "欢迎语和首单券"]
    stores = read_csv(client.get("/dashboard/export/layer-stores.csv", headers=as_("boss")).content)
    assert stores[0] == ["门店编号", "门店", "合计", "新客", "首购", "复购", "沉睡", "流失", "ghost"]
    assert ["S2", HOSTILE_STORE, "5", "0", "0", "4", "0", "0", "1"] in stores
    assert ["", "未归属门店", "1", "1", "0", "0", "0", "0", "0"] in stores
    flows = read_csv(client.get("/dashboard/export/layer-flows.csv", headers=as_("boss")).content)
    assert ["S1", "", "新进入", "new", "新客", "3"] in flows
    daily = read_csv(client.get("/dashboard/export/layer-daily.csv", headers=as_("boss")).content)
    assert daily[0] == ["日期", "首购", "复购", "沉睡", "流失", "ghost"]
    assert len(daily) == 1 + 7 and daily[3] == ["2026-11-26", "2", "0", "0", "0", "0"]
    r = client.get("/dashboard/export/layers.csv", headers=as_("boss"))
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="kpi-layers-2026-11-24-2026-11-30.csv"' in r.headers["content-disposition"]


def test_hostile_names_are_text(client):
    r = client.get("/dashboard/layers", headers=as_("boss"))
    assert HOSTILE_STORE not in r.text and HOSTILE_RULE not in r.text
    assert "&lt;script&gt;alert(" in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text
    assert str(escape(HOSTILE_STORE)) in r.text and str(escape(HOSTILE_RULE)) in r.text


def test_rules_unreadable_show_ids_with_a_notice(engine):
    seed(engine)
    with make_client(engine, names=lambda: LayerNames.unavailable("分层规则读取失败（layers），层级以编号显示")) as c:
        r = c.get("/dashboard/layers", headers=as_("boss"))
        assert r.status_code == 200 and "分层规则读取失败" in r.text
        assert list(cards(r.text)) == sorted({layer for _, layer in CUSTOMERS})
        api = c.get("/api/kpi/layers", headers=as_("boss")).json()
        assert api["rules_loaded"] is False and api["notice"]
        assert {x["id"]: x["name"] for x in api["layers"]} == {x["id"]: x["id"] for x in api["layers"]}


def test_api_has_summary_flows_and_days(client):
    r = client.get("/api/kpi/layers?start=2026-11-20&end=2026-11-30", headers=as_("boss"))
    assert r.status_code == 200
    body = r.json()
    assert body["filter"]["start"] == "2026-11-20" and body["rules_loaded"] is True and body["total"] == len(CUSTOMERS)
    assert sum(x["share"] for x in body["layers"]) == pytest.approx(1.0)
    assert sum(f["moves"] for f in body["flows"]) == len(CHANGES)
    assert sum(f["moves"] for f in body["store_flows"]) == len(CHANGES)
    assert len(body["daily"]) == 11 and body["daily"][7] == {"day": "2026-11-27", "moves": {
        "first": 0, "repeat": 4, "dormant": 0, "churned": 0, "ghost": 0}}
    assert body["top_rules"][:2] == [  # a tie: the default layer's first placements first
        {"rule_id": None, "rule": "默认层（没有规则命中）", "to_layer": "new", "to_name": "新客", "moves": 4},
        {"rule_id": "r-repeat", "rule": "r-repeat", "to_layer": "repeat", "to_name": "复购", "moves": 4}]
    assert client.get("/api/kpi/layers?start=2026-12-01&end=2026-11-01", headers=as_("boss")).status_code == 422
    assert "/api/kpi/layers" in client.get("/openapi.json").json()["paths"]


def test_store_table_is_paginated(engine):
    many = [(f"M{i:03d}", f"门店{i}") for i in range(60)]
    customers = [(code, "new") for i, (code, _) in enumerate(many) for _ in range(60 - i)]
    seed(engine, customers=customers, changes=[], stores=many)
    with make_client(engine, stores=many) as c:
        first = c.get("/dashboard/layers", headers=as_("boss"))
        assert "第 1 / 2 页，共 60 家门店" in text_of(first.text)
        second = c.get("/dashboard/layers?page=2", headers=as_("boss"))
        rows = re.findall(r'<small class="muted">(M\d{3})</small>', second.text)
        assert rows == [f"M{i:03d}" for i in range(50, 60)]  # most customers first
        api = c.get("/api/kpi/layers?page=2&per_page=25", headers=as_("boss")).json()
        assert [s["store_code"] for s in api["stores"]] == [f"M{i:03d}" for i in range(25, 50)]
        assert api["pages"] == 3 and api["total_stores"] == 60
        assert "这段时间没有客户变动层级" in c.get("/dashboard/layers", headers=as_("boss")).text


def test_nav_links_the_page(client):
    r = client.get("/dashboard", headers=as_("boss"))
    assert 'href="/dashboard/layers' in r.text and "用户分层" in r.text


class CountingLayers(LayerQueries):
    """The real queries, counting which ones run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ran: list[str] = []

    def summary(self, *args):
        self.ran.append("summary")
        return super().summary(*args)

    def flows(self, *args):
        self.ran.append("flows")
        return super().flows(*args)

    def daily_moves(self, *args):
        self.ran.append("daily")
        return super().daily_moves(*args)

    def top_rules(self, *args):
        self.ran.append("rules")
        return super().top_rules(*args)


def test_each_csv_runs_only_its_query(engine):
    """A CSV runs the one query it shows (a year of a million changes is about a second a query);
    the page runs each once. (Mutation tried: the export calling load_layers without parts —
    this test fails.)"""
    seed(engine)
    layers = CountingLayers(engine, tz=TZ, names=lambda: NAMES)
    app = FastAPI()
    app.include_router(dashboard_router(FakeSource(), principal_of, tz=TZ, stores=lambda: list(STORES),
                                        today=lambda: TODAY, layers=layers))
    with TestClient(app, base_url="http://scrm") as c:
        for table, part in [("layers", "summary"), ("layer-stores", "summary"), ("layer-flows", "flows"),
                            ("layer-daily", "daily"), ("layer-rules", "rules")]:
            layers.ran.clear()
            rows = read_csv(c.get(f"/dashboard/export/{table}.csv", headers=as_("boss")).content)
            assert layers.ran == [part] and len(rows) > 1, table
        layers.ran.clear()
        c.get("/dashboard/layers", headers=as_("boss"))
        assert sorted(layers.ran) == ["daily", "flows", "rules", "summary"]
