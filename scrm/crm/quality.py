"""Service quality per rep and per store: first-response time, customer messages left unanswered
past ``crm.unanswered_after_minutes`` of business time, and replies with rude or risky phrases.

Counted from ``crm_service_events`` (the rebuild derives them, :mod:`scrm.crm.followups`). A range
is local dates (``tz``, i.e. sop.timezone), both ends included, on when the customer wrote (or the
rep replied, for risky replies). The pages render the shapes below.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from scrm.config import CrmSettings
from scrm.crm.followups import BusinessHours, business_exceeds, business_seconds
from scrm.crm.models import ServiceEvent, ServiceEventKind
from scrm.db import as_utc, utcnow

S = ServiceEvent.__table__
NO_REP = "未分配"  # the name of the row of events no rep answers for
NO_STORE = "无归属门店"  # customers without a home store


@dataclass(frozen=True)
class QualityRow:
    key: str  # a rep's userid, or a store code ("" = customers without a home store)
    name: str  # the rep's / store's name (falls back to the key)
    sessions: int  # follow-up sessions that started in the range with a customer message
    answered: int  # of them, answered by a rep
    median_first_response_seconds: float | None  # business seconds; None when nothing was answered
    mean_first_response_seconds: float | None
    customer_turns: int  # customer turns (consecutive customer messages) in the range
    unanswered: int  # turns not answered within the threshold (answered late, or still waiting past it)
    risky_replies: int


@dataclass(frozen=True)
class RiskyReply:
    message_id: int
    at: dt.datetime
    userid: str | None
    rep_name: str
    external_userid: str
    customer_name: str
    rule_id: str
    label: str  # the rule's Chinese label, e.g. 不礼貌 / 违规承诺
    phrase: str  # the text that matched
    excerpt: str


Dimension = Literal["rep", "store"]


@dataclass(frozen=True)
class UnansweredMessage:
    """A customer still waiting for a reply past the threshold: for the manager to follow up."""

    message_id: int  # the first message of the customer's unanswered turn
    at: dt.datetime
    waited_business_seconds: int  # at ``now``
    userid: str | None  # the rep answerable
    rep_name: str
    external_userid: str
    customer_name: str
    store_code: str | None
    excerpt: str


def local_range(start: dt.date, end: dt.date, tz: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """[start 00:00, the day after end 00:00) local, in UTC."""
    lo = dt.datetime.combine(start, dt.time(), tzinfo=tz).astimezone(dt.UTC)
    hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=tz).astimezone(dt.UTC)
    return lo, hi


def _hours(settings: CrmSettings, tz: dt.tzinfo) -> BusinessHours:
    return BusinessHours.parse(settings.business_hours, settings.business_days, tz)


def rep_names(conn: Any, userids: Iterable[str]) -> dict[str, str]:
    """employees.name, else users.name, else the userid."""
    from scrm.auth.models import User
    from scrm.contacts.models import Employee

    ids = sorted({u for u in userids if u})
    names: dict[str, str] = {}
    for i in range(0, len(ids), 1000):
        chunk = ids[i:i + 1000]
        for table in (User.__table__, Employee.__table__):  # employees last: it wins
            for uid, name in conn.execute(sa.select(table.c.userid, table.c.name).where(table.c.userid.in_(chunk))):
                if name:
                    names[uid] = name
    return {u: names.get(u, u) for u in ids}


def _names(conn: Any, table: Any, key: Any, ids: Iterable[str]) -> dict[str, str]:
    ids = sorted({i for i in ids if i})
    out: dict[str, str] = {}
    for i in range(0, len(ids), 1000):
        out.update({k: n for k, n in conn.execute(sa.select(key, table.c.name).where(key.in_(ids[i:i + 1000])))
                    if n})
    return out


def quality_table(engine: Engine, *, by: Dimension, start: dt.date, end: dt.date, tz: dt.tzinfo,
                  settings: CrmSettings, now: dt.datetime | None = None,
                  userids: Iterable[str] | None = None) -> list[QualityRow]:
    """One row per rep (``by="rep"``, key "" for events no rep answers for) or per home store
    (``by="store"``, key "" for customers without one), sorted by key. ``userids`` restricts to
    those reps' events (a manager of some reps). ``now`` (None: the current time) ages the turns
    still waiting."""
    now = now or utcnow()
    lo, hi = local_range(start, end, tz)
    key_col = S.c.userid if by == "rep" else S.c.store_code
    query = (sa.select(key_col.label("key"), S.c.kind, S.c.business_seconds, S.c.replied_at, S.c.occurred_at)
             .where(S.c.occurred_at >= lo, S.c.occurred_at < hi))
    if userids is not None:
        wanted = sorted(set(userids))
        if not wanted:
            return []
        query = query.where(S.c.userid.in_(wanted))
    threshold = settings.unanswered_after_minutes * 60
    hours = _hours(settings, tz)
    agg: dict[str, dict[str, Any]] = defaultdict(lambda: {"sessions": 0, "answered": 0, "values": [], "turns": 0,
                                                          "unanswered": 0, "risky": 0})
    with engine.connect() as conn:
        for key, kind, seconds, replied_at, occurred_at in conn.execute(query):
            a = agg[key or ""]
            if kind == ServiceEventKind.first_response:
                a["sessions"] += 1
                if replied_at is not None:
                    a["answered"] += 1
                    a["values"].append(seconds or 0)
            elif kind == ServiceEventKind.wait:
                a["turns"] += 1
                if replied_at is not None:
                    late = (seconds or 0) > threshold
                else:
                    late = business_exceeds(as_utc(occurred_at), now, hours, threshold)
                a["unanswered"] += int(late)
            elif kind == ServiceEventKind.risky:
                a["risky"] += 1
        if by == "rep":
            names = rep_names(conn, agg)
            fallback = NO_REP
        else:
            from scrm.stores.models import Store

            names = _names(conn, Store.__table__, Store.__table__.c.code, agg)
            fallback = NO_STORE
    rows = []
    for key in sorted(agg):
        a = agg[key]
        values = a["values"]
        rows.append(QualityRow(
            key=key, name=names.get(key, key) if key else fallback, sessions=a["sessions"], answered=a["answered"],
            median_first_response_seconds=float(statistics.median(values)) if values else None,
            mean_first_response_seconds=float(statistics.fmean(values)) if values else None,
            customer_turns=a["turns"], unanswered=a["unanswered"], risky_replies=a["risky"]))
    return rows


def _labels(rules_dir: str | Path | None) -> Mapping[str, str]:
    """Phrase rule id -> Chinese label; the ids themselves when the rules do not load."""
    from scrm.crm.lint import RulesError, load_rules

    if rules_dir is None:
        from scrm.config import get_settings

        rules_dir = get_settings().crm.rules_dir
    try:
        return {p.id: p.label for p in load_rules(rules_dir).phrases}
    except RulesError:
        return {}


def risky_replies(engine: Engine, *, start: dt.date, end: dt.date, tz: dt.tzinfo, limit: int = 50, offset: int = 0,
                  userids: Iterable[str] | None = None, rules_dir: str | Path | None = None,
                  labels: Mapping[str, str] | None = None) -> list[RiskyReply]:
    """Replies with a rude or risky phrase in the range, newest first (one per message and rule).
    ``labels`` (rule id -> label) default: the phrase rules in ``rules_dir`` (crm.rules_dir)."""
    from scrm.contacts.models import Customer

    lo, hi = local_range(start, end, tz)
    query = (sa.select(S.c.message_id, S.c.occurred_at, S.c.userid, S.c.external_userid, S.c.rule_id, S.c.phrase,
                       S.c.excerpt)
             .where(S.c.kind == ServiceEventKind.risky, S.c.occurred_at >= lo, S.c.occurred_at < hi)
             .order_by(S.c.occurred_at.desc(), S.c.message_id.desc(), S.c.rule_id)
             .limit(limit).offset(offset))
    if userids is not None:
        wanted = sorted(set(userids))
        if not wanted:
            return []
        query = query.where(S.c.userid.in_(wanted))
    labels = labels if labels is not None else _labels(rules_dir)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        reps = rep_names(conn, (r.userid for r in rows if r.userid))
        C = Customer.__table__
        customers = _names(conn, C, C.c.external_userid, (r.external_userid for r in rows))
    return [RiskyReply(message_id=r.message_id, at=as_utc(r.occurred_at), userid=r.userid,
                       rep_name=reps.get(r.userid, r.userid) if r.userid else NO_REP,
                       external_userid=r.external_userid,
                       customer_name=customers.get(r.external_userid, r.external_userid),
                       rule_id=r.rule_id or "", label=labels.get(r.rule_id or "", r.rule_id or ""),
                       phrase=r.phrase or "", excerpt=r.excerpt) for r in rows]


def unanswered_messages(engine: Engine, *, now: dt.datetime, settings: CrmSettings, tz: dt.tzinfo,
                        userids: Iterable[str] | None = None, since: dt.datetime | None = None,
                        limit: int = 100) -> list[UnansweredMessage]:
    """Customers still waiting for a reply past ``crm.unanswered_after_minutes`` of business time
    at ``now`` (at most one per customer: only the last turn of a timeline can be unanswered),
    longest waiting first. ``since``: only turns begun after it; ``userids``: those reps'."""
    from scrm.contacts.models import Customer

    query = (sa.select(S.c.message_id, S.c.occurred_at, S.c.userid, S.c.external_userid, S.c.store_code, S.c.excerpt)
             .where(S.c.kind == ServiceEventKind.wait, S.c.replied_at.is_(None))
             .order_by(S.c.occurred_at, S.c.message_id))
    if since is not None:
        query = query.where(S.c.occurred_at >= since)
    if userids is not None:
        wanted = sorted(set(userids))
        if not wanted:
            return []
        query = query.where(S.c.userid.in_(wanted))
    threshold = settings.unanswered_after_minutes * 60
    hours = _hours(settings, tz)
    picked = []
    with engine.connect() as conn:
        for r in conn.execute(query):
            at = as_utc(r.occurred_at)
            if business_exceeds(at, now, hours, threshold):
                picked.append((r, at))
        picked.sort(key=lambda p: (-business_seconds(p[1], now, hours), p[1], p[0].message_id))
        picked = picked[:limit]
        reps = rep_names(conn, (r.userid for r, _ in picked if r.userid))
        C = Customer.__table__
        customers = _names(conn, C, C.c.external_userid, (r.external_userid for r, _ in picked))
    return [UnansweredMessage(message_id=r.message_id, at=at, waited_business_seconds=business_seconds(at, now, hours),
                              userid=r.userid, rep_name=reps.get(r.userid, r.userid) if r.userid else NO_REP,
                              external_userid=r.external_userid,
                              customer_name=customers.get(r.external_userid, r.external_userid),
                              store_code=r.store_code, excerpt=r.excerpt) for r, at in picked]
