"""Day rollups of the store funnel and owner compliance, so the dashboard reads a few thousand
rows instead of millions (issue 12: p95 ≤ 300 ms for all stores over 30 days).

Per corp-local day: scans and new customers per store × staff member, group joins and leaves per
store, the churned customers per store (one row each, so a range still counts distinct
customers), and owner compliance per owner × store; and a snapshot of each active store group's
members (the funnel's "now" figures, as of the refresh: counting them live took seconds).

:func:`refresh_funnel_rollups` recomputes the days from ``lookback_days`` before the last day it
rolled up through today, from the raw tables, in one transaction that first updates the state
row (a row lock on PostgreSQL, the write lock on SQLite): two processes take turns, and running
it twice gives the same rows. Contacts and the ledger change after the fact (a re-added contact
moves its scan to the new day, a mass send is confirmed a day later), which is why recent days
are re-read; a change older than the look-back (a relation re-added after weeks drops out of its
old day only then) is picked up by :func:`rebuild_funnel_rollups`, e.g. nightly.
Compliance figures are as of the refresh (its ``now``): ``due`` grows with the day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from scrm.contacts.models import ChurnAlert, FollowRelation
from scrm.db import as_utc, utcnow
from scrm.groups.models import GroupMember
from scrm.kpi.funnel import local_day_bounds, raw_churned, raw_moves, raw_staff_scans
from scrm.kpi.funnel_models import (
    ComplianceDay,
    FunnelChurnDay,
    FunnelGroupSize,
    FunnelRollupState,
    FunnelStaffDay,
    FunnelStoreDay,
)
from scrm.kpi.report import KpiFilter
from scrm.logs import get_logger
from scrm.sop.models import Audience, SopPost

log = get_logger(__name__)

STATE = "funnel"
LOOKBACK_DAYS = 3
_STATE = FunnelRollupState.__table__
_TABLES = (FunnelStaffDay.__table__, FunnelStoreDay.__table__, FunnelChurnDay.__table__, ComplianceDay.__table__)


def _tz_name(tz: dt.tzinfo | str) -> str:
    return tz if isinstance(tz, str) else (getattr(tz, "key", None) or str(tz))


def rollups_ready(conn: Connection, tz: dt.tzinfo | None) -> bool:
    """A refresh has run (for ``tz``, when given: the funnel's days are cut in it)."""
    row = conn.execute(select(_STATE.c.tz, _STATE.c.through).where(_STATE.c.name == STATE)).first()
    return row is not None and row.through is not None and (tz is None or row.tz == _tz_name(tz))


def _days(column: Any, start: dt.date, end: dt.date, stores: Sequence[str] | None) -> list[Any]:
    t = column.table.c
    return [t.day >= start, t.day <= end, *([] if stores is None else [t.store_code.in_(stores)])]


def rolled_staff_scans(conn: Connection, start: dt.date, end: dt.date, stores: Sequence[str] | None):
    c = FunnelStaffDay.__table__.c
    return conn.execute(
        select(c.store_code, c.userid, func.sum(c.scans).label("scans"), func.sum(c.new_customers).label("new"))
        .where(*_days(c.day, start, end, stores)).group_by(c.store_code, c.userid)).all()


def rolled_moves(conn: Connection, start: dt.date, end: dt.date, stores: Sequence[str] | None):
    c = FunnelStoreDay.__table__.c
    return conn.execute(
        select(c.store_code, func.sum(c.group_joins).label("joins"), func.sum(c.group_leaves).label("leaves"))
        .where(*_days(c.day, start, end, stores)).group_by(c.store_code)).all()


def rolled_churned(conn: Connection, start: dt.date, end: dt.date, stores: Sequence[str] | None) -> dict[str, int]:
    c = FunnelChurnDay.__table__.c
    return dict(conn.execute(
        select(c.store_code, func.count(func.distinct(c.external_userid)))
        .where(*_days(c.day, start, end, stores)).group_by(c.store_code)).all())


class _Row:
    """A compliance row shaped like the raw query's."""

    def __init__(self, r: Any):
        self.sender, self.store_code, self.name = r.sender, r.store_code or None, r.name
        self.due, self.on_time, self.expired = r.due, r.on_time, r.expired
        self.over_quota, self.unconfirmed = r.over_quota, r.unconfirmed


def rolled_group_sizes(stores: Sequence[str] | None):
    """Like :func:`scrm.kpi.funnel.raw_group_sizes`, from the last refresh's snapshot."""
    c = FunnelGroupSize.__table__.c
    return (select(c.store_code, c.chat_id, c.members.label("n"))
            .where(*([] if stores is None else [c.store_code.in_(stores)])).subquery())


def _snapshot_group_sizes(conn: Connection) -> int:
    from scrm.kpi.funnel import raw_group_sizes

    sizes = raw_group_sizes(None)
    rows = [{"chat_id": r.chat_id, "store_code": r.store_code, "members": int(r.n)}
            for r in conn.execute(select(sizes))]
    conn.execute(delete(FunnelGroupSize.__table__))
    if rows:
        conn.execute(insert(FunnelGroupSize.__table__), rows)
    return len(rows)


def rolled_compliance(conn: Connection, start: dt.date, end: dt.date, stores: Sequence[str] | None) -> list[Any]:
    from scrm.contacts.models import Employee

    c, e = ComplianceDay.__table__.c, Employee.__table__.c
    per = (select(c.sender, c.store_code, func.sum(c.due).label("due"), func.sum(c.sent_on_time).label("on_time"),
                  func.sum(c.expired).label("expired"), func.sum(c.over_quota).label("over_quota"),
                  func.sum(c.unconfirmed).label("unconfirmed"))
           .where(*_days(c.day, start, end, stores)).group_by(c.sender, c.store_code).subquery())
    rows = conn.execute(select(per, e.name).select_from(per.outerjoin(Employee.__table__, e.userid == per.c.sender)))
    return [_Row(r) for r in rows if r.due]


def _first_day(conn: Connection, tz: ZoneInfo) -> dt.date | None:
    """The earliest local day any rolled-up figure can fall on."""
    firsts = [conn.execute(select(func.min(col))).scalar() for col in (
        FollowRelation.__table__.c.added_at, ChurnAlert.__table__.c.occurred_at, GroupMember.__table__.c.joined_at,
        GroupMember.__table__.c.left_at)]
    days = [as_utc(t).astimezone(tz).date() for t in firsts if t is not None]
    post_day = conn.execute(select(func.min(SopPost.__table__.c.day))
                            .where(SopPost.__table__.c.audience == Audience.group)).scalar()
    if post_day is not None:
        days.append(post_day)
    return min(days) if days else None


def _roll_day(conn: Connection, day: dt.date, tz: ZoneInfo, now: dt.datetime) -> int:
    """Write one day's rows (the caller deleted the old ones); the number of rows written."""
    from scrm.kpi.compliance import raw_compliance_query

    lo, hi = local_day_bounds(KpiFilter(day, day), tz)
    staff = [{"day": day, "store_code": r.store_code, "userid": r.userid, "scans": int(r.scans),
              "new_customers": int(r.new or 0)} for r in raw_staff_scans(conn, lo, hi, None)]
    moves = [{"day": day, "store_code": r.store_code, "group_joins": int(r.joins or 0),
              "group_leaves": int(r.leaves or 0)} for r in raw_moves(conn, lo, hi, None)]
    churn = [{"day": day, "store_code": code, "external_userid": eid}
             for code, eids in raw_churned(conn, lo, hi, None).items() for eid in sorted(eids)]
    comp = [{"day": day, "sender": r.sender, "store_code": r.store_code or "", "due": int(r.due),
             "sent_on_time": int(r.on_time or 0), "expired": int(r.expired or 0),
             "over_quota": int(r.over_quota or 0), "unconfirmed": int(r.unconfirmed or 0)}
            for r in conn.execute(raw_compliance_query(KpiFilter(day, day), now))]
    for table, rows in zip(_TABLES, (staff, moves, churn, comp), strict=True):
        if rows:
            conn.execute(insert(table), rows)
    return len(staff) + len(moves) + len(churn) + len(comp)


def _lock(conn: Connection) -> Any:
    """Create the state row if missing, then lock it for this transaction and return it."""
    if conn.execute(select(_STATE.c.name).where(_STATE.c.name == STATE)).first() is None:
        try:
            with conn.begin_nested():
                conn.execute(insert(_STATE).values(name=STATE, tz="", updated_at=utcnow()))
        except IntegrityError:
            pass  # another process created it first
    conn.execute(update(_STATE).where(_STATE.c.name == STATE).values(updated_at=utcnow()))
    return conn.execute(select(_STATE).where(_STATE.c.name == STATE)).one()


def refresh_funnel_rollups(engine: Engine, *, tz: ZoneInfo | str, now: dt.datetime | None = None,
                           lookback_days: int = LOOKBACK_DAYS, rebuild: bool = False) -> int:
    """Bring the rollups up to ``now`` (default: the clock): re-read the days from ``lookback_days``
    before the last one rolled up to today (everything on the first run, after a change of time
    zone, or with ``rebuild``). Returns the number of days rewritten."""
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    now = as_utc(now) if now is not None else utcnow()
    today = now.astimezone(zone).date()
    with engine.begin() as conn:
        state = _lock(conn)
        full = rebuild or state.through is None or state.tz != _tz_name(zone)
        if full:
            first = _first_day(conn, zone)
            for table in _TABLES:
                conn.execute(delete(table))
        else:
            first = min(state.through, today) - dt.timedelta(days=lookback_days)
            for table in _TABLES:
                conn.execute(delete(table).where(table.c.day >= first))
        days = rows = 0
        day = first
        while day is not None and day <= today:
            rows += _roll_day(conn, day, zone, now)
            day += dt.timedelta(days=1)
            days += 1
        rows += _snapshot_group_sizes(conn)
        conn.execute(update(_STATE).where(_STATE.c.name == STATE).values(
            tz=_tz_name(zone), through=today, as_of=now, updated_at=utcnow(),
            first_day=(first if full else state.first_day)))
    log.info("kpi_funnel_rollups_refreshed", days=days, rows=rows, full=full, through=today.isoformat())
    return days


def rebuild_funnel_rollups(engine: Engine, *, tz: ZoneInfo | str, now: dt.datetime | None = None) -> int:
    """Recompute every day from the raw tables (what the look-back of a refresh does not reach)."""
    return refresh_funnel_rollups(engine, tz=tz, now=now, rebuild=True)
