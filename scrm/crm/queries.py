"""What the CRM pages read: whose customers a person may see, the rep's customer list (search by
name or a partial mobile), a customer's header and merged timeline, and the service-quality
figures for a date range.

Scope: a sales rep sees the customers they follow (an active ``follow_relations`` row with their
userid); a manager sees everyone's (optionally narrowed to one rep); nobody else sees CRM data
(:class:`NotAllowed`). Opening a customer outside one's scope is :class:`NotYourCustomer`.

Built to stay fast at 50,000 customers and 1,000,000 messages on PostgreSQL: the list sorts on
each customer's last message read through ``ix_crm_messages_customer_sent_at`` (one index probe
per customer in scope) and fetches the details of the 50 shown only; the timeline reads one page
of a customer's messages through the same index, never all of them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select, union
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import ColumnElement, Select

from scrm.auth.models import RoleGrant, User
from scrm.auth.roles import Forbidden, Principal, Role
from scrm.config import CrmSettings
from scrm.contacts.models import Customer, Employee, FollowRelation, FollowStatus
from scrm.crm import quality as quality_mod
from scrm.crm import service
from scrm.crm.models import CrmMessage, Direction, FollowUp
from scrm.crm.quality import Dimension, QualityRow, RiskyReply
from scrm.db import as_utc
from scrm.layers.models import CustomerLayer
from scrm.orders.models import CustomerMobile
from scrm.stores.models import Store
from scrm.tags.models import Tag

PER_PAGE = 50  # customers per list page
TIMELINE_PER_PAGE = 100  # messages per timeline page
MAX_QUERY = 64
REVOKE = "revoke"  # the recall rows themselves are not shown: the recalled message says it

# What people type between a mobile's digits (as scrm.orders.mobile accepts them).
_SEPARATORS = re.compile(r"[\s\u3000\-().（）]+")
_MOBILE_TERM = re.compile(r"\+?\d+")


class NotAllowed(Forbidden):
    """This person has no CRM role (neither sales rep nor manager)."""


class NotYourCustomer(Forbidden):
    """A rep asking for a customer they do not follow."""


class BadQuery(ValueError):
    """A search or page number that cannot be read; the message is Chinese."""


# --- tables (Core: one connection per read, typed for mypy) -------------------------------------

FR = FollowRelation.__table__.c
MSG = CrmMessage.__table__.c
CUS = Customer.__table__.c
LAY = CustomerLayer.__table__.c
STO = Store.__table__.c
MOB = CustomerMobile.__table__.c
TAG = Tag.__table__.c
USR = User.__table__.c
EMP = Employee.__table__.c
GRANT = RoleGrant.__table__.c
STORES = Store.__table__


# --- scope ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrmScope:
    """Whose customers a request sees: ``rep`` None = every rep's (a manager without a filter)."""

    viewer: str  # the signed-in userid
    manager: bool
    rep: str | None

    @property
    def sees_all(self) -> bool:
        return self.rep is None


CRM_ROLES = (Role.manager, Role.sales_rep)


def is_manager(principal: Principal) -> bool:
    return principal.has(Role.manager)


def require_manager(principal: Principal) -> None:
    """Service quality is the managers'."""
    if not is_manager(principal):
        raise NotAllowed("服务质量只对店长/区域经理开放")


def scope_for(principal: Principal, rep: str | None = None) -> CrmScope:
    """A manager sees every rep's customers (``rep`` narrows to one); a sales rep their own (the
    ``rep`` filter is ignored); anyone else :class:`NotAllowed`."""
    if principal.has(Role.manager):
        rep = (rep or "").strip()[:64] or None
        return CrmScope(principal.userid, True, rep)
    if principal.has(Role.sales_rep):
        return CrmScope(principal.userid, False, principal.userid)
    raise NotAllowed("客户跟进页面只对销售和店长/区域经理开放")


def _scope_ids(scope: CrmScope) -> Select:
    """The external_userids in scope (each once)."""
    q = select(FR.external_userid).where(FR.status == FollowStatus.active.value)
    if scope.rep is not None:
        q = q.where(FR.userid == scope.rep)
    return q.distinct()


def may_open(engine: Engine, scope: CrmScope, external_userid: str) -> bool:
    """A manager opens any customer (with messages, a relation or neither); a rep only one they follow."""
    if scope.manager:
        return True
    with engine.connect() as conn:
        row = conn.execute(select(FR.id).where(
            FR.external_userid == external_userid, FR.userid == scope.viewer,
            FR.status == FollowStatus.active.value).limit(1)).first()
    return row is not None


def require_customer(engine: Engine, principal: Principal, external_userid: str) -> CrmScope:
    """The scope to read this customer with, or NotAllowed / NotYourCustomer."""
    scope = scope_for(principal)
    if not may_open(engine, scope, external_userid):
        raise NotYourCustomer("这位客户不是你跟进的客户，不能查看或修改")
    return scope


# --- names ---------------------------------------------------------------------------------------


def people_names(conn: Connection, userids: Iterable[str | None]) -> dict[str, str]:
    """userid -> a person's name: the WeCom member's, else the scrm user's, else the userid."""
    wanted = sorted({u for u in userids if u})
    if not wanted:
        return {}
    names = {u: u for u in wanted}
    for userid, name in conn.execute(select(USR.userid, USR.name).where(USR.userid.in_(wanted))).all():
        if name:
            names[userid] = name
    for userid, name in conn.execute(select(EMP.userid, EMP.name).where(EMP.userid.in_(wanted))).all():
        if name:
            names[userid] = name
    return names


def names_for(engine: Engine, userids: Iterable[str | None]) -> dict[str, str]:
    with engine.connect() as conn:
        return people_names(conn, userids)


def rep_choices(engine: Engine) -> list[tuple[str, str]]:
    """(userid, name) of everyone with the sales_rep role, for a manager's rep filter, by name."""
    with engine.connect() as conn:
        ids = conn.execute(select(GRANT.userid).where(GRANT.role == Role.sales_rep.value).distinct()).scalars().all()
        names = people_names(conn, ids)
    return sorted(names.items(), key=lambda kv: (kv[1], kv[0]))


# --- search --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    text: str  # what was typed, trimmed ("" = no search)
    mobile: str | None  # the digits to look for inside mobiles (E.164 form), when it reads as one

    @property
    def active(self) -> bool:
        return bool(self.text)


def parse_search(value: str | None) -> Search:
    """A search box's text: a name part, or a partial mobile (``8000``, ``138 0013``, ``+86 138``,
    ``0086-138``), separators dropped, compared as a substring of the stored ``+86…`` form."""
    text = (value or "").strip()
    if len(text) > MAX_QUERY:
        raise BadQuery(f"搜索内容太长了（最多 {MAX_QUERY} 个字符）")
    compact = _SEPARATORS.sub("", text)
    mobile = None
    if compact and _MOBILE_TERM.fullmatch(compact):
        mobile = "+86" + compact[4:] if compact.startswith("0086") else compact
    return Search(text, mobile)


def _matches(search: Search, rep: str | None, among: Sequence[str] | None = None) -> list[Select]:
    """Queries of the external_userids whose name or remark (``rep``'s own, when given) contains
    the text, or one of whose mobiles (customer_mobiles, or a call's / SMS's) contains the digits;
    ``among`` narrows each to those customers."""
    lowered = search.text.lower()
    remarks = select(FR.external_userid).where(func.lower(FR.remark).contains(lowered, autoescape=True),
                                               FR.status == FollowStatus.active.value)
    if rep is not None:
        remarks = remarks.where(FR.userid == rep)
    parts: list[tuple[Select, Any]] = [
        (select(CUS.external_userid).where(func.lower(CUS.name).contains(lowered, autoescape=True)),
         CUS.external_userid),
        (remarks, FR.external_userid)]
    if search.mobile:
        parts.append((select(MOB.external_userid).where(MOB.mobile.contains(search.mobile, autoescape=True)),
                      MOB.external_userid))
        parts.append((select(MSG.external_userid).where(MSG.mobile.contains(search.mobile, autoescape=True),
                                                        MSG.external_userid.is_not(None)), MSG.external_userid))
    return [q if among is None else q.where(key.in_(list(among))) for q, key in parts]


SMALL_SCOPE = 5000  # a scope this small is searched by its customers' ids (index lookups, no table scans)


def _matching_ids(conn: Connection, scope: CrmScope, search: Search) -> Any:
    """What the search matches in the scope. For one rep's customers (a few thousand at most) the
    matches are looked up by their ids: PostgreSQL would otherwise scan the 1M messages for a
    substring. For every rep's customers, one union over the tables."""
    if scope.rep is not None:
        ids = list(conn.execute(_scope_ids(scope)).scalars().all())
        if len(ids) <= SMALL_SCOPE:
            found: set[str] = set()
            for start in range(0, len(ids), 1000):
                for q in _matches(search, scope.rep, ids[start:start + 1000]):
                    found.update(conn.execute(q).scalars().all())
            return sorted(found)
    return union(*_matches(search, scope.rep))


# --- the customer list ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerRow:
    external_userid: str
    name: str
    remark: str  # the viewer's remark name for them ("" when none)
    layer: str | None
    store_code: str | None
    store_name: str | None
    last_contact: dt.datetime | None  # UTC, the newest message
    reps: list[tuple[str, str]]  # (userid, name) of who follows them
    record: service.RecordView | None  # the newest follow-up record, edits applied

    @property
    def open_questions(self) -> list[dict[str, Any]]:
        return list(self.record.open_questions) if self.record else []

    @property
    def first_open_question(self) -> str:
        qs = self.open_questions
        return str(qs[0].get("text", "")) if qs else ""

    @property
    def next_step(self) -> str:
        return self.record.next_step if self.record else ""


@dataclass(frozen=True)
class CustomerPage:
    rows: list[CustomerRow]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def customer_list(engine: Engine, scope: CrmScope, *, search: Search | None = None, page: int = 1,
                  per_page: int = PER_PAGE) -> CustomerPage:
    """One page of the customers in scope, the most recently contacted first (never contacted
    last), with their layer, home store, followers and newest record."""
    if page < 1:
        raise BadQuery("页码必须是正整数")
    ids = _scope_ids(scope)
    offset = (page - 1) * per_page
    with engine.connect() as conn:
        if search is not None and search.active:
            ids = ids.where(FR.external_userid.in_(_matching_ids(conn, scope, search)))
        sub = ids.subquery("scope")
        eu = sub.c.external_userid
        last = select(func.max(MSG.sent_at)).where(MSG.external_userid == eu).correlate(sub).scalar_subquery()
        total = int(conn.execute(select(func.count()).select_from(sub)).scalar_one())
        ranked = None
        if scope.sees_all and not (search is not None and search.active) and offset + per_page <= RECENT_WALK_MAX:
            ranked = _recent_first(conn, offset, per_page)
        if ranked is None:
            ranked = [(r[0], r[1]) for r in conn.execute(
                select(eu, last.label("last")).order_by(last.desc().nulls_last(), eu)
                .limit(per_page).offset(offset)).all()]
        wanted = [r[0] for r in ranked]
        details = _details(conn, wanted, scope)
    records = service.latest_records(engine, wanted) if wanted else {}
    rows = []
    for external_userid, last_at in ranked:
        d = details[external_userid]
        rows.append(CustomerRow(external_userid=external_userid, name=d["name"], remark=d["remark"],
                                layer=d["layer"], store_code=d["store_code"], store_name=d["store_name"],
                                last_contact=as_utc(last_at), reps=d["reps"],
                                record=records.get(external_userid)))
    return CustomerPage(rows, total, page, per_page)


RECENT_WALK_MAX = 2000  # customers (offset + page) the newest-messages walk is tried for
RECENT_WALK_FACTOR = 20  # messages read per customer wanted


def _recent_first(conn: Connection, offset: int, limit: int) -> list[tuple[str, Any]] | None:
    """A page of every followed customer by last contact, read from the newest messages only
    (``ix_crm_messages_sent_at``) instead of one index probe per customer (50,000 of them for a
    manager): among the newest k messages, a followed customer whose last message is strictly
    newer than the oldest of them is placed exactly (nobody outside them can be newer). None when
    the k messages do not settle the page (deep pages, few messages): the caller sorts all."""
    k = RECENT_WALK_FACTOR * (offset + limit)
    recent = (select(MSG.external_userid, MSG.sent_at).where(MSG.external_userid.is_not(None))
              .order_by(MSG.sent_at.desc()).limit(k).subquery("recent"))
    bound = conn.execute(select(func.min(recent.c.sent_at), func.count())).first()
    if bound is None or not bound[1] or bound[1] < k:
        return None  # fewer messages than that: the full sort is cheap anyway
    followed = select(FR.id).where(FR.external_userid == recent.c.external_userid,
                                   FR.status == FollowStatus.active.value).exists()
    rows = conn.execute(select(recent.c.external_userid, func.max(recent.c.sent_at).label("last"))
                        .where(followed).group_by(recent.c.external_userid)
                        .having(func.max(recent.c.sent_at) > bound[0])
                        .order_by(func.max(recent.c.sent_at).desc(), recent.c.external_userid)).all()
    if len(rows) < offset + limit:
        return None
    return [(r[0], r[1]) for r in rows[offset:offset + limit]]


def _details(conn: Connection, ids: Sequence[str], scope: CrmScope) -> dict[str, dict[str, Any]]:
    """Name, remark, layer, home store and followers of a page of customers (a few IN queries)."""
    out: dict[str, dict[str, Any]] = {i: {"name": "", "remark": "", "layer": None, "store_code": None,
                                          "store_name": None, "reps": []} for i in ids}
    if not ids:
        return out
    for eu, name in conn.execute(select(CUS.external_userid, CUS.name).where(CUS.external_userid.in_(ids))).all():
        out[eu]["name"] = name or ""
    rows = conn.execute(select(LAY.external_userid, LAY.layer, LAY.home_store, STO.name)
                        .select_from(CustomerLayer.__table__.outerjoin(STORES, STO.code == LAY.home_store))
                        .where(LAY.external_userid.in_(ids))).all()
    for eu, layer, store_code, store_name in rows:
        out[eu].update(layer=layer, store_code=store_code, store_name=store_name or store_code)
    follows = conn.execute(select(FR.external_userid, FR.userid, FR.remark)
                           .where(FR.external_userid.in_(ids), FR.status == FollowStatus.active.value)
                           .order_by(FR.userid)).all()
    names = people_names(conn, [f[1] for f in follows])
    for eu, userid, remark in follows:
        out[eu]["reps"].append((userid, names.get(userid, userid)))
        if userid == scope.viewer and remark:
            out[eu]["remark"] = remark
    return out


# --- one customer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Follower:
    userid: str
    name: str
    remark: str


@dataclass(frozen=True)
class CustomerHeader:
    external_userid: str
    name: str
    known: bool  # a customers row exists
    mobiles: list[str]
    layer: str | None
    store_code: str | None
    store_name: str | None
    followers: list[Follower]
    tags: list[str]  # WeCom tag names on their active follow relations, each once


def customer_header(engine: Engine, external_userid: str) -> CustomerHeader:
    with engine.connect() as conn:
        customer = conn.execute(select(CUS.name, CUS.mobiles).where(CUS.external_userid == external_userid)).first()
        stored = conn.execute(select(MOB.mobile).where(MOB.external_userid == external_userid)
                              .order_by(MOB.id)).scalars().all()
        layer_row = conn.execute(
            select(LAY.layer, LAY.home_store, STO.name)
            .select_from(CustomerLayer.__table__.outerjoin(STORES, STO.code == LAY.home_store))
            .where(LAY.external_userid == external_userid)).first()
        follows = conn.execute(select(FR.userid, FR.remark, FR.tag_ids).where(
            FR.external_userid == external_userid, FR.status == FollowStatus.active.value)
            .order_by(FR.userid)).all()
        names = people_names(conn, [f[0] for f in follows])
        tag_ids = list(dict.fromkeys(str(t) for f in follows for t in (f[2] or [])))
        tag_names: dict[str, str] = {}
        if tag_ids:
            tag_names = {t: n for t, n in conn.execute(select(TAG.tag_id, TAG.name).where(
                TAG.tag_id.in_(tag_ids), TAG.deleted.is_(False))).all()}
    mobiles = list(dict.fromkeys([*stored, *((customer[1] or []) if customer else [])]))
    layer, store_code, store_name = (layer_row[0], layer_row[1], layer_row[2]) if layer_row else (None, None, None)
    return CustomerHeader(
        external_userid=external_userid, name=(customer[0] or "") if customer else "", known=customer is not None,
        mobiles=[str(m) for m in mobiles if m], layer=layer, store_code=store_code,
        store_name=store_name or store_code,
        followers=[Follower(u, names.get(u, u), r or "") for u, r, _ in follows],
        tags=list(dict.fromkeys(tag_names[t] for t in tag_ids if t in tag_names)))


@dataclass(frozen=True)
class TimelineItem:
    id: int
    channel: str
    direction: str
    sent_at: dt.datetime  # UTC
    msgtype: str
    content: str  # "" once recalled
    userid: str | None
    who: str  # the rep's name (outbound), the customer's (inbound)
    mobile: str | None
    roomid: str | None
    duration_seconds: int | None
    revoked: bool
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TimelinePage:
    items: list[TimelineItem]  # newest first
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_earlier(self) -> bool:
        return self.page < self.pages


def _shown(external_userid: str) -> ColumnElement[bool]:
    return and_(MSG.external_userid == external_userid, MSG.msgtype != REVOKE)


def timeline(engine: Engine, external_userid: str, *, page: int = 1, per_page: int = TIMELINE_PER_PAGE,
             customer_name: str = "") -> TimelinePage:
    """One page of the customer's chats, calls and SMS in one stream, newest first: a rep opens the
    page for what happened last, and 加载更早的消息 goes back in time. Reads ``per_page`` rows
    through the (external_userid, sent_at) index, whatever the customer's total."""
    if page < 1:
        raise BadQuery("页码必须是正整数")
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(CrmMessage.__table__)
                                 .where(_shown(external_userid))).scalar_one())
        rows = conn.execute(select(CrmMessage.__table__).where(_shown(external_userid))
                            .order_by(MSG.sent_at.desc(), MSG.id.desc())
                            .limit(per_page).offset((page - 1) * per_page)).mappings().all()
        names = people_names(conn, [m["userid"] for m in rows])
    items = []
    for m in rows:
        revoked = m["revoked_at"] is not None
        outbound = m["direction"] == Direction.outbound.value
        items.append(TimelineItem(
            id=int(m["id"]), channel=m["channel"], direction=m["direction"], sent_at=as_utc(m["sent_at"]),
            msgtype=m["msgtype"], content="" if revoked else (m["content"] or ""), userid=m["userid"],
            who=names.get(m["userid"] or "", m["userid"] or "") if outbound else customer_name,
            mobile=m["mobile"], roomid=m["roomid"], duration_seconds=m["duration_seconds"], revoked=revoked,
            payload={} if revoked else dict(m["payload"] or {})))
    return TimelinePage(items, page, per_page, total)


def page_of_message(engine: Engine, external_userid: str, message_id: int,
                    per_page: int = TIMELINE_PER_PAGE) -> int | None:
    """The timeline page (newest first) that shows this message of this customer; None when the
    message is not theirs (or is a recall row)."""
    with engine.connect() as conn:
        sent_at = conn.execute(select(MSG.sent_at).where(_shown(external_userid), MSG.id == message_id)).scalar()
        if sent_at is None:
            return None
        newer = int(conn.execute(select(func.count()).select_from(CrmMessage.__table__).where(
            _shown(external_userid),
            or_(MSG.sent_at > sent_at, and_(MSG.sent_at == sent_at, MSG.id > message_id)))).scalar_one())
    return newer // per_page + 1


def record_view(engine: Engine, external_userid: str, record_id: int) -> service.RecordView | None:
    """One record of this customer with its edit applied (None: not theirs, or rebuilt away):
    its position in records_for's order, then that one record."""
    fu = FollowUp.__table__.c
    with engine.connect() as conn:
        row = conn.execute(select(fu.started_at, fu.first_message_id).where(
            fu.id == record_id, fu.external_userid == external_userid)).first()
        if row is None:
            return None
        newer = int(conn.execute(select(func.count()).select_from(FollowUp.__table__).where(
            fu.external_userid == external_userid,
            or_(fu.started_at > row[0], and_(fu.started_at == row[0], fu.first_message_id > row[1])))).scalar_one())
    views = service.records_for(engine, external_userid, limit=1, offset=newer)
    return views[0] if views and views[0].record.id == record_id else None


# --- service quality ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityView:
    start: dt.date
    end: dt.date
    by: Dimension
    rows: list[QualityRow]
    risky: list[RiskyReply]


def quality_view(engine: Engine, *, start: dt.date, end: dt.date, by: Dimension, tz: dt.tzinfo,
                 settings: CrmSettings, now: dt.datetime, risky_limit: int = 200) -> QualityView:
    """The service-quality table for local days start..end (inclusive), per rep or per home store,
    and the newest risky replies in it (labels from the phrase rules in ``settings.rules_dir``)."""
    rows = quality_mod.quality_table(engine, by=by, start=start, end=end, tz=tz, settings=settings, now=now)
    risky = quality_mod.risky_replies(engine, start=start, end=end, tz=tz, limit=risky_limit,
                                      rules_dir=settings.rules_dir)
    return QualityView(start, end, by, list(rows), list(risky))
