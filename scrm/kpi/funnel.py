"""The store funnel: QR scans, new customers, group joins and leaves, member counts against the
cap, churn — per store and per staff code, for a range of the corp's local days.

What each figure counts (a manager reads this in the README):

- **scans** (扫码添加): follow relations added in the range through one of the store's staff
  "contact me" codes, i.e. whose ``state`` is that code's state (the code may since have been
  removed). One relation per customer and staff member: a customer who deletes and re-adds the
  same staff member within the range is one scan, dated by the latest add. Joins through the
  store's group live code are not scans; they are group joins.
- **new customers** (新客): scans of a customer scrm had not seen before: no earlier follow
  relation with any employee, and scrm's customer record is not older than the add (beyond
  :data:`SEEN_BEFORE_GRACE`, for clock skew). A customer who comes back is a scan, not new.
- **staff**: per staff member of the store (the store's staff now, plus anyone whose code of this
  store brought scans in the range), their scans and new customers; the store's figures are the
  sums of its staff rows.
- **group joins / leaves** (进群 / 退群): customers (external contacts, not employees) who joined
  a group of the store in the range (WeCom's join time), and who left one in the range (the time
  scrm learned of it). A member who left and came back is stored once, with the latest join:
  that earlier leave is no longer counted.
- **groups, members, groups at cap**: now, not in the range: the store's active groups, their
  current members (employees included, as WeCom's 200-member QR limit counts everyone), and how
  many have ``cap`` members or more (the group live code no longer lists those).
- **churned** (流失): distinct customers brought by the store's staff codes who deleted a staff
  member (WeCom's del_follow_user, a churn alert) in the range, counted on the day it happened.

Every store in the filter is listed, zeros included (a silent store is news); a closed store only
when it has a figure. The filter's ``chat_id`` and ``template_id`` do not apply to the funnel.

Speed: computed from the raw tables this takes seconds for all stores of a large chain, so once
``scrm.kpi.funnel_rollups.refresh_funnel_rollups`` has run the range figures are read from its
per-day rollups (the same definitions, as of the last refresh); group sizes are always live.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import and_, case, exists, func, literal, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement

from scrm.contacts.models import ChurnAlert, Customer, Employee, FollowRelation
from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.kpi.report import KpiFilter, StaffCodeFunnel, StoreFunnel
from scrm.logs import get_logger
from scrm.stores.models import Store, StoreCode, StoreStaff, StoreStatus

log = get_logger(__name__)

# A customer record this much older than the add means scrm knew the customer before the scan.
# (The record is written when the add callback is processed, seconds after WeCom's add time;
# the margin absorbs a server clock a little ahead of WeCom's.)
SEEN_BEFORE_GRACE = dt.timedelta(minutes=5)
CHURN_KIND = "customer_deleted_employee"  # the ChurnAlert a del_follow_user callback raises
EXTERNAL_MEMBER = 2  # GroupMember.member_type of a customer


def local_day_bounds(f: KpiFilter, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """The range as UTC instants [start 00:00 local, the day after end 00:00 local)."""
    lo = dt.datetime.combine(f.start, dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    hi = dt.datetime.combine(f.end + dt.timedelta(days=1), dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    return lo, hi


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for the KPI reads. On PostgreSQL without JIT: its default (jit on) compiles
    these grouped scans for seconds, longer than they take to run (measured in the report)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL jit = off")
        yield conn


def _in(column, lo: dt.datetime, hi: dt.datetime) -> ColumnElement[bool]:
    return and_(column >= lo, column < hi)


def _before(earlier, later, margin: dt.timedelta, dialect: str) -> ColumnElement[bool]:
    """``earlier < later - margin`` for two stored times (SQLite keeps them as text: julianday)."""
    if dialect == "sqlite":
        return func.julianday(earlier) < func.julianday(later) - margin.total_seconds() / 86400
    return earlier < later - margin


def raw_staff_scans(conn: Connection, lo: dt.datetime, hi: dt.datetime, stores: list[str] | None):
    """(store_code, userid, scans, new) of relations added in [lo, hi) through a staff code."""
    sc, fr, cu = StoreCode.__table__.c, FollowRelation.__table__.c, Customer.__table__.c
    earlier = FollowRelation.__table__.alias("earlier")
    seen_before = or_(
        exists().where(earlier.c.external_userid == fr.external_userid, earlier.c.id != fr.id,
                       earlier.c.added_at < fr.added_at),
        exists().where(cu.external_userid == fr.external_userid,
                       _before(cu.created_at, fr.added_at, SEEN_BEFORE_GRACE, conn.dialect.name)),
    )
    return conn.execute(
        select(sc.store_code, sc.userid, func.count(fr.id).label("scans"),
               func.sum(case((seen_before, 0), else_=1)).label("new"))
        .select_from(StoreCode.__table__.join(FollowRelation.__table__, fr.state == sc.state))
        .where(sc.kind == "staff", _in(fr.added_at, lo, hi),
               *([] if stores is None else [sc.store_code.in_(stores)]))
        .group_by(sc.store_code, sc.userid)
    ).all()


def raw_moves(conn: Connection, lo: dt.datetime, hi: dt.datetime, stores: list[str] | None):
    """(store_code, joins, leaves) of customers in any group of the store (a dismissed one too)."""
    g, m = CustomerGroup.__table__.c, GroupMember.__table__.c
    joined, left = _in(m.joined_at, lo, hi), and_(m.state == MemberState.left, _in(m.left_at, lo, hi))
    return conn.execute(
        select(g.store_code, func.sum(case((joined, 1), else_=0)).label("joins"),
               func.sum(case((left, 1), else_=0)).label("leaves"))
        .select_from(CustomerGroup.__table__.join(GroupMember.__table__, m.chat_id == g.chat_id))
        .where(g.store_code.is_not(None), m.member_type == EXTERNAL_MEMBER, or_(joined, left),
               *([] if stores is None else [g.store_code.in_(stores)]))
        .group_by(g.store_code)
    ).all()


def raw_churned(conn: Connection, lo: dt.datetime, hi: dt.datetime,
                stores: list[str] | None) -> dict[str, set[str]]:
    """Store code → customers brought by its staff codes who deleted a staff member in [lo, hi).
    The store is looked up here, not joined: PostgreSQL underestimates the alerts-relations join
    and would nest-loop it over every code."""
    sc, fr, ca = StoreCode.__table__.c, FollowRelation.__table__.c, ChurnAlert.__table__.c
    codes = dict(conn.execute(select(sc.state, sc.store_code).where(
        sc.kind == "staff", *([] if stores is None else [sc.store_code.in_(stores)]))).all())
    if not codes:
        return {}
    deleted = conn.execute(
        select(fr.state, ca.external_userid).distinct()
        .select_from(ChurnAlert.__table__.join(
            FollowRelation.__table__, and_(fr.userid == ca.userid, fr.external_userid == ca.external_userid)))
        .where(ca.kind == CHURN_KIND, _in(ca.occurred_at, lo, hi), fr.state.is_not(None),
               *([] if stores is None else [fr.state.in_(sorted(codes))]))
    ).all()
    out: dict[str, set[str]] = {}
    for r in deleted:
        if r.state in codes:
            out.setdefault(codes[r.state], set()).add(r.external_userid)
    return out


def raw_group_sizes(stores: list[str] | None):
    """(store_code, chat_id, n): the current members of each active store group."""
    g, m = CustomerGroup.__table__.c, GroupMember.__table__.c
    return (
        select(g.store_code, g.chat_id, func.count(m.id).label("n"))
        .select_from(CustomerGroup.__table__.outerjoin(
            GroupMember.__table__, and_(m.chat_id == g.chat_id, m.state == MemberState.member)))
        .where(g.store_code.is_not(None), g.status == GroupStatus.active,
               *([] if stores is None else [g.store_code.in_(stores)]))
        .group_by(g.store_code, g.chat_id)
        .subquery()
    )


def store_funnel(engine: Engine, f: KpiFilter, *, tz: dt.tzinfo, cap: int = 200,
                 use_rollups: bool | None = None) -> list[StoreFunnel]:
    """The funnel of every store in ``f.stores`` (None: all), sorted by store code. See the module
    docstring for what each figure counts.

    Range figures come from the day rollups (:mod:`scrm.kpi.funnel_rollups`, as of their last
    refresh) once they exist for ``tz``, else straight from the raw tables (seconds for a large
    chain); ``use_rollups`` forces one or the other. Group sizes are then as of the last refresh too."""
    if f.stores is not None and not f.stores:
        return []
    lo, hi = local_day_bounds(f, tz)
    st, ss, emp = Store.__table__.c, StoreStaff.__table__.c, Employee.__table__.c
    wanted = None if f.stores is None else sorted(f.stores)

    def scoped(column) -> list[ColumnElement[bool]]:
        return [] if wanted is None else [column.in_(wanted)]

    with read_connection(engine) as conn:
        stores = conn.execute(select(st.code, st.name, st.status).where(*scoped(st.code)).order_by(st.code)).all()
        if not stores:
            return []
        from scrm.kpi.funnel_rollups import (
            rolled_churned,
            rolled_group_sizes,
            rolled_moves,
            rolled_staff_scans,
            rollups_ready,
        )

        rolled = rollups_ready(conn, tz) if use_rollups is None else use_rollups
        if rolled:
            scans = rolled_staff_scans(conn, f.start, f.end, wanted)
            moves = rolled_moves(conn, f.start, f.end, wanted)
            churned_by = rolled_churned(conn, f.start, f.end, wanted)
        else:
            scans = raw_staff_scans(conn, lo, hi, wanted)
            moves = raw_moves(conn, lo, hi, wanted)
            churned_by = {code: len(c) for code, c in raw_churned(conn, lo, hi, wanted).items()}

        staff = conn.execute(select(ss.store_code, ss.userid).where(*scoped(ss.store_code))).all()
        userids = {r.userid for r in staff} | {r.userid for r in scans}
        # All stores: every name (an IN list of thousands of userids cost more than the rows).
        names = dict(conn.execute(select(emp.userid, emp.name).where(
            *([] if wanted is None else [emp.userid.in_(sorted(userids))]))).all()) if userids else {}

        # Groups now: members per active group (employees included), then per store.
        per_group = rolled_group_sizes(wanted) if rolled else raw_group_sizes(wanted)
        sizes = conn.execute(
            select(per_group.c.store_code, func.count().label("groups"), func.sum(per_group.c.n).label("members"),
                   func.sum(case((per_group.c.n >= literal(cap), 1), else_=0)).label("at_cap"))
            .group_by(per_group.c.store_code)
        ).all()

    by_staff: dict[str, dict[str, tuple[int, int]]] = {}
    for r in scans:
        by_staff.setdefault(r.store_code, {})[r.userid] = (int(r.scans), int(r.new or 0))
    for r in staff:
        by_staff.setdefault(r.store_code, {}).setdefault(r.userid, (0, 0))
    move = {r.store_code: (int(r.joins or 0), int(r.leaves or 0)) for r in moves}
    size = {r.store_code: (int(r.groups), int(r.members or 0), int(r.at_cap or 0)) for r in sizes}
    churned = {code: int(n) for code, n in churned_by.items()}

    out: list[StoreFunnel] = []
    for s in stores:
        people = sorted(
            (StaffCodeFunnel(userid=u, name=names.get(u) or u, scans=n, new_customers=new)
             for u, (n, new) in by_staff.get(s.code, {}).items()),
            key=lambda p: (-p.scans, p.userid))
        joins, leaves = move.get(s.code, (0, 0))
        groups, members, at_cap = size.get(s.code, (0, 0, 0))
        row = StoreFunnel(
            store_code=s.code, store_name=s.name, scans=sum(p.scans for p in people),
            new_customers=sum(p.new_customers for p in people), staff=people, group_joins=joins,
            group_leaves=leaves, groups=groups, members=members, groups_at_cap=at_cap,
            churned=churned.get(s.code, 0), cap=cap)
        if s.status == StoreStatus.closed and not (row.scans or joins or leaves or groups or row.churned):
            continue
        out.append(row)
    log.debug("kpi_store_funnel", stores=len(out), start=f.start.isoformat(), end=f.end.isoformat())
    return out
