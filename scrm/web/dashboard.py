"""The managers' dashboard: KPI pages (Chinese, server-rendered, offline), their CSV export and the
JSON API under ``/api/kpi`` — three views of the same figures, with the same filters and scope.

Thin on purpose: the figures come from a :class:`KpiSource` (the KPI queries in :mod:`scrm.kpi`),
who may see what from the signed-in :class:`~scrm.auth.roles.Principal`. This module parses the
filter, checks the scope, asks the source and renders. Scope is enforced here on the server for
every view: a clerk's filter always carries their own store(s); asking for another store is a 403
(a Chinese page, or JSON ``detail``); a sales rep gets 403 everywhere; nobody signed in is sent to
``/login?next=…`` (pages) or gets 401 (API).

Money arrives in fen and is shown as ¥ with two decimals; ratios are the properties of
:mod:`scrm.kpi.report` (``None`` is shown as "—"). CSV files start with a UTF-8 BOM so Excel opens
the Chinese headers, and any text from data starting with = + - @ is prefixed with ' so a
spreadsheet never runs it as a formula.
"""

# No ``from __future__ import annotations`` here: FastAPI must evaluate the API's Annotated
# dependency (defined inside dashboard_router) at definition time.
import csv
import datetime as dt
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, Self
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from scrm.auth.roles import ROLE_NAMES, Forbidden, Principal, Role
from scrm.kpi import compliance, funnel, queries
from scrm.kpi.report import (
    UNATTRIBUTED,
    AttributionRule,
    Dimension,
    GmvDecomposition,
    GmvFactors,
    KpiFilter,
    KpiPage,
    KpiRow,
    OrderAttribution,
    OwnerCompliance,
    StoreFunnel,
    ratio,
)
from scrm.layers import queries as layer_queries
from scrm.layers.queries import DailyMove, Flow, FlowMatrix, LayerNames, LayerSummary, RuleMoves
from scrm.logs import get_logger
from scrm.web.charts import Series, bar_chart, compact_number, hbar_chart, line_chart, stacked_bar_chart
from scrm.web.lookups import local_time
from scrm.web.templating import templates

log = get_logger(__name__)

DEFAULT_DAYS = 7  # the default range: the last 7 local days, today included
MAX_DAYS = 366
PER_PAGE = 50
MAX_PER_PAGE = 500
SORT_CAP = 2000  # the table sorts in memory when the whole query has at most this many rows
TOP_TEMPLATES = 10
TOP_FETCH = 500
EXPORT_CAP = 100_000
EXPORT_BATCH = 1000
MAX_TEXT = 128


class KpiSource(Protocol):
    """The figures the dashboard renders (implemented by :mod:`scrm.kpi.queries`, ``funnel`` and
    ``compliance`` bound to the engine, the corp's time zone and the group cap)."""

    def kpi_table(self, f: KpiFilter, by: Dimension, *, limit: int, offset: int) -> KpiPage: ...

    def gmv_decomposition(self, f: KpiFilter, by: Dimension) -> list[GmvDecomposition]: ...

    def order_attributions(self, f: KpiFilter, *, limit: int,
                           offset: int) -> tuple[list[OrderAttribution], int]: ...

    def store_funnel(self, f: KpiFilter) -> list[StoreFunnel]: ...

    def owner_compliance(self, f: KpiFilter) -> list[OwnerCompliance]: ...


class LayerSource(Protocol):
    """The customer-layer figures of the 用户分层 page (:mod:`scrm.layers.queries`)."""

    def names(self) -> LayerNames: ...

    def summary(self, stores: frozenset[str] | None, names: LayerNames) -> LayerSummary: ...

    def flows(self, stores: frozenset[str] | None, start: dt.date, end: dt.date) -> list[Flow]: ...

    def daily_moves(self, stores: frozenset[str] | None, start: dt.date, end: dt.date) -> list[DailyMove]: ...

    def top_rules(self, stores: frozenset[str] | None, start: dt.date, end: dt.date) -> list[RuleMoves]: ...


class LayerQueries:
    """The real :class:`LayerSource`: the layer queries bound to the database and the corp's time
    zone; ``names`` reads the rule set's layer names (default: the operators' rule files, read
    on every page view so an edit shows at once; ids only, with a notice, when they cannot be read)."""

    def __init__(self, engine: Engine, *, tz: dt.tzinfo, names: Callable[[], LayerNames] | None = None):
        self.engine, self.tz = engine, tz
        self._names = names or layer_queries.RuleNames()

    def names(self) -> LayerNames:
        return self._names()

    def summary(self, stores: frozenset[str] | None, names: LayerNames) -> LayerSummary:
        return layer_queries.layer_summary(self.engine, stores, names)

    def flows(self, stores: frozenset[str] | None, start: dt.date, end: dt.date) -> list[Flow]:
        return layer_queries.layer_flows(self.engine, stores, start, end, self.tz)

    def daily_moves(self, stores: frozenset[str] | None, start: dt.date, end: dt.date) -> list[DailyMove]:
        return layer_queries.daily_moves(self.engine, stores, start, end, self.tz)

    def top_rules(self, stores: frozenset[str] | None, start: dt.date, end: dt.date) -> list[RuleMoves]:
        return layer_queries.top_rules(self.engine, stores, start, end, self.tz)


class KpiQueries:
    """The real :class:`KpiSource`: the KPI queries bound to the database, the corp's time zone
    and the group member cap (``routing.group_qr_cap``); ``layers`` is the layer page's source on
    the same database (what dashboard_router uses unless given one)."""

    def __init__(self, engine: Engine, *, tz: ZoneInfo, cap: int = 200):
        self.engine, self.tz, self.cap = engine, tz, cap
        self.layers = LayerQueries(engine, tz=tz)

    def kpi_table(self, f: KpiFilter, by: Dimension, *, limit: int, offset: int) -> KpiPage:
        return queries.kpi_table(self.engine, f, by, limit=limit, offset=offset, tz=self.tz)

    def gmv_decomposition(self, f: KpiFilter, by: Dimension) -> list[GmvDecomposition]:
        return queries.gmv_decomposition(self.engine, f, by, tz=self.tz)

    def order_attributions(self, f: KpiFilter, *, limit: int,
                           offset: int) -> tuple[list[OrderAttribution], int]:
        return queries.order_attributions(self.engine, f, limit=limit, offset=offset)

    def store_funnel(self, f: KpiFilter) -> list[StoreFunnel]:
        return funnel.store_funnel(self.engine, f, tz=self.tz, cap=self.cap)

    def owner_compliance(self, f: KpiFilter) -> list[OwnerCompliance]:
        return compliance.owner_compliance(self.engine, f, tz=self.tz)


class NotSignedIn(Exception):
    """Nobody is signed in: pages send the visitor to sign in, the API answers 401."""


class BadFilter(ValueError):
    """A filter that cannot be read (a malformed date, a reversed range …); the message is Chinese."""


# --- formatting (pages and CSV share it) -------------------------------------------------------

DASH = "—"


def yuan(fen: float | None) -> str:
    """¥ with two decimals from fen: 123456 → ¥1,234.56; None → —."""
    if fen is None:
        return DASH
    sign = "-" if fen < 0 else ""
    return f"{sign}¥{abs(fen) / 100:,.2f}"


def yuan_plain(fen: float | None) -> str:
    """Yuan for a spreadsheet cell: 1234.56 (no symbol, no separators)."""
    return "" if fen is None else f"{fen / 100:.2f}"


def pct(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.1f}%"


def num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return DASH
    return f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Change:
    text: str
    direction: str  # up | down | flat | none


def change(value: float | None) -> Change:
    """A relative change against the previous period, with its arrow: 0.123 → ▲ 12.3%."""
    if value is None:
        return Change(DASH, "none")
    if abs(value) < 0.0005:
        return Change("0.0%", "flat")
    return Change(f"{'▲' if value > 0 else '▼'} {abs(value) * 100:.1f}%", "up" if value > 0 else "down")


def relative(now: float | None, before: float | None) -> float | None:
    if now is None or before is None or not before:
        return None
    return now / before - 1


def row_name(key: str, label: str) -> str:
    if key == UNATTRIBUTED:
        return "未归因"
    return label or key


RULE_NAMES = {
    AttributionRule.last_click: "最近点击",
    AttributionRule.from_param: "链接来源参数",
    AttributionRule.customer_store: "客户所属门店",
    AttributionRule.unattributed: "未归因",
}
DIMENSION_NAMES = {Dimension.day: "按天", Dimension.store: "按门店", Dimension.group: "按群",
                   Dimension.template: "按模板", Dimension.post: "按帖子"}


@dataclass(frozen=True)
class Column:
    """A KPI table column: the KpiRow attribute, its Chinese header and how it is shown."""

    key: str
    header: str
    kind: str  # int | money | pct | rate

    def value(self, row: KpiRow) -> Any:
        return getattr(row, self.key)

    def show(self, row: KpiRow) -> str:
        v = self.value(row)
        if self.kind == "money":
            return yuan(v)
        if self.kind == "pct":
            return pct(v)
        if self.kind == "rate":
            return num(v, 2)
        return num(v)

    def cell(self, row: KpiRow) -> str:
        """The CSV cell: plain numbers (yuan for money, percent with a % sign), empty for None."""
        v = self.value(row)
        if v is None:
            return ""
        if self.kind == "money":
            return yuan_plain(v)
        if self.kind == "pct":
            return f"{v * 100:.2f}%"
        if self.kind == "rate":
            return f"{v:.2f}"
        return str(v)


COLUMNS = [
    Column("posts_delivered", "送达帖子", "int"),
    Column("members_reached", "触达成员", "int"),
    Column("clicks", "点击", "int"),
    Column("unique_clicks", "独立点击", "int"),
    Column("ctr_per_post", "每帖独立点击", "rate"),
    Column("ctr_per_member", "成员点击率", "pct"),
    Column("orders", "订单", "int"),
    Column("buyers", "购买人数", "int"),
    Column("gmv_fen", "GMV", "money"),
    Column("refunds_fen", "退款", "money"),
    Column("net_gmv_fen", "净GMV", "money"),
    Column("average_order_fen", "客单价", "money"),
    Column("repeat_rate", "复购率", "pct"),
    Column("refunded_orders", "退款订单", "int"),
]
COLUMN_BY_KEY = {c.key: c for c in COLUMNS}
# The overview's headline figures, in the order a manager reads them.
HEADLINE = ["posts_delivered", "clicks", "unique_clicks", "ctr_per_post", "ctr_per_member", "orders", "buyers",
            "gmv_fen", "net_gmv_fen", "average_order_fen", "repeat_rate", "refunds_fen"]
FACTORS = [("customers", "客户数", "int"), ("conversion", "转化率", "pct"), ("repeat", "复购（单/人）", "rate"),
           ("order_value_fen", "客单价", "money"), ("gmv_fen", "GMV", "money")]


def show_factor(kind: str, value: float | None) -> str:
    return {"money": yuan, "pct": pct, "rate": lambda v: num(v, 2)}.get(kind, num)(value)


def main_mover(d: GmvDecomposition) -> str | None:
    """The factor (of the four) whose relative change is largest: what moved the GMV."""
    changes = [(abs(c), name) for name, _, _ in FACTORS[:4] if (c := d.change(name)) is not None]
    if not changes:
        return None
    size, name = max(changes)
    return name if size >= 0.0005 else None


def csv_safe(text: str | None) -> str:
    """A text cell from data that a spreadsheet must not run as a formula."""
    text = "" if text is None else str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# --- the filter and the scope -------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Who asks, for what: the filter given to the source (stores already narrowed to what the
    principal may see) and the choices the filter form offers."""

    principal: Principal
    filter: KpiFilter
    store: str  # the store asked for ("" for all the principal may see)
    choices: list[tuple[str, str]]  # (code, name) of the stores the principal may pick
    fixed_store: bool  # a clerk of one store: no choice

    def params(self, **overrides: Any) -> dict[str, str]:
        f = self.filter
        out = {"start": f.start.isoformat(), "end": f.end.isoformat(), "store": self.store,
               "group": f.chat_id or "", "template": f.template_id or ""}
        out.update({k: "" if v is None else str(v) for k, v in overrides.items()})
        return {k: v for k, v in out.items() if v}


def _date(value: str | None, what: str) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise BadFilter(f"{what}「{value[:20]}」不是有效日期，请用 YYYY-MM-DD 格式") from None


def _text(value: str | None, what: str) -> str | None:
    value = (value or "").strip()
    if len(value) > MAX_TEXT:
        raise BadFilter(f"{what}太长了（最多 {MAX_TEXT} 个字符）")
    return value or None


def resolve_scope(principal: Principal | None, *, today: dt.date, all_stores: Sequence[tuple[str, str]],
                  start: str | None = None, end: str | None = None, store: str | None = None,
                  group: str | None = None, template: str | None = None) -> Scope:
    """The filter a request may have: its dates (default the last 7 days ending today), and the
    stores narrowed to the principal's. Raises NotSignedIn, Forbidden or BadFilter."""
    if principal is None:
        raise NotSignedIn()
    if not principal.may_see_kpis:
        raise Forbidden("你的账号没有查看经营数据的权限")
    end_day = _date(end, "结束日期") or today
    start_day = _date(start, "开始日期") or end_day - dt.timedelta(days=DEFAULT_DAYS - 1)
    if end_day < start_day:
        raise BadFilter("结束日期早于开始日期")
    if (end_day - start_day).days + 1 > MAX_DAYS:
        raise BadFilter(f"日期范围最长 {MAX_DAYS} 天")
    store_code = _text(store, "门店")
    visible = principal.visible_stores()
    if store_code:
        principal.require_store(store_code)
        stores: frozenset[str] | None = frozenset({store_code})
    else:
        stores = visible
    choices = [(c, n) for c, n in all_stores if visible is None or c in visible]
    fixed = visible is not None and len(visible) == 1
    if fixed and visible is not None:
        store_code = next(iter(visible))
    f = KpiFilter(start_day, end_day, stores, _text(group, "群"), _text(template, "模板"))
    return Scope(principal, f, store_code or "", choices, fixed)


def _dimension(value: str | None, default: Dimension = Dimension.day,
               allowed: Iterable[Dimension] = tuple(Dimension)) -> Dimension:
    if not value:
        return default
    try:
        dim = Dimension(value)
    except ValueError:
        dim = None
    if dim is None or dim not in tuple(allowed):
        names = "、".join(d.value for d in allowed)
        raise BadFilter(f"不支持按「{value[:20]}」统计，可选：{names}")
    return dim


def _page_number(value: str | None) -> int:
    if not value:
        return 1
    try:
        page = int(value)
    except ValueError:
        raise BadFilter("页码必须是正整数") from None
    if not 1 <= page <= 1_000_000:
        raise BadFilter("页码必须是正整数")
    return page


# --- assembling what a view shows (shared by page, CSV and JSON) ---------------------------------


@dataclass(frozen=True)
class TableView:
    page: KpiPage
    rows: list[KpiRow]
    number: int
    pages: int
    per_page: int
    sort: str | None  # the column actually sorted by (None: the source's order)
    descending: bool
    sort_refused: bool  # too many rows to sort


def kpi_table_view(source: KpiSource, f: KpiFilter, by: Dimension, *, page: int, per_page: int,
                   sort: str | None = None, descending: bool = True) -> TableView:
    """One page of the KPI table; with ``sort``, the whole query is sorted in memory when it has
    at most SORT_CAP rows (else the source's order, and the page says so)."""
    if sort is not None and sort not in COLUMN_BY_KEY and sort != "label":
        raise BadFilter(f"不能按「{sort[:20]}」排序")
    offset = (page - 1) * per_page
    if sort:
        whole = source.kpi_table(f, by, limit=SORT_CAP, offset=0)
        if whole.total_rows <= SORT_CAP:
            def key(r: KpiRow) -> tuple:
                if sort == "label":
                    return (row_name(r.key, r.label),)
                v = getattr(r, sort)
                return (v is not None, v if v is not None else 0)
            rows = sorted(whole.rows, key=key, reverse=descending)
            pages = max(1, math.ceil(whole.total_rows / per_page))
            return TableView(whole, rows[offset:offset + per_page], page, pages, per_page, sort, descending, False)
    result = source.kpi_table(f, by, limit=per_page, offset=offset)
    pages = max(1, math.ceil(result.total_rows / per_page))
    return TableView(result, result.rows, page, pages, per_page, None, descending, bool(sort))


def all_kpi_rows(source: KpiSource, f: KpiFilter, by: Dimension) -> KpiPage:
    """Every row of the query (for the CSV), fetched in batches, at most EXPORT_CAP."""
    first = source.kpi_table(f, by, limit=EXPORT_BATCH, offset=0)
    rows = list(first.rows)
    while len(rows) < min(first.total_rows, EXPORT_CAP):
        more = source.kpi_table(f, by, limit=EXPORT_BATCH, offset=len(rows)).rows
        if not more:
            break
        rows.extend(more)
    return KpiPage(rows[:EXPORT_CAP], first.total_rows, first.totals)


def all_orders(source: KpiSource, f: KpiFilter) -> list[OrderAttribution]:
    rows, total = source.order_attributions(f, limit=EXPORT_BATCH, offset=0)
    rows = list(rows)
    while len(rows) < min(total, EXPORT_CAP):
        more, _ = source.order_attributions(f, limit=EXPORT_BATCH, offset=len(rows))
        if not more:
            break
        rows.extend(more)
    return rows[:EXPORT_CAP]


def top_templates(source: KpiSource, f: KpiFilter) -> list[KpiRow]:
    """The templates that earned most (net GMV, then unique clicks); unattributed left out."""
    rows = [r for r in source.kpi_table(f, Dimension.template, limit=TOP_FETCH, offset=0).rows
            if r.key != UNATTRIBUTED]
    rows.sort(key=lambda r: (r.net_gmv_fen, r.unique_clicks, r.clicks), reverse=True)
    return rows[:TOP_TEMPLATES]


@dataclass(frozen=True)
class Overview:
    current: KpiRow
    previous: KpiRow
    previous_filter: KpiFilter
    days: list[tuple[dt.date, KpiRow]]  # one per day of the range, zeros where the source has none
    decomposition: list[GmvDecomposition]
    templates: list[KpiRow]

    def change(self, key: str) -> float | None:
        return relative(getattr(self.current, key), getattr(self.previous, key))


def load_overview(source: KpiSource, f: KpiFilter, decompose_by: Dimension = Dimension.store) -> Overview:
    current = source.kpi_table(f, Dimension.day, limit=f.days, offset=0)
    previous_filter = f.previous()
    previous = source.kpi_table(previous_filter, Dimension.day, limit=1, offset=0)
    by_day: dict[dt.date, KpiRow] = {}
    for row in current.rows:
        try:
            by_day[dt.date.fromisoformat(row.key[:10])] = row
        except ValueError:
            log.warning("kpi_day_key_unreadable", key=row.key[:40])
    days = []
    for i in range(f.days):
        day = f.start + dt.timedelta(days=i)
        days.append((day, by_day.get(day) or KpiRow(key=day.isoformat(), label=day.isoformat())))
    return Overview(current.totals, previous.totals, previous_filter, days,
                    source.gmv_decomposition(f, decompose_by), top_templates(source, f))


# --- CSV ------------------------------------------------------------------------------------------


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    """UTF-8 with a BOM (Excel in China reads the headers right), CRLF line ends."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return "\ufeff".encode() + buf.getvalue().encode("utf-8")


def csv_response(name: str, f: KpiFilter, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Response:
    filename = f"kpi-{name}-{f.start.isoformat()}-{f.end.isoformat()}.csv"
    return Response(csv_bytes(header, rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def kpi_csv_rows(rows: Iterable[KpiRow], by: Dimension) -> tuple[list[str], list[list[str]]]:
    header = ["编号", "名称", "门店", *[c.header + ("（元）" if c.kind == "money" else "") for c in COLUMNS]]
    out = [[csv_safe(r.key or "未归因"), csv_safe(row_name(r.key, r.label)), csv_safe(r.store_code or ""),
            *[c.cell(r) for c in COLUMNS]] for r in rows]
    return header, out


# --- JSON API models ------------------------------------------------------------------------------


class FilterOut(BaseModel):
    start: dt.date = Field(description="开始日期（当地日期，含）")
    end: dt.date = Field(description="结束日期（当地日期，含）")
    stores: list[str] | None = Field(description="限定的门店编号；null 表示全部门店")
    group: str | None = Field(description="限定的群 chat_id")
    template: str | None = Field(description="限定的 SOP 模板")

    @classmethod
    def of(cls, f: KpiFilter) -> Self:
        return cls(start=f.start, end=f.end, stores=None if f.stores is None else sorted(f.stores),
                   group=f.chat_id, template=f.template_id)


class KpiRowOut(BaseModel):
    key: str = Field(description="天（YYYY-MM-DD）、门店编号、群 chat_id、模板或帖子编号；空字符串为未归因")
    label: str = Field(description="名称（门店名、群名、模板标题、帖子时间）")
    store_code: str | None = None
    posts_delivered: int = Field(description="送达的帖子数（发送台账中已发送/已确认）")
    members_reached: int = Field(description="送达时的群成员数之和")
    clicks: int = Field(description="点击次数（含重复点击，不含预览和机器人）")
    unique_clicks: int = Field(description="独立点击数（同一访客窗口内只算一次）")
    ctr_per_post: float | None = Field(description="每帖独立点击 = 独立点击 / 送达帖子；分母为 0 时为 null")
    ctr_per_member: float | None = Field(description="成员点击率 = 独立点击 / 触达成员")
    orders: int = Field(description="归因订单数")
    buyers: int = Field(description="购买人数（去重）")
    repeat_buyers: int = Field(description="下单两次及以上的购买人数")
    repeat_rate: float | None = Field(description="复购率 = 复购人数 / 购买人数")
    gmv_fen: int = Field(description="GMV（分，退款前）")
    refunds_fen: int = Field(description="退款金额（分）")
    refunded_orders: int = Field(description="有退款的订单数")
    net_gmv_fen: int = Field(description="净 GMV（分）= GMV − 退款")
    average_order_fen: float | None = Field(description="客单价（分）= GMV / 订单数")

    @classmethod
    def of(cls, r: KpiRow) -> Self:
        return cls(key=r.key, label=r.label, store_code=r.store_code, posts_delivered=r.posts_delivered,
                   members_reached=r.members_reached, clicks=r.clicks, unique_clicks=r.unique_clicks,
                   ctr_per_post=r.ctr_per_post, ctr_per_member=r.ctr_per_member, orders=r.orders,
                   buyers=r.buyers, repeat_buyers=r.repeat_buyers, repeat_rate=r.repeat_rate, gmv_fen=r.gmv_fen,
                   refunds_fen=r.refunds_fen, refunded_orders=r.refunded_orders, net_gmv_fen=r.net_gmv_fen,
                   average_order_fen=r.average_order_fen)


class SummaryOut(BaseModel):
    filter: FilterOut
    previous_filter: FilterOut = Field(description="对比的上一周期（同样长度，紧挨在前）")
    current: KpiRowOut = Field(description="本期合计")
    previous: KpiRowOut = Field(description="上期合计")
    change: dict[str, float | None] = Field(description="各指标相对上期的变化，0.1 表示 +10%；上期为 0 时为 null")
    days: list[KpiRowOut] = Field(description="每天一行（没有数据的天为 0），用于趋势图")
    top_templates: list[KpiRowOut] = Field(description="净 GMV 最高的模板（最多 10 个）")


class KpiTableOut(BaseModel):
    filter: FilterOut
    by: Dimension = Field(description="统计维度：day、store、group、template、post")
    page: int
    per_page: int
    pages: int
    total_rows: int = Field(description="查询的总行数")
    sort: str | None = Field(description="实际排序的列；null 为默认顺序")
    rows: list[KpiRowOut]
    totals: KpiRowOut = Field(description="整个筛选范围的合计（购买人数去重）")


class GmvFactorsOut(BaseModel):
    customers: int = Field(description="客户数")
    buyers: int = Field(description="购买人数")
    orders: int
    gmv_fen: int
    conversion: float | None = Field(description="转化率 = 购买人数 / 客户数")
    repeat: float | None = Field(description="复购 = 订单数 / 购买人数")
    order_value_fen: float | None = Field(description="客单价（分）= GMV / 订单数")

    @classmethod
    def of(cls, g: GmvFactors) -> Self:
        return cls(customers=g.customers, buyers=g.buyers, orders=g.orders, gmv_fen=g.gmv_fen,
                   conversion=g.conversion, repeat=g.repeat, order_value_fen=g.order_value_fen)


class DecompositionOut(BaseModel):
    key: str = Field(description="门店编号或群 chat_id")
    label: str
    store_code: str | None
    current: GmvFactorsOut
    previous: GmvFactorsOut
    change: dict[str, float | None] = Field(
        description="customers、conversion、repeat、order_value_fen、gmv_fen 相对上期的变化")
    main_mover: str | None = Field(description="变化最大的因子")


class DecompositionListOut(BaseModel):
    filter: FilterOut
    by: Dimension
    rows: list[DecompositionOut]


class StaffFunnelOut(BaseModel):
    userid: str
    name: str
    scans: int = Field(description="通过该店员二维码添加的客户")
    new_customers: int = Field(description="其中的新客户")


class StoreFunnelOut(BaseModel):
    store_code: str
    store_name: str
    scans: int = Field(description="扫码添加数")
    new_customers: int
    staff: list[StaffFunnelOut]
    group_joins: int
    group_leaves: int
    groups: int
    members: int = Field(description="当前群成员数")
    groups_at_cap: int = Field(description="成员达到上限的群数")
    cap: int = Field(description="每群成员上限")
    fill_rate: float | None = Field(description="成员数 / (群数 × 上限)")
    churned: int = Field(description="删除联系人的客户数")


class FunnelOut(BaseModel):
    filter: FilterOut
    rows: list[StoreFunnelOut]


class ComplianceRowOut(BaseModel):
    owner_userid: str
    owner_name: str
    store_code: str | None
    due: int = Field(description="应发帖子数")
    sent_on_time: int
    on_time_rate: float | None
    expired: int
    over_quota: int = Field(description="超过企业微信群发配额的帖子数")
    unconfirmed: int


class ComplianceOut(BaseModel):
    filter: FilterOut
    rows: list[ComplianceRowOut]


class OrderAttributionOut(BaseModel):
    order_id: str
    source: str
    paid_at: dt.datetime | None = Field(description="支付时间（UTC）")
    amount_fen: int = Field(description="订单金额（分）")
    rule: AttributionRule = Field(description="归因规则：last_click、from_param、customer_store、unattributed")
    reason: str = Field(description="归因原因（中文）")
    store_code: str | None
    chat_id: str | None
    post_id: int | None
    template_id: str | None
    link_code: str | None
    click_at: dt.datetime | None


class OrdersOut(BaseModel):
    filter: FilterOut
    page: int
    per_page: int
    pages: int
    total: int
    rows: list[OrderAttributionOut]


def _decomposition_out(d: GmvDecomposition) -> DecompositionOut:
    return DecompositionOut(key=d.key, label=d.label, store_code=d.store_code, current=GmvFactorsOut.of(d.current),
                            previous=GmvFactorsOut.of(d.previous),
                            change={name: d.change(name) for name, _, _ in FACTORS}, main_mover=main_mover(d))


def _funnel_out(s: StoreFunnel) -> StoreFunnelOut:
    return StoreFunnelOut(
        store_code=s.store_code, store_name=s.store_name, scans=s.scans, new_customers=s.new_customers,
        staff=[StaffFunnelOut(userid=x.userid, name=x.name, scans=x.scans, new_customers=x.new_customers)
               for x in s.staff],
        group_joins=s.group_joins, group_leaves=s.group_leaves, groups=s.groups, members=s.members,
        groups_at_cap=s.groups_at_cap, cap=s.cap, fill_rate=fill_rate(s), churned=s.churned)


def _order_out(a: OrderAttribution) -> OrderAttributionOut:
    return OrderAttributionOut(order_id=a.order_id, source=a.source, paid_at=a.paid_at, amount_fen=a.amount_fen,
                               rule=a.rule, reason=a.reason, store_code=a.store_code, chat_id=a.chat_id,
                               post_id=a.post_id, template_id=a.template_id, link_code=a.link_code,
                               click_at=a.click_at)


def fill_rate(s: StoreFunnel) -> float | None:
    return ratio(s.members, s.groups * s.cap)


# --- the 用户分层 page (customer layers) ----------------------------------------------------------

LAYER_COLORS = ("#1f6feb", "#2f9e44", "#f08c00", "#7048e8", "#868e96", "#c2255c", "#0c8599", "#e8590c")


@dataclass(frozen=True)
class LayersView:
    """Everything the layers page, its CSVs and its API show for one scope."""

    names: LayerNames
    summary: LayerSummary
    flows: list[Flow]  # per store, for the CSV
    matrix: FlowMatrix  # the flows of the scope summed
    daily: list[tuple[dt.date, dict[str, int]]]  # moves into each layer per day (first placements not)
    daily_layers: list[str]  # the layers with a move in the range, in the rule set's order
    rules: list[RuleMoves]

    def layer_name(self, layer_id: str | None) -> str:
        return self.names.name(layer_id)

    def color(self, layer_id: str) -> str:
        order = self.names.ordered({c.layer for c in self.summary.layers} | set(self.daily_layers))
        return LAYER_COLORS[order.index(layer_id) % len(LAYER_COLORS)] if layer_id in order else LAYER_COLORS[0]


LAYER_PARTS = frozenset({"summary", "flows", "daily", "rules"})


def load_layers(source: LayerSource, f: KpiFilter, parts: frozenset[str] = LAYER_PARTS) -> LayersView:
    """The figures of the scope; ``parts`` (summary, flows, daily, rules) limits the queries run
    (a CSV needs one: a year of a million changes is a second a query), the others are empty."""
    names = source.names()
    summary = source.summary(f.stores, names) if "summary" in parts else LayerSummary([], 0, [])
    flows = source.flows(f.stores, f.start, f.end) if "flows" in parts else []
    moves = source.daily_moves(f.stores, f.start, f.end) if "daily" in parts else []
    daily_layers = names.ordered({m.to_layer for m in moves})
    daily_layers = [layer for layer in daily_layers if any(m.to_layer == layer and m.moves for m in moves)]
    return LayersView(names, summary, flows, layer_queries.flow_matrix(flows, names),
                      layer_queries.daily_series(moves, f.start, f.end, daily_layers), daily_layers,
                      source.top_rules(f.stores, f.start, f.end) if "rules" in parts else [])


def shade(n: int, largest: int) -> str:
    """A flow cell's background: the larger the count, the darker (empty cells stay white)."""
    if n <= 0 or largest <= 0:
        return ""
    alpha = 0.08 + 0.72 * n / largest
    text = "#fff" if alpha > 0.5 else "#102a43"
    return f"background: rgba(31, 111, 235, {alpha:.2f}); color: {text};"


def layer_charts(v: LayersView) -> tuple[str, str]:
    counts = v.summary.layers
    bars = hbar_chart([v.layer_name(c.layer) for c in counts], [float(c.customers) for c in counts],
                      title="各层人数", notes=[f"占比 {pct(c.share)} · {v.names.operation(c.layer)}".rstrip(" ·")
                                           for c in counts])
    labels = [d.strftime("%m-%d") for d, _ in v.daily]
    series = [Series(v.layer_name(layer), [float(m[layer]) for _, m in v.daily], v.color(layer))
              for layer in v.daily_layers]
    moves = stacked_bar_chart(labels, series, title="每日层级变动（按进入的层）")
    return bars, moves


def layer_csv(table: str, v: LayersView) -> tuple[list[str], list[list[str]]]:
    """The header and rows of one of the layer page's CSV files (text from data formula-guarded)."""
    n = v.names
    if table == "layers":
        return (["层级编号", "层级", "人数", "占比", "运营动作"],
                [[csv_safe(c.layer), csv_safe(n.name(c.layer)), str(c.customers),
                  "" if c.share is None else f"{c.share * 100:.2f}%", csv_safe(n.operation(c.layer))]
                 for c in v.summary.layers])
    if table == "layer-stores":
        layers = [c.layer for c in v.summary.layers]
        return (["门店编号", "门店", "合计", *[n.name(layer) for layer in layers]],
                [[csv_safe(s.store_code or ""), csv_safe(s.store_name), str(s.total),
                  *[str(s.counts.get(layer, 0)) for layer in layers]] for s in v.summary.stores])
    if table == "layer-flows":
        return (["门店编号", "从层级编号", "从层级", "到层级编号", "到层级", "人数"],
                [[csv_safe(x.store_code or ""), csv_safe(x.from_layer or ""), csv_safe(n.name(x.from_layer)),
                  csv_safe(x.to_layer), csv_safe(n.name(x.to_layer)), str(x.moves)] for x in v.flows])
    if table == "layer-daily":
        return (["日期", *[n.name(layer) for layer in v.daily_layers]],
                [[d.isoformat(), *[str(m[layer]) for layer in v.daily_layers]] for d, m in v.daily])
    return (["规则编号", "规则", "进入层级编号", "进入层级", "人数"],
            [[csv_safe(r.rule_id or ""), csv_safe(n.rule(r.rule_id)), csv_safe(r.to_layer),
              csv_safe(n.name(r.to_layer)), str(r.moves)] for r in v.rules])


LAYER_EXPORTS = {"layers": "summary", "layer-stores": "summary", "layer-flows": "flows", "layer-daily": "daily",
                 "layer-rules": "rules"}  # CSV name -> the part of the figures it needs


class LayerOut(BaseModel):
    id: str = Field(description="层级编号（规则文件中的 id）")
    name: str = Field(description="层级名称；规则读取失败或规则中已没有时为编号")
    operation: str = Field(description="这一层的运营动作（为什么有这一层）")
    known: bool = Field(description="规则集中有这个层级")
    customers: int = Field(description="当前人数")
    share: float | None = Field(description="占范围内全部客户的比例；没有客户时为 null")


class StoreLayersOut(BaseModel):
    store_code: str | None = Field(description="门店编号；null 为没有所属门店的客户")
    store_name: str
    total: int
    counts: dict[str, int] = Field(description="层级编号 → 当前人数")


class FlowOut(BaseModel):
    from_layer: str | None = Field(description="原层级编号；null 为首次分层（新进入）")
    from_name: str
    to_layer: str
    to_name: str
    moves: int = Field(description="日期范围内的变动人次")


class StoreFlowOut(FlowOut):
    store_code: str | None = Field(description="变动时客户的所属门店")


class DailyMovesOut(BaseModel):
    day: dt.date = Field(description="当地日期")
    moves: dict[str, int] = Field(description="层级编号 → 当天进入该层的人次（不含首次分层）")


class RuleMovesOut(BaseModel):
    rule_id: str | None = Field(description="规则编号；null 为默认层（没有规则命中）")
    rule: str = Field(description="规则说明（没有说明时为编号）")
    to_layer: str
    to_name: str
    moves: int


class LayersOut(BaseModel):
    filter: FilterOut
    rules_loaded: bool = Field(description="分层规则已读取；false 时名称为编号")
    notice: str | None = Field(description="规则读取失败的说明")
    total: int = Field(description="范围内的客户数（当前）")
    layers: list[LayerOut] = Field(description="各层当前人数与占比（规则集顺序）")
    stores: list[StoreLayersOut] = Field(description="各门店的分层人数（分页，人数多的在前）")
    page: int
    per_page: int
    pages: int
    total_stores: int
    flows: list[FlowOut] = Field(description="日期范围内的层级流向（范围内各门店合计）")
    store_flows: list[StoreFlowOut] = Field(description="同上，按门店")
    daily: list[DailyMovesOut] = Field(description="每天一行（包括没有变动的天）")
    top_rules: list[RuleMovesOut] = Field(description="推动变动最多的规则（含首次分层）")


def layers_out(v: LayersView, f: KpiFilter, *, page: int, per_page: int) -> LayersOut:
    n = v.names
    stores = v.summary.stores
    pages = max(1, math.ceil(len(stores) / per_page))
    shown = stores[(page - 1) * per_page:page * per_page]
    m = v.matrix
    return LayersOut(
        filter=FilterOut.of(f), rules_loaded=n.loaded, notice=n.error, total=v.summary.total,
        layers=[LayerOut(id=c.layer, name=n.name(c.layer), operation=n.operation(c.layer), known=n.known(c.layer),
                         customers=c.customers, share=c.share) for c in v.summary.layers],
        stores=[StoreLayersOut(store_code=s.store_code, store_name=s.store_name, total=s.total, counts=s.counts)
                for s in shown],
        page=page, per_page=per_page, pages=pages, total_stores=len(stores),
        flows=[FlowOut(from_layer=a, from_name=n.name(a), to_layer=b, to_name=n.name(b), moves=m.cell(a, b))
               for a in m.rows for b in m.columns if m.cell(a, b)],
        store_flows=[StoreFlowOut(store_code=x.store_code, from_layer=x.from_layer, from_name=n.name(x.from_layer),
                                  to_layer=x.to_layer, to_name=n.name(x.to_layer), moves=x.moves) for x in v.flows],
        daily=[DailyMovesOut(day=d, moves=moves) for d, moves in v.daily],
        top_rules=[RuleMovesOut(rule_id=r.rule_id, rule=n.rule(r.rule_id), to_layer=r.to_layer,
                                to_name=n.name(r.to_layer), moves=r.moves) for r in v.rules])


# --- the router ---------------------------------------------------------------------------------

Start = Annotated[str | None, Query(description="开始日期 YYYY-MM-DD（默认：结束日期往前 6 天）",
                                     max_length=MAX_TEXT)]
End = Annotated[str | None, Query(description="结束日期 YYYY-MM-DD（默认：今天，当地日期）", max_length=MAX_TEXT)]
StoreCode = Annotated[str | None, Query(description="门店编号（店员只能查看自己的门店）", max_length=MAX_TEXT)]
GroupId = Annotated[str | None, Query(description="群 chat_id", max_length=MAX_TEXT)]
TemplateId = Annotated[str | None, Query(description="SOP 模板编号", max_length=MAX_TEXT)]
PageNumber = Annotated[int, Query(ge=1, le=1_000_000, description="页码，从 1 开始")]
PerPage = Annotated[int, Query(ge=1, le=MAX_PER_PAGE, description="每页行数")]
NAV = [("/dashboard", "概览"), ("/dashboard/table", "明细"), ("/dashboard/funnel", "门店漏斗"),
       ("/dashboard/compliance", "群主执行"), ("/dashboard/orders", "订单归因"), ("/dashboard/layers", "用户分层")]
EXPORTS = ("summary", "table", "decomposition", "templates", "funnel", "staff", "compliance", "orders")


def dashboard_router(source: KpiSource, principal: Callable[[Request], Principal | None], *, tz: dt.tzinfo,
                     stores: Callable[[], list[tuple[str, str]]],
                     today: Callable[[], dt.date] | None = None,
                     csrf: Callable[[Request], str] | None = None,
                     layers: LayerSource | None = None) -> APIRouter:
    """The dashboard pages (/dashboard…), their CSV export (/dashboard/export/{table}.csv) and the
    JSON API (/api/kpi/…). ``stores``: (code, name) of every store, for the filter; ``today``:
    the corp's local date (default: now in ``tz``); ``csrf``: the sign-in's token for a form, to
    offer a sign-out button (POST /logout) on every page; ``layers``: the 用户分层 page's figures
    (default: ``source.layers`` when the source has them, as :class:`KpiQueries` does)."""
    router = APIRouter()
    layer_source: LayerSource | None = layers if layers is not None else getattr(source, "layers", None)

    def local_today() -> dt.date:
        return today() if today is not None else dt.datetime.now(tz).date()

    def scope_of(request: Request) -> Scope:
        q = request.query_params
        return resolve_scope(principal(request), today=local_today(), all_stores=stores(), start=q.get("start"),
                             end=q.get("end"), store=q.get("store"), group=q.get("group"),
                             template=q.get("template"))

    # -- pages --

    def render(request: Request, name: str, scope: Scope, context: dict[str, Any], status: int = 200) -> Response:
        path = request.url.path

        def link(target: str | None = None, **overrides: Any) -> str:
            params = scope.params(**overrides)
            return (target or path) + ("?" + urlencode(params) if params else "")

        return templates.TemplateResponse(request, name, {
            "scope": scope, "f": scope.filter, "nav": NAV, "path": path, "link": link,
            "yuan": yuan, "pct": pct, "num": num, "change": change, "row_name": row_name,
            "columns": COLUMNS, "column_by_key": COLUMN_BY_KEY, "dimension_names": DIMENSION_NAMES,
            "role_names": [ROLE_NAMES[r] for r in sorted(scope.principal.roles)],
            "logout_token": csrf(request) if csrf is not None else None,
            # The CRM pages are for managers and sales reps (a clerk or operator would get a 403).
            "crm_link": scope.principal.has(Role.manager, Role.sales_rep),
            **context}, status_code=status)

    def notice(request: Request, status: int, heading: str, message: str) -> Response:
        return templates.TemplateResponse(request, "dashboard_notice.html", {
            "heading": heading, "message": message}, status_code=status)

    def page(request: Request, build: Callable[[Scope], Response]) -> Response:
        """Scope first (sign-in, role, store), then the page; refusals as Chinese pages."""
        try:
            scope = scope_of(request)
            return build(scope)
        except NotSignedIn:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=302)
        except Forbidden as exc:
            p = principal(request)
            log.info("kpi_forbidden", userid=p.userid if p else None, path=request.url.path,
                     store=(request.query_params.get("store") or "")[:40])
            return notice(request, 403, "没有权限", str(exc))
        except BadFilter as exc:
            return notice(request, 400, "筛选条件有误", str(exc))

    @router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def overview_page(request: Request):
        def build(scope: Scope) -> Response:
            by = _dimension(request.query_params.get("decompose"), Dimension.store,
                            (Dimension.store, Dimension.group))
            o = load_overview(source, scope.filter, by)
            labels = [d.strftime("%m-%d") for d, _ in o.days]
            gmv = line_chart(labels, [Series("GMV", [r.gmv_fen / 100 for _, r in o.days], "#1f6feb"),
                                      Series("净GMV", [r.net_gmv_fen / 100 for _, r in o.days], "#2f9e44",
                                             dashed=True)],
                             title="每日 GMV（元）", fmt=lambda v: "¥" + compact_number(v))
            clicks = bar_chart(labels, [Series("点击", [r.clicks for _, r in o.days], "#f08c00"),
                                        Series("独立点击", [r.unique_clicks for _, r in o.days], "#1f6feb")],
                               title="每日点击")
            headline = [(COLUMN_BY_KEY[k], change(o.change(k))) for k in HEADLINE]
            return render(request, "dashboard.html", scope, {
                "o": o, "headline": headline, "gmv_chart": Markup(gmv), "clicks_chart": Markup(clicks),
                "decompose_by": by, "factors": FACTORS, "show_factor": show_factor, "main_mover": main_mover,
                "has_data": any(r.posts_delivered or r.clicks or r.orders for _, r in o.days)})
        return page(request, build)

    @router.get("/dashboard/table", response_class=HTMLResponse, include_in_schema=False)
    def table_page(request: Request):
        def build(scope: Scope) -> Response:
            q = request.query_params
            by = _dimension(q.get("by"))
            sort = q.get("sort") or None
            view = kpi_table_view(source, scope.filter, by, page=_page_number(q.get("page")), per_page=PER_PAGE,
                                  sort=sort, descending=q.get("order") != "asc")
            return render(request, "dashboard_table.html", scope, {"by": by, "view": view})
        return page(request, build)

    @router.get("/dashboard/funnel", response_class=HTMLResponse, include_in_schema=False)
    def funnel_page(request: Request):
        def build(scope: Scope) -> Response:
            rows = source.store_funnel(scope.filter)
            return render(request, "dashboard_funnel.html", scope, {"rows": rows, "fill_rate": fill_rate})
        return page(request, build)

    @router.get("/dashboard/compliance", response_class=HTMLResponse, include_in_schema=False)
    def compliance_page(request: Request):
        def build(scope: Scope) -> Response:
            return render(request, "dashboard_compliance.html", scope,
                          {"rows": source.owner_compliance(scope.filter)})
        return page(request, build)

    @router.get("/dashboard/orders", response_class=HTMLResponse, include_in_schema=False)
    def orders_page(request: Request):
        def build(scope: Scope) -> Response:
            number = _page_number(request.query_params.get("page"))
            rows, total = source.order_attributions(scope.filter, limit=PER_PAGE, offset=(number - 1) * PER_PAGE)
            return render(request, "dashboard_orders.html", scope, {
                "rows": rows, "total": total, "number": number, "pages": max(1, math.ceil(total / PER_PAGE)),
                "rule_names": RULE_NAMES, "tz": tz})
        return page(request, build)

    @router.get("/dashboard/layers", response_class=HTMLResponse, include_in_schema=False)
    def layers_page(request: Request):
        def build(scope: Scope) -> Response:
            number = _page_number(request.query_params.get("page"))
            if layer_source is None:
                return render(request, "dashboard_layers.html", scope, {"v": None})
            v = load_layers(layer_source, scope.filter)
            bars, moves = layer_charts(v)
            stores_ = v.summary.stores
            return render(request, "dashboard_layers.html", scope, {
                "v": v, "layers_chart": Markup(bars), "moves_chart": Markup(moves), "shade": shade,
                "store_rows": stores_[(number - 1) * PER_PAGE:number * PER_PAGE], "number": number,
                "pages": max(1, math.ceil(len(stores_) / PER_PAGE)), "store_total": len(stores_)})
        return page(request, build)

    @router.get("/dashboard/export/{table}.csv", include_in_schema=False)
    def export(request: Request, table: str):
        def build(scope: Scope) -> Response:
            if table in LAYER_EXPORTS:
                if layer_source is None:
                    raise BadFilter("分层数据未启用")
                view = load_layers(layer_source, scope.filter, frozenset({LAYER_EXPORTS[table]}))
                header, rows = layer_csv(table, view)
                return csv_response(table, scope.filter, header, rows)
            if table not in EXPORTS:
                raise BadFilter(f"没有名为「{table[:20]}」的表格")
            return export_csv(table, scope.filter, request)
        return page(request, build)

    def export_csv(table: str, f: KpiFilter, request: Request) -> Response:
        q = request.query_params
        if table == "summary":
            o = load_overview(source, f)
            prev = o.previous_filter
            header = ["指标", f"本期（{f.start}~{f.end}）", f"上期（{prev.start}~{prev.end}）", "变化"]
            rows = []
            for key in HEADLINE:
                c = COLUMN_BY_KEY[key]
                delta = o.change(key)
                rows.append([c.header + ("（元）" if c.kind == "money" else ""), c.cell(o.current),
                             c.cell(o.previous), "" if delta is None else f"{delta * 100:.2f}%"])
            return csv_response(table, f, header, rows)
        if table in ("table", "templates"):
            by = Dimension.template if table == "templates" else _dimension(q.get("by"))
            data = top_templates(source, f) if table == "templates" else all_kpi_rows(source, f, by).rows
            header, out = kpi_csv_rows(data, by)
            return csv_response(table if table == "templates" else f"{table}-{by.value}", f, header, out)
        if table == "decomposition":
            by = _dimension(q.get("by") or q.get("decompose"), Dimension.store, (Dimension.store, Dimension.group))
            header = ["编号", "名称", "门店"]
            for _, name, kind in FACTORS:
                unit = "（元）" if kind == "money" else ""
                header += [f"{name}{unit}", f"上期{name}{unit}", f"{name}变化"]
            rows = []
            for d in source.gmv_decomposition(f, by):
                row = [csv_safe(d.key), csv_safe(d.label), csv_safe(d.store_code or "")]
                for name, _, kind in FACTORS:
                    now, before, delta = getattr(d.current, name), getattr(d.previous, name), d.change(name)
                    row += [_factor_cell(kind, now), _factor_cell(kind, before),
                            "" if delta is None else f"{delta * 100:.2f}%"]
                rows.append(row)
            return csv_response(f"{table}-{by.value}", f, header, rows)
        if table == "funnel":
            header = ["门店编号", "门店", "扫码添加", "新客户", "入群", "退群", "群数", "群成员", "每群上限",
                      "满员群", "成员占比", "流失客户"]
            rows = [[csv_safe(s.store_code), csv_safe(s.store_name), str(s.scans), str(s.new_customers),
                     str(s.group_joins), str(s.group_leaves), str(s.groups), str(s.members), str(s.cap),
                     str(s.groups_at_cap), "" if (r := fill_rate(s)) is None else f"{r * 100:.2f}%", str(s.churned)]
                    for s in source.store_funnel(f)]
            return csv_response(table, f, header, rows)
        if table == "staff":
            header = ["门店编号", "门店", "店员账号", "店员", "扫码添加", "新客户"]
            rows = [[csv_safe(s.store_code), csv_safe(s.store_name), csv_safe(x.userid), csv_safe(x.name),
                     str(x.scans), str(x.new_customers)] for s in source.store_funnel(f) for x in s.staff]
            return csv_response(table, f, header, rows)
        if table == "compliance":
            header = ["群主账号", "群主", "门店", "应发", "按时发送", "按时率", "过期", "超出配额", "未确认"]
            rows = [[csv_safe(c.owner_userid), csv_safe(c.owner_name), csv_safe(c.store_code or ""), str(c.due),
                     str(c.sent_on_time), "" if c.on_time_rate is None else f"{c.on_time_rate * 100:.2f}%",
                     str(c.expired), str(c.over_quota), str(c.unconfirmed)] for c in source.owner_compliance(f)]
            return csv_response(table, f, header, rows)
        # orders
        header = ["订单号", "来源", "支付时间", "金额（元）", "归因规则", "归因原因", "门店", "群", "帖子", "模板",
                  "链接", "点击时间"]
        rows = [[csv_safe(a.order_id), csv_safe(a.source), local_time(a.paid_at, tz), yuan_plain(a.amount_fen),
                 RULE_NAMES.get(a.rule, str(a.rule)), csv_safe(a.reason),
                 csv_safe(a.store_code or ""), csv_safe(a.chat_id or ""), "" if a.post_id is None else str(a.post_id),
                 csv_safe(a.template_id or ""), csv_safe(a.link_code or ""),
                 local_time(a.click_at, tz)] for a in all_orders(source, f)]
        return csv_response(table, f, header, rows)

    # -- JSON API --

    def api_scope(request: Request, start: Start = None, end: End = None, store: StoreCode = None,
                  group: GroupId = None, template: TemplateId = None) -> Scope:
        """The filter of an API call, scoped to the caller: 401, 403 or 422 with a Chinese detail."""
        try:
            return resolve_scope(principal(request), today=local_today(), all_stores=stores(), start=start,
                                 end=end, store=store, group=group, template=template)
        except NotSignedIn:
            raise HTTPException(401, "请先登录") from None
        except Forbidden as exc:
            p = principal(request)
            log.info("kpi_forbidden", userid=p.userid if p else None, path=request.url.path, store=(store or "")[:40])
            raise HTTPException(403, str(exc)) from None
        except BadFilter as exc:
            raise HTTPException(422, str(exc)) from None

    Scoped = Annotated[Scope, Depends(api_scope)]
    errors: dict[int | str, dict[str, Any]] = {
        401: {"description": "未登录"}, 403: {"description": "无权查看（销售，或其他门店）"},
        422: {"description": "筛选条件有误"}}
    api = APIRouter(prefix="/api/kpi", tags=["kpi"], responses=errors)

    @api.get("/summary", response_model=SummaryOut, summary="概览：本期与上期合计、每日趋势、热门模板")
    def api_summary(scope: Scoped):
        f = scope.filter
        o = load_overview(source, f)
        return SummaryOut(filter=FilterOut.of(f), previous_filter=FilterOut.of(o.previous_filter),
                          current=KpiRowOut.of(o.current), previous=KpiRowOut.of(o.previous),
                          change={k: o.change(k) for k in HEADLINE}, days=[KpiRowOut.of(r) for _, r in o.days],
                          top_templates=[KpiRowOut.of(r) for r in o.templates])

    @api.get("/table", response_model=KpiTableOut, summary="KPI 明细表（分页，可排序）")
    def api_table(scope: Scoped, by: Annotated[Dimension, Query(description="统计维度")] = Dimension.day,
                  page: PageNumber = 1, per_page: PerPage = PER_PAGE,
                  sort: Annotated[str | None, Query(max_length=40,
                                                    description="排序列（如 gmv_fen、unique_clicks、label）")] = None,
                  order: Annotated[str, Query(pattern="^(asc|desc)$", description="asc 或 desc")] = "desc"):
        f = scope.filter
        try:
            view = kpi_table_view(source, f, by, page=page, per_page=per_page, sort=sort, descending=order != "asc")
        except BadFilter as exc:
            raise HTTPException(422, str(exc)) from None
        return KpiTableOut(filter=FilterOut.of(f), by=by, page=view.number, per_page=per_page, pages=view.pages,
                           total_rows=view.page.total_rows, sort=view.sort, rows=[KpiRowOut.of(r) for r in view.rows],
                           totals=KpiRowOut.of(view.page.totals))

    @api.get("/decomposition", response_model=DecompositionListOut,
             summary="GMV 拆解：客户数 × 转化率 × 复购 × 客单价，及相对上期的变化")
    def api_decomposition(scope: Scoped, by: Annotated[str, Query(pattern="^(store|group)$",
                                                                  description="store 或 group")] = "store"):
        f, dim = scope.filter, Dimension(by)
        return DecompositionListOut(filter=FilterOut.of(f), by=dim,
                                    rows=[_decomposition_out(d) for d in source.gmv_decomposition(f, dim)])

    @api.get("/funnel", response_model=FunnelOut, summary="门店漏斗：扫码、新客、入群退群、群成员与上限、流失")
    def api_funnel(scope: Scoped):
        f = scope.filter
        return FunnelOut(filter=FilterOut.of(f), rows=[_funnel_out(s) for s in source.store_funnel(f)])

    @api.get("/compliance", response_model=ComplianceOut, summary="群主执行：应发、按时发送、过期、超出配额")
    def api_compliance(scope: Scoped):
        f = scope.filter
        rows = [ComplianceRowOut(owner_userid=c.owner_userid, owner_name=c.owner_name, store_code=c.store_code,
                                 due=c.due, sent_on_time=c.sent_on_time, on_time_rate=c.on_time_rate,
                                 expired=c.expired, over_quota=c.over_quota, unconfirmed=c.unconfirmed)
                for c in source.owner_compliance(f)]
        return ComplianceOut(filter=FilterOut.of(f), rows=rows)

    @api.get("/orders", response_model=OrdersOut, summary="订单归因：每个订单归到哪里、为什么")
    def api_orders(scope: Scoped, page: PageNumber = 1, per_page: PerPage = PER_PAGE):
        f = scope.filter
        rows, total = source.order_attributions(f, limit=per_page, offset=(page - 1) * per_page)
        return OrdersOut(filter=FilterOut.of(f), page=page, per_page=per_page,
                         pages=max(1, math.ceil(total / per_page)), total=total,
                         rows=[_order_out(a) for a in rows])

    @api.get("/layers", response_model=LayersOut,
             summary="用户分层：各层当前人数与占比、各门店分层、日期范围内的层级流向、每日变动、推动变动的规则")
    def api_layers(scope: Scoped, page: PageNumber = 1, per_page: PerPage = PER_PAGE):
        if layer_source is None:
            raise HTTPException(404, "分层数据未启用")
        f = scope.filter
        return layers_out(load_layers(layer_source, f), f, page=page, per_page=per_page)

    router.include_router(api)
    return router


def _factor_cell(kind: str, value: float | None) -> str:
    if value is None:
        return ""
    if kind == "money":
        return yuan_plain(value)
    if kind == "pct":
        return f"{value * 100:.2f}%"
    if kind == "rate":
        return f"{value:.2f}"
    return str(value)
