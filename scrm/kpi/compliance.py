"""Owner compliance: did each group owner send what SOP asked of them, on time?

Only posts that need the owner count: ``owner_task`` posts (the owner sends them from the chat
toolbar) and ``mass_send`` posts (WeCom creates the task, the owner must confirm it in 群发助手).
Group-robot posts go out without the owner and are left out — including the rare one a removed
robot handed back to the owner, which the ledger does not mark as such.

Per owner (the post's ``sender``: the group's owner when it was planned) and store (the group's
store now; no store is its own row), for the SOP days of the range (the ledger's ``day``, already
the corp's local day):

- **due** (应发): posts whose planned time has come (``scheduled_for`` ≤ now), whatever became of
  them. A post planned for later today is not due yet.
- **sent on time** (按时发送): an owner task the owner confirmed as sent (``sent``) no later than
  the end of its window; a mass send delivered (``confirmed``) with WeCom's send time — when the
  owner confirmed it — no later than the end of its window.
- **expired** (过期未发): its window ended before it was sent (ledger ``expired``).
- **over quota** (超出群发额度): WeCom refused the mass send because the group had already received
  its mass message that day (ledger ``over_quota``).
- **unconfirmed** (未确认): an owner task whose claim lapsed without the owner saying whether it
  went (ledger ``unconfirmed``), and a mass send created in WeCom that the owner had not confirmed
  by the end of its window (ledger still ``sent``).

The rest of ``due`` is not in a column: sent late (after the window), failed (WeCom refused, or
the content could not be rendered), and posts still open within their window.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql import ColumnElement

from scrm.contacts.models import Employee
from scrm.db import utcnow
from scrm.groups.models import CustomerGroup
from scrm.kpi.funnel import read_connection
from scrm.kpi.report import KpiFilter, OwnerCompliance
from scrm.logs import get_logger
from scrm.sop.models import Audience, PostStatus, SopPost
from scrm.sop.template import Channel

log = get_logger(__name__)

OWNER_CHANNELS = (Channel.owner_task.value, Channel.mass_send.value)


def _count(condition: ColumnElement[bool]):
    return func.sum(case((condition, 1), else_=0))


def raw_compliance_query(f: KpiFilter, now: dt.datetime):
    """The grouped query of the figures above: (sender, store_code, name, due, on_time, expired,
    over_quota, unconfirmed) per owner and store."""
    p, g, e = SopPost.__table__.c, CustomerGroup.__table__.c, Employee.__table__.c
    owner_task, mass_send = p.channel == Channel.owner_task.value, p.channel == Channel.mass_send.value
    on_time = or_(
        and_(owner_task, p.status.in_((PostStatus.sent, PostStatus.confirmed)), p.sent_at <= p.window_ends_at),
        and_(mass_send, p.status == PostStatus.confirmed, p.confirmed_at <= p.window_ends_at),
    )
    unconfirmed = or_(p.status == PostStatus.unconfirmed,
                      and_(mass_send, p.status == PostStatus.sent, p.window_ends_at <= now))
    # Group posts only: the owners' figures per group and store (a 1:1 journey message is no group's).
    where: list[ColumnElement[bool]] = [p.day >= f.start, p.day <= f.end, p.channel.in_(OWNER_CHANNELS),
                                        p.scheduled_for <= now, p.audience == Audience.group]
    if f.stores is not None:
        where.append(g.store_code.in_(sorted(f.stores)))
    if f.chat_id is not None:
        where.append(p.chat_id == f.chat_id)
    if f.template_id is not None:
        where.append(p.template_id == f.template_id)
    return (
        select(p.sender, g.store_code, func.max(e.name).label("name"), func.count().label("due"),
               _count(on_time).label("on_time"), _count(p.status == PostStatus.expired).label("expired"),
               _count(p.status == PostStatus.over_quota).label("over_quota"),
               _count(unconfirmed).label("unconfirmed"))
        .select_from(SopPost.__table__
                     .outerjoin(CustomerGroup.__table__, g.chat_id == p.chat_id)
                     .outerjoin(Employee.__table__, e.userid == p.sender))
        .where(*where)
        .group_by(p.sender, g.store_code)
    )


def owner_compliance(engine: Engine, f: KpiFilter, *, tz: dt.tzinfo,
                     now: dt.datetime | None = None, use_rollups: bool | None = None) -> list[OwnerCompliance]:
    """The figures above per owner and store, sorted by store code (no store last), then owner.

    ``f.stores`` scopes through the group's store (a set leaves out groups without a store);
    ``f.chat_id`` and ``f.template_id`` narrow to that group or template. ``tz`` is accepted like
    every KPI query's, but the ledger's ``day`` already is the local day. ``now`` (default: the
    clock) decides what is due and which mass sends are past their window unconfirmed.

    Without ``now``, a group or a template, the figures come from the day rollups
    (:mod:`scrm.kpi.funnel_rollups`: as of their last refresh, which is their ``now``) once a
    refresh has run; otherwise from the ledger. ``use_rollups`` forces one or the other."""
    del tz  # the ledger's day is already the corp's local day
    if f.stores is not None and not f.stores:
        return []
    from scrm.kpi.funnel_rollups import rolled_compliance, rollups_ready

    with read_connection(engine) as conn:
        rolled = f.chat_id is None and f.template_id is None and (
            use_rollups if use_rollups is not None else now is None and rollups_ready(conn, None))
        if rolled:
            rows = rolled_compliance(conn, f.start, f.end, None if f.stores is None else sorted(f.stores))
        else:
            rows = list(conn.execute(raw_compliance_query(f, now or utcnow())))
    out = [OwnerCompliance(owner_userid=r.sender, owner_name=r.name or r.sender, store_code=r.store_code,
                           due=int(r.due), sent_on_time=int(r.on_time or 0), expired=int(r.expired or 0),
                           over_quota=int(r.over_quota or 0), unconfirmed=int(r.unconfirmed or 0))
           for r in rows]
    out.sort(key=lambda c: (c.store_code is None, c.store_code or "", c.owner_userid))
    log.debug("kpi_owner_compliance", rows=len(out), start=f.start.isoformat(), end=f.end.isoformat())
    return out
