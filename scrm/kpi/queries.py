"""The dashboard's figures, read from the rollups (:mod:`scrm.kpi.rollups`), never from raw clicks
or orders, so every query is a grouped read of pre-aggregated rows by indexed day ranges — from the
smallest rollup that has the columns the query groups and filters by (``kpi_daily_stores`` for days,
stores and totals, ``kpi_daily_templates`` for all-store templates, ``kpi_daily_groups`` for groups,
``kpi_daily`` for posts or a group and template filter together).

Every query honours ``KpiFilter.stores`` (a clerk's scope): None is every store, including what no
store earned (the unattributed row); a set limits every figure to rows of those stores (an empty
set sees nothing). Rows are ordered by day for the day dimension, else by net GMV, then unique
clicks, then key — so a page is stable.

Buyers and repeat buyers are distinct counts over the range, counted from ``kpi_buyer_days``
(never summed from days): a customer buying on two days of the range is one buyer, and a repeat
buyer when they placed two or more orders in the range under that row's key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, Table, and_, case, func, literal, or_, select, union_all
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement

from scrm.contacts.models import FollowRelation
from scrm.db import as_utc
from scrm.groups.models import CustomerGroup, GroupMember, MemberState
from scrm.kpi.models import KpiBuyerDay, KpiDaily, OrderAttributionRow
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
)
from scrm.kpi.rollups import COARSE, METRICS
from scrm.orders.models import Order
from scrm.sop.models import Audience, SopPost
from scrm.stores.models import Store, StoreCode

UNATTRIBUTED_LABEL = "未归属"
_ROW_METRICS = ("posts_delivered", "members_reached", "clicks", "unique_clicks", "orders", "gmv_fen",
                "refunds_fen", "refunded_orders")
assert set(_ROW_METRICS) == set(METRICS)


class KpiQueryError(ValueError):
    """A query the dashboard cannot answer (a dimension it does not group by)."""


def _tz(tz: ZoneInfo | str | None) -> ZoneInfo:
    if isinstance(tz, ZoneInfo):
        return tz
    if tz is None:
        from scrm.config import get_settings

        tz = get_settings().sop.timezone
    return ZoneInfo(tz)


_DIM_COLUMN = {Dimension.day: "day", Dimension.store: "store_code", Dimension.group: "chat_id",
               Dimension.template: "template_id", Dimension.post: "post_id"}


def _table_for(f: KpiFilter, by: Dimension | None, *, with_store: bool = False) -> Table:
    """The smallest rollup that has every column the query groups or filters by: a coarse table
    (``kpi_daily`` pre-summed, :data:`scrm.kpi.rollups.COARSE`) when one has them, else ``kpi_daily``."""
    need = {"day"}
    if by is not None:
        need.add(_DIM_COLUMN[by])
    if with_store or f.stores is not None:
        need.add("store_code")
    if f.chat_id is not None:
        need.add("chat_id")
    if f.template_id is not None:
        need.add("template_id")
    for table, cols in COARSE:
        if need <= set(cols):
            return table
    return KpiDaily.__table__


def _dim(t: Table, by: Dimension) -> ColumnElement[Any]:
    return t.c[_DIM_COLUMN[by]]


def _conditions(t: Table, f: KpiFilter) -> list[ColumnElement[bool]] | None:
    """The filter as WHERE terms on a rollup table; None when the filter sees nothing."""
    if f.stores is not None and not f.stores:
        return None
    terms: list[ColumnElement[bool]] = [t.c.day >= f.start, t.c.day <= f.end]
    if f.stores is not None:
        terms.append(t.c.store_code.in_(sorted(f.stores)))
    if f.chat_id is not None:
        terms.append(t.c.chat_id == f.chat_id)
    if f.template_id is not None:
        terms.append(t.c.template_id == f.template_id)
    return terms


def _key_text(by: Dimension, value: Any) -> str:
    if by is Dimension.day:
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    if by is Dimension.post:
        return str(value) if value else UNATTRIBUTED
    return value or UNATTRIBUTED


def _buyers(conn: Connection, f: KpiFilter, by: Dimension | None, keys: Sequence[Any] | None
            ) -> dict[Any, tuple[int, int]]:
    """(buyers, repeat buyers) per key of ``by`` (or for the whole filter when ``by`` is None)."""
    b = KpiBuyerDay.__table__
    terms = _conditions(b, f)
    if terms is None:
        return {}
    group = [_dim(b, by)] if by is not None else []
    if keys is not None and by is not None:
        terms.append(_dim(b, by).in_(list(keys)))
    per_buyer = (select(*group, b.c.buyer, func.sum(b.c.orders).label("n")).where(*terms)
                 .group_by(*group, b.c.buyer).having(func.sum(b.c.orders) > 0).subquery())
    outer_group = [per_buyer.c[str(group[0].key)]] if group else []
    stmt: Select[Any] = select(*outer_group, func.count().label("buyers"),
                               func.coalesce(func.sum(case((per_buyer.c.n >= 2, 1), else_=0)), 0).label("repeat"))
    if outer_group:
        stmt = stmt.group_by(*outer_group)
    out: dict[Any, tuple[int, int]] = {}
    for r in conn.execute(stmt):
        out[r[0] if outer_group else None] = (int(r.buyers), int(r.repeat))
    return out


def _sums(d: Table) -> list[Any]:
    return [func.coalesce(func.sum(d.c[m]), 0).label(m) for m in _ROW_METRICS]


def labels(engine_or_conn: Engine | Connection, by: Dimension, keys: Iterable[str], *,
           tz: ZoneInfo | str | None = None) -> dict[str, str]:
    """What to show for each key: store and group names (as stored — pages escape them), template
    ids, a post's local send time with its group and template, a day's date."""
    keys = [k for k in keys if k != UNATTRIBUTED]
    out = {UNATTRIBUTED: UNATTRIBUTED_LABEL}
    if by in (Dimension.day, Dimension.template):
        out.update({k: k for k in keys})
        return out
    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.connect() as conn:
            return _labels(conn, by, keys, _tz(tz), out)
    return _labels(engine_or_conn, by, keys, _tz(tz), out)


def _labels(conn: Connection, by: Dimension, keys: list[str], tz: ZoneInfo, out: dict[str, str]) -> dict[str, str]:
    s, g, p = Store.__table__.c, CustomerGroup.__table__.c, SopPost.__table__.c
    if by is Dimension.store:
        names = dict(conn.execute(select(s.code, s.name).where(s.code.in_(keys))).all()) if keys else {}
        out.update({k: names.get(k) or k for k in keys})
    elif by is Dimension.group:
        names = dict(conn.execute(select(g.chat_id, g.name).where(g.chat_id.in_(keys))).all()) if keys else {}
        out.update({k: names.get(k) or k for k in keys})
    elif by is Dimension.post:
        ids = [int(k) for k in keys if k.isdigit()]
        rows = conn.execute(select(p.id, p.template_id, p.sent_at, p.scheduled_for, g.name, p.chat_id, p.audience)
                            .outerjoin(CustomerGroup.__table__, g.chat_id == p.chat_id)
                            .where(p.id.in_(ids))).all() if ids else []
        for r in rows:
            at = as_utc(r.sent_at or r.scheduled_for).astimezone(tz)
            # A 1:1 journey message is labelled as such, never by the customer's external_userid.
            chat = "1:1 客户消息" if r.audience == Audience.customer else (r.name or r.chat_id)
            out[str(r.id)] = f"{at.month} 月 {at.day} 日 {at:%H:%M} · {chat} · {r.template_id}"
        out.update({k: f"帖子 #{k}" for k in keys if k not in out})
    return out


def _row(by: Dimension, key: str, label: str, store_code: str | None, sums: Any,
         buyers: tuple[int, int]) -> KpiRow:
    return KpiRow(key=key, label=label, store_code=store_code or None,
                  **{m: int(getattr(sums, m)) for m in _ROW_METRICS},
                  buyers=buyers[0], repeat_buyers=buyers[1])


def kpi_table(engine: Engine, f: KpiFilter, by: Dimension, *, limit: int = 50, offset: int = 0,
              tz: ZoneInfo | str | None = None) -> KpiPage:
    """One page of the KPI table grouped by ``by``, the number of rows in all, and the totals of
    the whole filter (buyers distinct over it)."""
    if limit < 0 or offset < 0:
        raise KpiQueryError("limit and offset must not be negative")
    carries_store = by in (Dimension.store, Dimension.group, Dimension.post)
    d = _table_for(f, by, with_store=carries_store)
    terms = _conditions(d, f)
    if terms is None:
        return KpiPage(rows=[], total_rows=0, totals=KpiRow(key="", label="合计"))
    dim = _dim(d, by).label("k")
    store_col = (func.max(d.c.store_code) if carries_store else literal("")).label("store")
    sums = _sums(d)
    net = func.sum(d.c.gmv_fen) - func.sum(d.c.refunds_fen)
    order = ([dim] if by is Dimension.day else [net.desc(), func.sum(d.c.unique_clicks).desc(), dim])
    stmt = (select(dim, store_col, *sums, func.count().over().label("total_rows")).where(*terms)
            .group_by(dim).order_by(*order).limit(limit).offset(offset))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
        if rows:
            total_rows = int(rows[0].total_rows)
        else:
            total_rows = int(conn.execute(select(func.count()).select_from(
                select(dim).where(*terms).group_by(dim).subquery())).scalar_one())
        buyers = _buyers(conn, f, by, [r.k for r in rows]) if rows else {}
        keys = [_key_text(by, r.k) for r in rows]
        names = labels(conn, by, keys, tz=tz)
        out = [_row(by, key, names.get(key, key), r.store if by is not Dimension.store else key, r,
                    buyers.get(r.k, (0, 0))) for key, r in zip(keys, rows, strict=True)]
        whole = _table_for(f, None)
        total_sums = conn.execute(select(*_sums(whole)).where(*(_conditions(whole, f) or []))).one()
        total_buyers = _buyers(conn, f, None, None).get(None, (0, 0))
    return KpiPage(rows=out, total_rows=total_rows,
                   totals=_row(by, "", "合计", None, total_sums, total_buyers))


# -- GMV decomposition ----------------------------------------------------------------------------
def _period_bounds(f: KpiFilter, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(f.start, dt.time(), tz).astimezone(dt.UTC)
    end = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time(), tz).astimezone(dt.UTC)
    return start, end


def _customers(conn: Connection, periods: Sequence[KpiFilter], by: Dimension, tz: ZoneInfo
               ) -> list[dict[str, int]]:
    """Customers per group (its external members some time in the period) or per store (those of
    its groups, and those its QR codes added by the period's end), distinct; for each of
    ``periods`` (same scope, different dates) in one pass over the members and follow relations
    (the costly part of the decomposition: one scan and one distinct instead of one per period)."""
    f = periods[0]
    if f.stores is not None and not f.stores:
        return [{} for _ in periods]
    bounds = [_period_bounds(p, tz) for p in periods]
    g, gm = CustomerGroup.__table__.c, GroupMember.__table__.c
    in_group = [and_(func.coalesce(gm.joined_at, start) < end,
                     (gm.state == MemberState.member) | (gm.left_at >= start)) for start, end in bounds]
    scope: list[ColumnElement[bool]] = [g.store_code.in_(sorted(f.stores))] if f.stores is not None else []
    if f.chat_id is not None:
        scope.append(g.chat_id == f.chat_id)
    flags = [f"p{i}" for i in range(len(periods))]
    out: list[dict[str, int]] = [{} for _ in periods]
    if by is Dimension.group:
        # (chat_id, member_id) is unique in group_members: a count of rows is a distinct count.
        stmt = (select(gm.chat_id, *[func.sum(case((cond, 1), else_=0)) for cond in in_group])
                .join(CustomerGroup.__table__, g.chat_id == gm.chat_id)
                .where(gm.member_type == 2, or_(*in_group), *scope).group_by(gm.chat_id))
        for r in conn.execute(stmt):
            for i in range(len(periods)):
                if int(r[i + 1]):
                    out[i][r[0]] = int(r[i + 1])
        return out
    members = (select(g.store_code.label("store"), gm.member_id.label("ext"),
                      *[case((cond, 1), else_=0).label(x) for cond, x in zip(in_group, flags, strict=True)])
               .join(CustomerGroup.__table__, g.chat_id == gm.chat_id)
               .where(gm.member_type == 2, or_(*in_group), g.store_code.is_not(None), *scope))
    parts: list[Any] = [members]
    if f.chat_id is None:
        sc, fr = StoreCode.__table__.c, FollowRelation.__table__.c
        added = [func.coalesce(fr.added_at, start) < end for start, end in bounds]
        parts.append(select(sc.store_code.label("store"), fr.external_userid.label("ext"),
                            *[case((cond, 1), else_=0).label(x) for cond, x in zip(added, flags, strict=True)])
                     .join(StoreCode.__table__, sc.state == fr.state)
                     .where(or_(*added), *([sc.store_code.in_(sorted(f.stores))] if f.stores is not None else [])))
    u = union_all(*parts).subquery()
    per_customer = (select(u.c.store, *[func.max(u.c[x]).label(x) for x in flags])
                    .group_by(u.c.store, u.c.ext).subquery())
    stmt2 = (select(per_customer.c.store, *[func.sum(per_customer.c[x]) for x in flags])
             .group_by(per_customer.c.store))
    for r in conn.execute(stmt2):
        for i in range(len(periods)):
            if int(r[i + 1]):
                out[i][r[0]] = int(r[i + 1])
    return out


def _factors(conn: Connection, f: KpiFilter, by: Dimension, customers: dict[str, int]
             ) -> dict[str, tuple[GmvFactors, str]]:
    d = _table_for(f, by, with_store=True)
    terms = _conditions(d, f)
    if terms is None:
        return {}
    dim = _dim(d, by)
    sums = {k: (int(o), int(gmv) - int(ref), store) for k, o, gmv, ref, store in conn.execute(
        select(dim, func.sum(d.c.orders), func.sum(d.c.gmv_fen), func.sum(d.c.refunds_fen), func.max(d.c.store_code))
        .where(*terms, dim != "").group_by(dim))}
    buyers = _buyers(conn, f, by, None)
    out: dict[str, tuple[GmvFactors, str]] = {}
    for key in set(sums) | set(customers):
        orders, gmv, store = sums.get(key, (0, 0, ""))
        out[key] = (GmvFactors(customers=customers.get(key, 0), buyers=buyers.get(key, (0, 0))[0], orders=orders,
                               gmv_fen=gmv), store)
    return out


def gmv_decomposition(engine: Engine, f: KpiFilter, by: Dimension, *,
                      tz: ZoneInfo | str | None = None) -> list[GmvDecomposition]:
    """GMV (net of refunds) = customers × conversion × repeat × order value, per store or group,
    for the filter's period and the one before it; largest current GMV first."""
    if by not in (Dimension.store, Dimension.group):
        raise KpiQueryError(f"GMV is decomposed by store or group, not {by}")
    zone = _tz(tz)
    with engine.connect() as conn:
        customers_now, customers_before = _customers(conn, [f, f.previous()], by, zone)
        now = _factors(conn, f, by, customers_now)
        before = _factors(conn, f.previous(), by, customers_before)
        keys = sorted(set(now) | set(before))
        names = labels(conn, by, keys, tz=zone)
        if by is Dimension.group:
            g = CustomerGroup.__table__.c
            group_store = dict(conn.execute(select(g.chat_id, g.store_code).where(g.chat_id.in_(keys))).all()
                               ) if keys else {}
    empty = GmvFactors(0, 0, 0, 0)
    out = []
    for key in keys:
        current, store = now.get(key, (empty, ""))
        previous, store_before = before.get(key, (empty, ""))
        store_code = key if by is Dimension.store else (group_store.get(key) or store or store_before or None)
        out.append(GmvDecomposition(key=key, label=names.get(key, key), store_code=store_code, current=current,
                                    previous=previous))
    out.sort(key=lambda x: (-x.current.gmv_fen, -x.current.customers, x.key))
    return out


# -- the "why this post" list ---------------------------------------------------------------------
def order_attributions(engine: Engine, f: KpiFilter, *, limit: int = 50, offset: int = 0
                       ) -> tuple[list[OrderAttribution], int]:
    """Attributed orders of the filter, newest first, each with its rule and reason; and how many."""
    a = OrderAttributionRow.__table__
    if f.stores is not None and not f.stores:
        return [], 0
    terms: list[ColumnElement[bool]] = [a.c.day >= f.start, a.c.day <= f.end]
    if f.stores is not None:
        terms.append(a.c.store_code.in_(sorted(f.stores)))
    if f.chat_id is not None:
        terms.append(a.c.chat_id == f.chat_id)
    if f.template_id is not None:
        terms.append(a.c.template_id == f.template_id)
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(a).where(*terms)).scalar_one())
        rows = conn.execute(select(a).where(*terms).order_by(a.c.paid_at.desc(), a.c.order_pk.desc())
                            .limit(limit).offset(offset)).all()
    out = [OrderAttribution(order_id=r.order_id, source=r.source, rule=AttributionRule(r.rule), reason=r.reason,
                            store_code=r.store_code, chat_id=r.chat_id, post_id=r.post_id, template_id=r.template_id,
                            link_code=r.link_code, click_at=as_utc(r.click_at), click_id=r.click_id,
                            paid_at=as_utc(r.paid_at), amount_fen=int(r.amount_fen),
                            extra={"refunded_fen": str(r.refunded_fen), "buyer": r.buyer})
           for r in rows]
    return out, total


def order_attribution(engine: Engine, order_id: str, *, source: str = "shop") -> OrderAttribution | None:
    """One order's attribution (None: not rolled up yet, or no such order)."""
    a, o = OrderAttributionRow.__table__, Order.__table__.c
    with engine.connect() as conn:
        r = conn.execute(select(a).join(Order.__table__, o.id == a.c.order_pk)
                         .where(o.source == source, o.order_id == order_id)).first()
    if r is None:
        return None
    return OrderAttribution(order_id=r.order_id, source=r.source, rule=AttributionRule(r.rule), reason=r.reason,
                            store_code=r.store_code, chat_id=r.chat_id, post_id=r.post_id,
                            template_id=r.template_id, link_code=r.link_code, click_at=as_utc(r.click_at),
                            click_id=r.click_id, paid_at=as_utc(r.paid_at), amount_fen=int(r.amount_fen),
                            extra={"refunded_fen": str(r.refunded_fen), "buyer": r.buyer})


__all__ = ["KpiQueryError", "gmv_decomposition", "kpi_table", "labels", "order_attribution", "order_attributions"]
