"""Keeping the dashboard's rollups current, incrementally, from the raw tables.

Sources and how each is followed:

- ``link_clicks``, ``orders``, ``order_refunds``: append-only, followed by an id watermark in
  ``kpi_watermarks``. An id is only taken once no transaction that could still commit a smaller
  id is open: on PostgreSQL the highest id is read under a momentary ``SHARE`` lock of the table
  (which waits for the inserts in flight), on SQLite writers are serialised anyway. So a slow
  insert is never skipped by a watermark that passed it.
- ``sop_posts``: statuses change, so it is compared, not followed: posts that are ``sent`` or
  ``confirmed`` and not yet in ``kpi_post_deliveries`` are added, posts there whose status has
  left those (a mass send that came back over quota) are taken out with the figures they were
  added with. Only ledger days from ``post_days`` on are compared (the first refresh compares
  all; afterwards the last ``delivery_horizon_days``).

What lands where (rollup key: local day in ``sop.timezone`` × store × group × template × post):
clicks (a person's, repeats included) and unique clicks (``counted``) on the click's day under its
link's post; delivered posts and the group's customers at delivery on the post's ledger day;
orders and GMV on the paid day under the order's attribution (:mod:`scrm.kpi.attribution`);
**refunds on the order's paid day, under the order's attribution** — so a post's figures settle
to what it earned net, and a day's net GMV is never negative; a refund reported later changes
that past day.

The coarser tables ``kpi_daily_stores`` (day × store), ``kpi_daily_templates`` (day × template)
and ``kpi_daily_groups`` (day × store × group) hold the same figures summed over fewer key columns
(:data:`COARSE`); every delta is added to them in the same statement batch and transaction as to
``kpi_daily``, so they agree with it at every commit and the all-store queries read far fewer rows.

Clicks reach ``link_clicks`` a few seconds late (write-behind), so an order may be attributed
before the click that earned it is stored. Whenever new counted clicks of a customer are rolled
up, that customer's orders paid within the window after them are attributed again; an order
whose attribution changed is moved (its order, GMV, refunds and buyer-day taken off the old key
and put on the new one). Attribution facts other than clicks (a follow relation or group
membership that arrived later, a group moved to another store) are not re-read: ``scrm kpi
rebuild`` recomputes everything.

Safe to run from several processes: every transaction first updates the ``lock`` row of
``kpi_watermarks`` (so refreshes take turns, chunk by chunk), reads the watermarks after that,
and moves them in the same transaction as the figures — idempotent, never double counting."""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Date, Table, any_, bindparam, case, cast, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from scrm.clicks.agents import AgentClass
from scrm.contacts.models import FollowRelation
from scrm.db import as_utc, utcnow
from scrm.groups.models import CustomerGroup, GroupMember, MemberState
from scrm.kpi.attribution import (
    ClickFact,
    CustomerStore,
    Directory,
    LinkFact,
    OrderFacts,
    PostFact,
    attribute,
)
from scrm.kpi.models import (
    KpiBuyerDay,
    KpiDaily,
    KpiDailyGroup,
    KpiDailyStore,
    KpiDailyTemplate,
    KpiPostDelivery,
    KpiRefundApplied,
    KpiWatermark,
    OrderAttributionRow,
)
from scrm.kpi.report import OrderAttribution
from scrm.logs import get_logger
from scrm.orders.models import Order, Refund
from scrm.routing.state import parse_state
from scrm.sop.models import Audience, LinkClick, PostStatus, SopPost, TrackedLink
from scrm.stores.models import Store

log = get_logger(__name__)

METRICS = ("posts_delivered", "members_reached", "clicks", "unique_clicks", "orders", "gmv_fen", "refunds_fen",
           "refunded_orders")
KEY = ("day", "store_code", "chat_id", "template_id", "post_id")
DELIVERED = (PostStatus.sent, PostStatus.confirmed)
STREAMS = ("link_clicks", "orders", "order_refunds")
_IN = 500  # values per IN (...) list (SQLite)
_PG_IN = 10_000  # values per = ANY(array) (PostgreSQL)
DEFAULT_HORIZON_DAYS = 14

Key = tuple[dt.date, str, str, str, int]
# The coarser rollups: ``kpi_daily`` summed over fewer key columns (each a subset of KEY, in order).
COARSE: tuple[tuple[Table, tuple[str, ...]], ...] = (
    (KpiDailyStore.__table__, ("day", "store_code")),
    (KpiDailyTemplate.__table__, ("day", "template_id")),
    (KpiDailyGroup.__table__, ("day", "store_code", "chat_id")),
)
Progress = Callable[[str, int, int], None]  # (stage, done, total)


class RollupError(Exception):
    """The rollups cannot be refreshed (said in one line to the CLI)."""


@dataclass
class RefreshReport:
    clicks: int = 0  # link_clicks rows rolled up
    orders: int = 0  # orders attributed for the first time
    refunds: int = 0
    reattributed: int = 0  # orders moved because a click arrived after them
    posts_added: int = 0  # posts newly counted as delivered
    posts_withdrawn: int = 0  # posts no longer delivered (taken out again)
    skipped: list[str] = field(default_factory=list)  # sources left for the next refresh (a lock wait)
    seconds: float = 0.0


# -- small helpers --------------------------------------------------------------------------------
def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _chunks(values: Sequence[Any], n: int = _IN) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), n):
        yield values[i:i + n]


def _parts(conn: Connection, values: Sequence[Any], n: int | None = None) -> Iterable[Sequence[Any]]:
    """``values`` in parts for ``_among``: large on PostgreSQL (one array parameter), small on
    SQLite (one parameter per value)."""
    return _chunks(values, n or (_PG_IN if conn.dialect.name == "postgresql" else _IN))


def _among(conn: Connection, column: Any, values: Sequence[Any]) -> Any:
    """``column IN values``: on PostgreSQL ``= ANY(array)``, one parameter however many values
    (an IN list of thousands costs more to build and parse than to run)."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(column.type)))
    return column.in_(values)


def local_day(at: dt.datetime, tz: ZoneInfo) -> dt.date:
    return as_utc(at).astimezone(tz).date()


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


def _ensure_watermarks(engine: Engine) -> None:
    t = KpiWatermark.__table__
    with engine.begin() as conn:
        present = set(conn.execute(select(t.c.name)).scalars())
        missing = [n for n in ("lock", "post_days", *STREAMS) if n not in present]
        if missing:
            stmt = _insert(conn)(t).on_conflict_do_nothing(index_elements=["name"])
            conn.execute(stmt, [dict(name=n, value=0, updated_at=utcnow()) for n in missing])


def _lock(conn: Connection) -> None:
    """Take the refresh lock for this transaction (released by its commit or rollback)."""
    t = KpiWatermark.__table__
    conn.execute(update(t).where(t.c.name == "lock").values(holder=_holder(), updated_at=utcnow()))


def _get(conn: Connection, name: str) -> int:
    t = KpiWatermark.__table__
    return int(conn.execute(select(t.c.value).where(t.c.name == name)).scalar_one())


def _set(conn: Connection, name: str, value: int) -> None:
    t = KpiWatermark.__table__
    conn.execute(update(t).where(t.c.name == name).values(value=value, updated_at=utcnow()))


def _settled_max_id(engine: Engine, table: Table) -> int | None:
    """The highest id below which nothing can still appear, or None when that could not be
    learnt quickly (a long insert holds the table: the source waits for the next refresh)."""
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                conn.execute(text(f"LOCK TABLE {table.name} IN SHARE MODE"))
            return int(conn.execute(select(func.max(table.c.id))).scalar() or 0)
    except OperationalError as exc:
        log.warning("kpi_source_busy", table=table.name, error=str(getattr(exc, "orig", exc)).splitlines()[0])
        return None


class _Deltas:
    """Figures to add, summed per key before they are written (one upsert per key)."""

    def __init__(self) -> None:
        self.daily: dict[Key, list[int]] = defaultdict(lambda: [0] * len(METRICS))
        self.buyers: dict[tuple[Key, str], list[int]] = defaultdict(lambda: [0, 0])
        self.negative = False

    def add(self, key: Key, **metrics: int) -> None:
        row = self.daily[key]
        for name, value in metrics.items():
            row[METRICS.index(name)] += value
            if value < 0:
                self.negative = True

    def buyer(self, key: Key, buyer: str, orders: int, gmv_fen: int) -> None:
        row = self.buyers[(key, buyer)]
        row[0] += orders
        row[1] += gmv_fen
        if orders < 0:
            self.negative = True

    def write(self, conn: Connection) -> None:
        ins = _insert(conn)
        if self.daily:
            t = KpiDaily.__table__
            stmt = ins(t)
            stmt = stmt.on_conflict_do_update(index_elements=list(KEY),
                                              set_={m: t.c[m] + stmt.excluded[m] for m in METRICS})
            rows = [dict(zip(KEY, key, strict=True), **dict(zip(METRICS, values, strict=True)))
                    for key, values in self.daily.items() if any(values)]
            for part in _chunks(rows, 1000):
                conn.execute(stmt, list(part))
            for table, cols in COARSE:
                self._write_coarse(conn, table, cols)
        if self.buyers:
            b = KpiBuyerDay.__table__
            bstmt = ins(b)
            bstmt = bstmt.on_conflict_do_update(index_elements=[*KEY, "buyer"],
                                                set_={"orders": b.c.orders + bstmt.excluded.orders,
                                                      "gmv_fen": b.c.gmv_fen + bstmt.excluded.gmv_fen})
            brows = [dict(zip(KEY, key, strict=True), buyer=buyer, orders=v[0], gmv_fen=v[1])
                     for (key, buyer), v in self.buyers.items() if v[0] or v[1]]
            for part in _chunks(brows, 1000):
                conn.execute(bstmt, list(part))
        if self.negative:
            # A move or a withdrawal can leave rows that hold nothing: they would list as empty rows.
            days = sorted({k[0] for k in self.daily} | {k[0][0] for k in self.buyers})
            d, b = KpiDaily.__table__, KpiBuyerDay.__table__
            for part in _parts(conn, days):
                conn.execute(delete(b).where(_among(conn, b.c.day, part), b.c.orders <= 0))
                conn.execute(delete(d).where(_among(conn, d.c.day, part), *[d.c[m] == 0 for m in METRICS]))
                for table, _cols in COARSE:
                    conn.execute(delete(table).where(_among(conn, table.c.day, part),
                                                     *[table.c[m] == 0 for m in METRICS]))

    def _write_coarse(self, conn: Connection, table: Table, cols: tuple[str, ...]) -> None:
        """The same deltas summed over ``cols`` and added to ``table`` (in this transaction, so the
        coarse table moves with ``kpi_daily``)."""
        at = [KEY.index(c) for c in cols]
        sums: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(METRICS))
        for key, values in self.daily.items():
            row = sums[tuple(key[i] for i in at)]
            for i, v in enumerate(values):
                row[i] += v
        stmt = _insert(conn)(table)
        stmt = stmt.on_conflict_do_update(index_elements=list(cols),
                                          set_={m: table.c[m] + stmt.excluded[m] for m in METRICS})
        rows = [dict(zip(cols, key, strict=True), **dict(zip(METRICS, values, strict=True)))
                for key, values in sorted(sums.items()) if any(values)]
        for part in _chunks(rows, 1000):
            conn.execute(stmt, list(part))


# -- attribution with facts from the database ----------------------------------------------------
def _from_names(raw: str | None) -> tuple[str | None, int | None, str | None]:
    """(a possible link code, post id, chat id) a ``from`` parameter may name, for loading."""
    if not raw:
        return None, None, None
    raw = raw.strip()
    low = raw.lower()
    post: int | None = None
    chat: str | None = None
    for prefix in ("post:", "post-"):
        if low.startswith(prefix) and raw[len(prefix):].isdigit():
            post = int(raw[len(prefix):])
    if low.startswith("chat:"):
        chat = raw[5:]
    return raw, post, chat


def _order_facts(row: Any) -> OrderFacts:
    return OrderFacts(order_pk=row.id, source=row.source, order_id=row.order_id, paid_at=as_utc(row.paid_at),
                      amount_fen=row.amount_fen, external_userid=row.external_userid, link_code=row.link_code,
                      from_param=row.from_param)


_ORDER_COLUMNS = tuple(Order.__table__.c[n] for n in ("id", "source", "order_id", "paid_at", "amount_fen",
                                                      "external_userid", "link_code", "from_param"))


def attribute_orders(conn: Connection, orders: Sequence[OrderFacts], *, tz: ZoneInfo,
                     window: dt.timedelta) -> list[OrderAttribution]:
    """Attribute ``orders`` with the facts the database has now (clicks, links, posts, groups,
    stores, the customers' QR codes and groups)."""
    if not orders:
        return []
    customers = sorted({o.external_userid for o in orders if o.external_userid})
    lc, tl, sp = LinkClick.__table__.c, TrackedLink.__table__.c, SopPost.__table__.c
    g, gm, fr = CustomerGroup.__table__.c, GroupMember.__table__.c, FollowRelation.__table__.c

    r: Any  # rows of several shapes below
    clicks: dict[str, list[ClickFact]] = defaultdict(list)
    if customers:
        lo = min(o.paid_at for o in orders) - window
        hi = max(o.paid_at for o in orders)
        for part in _parts(conn, customers):
            for r in conn.execute(select(lc.id, lc.code, lc.clicked_at, lc.counted, lc.external_userid).where(
                    _among(conn, lc.external_userid, part), lc.counted.is_(True), lc.clicked_at > lo,
                    lc.clicked_at <= hi)):
                clicks[r.external_userid].append(ClickFact(r.id, r.code, as_utc(r.clicked_at), bool(r.counted),
                                                           r.external_userid))

    codes = {c.code for cs in clicks.values() for c in cs} | {o.link_code for o in orders if o.link_code}
    post_ids: set[int] = set()
    chat_ids: set[str] = set()
    for o in orders:
        raw, post, chat = _from_names(o.from_param)
        if raw:
            codes.add(raw[:24])
        if post is not None:
            post_ids.add(post)
        if chat:
            chat_ids.add(chat)
    links: dict[str, LinkFact] = {}
    for part in _parts(conn, sorted(codes)):
        # A 1:1 journey message's link is no group's: its chat (a customer) never becomes a group key.
        for r in conn.execute(select(tl.code, tl.post_id, tl.chat_id, tl.template_id, sp.audience)
                              .select_from(TrackedLink.__table__.outerjoin(SopPost.__table__, sp.id == tl.post_id))
                              .where(_among(conn, tl.code, part))):
            links[r.code] = LinkFact(r.code, r.post_id, "" if r.audience == Audience.customer else r.chat_id,
                                     r.template_id)
    post_ids |= {link.post_id for link in links.values()}
    posts: dict[int, PostFact] = {}
    for part in _parts(conn, sorted(post_ids)):
        for r in conn.execute(select(sp.id, sp.chat_id, sp.template_id, sp.sent_at, sp.scheduled_for, sp.audience)
                              .where(_among(conn, sp.id, part))):
            posts[r.id] = PostFact(r.id, "" if r.audience == Audience.customer else r.chat_id, r.template_id,
                                   as_utc(r.sent_at or r.scheduled_for))

    # The customers' stores: the earliest store QR code that added them, else their earliest store group.
    stores = {r.code: r.name for r in conn.execute(select(Store.__table__.c.code, Store.__table__.c.name))}
    qr: dict[str, tuple[Any, int, CustomerStore]] = {}
    in_group: dict[str, tuple[Any, int, CustomerStore]] = {}
    for part in _parts(conn, customers):
        for r in conn.execute(select(fr.id, fr.external_userid, fr.state, fr.added_at).where(
                _among(conn, fr.external_userid, part), fr.state.is_not(None))):
            state = parse_state(r.state)
            if state is None or state.store_code not in stores:
                continue
            rank = (as_utc(r.added_at) or dt.datetime.max.replace(tzinfo=dt.UTC), r.id)
            if r.external_userid not in qr or rank < qr[r.external_userid][:2]:
                qr[r.external_userid] = (*rank, CustomerStore(state.store_code, "qr", r.state))
        for r in conn.execute(select(gm.id, gm.member_id, gm.chat_id, gm.joined_at, g.store_code)
                              .join(CustomerGroup.__table__, g.chat_id == gm.chat_id)
                              .where(_among(conn, gm.member_id, part), gm.state == MemberState.member,
                                     g.store_code.is_not(None))):
            rank = (as_utc(r.joined_at) or dt.datetime.max.replace(tzinfo=dt.UTC), r.id)
            if r.member_id not in in_group or rank < in_group[r.member_id][:2]:
                in_group[r.member_id] = (*rank, CustomerStore(r.store_code, "group", r.chat_id))
            chat_ids.add(r.chat_id)

    chat_ids |= {link.chat_id for link in links.values()} | {p.chat_id for p in posts.values()}
    group_stores: dict[str, str | None] = {}
    group_names: dict[str, str] = {}
    for part in _parts(conn, sorted(chat_ids)):
        for r in conn.execute(select(g.chat_id, g.store_code, g.name).where(_among(conn, g.chat_id, part))):
            group_stores[r.chat_id] = r.store_code
            group_names[r.chat_id] = r.name
    directory = Directory(links=links, posts=posts, group_stores=group_stores, group_names=group_names,
                          stores=stores)
    out = []
    for o in orders:
        ext = o.external_userid
        cs = None
        if ext:
            found = qr.get(ext) or in_group.get(ext)
            cs = found[2] if found else None
        out.append(attribute(o, clicks.get(ext, []) if ext else [], cs, directory, window=window, tz=tz))
    return out


def _key_of(day: dt.date, a: Any) -> Key:
    return (day, a.store_code or "", a.chat_id or "", a.template_id or "", a.post_id or 0)


def _record_new(conn: Connection, orders: Sequence[OrderFacts], atts: Sequence[OrderAttribution],
                tz: ZoneInfo, deltas: _Deltas) -> None:
    rows = []
    now = utcnow()
    for o, a in zip(orders, atts, strict=True):
        day = local_day(o.paid_at, tz)
        buyer = o.external_userid or f"order:{o.order_pk}"
        rows.append(dict(order_pk=o.order_pk, source=o.source, order_id=o.order_id, rule=str(a.rule),
                         store_code=a.store_code, chat_id=a.chat_id, post_id=a.post_id, template_id=a.template_id,
                         link_code=a.link_code, click_id=a.click_id, click_at=a.click_at, reason=a.reason, day=day,
                         paid_at=o.paid_at, amount_fen=o.amount_fen, refunded_fen=0, buyer=buyer, updated_at=now))
        key = _key_of(day, a)
        deltas.add(key, orders=1, gmv_fen=o.amount_fen)
        deltas.buyer(key, buyer, 1, o.amount_fen)
    for part in _chunks(rows, 1000):
        conn.execute(OrderAttributionRow.__table__.insert(), list(part))


def _attribute_pks(conn: Connection, pks: Sequence[int], tz: ZoneInfo, window: dt.timedelta,
                   deltas: _Deltas) -> int:
    """Attribute the orders ``pks`` that have no attribution yet; returns how many."""
    o, a = Order.__table__.c, OrderAttributionRow.__table__.c
    facts: list[OrderFacts] = []
    for part in _parts(conn, sorted(pks)):
        facts += [_order_facts(r) for r in conn.execute(
            select(*_ORDER_COLUMNS).outerjoin(OrderAttributionRow.__table__, a.order_pk == o.id)
            .where(_among(conn, o.id, part), a.order_pk.is_(None)).order_by(o.id))]
    _record_new(conn, facts, attribute_orders(conn, facts, tz=tz, window=window), tz, deltas)
    return len(facts)


def reattribute(conn: Connection, order_pks: Sequence[int], tz: ZoneInfo, window: dt.timedelta,
                deltas: _Deltas) -> int:
    """Attribute already attributed orders again; move those whose attribution changed."""
    o, a = Order.__table__.c, OrderAttributionRow.__table__
    stored: dict[int, Any] = {}
    facts: list[OrderFacts] = []
    for part in _parts(conn, sorted(set(order_pks))):
        for r in conn.execute(select(*_ORDER_COLUMNS, a.c.store_code.label("a_store"), a.c.chat_id.label("a_chat"),
                                     a.c.template_id.label("a_template"), a.c.post_id.label("a_post"),
                                     a.c.click_id.label("a_click"), a.c.rule.label("a_rule"), a.c.day.label("a_day"),
                                     a.c.refunded_fen.label("a_refunded"), a.c.buyer.label("a_buyer"))
                              .join(a, a.c.order_pk == o.id).where(_among(conn, o.id, part))):
            stored[r.id] = r
            facts.append(_order_facts(r))
    moved = 0
    now = utcnow()
    for f, new in zip(facts, attribute_orders(conn, facts, tz=tz, window=window), strict=True):
        old = stored[f.order_pk]
        if (old.a_rule, old.a_store, old.a_chat, old.a_template, old.a_post, old.a_click) == (
                str(new.rule), new.store_code, new.chat_id, new.template_id, new.post_id, new.click_id):
            continue
        old_key = (old.a_day, old.a_store or "", old.a_chat or "", old.a_template or "", old.a_post or 0)
        new_key = _key_of(old.a_day, new)
        refunded = old.a_refunded
        for key, sign in ((old_key, -1), (new_key, 1)):
            deltas.add(key, orders=sign, gmv_fen=sign * f.amount_fen, refunds_fen=sign * refunded,
                       refunded_orders=sign * (1 if refunded else 0))
            deltas.buyer(key, old.a_buyer, sign, sign * f.amount_fen)
        conn.execute(update(a).where(a.c.order_pk == f.order_pk).values(
            rule=str(new.rule), store_code=new.store_code, chat_id=new.chat_id, post_id=new.post_id,
            template_id=new.template_id, link_code=new.link_code, click_id=new.click_id, click_at=new.click_at,
            reason=new.reason, updated_at=now))
        moved += 1
        log.info("order_reattributed", order_pk=f.order_pk, order_id=f.order_id, rule=str(new.rule),
                 post_id=new.post_id, was_rule=old.a_rule, was_post_id=old.a_post)
    return moved


# -- the streams ----------------------------------------------------------------------------------
def _roll_clicks(conn: Connection, lo: int, hi: int, tz: ZoneInfo, window: dt.timedelta, deltas: _Deltas,
                 report: RefreshReport) -> None:
    lc, tl, g, sp = LinkClick.__table__.c, TrackedLink.__table__.c, CustomerGroup.__table__.c, SopPost.__table__.c
    in_range = (lc.id > lo, lc.id <= hi)
    joined = (LinkClick.__table__.outerjoin(TrackedLink.__table__, tl.code == lc.code)
              .outerjoin(CustomerGroup.__table__, g.chat_id == tl.chat_id))
    # A click on a 1:1 journey message's link counts for its post and journey, under no group
    # (its chat is a customer, never a group key).
    link_chat = case((sp.audience == Audience.customer.value, ""), else_=tl.chat_id).label("chat_id")
    person = func.sum(case((lc.agent == str(AgentClass.PERSON), 1), else_=0)).label("clicks")
    counted = func.sum(case((lc.counted.is_(True), 1), else_=0)).label("unique_clicks")
    r: Any
    if conn.dialect.name == "postgresql":
        # Summed in the database per link and local day (the zone's rules, exactly): a chunk comes
        # back as a few thousand rows instead of every click; the links are then looked up by code
        # (an index lookup per code, never a scan of tracked_links).
        day = cast(func.timezone(tz.key, lc.clicked_at), Date).label("day")
        sums = conn.execute(select(lc.code, day, person, counted, func.count().label("n")).where(*in_range)
                            .group_by(lc.code, day)).all()
        links: dict[str, Any] = {}
        for part in _parts(conn, sorted({x.code for x in sums})):
            for r in conn.execute(select(tl.code, tl.post_id, link_chat, tl.template_id, g.store_code)
                                  .select_from(TrackedLink.__table__.outerjoin(CustomerGroup.__table__,
                                                                               g.chat_id == tl.chat_id)
                                               .outerjoin(SopPost.__table__, sp.id == tl.post_id))
                                  .where(_among(conn, tl.code, part))):
                links[r.code] = r
        for x in sums:
            link = links.get(x.code)
            key = ((x.day, link.store_code or "", link.chat_id, link.template_id, link.post_id) if link is not None
                   else (x.day, "", "", "", 0))
            deltas.add(key, clicks=int(x.clicks), unique_clicks=int(x.unique_clicks))
            report.clicks += int(x.n)
    else:
        # SQLite has no zone rules: the local day is taken here, click by click.
        for r in conn.execute(select(lc.clicked_at, lc.agent, lc.counted, g.store_code, link_chat, tl.template_id,
                                     tl.post_id)
                              .select_from(joined.outerjoin(SopPost.__table__, sp.id == tl.post_id)).where(*in_range)):
            key = (local_day(r.clicked_at, tz), r.store_code or "", r.chat_id or "", r.template_id or "",
                   r.post_id or 0)
            deltas.add(key, clicks=1 if r.agent == AgentClass.PERSON else 0, unique_clicks=1 if r.counted else 0)
            report.clicks += 1
    # Orders these clicks may have earned, already attributed without them (the click came late):
    # the customer's attributed orders paid from their first counted click here to a window after the last.
    o, a = Order.__table__.c, OrderAttributionRow.__table__.c
    customers = (select(lc.external_userid, func.min(lc.clicked_at).label("first"),
                        func.max(lc.clicked_at).label("last"))
                 .where(*in_range, lc.counted.is_(True), lc.external_userid.is_not(None))
                 .group_by(lc.external_userid).subquery())
    pks = [r.id for r in conn.execute(
        select(o.id, o.paid_at, customers.c.last)
        .select_from(Order.__table__.join(customers, o.external_userid == customers.c.external_userid)
                     .join(OrderAttributionRow.__table__, a.order_pk == o.id))
        .where(o.paid_at >= customers.c.first))
        if as_utc(r.paid_at) < as_utc(r.last) + window]
    if pks:
        report.reattributed += reattribute(conn, pks, tz, window, deltas)


def _roll_orders(conn: Connection, lo: int, hi: int, tz: ZoneInfo, window: dt.timedelta, deltas: _Deltas,
                 report: RefreshReport) -> None:
    o, a = Order.__table__.c, OrderAttributionRow.__table__.c
    pks = list(conn.execute(select(o.id).outerjoin(OrderAttributionRow.__table__, a.order_pk == o.id)
                            .where(o.id > lo, o.id <= hi, a.order_pk.is_(None))).scalars())
    report.orders += _attribute_pks(conn, pks, tz, window, deltas)


def _roll_refunds(conn: Connection, lo: int, hi: int, tz: ZoneInfo, window: dt.timedelta, deltas: _Deltas,
                  report: RefreshReport) -> None:
    r, ap, a = Refund.__table__.c, KpiRefundApplied.__table__.c, OrderAttributionRow.__table__
    refunds = conn.execute(select(r.id, r.order_pk, r.amount_fen)
                           .outerjoin(KpiRefundApplied.__table__, ap.refund_pk == r.id)
                           .where(r.id > lo, r.id <= hi, ap.refund_pk.is_(None)).order_by(r.id)).all()
    if not refunds:
        return
    pks = sorted({x.order_pk for x in refunds})
    report.orders += _attribute_pks(conn, pks, tz, window, deltas)  # refunds of orders not rolled up yet
    attributions: dict[int, Any] = {}
    for part in _parts(conn, pks):
        for row in conn.execute(select(a).where(_among(conn, a.c.order_pk, part))):
            attributions[row.order_pk] = row
    refunded = {pk: row.refunded_fen for pk, row in attributions.items()}
    for x in refunds:
        row = attributions[x.order_pk]
        deltas.add(_key_of(row.day, row), refunds_fen=x.amount_fen, refunded_orders=0 if refunded[x.order_pk] else 1)
        refunded[x.order_pk] += x.amount_fen
    for pk, total in refunded.items():
        if total != attributions[pk].refunded_fen:
            conn.execute(update(a).where(a.c.order_pk == pk).values(refunded_fen=total))
    conn.execute(KpiRefundApplied.__table__.insert(),
                 [dict(refund_pk=x.id, order_pk=x.order_pk, amount_fen=x.amount_fen) for x in refunds])
    report.refunds += len(refunds)


_STREAM_TABLES: dict[str, Table] = {"link_clicks": LinkClick.__table__, "orders": Order.__table__,
                                    "order_refunds": Refund.__table__}
_ROLLERS = {"link_clicks": _roll_clicks, "orders": _roll_orders, "order_refunds": _roll_refunds}


def _follow(engine: Engine, name: str, upto: int, chunk: int, tz: ZoneInfo, window: dt.timedelta,
            report: RefreshReport, progress: Progress | None) -> None:
    """Roll up ``name`` from its watermark to ``upto``, one locked transaction per chunk of ids."""
    start: int | None = None
    while True:
        with engine.begin() as conn:
            _lock(conn)
            done = _get(conn, name)
            if start is None:
                start = done
            if done >= upto:
                return
            hi = min(done + chunk, upto)
            deltas = _Deltas()
            _ROLLERS[name](conn, done, hi, tz, window, deltas, report)
            deltas.write(conn)
            _set(conn, name, hi)
        if progress is not None:
            progress(name, hi - start, upto - start)


class _Audience:
    """A group's customers over time, from its members' join and leave times: how many were in the
    group at a moment is two binary searches (a post's "members reached")."""

    def __init__(self, members: Iterable[Any]):
        never = dt.datetime.min.replace(tzinfo=dt.UTC)
        joins, leaves = [], []
        for m in members:
            joined, left = as_utc(m.joined_at) or never, as_utc(m.left_at)
            if m.state == MemberState.member:
                joins.append(joined)
            elif left is not None and left >= joined:
                joins.append(joined)
                leaves.append(left)
        self.joins, self.leaves = sorted(joins), sorted(leaves)

    def at(self, moment: dt.datetime | None) -> int:
        if moment is None:
            return len(self.joins) - len(self.leaves)
        return bisect_right(self.joins, moment) - bisect_right(self.leaves, moment)


def _roll_deliveries(engine: Engine, tz: ZoneInfo, horizon_days: int, chats_per_batch: int, report: RefreshReport,
                     progress: Progress | None) -> None:
    p, d, g, gm = SopPost.__table__.c, KpiPostDelivery.__table__.c, CustomerGroup.__table__.c, GroupMember.__table__.c
    today = utcnow().astimezone(tz).date()
    with engine.begin() as conn:
        _lock(conn)
        first = _get(conn, "post_days")
        first_day = dt.date.fromordinal(first) if first > 0 else dt.date.min
        # Group posts only: a 1:1 journey message reaches a customer, not a group's members.
        chats = sorted(conn.execute(select(p.chat_id).where(p.day >= first_day, p.audience == Audience.group)
                                    .distinct()).scalars())
    delivered = [str(s) for s in DELIVERED]
    for i in range(0, len(chats), chats_per_batch):
        batch = chats[i:i + chats_per_batch]
        with engine.begin() as conn:
            _lock(conn)
            posts = conn.execute(
                select(p.id, p.day, p.chat_id, p.template_id, p.sent_at, p.confirmed_at, p.scheduled_for,
                       g.store_code)
                .select_from(SopPost.__table__.outerjoin(CustomerGroup.__table__, g.chat_id == p.chat_id)
                             .outerjoin(KpiPostDelivery.__table__, d.post_id == p.id))
                .where(_among(conn, p.chat_id, batch), p.status.in_(delivered), p.day >= first_day,
                       p.audience == Audience.group, d.post_id.is_(None))).all()
            gone = conn.execute(
                select(KpiPostDelivery.__table__).join(SopPost.__table__, p.id == d.post_id)
                .where(_among(conn, d.chat_id, batch), d.day >= first_day, p.status.not_in(delivered))).all()
            if not posts and not gone:
                continue
            audiences: dict[str, _Audience] = {}
            if posts:
                members: dict[str, list[Any]] = defaultdict(list)
                for m in conn.execute(select(gm.chat_id, gm.joined_at, gm.left_at, gm.state)
                                      .where(_among(conn, gm.chat_id, sorted({x.chat_id for x in posts})),
                                             gm.member_type == 2)):
                    members[m.chat_id].append(m)
                audiences = {chat: _Audience(ms) for chat, ms in members.items()}
            deltas = _Deltas()
            rows = []
            for x in posts:
                at = as_utc(x.sent_at or x.confirmed_at or x.scheduled_for)
                audience = audiences.get(x.chat_id)
                n = audience.at(at) if audience is not None else 0
                rows.append(dict(post_id=x.id, day=x.day, store_code=x.store_code or "", chat_id=x.chat_id,
                                 template_id=x.template_id, members=n, delivered_at=at))
                deltas.add((x.day, x.store_code or "", x.chat_id, x.template_id, x.id), posts_delivered=1,
                           members_reached=n)
            for part in _chunks(rows, 5000):
                conn.execute(KpiPostDelivery.__table__.insert(), list(part))
            # Posts counted as delivered that no longer are (a mass send found over quota): taken out.
            for y in gone:
                deltas.add((y.day, y.store_code, y.chat_id, y.template_id, y.post_id), posts_delivered=-1,
                           members_reached=-y.members)
            for part in _parts(conn, [y.post_id for y in gone]):
                conn.execute(delete(KpiPostDelivery.__table__).where(_among(conn, d.post_id, part)))
            deltas.write(conn)
        report.posts_added += len(posts)
        report.posts_withdrawn += len(gone)
        if progress is not None:
            progress("sop_posts", min(i + chats_per_batch, len(chats)), len(chats))
    with engine.begin() as conn:
        _lock(conn)
        _set(conn, "post_days", (today - dt.timedelta(days=horizon_days)).toordinal())


# -- the entry points -----------------------------------------------------------------------------
def refresh_rollups(engine: Engine, *, tz: ZoneInfo | str, window: dt.timedelta,
                    delivery_horizon_days: int = DEFAULT_HORIZON_DAYS, chunk: int = 50_000,
                    progress: Progress | None = None) -> RefreshReport:
    """Bring the rollups up to what the database holds now (see the module docstring). Safe to
    call from several processes at once and as often as wanted; the scheduler calls it every
    ``kpi.rollup_interval_seconds``."""
    tz = ZoneInfo(tz) if isinstance(tz, str) else tz
    if window <= dt.timedelta(0):
        raise RollupError("the attribution window must be positive")
    began = time.monotonic()
    report = RefreshReport()
    _ensure_watermarks(engine)
    # Clicks first: an order attributed in this refresh then sees them; refunds after their orders.
    for name in STREAMS:
        upto = _settled_max_id(engine, _STREAM_TABLES[name])
        if upto is None:
            report.skipped.append(name)
            continue
        _follow(engine, name, upto, chunk if name == "link_clicks" else max(1, chunk // 5), tz, window, report,
                progress)
    _roll_deliveries(engine, tz, delivery_horizon_days, 200, report, progress)
    report.seconds = time.monotonic() - began
    log.info("kpi_rollups_refreshed", clicks=report.clicks, orders=report.orders, refunds=report.refunds,
             reattributed=report.reattributed, posts_added=report.posts_added,
             posts_withdrawn=report.posts_withdrawn, skipped=report.skipped, seconds=round(report.seconds, 3))
    return report


def rebuild_rollups(engine: Engine, *, tz: ZoneInfo | str, window: dt.timedelta,
                    progress: Progress | None = None, chunk: int = 50_000) -> RefreshReport:
    """Forget every rollup and attribution and roll everything up again (repairs, or after the
    window, a group's store or customers' stores changed). The figures read low until it ends."""
    _ensure_watermarks(engine)
    with engine.begin() as conn:
        _lock(conn)
        for model in (KpiDaily, KpiBuyerDay, KpiPostDelivery, KpiRefundApplied, OrderAttributionRow):
            conn.execute(delete(model.__table__))
        for table, _cols in COARSE:
            conn.execute(delete(table))
        t = KpiWatermark.__table__
        conn.execute(update(t).where(t.c.name != "lock").values(value=0, updated_at=utcnow()))
    log.info("kpi_rollups_cleared")
    return refresh_rollups(engine, tz=tz, window=window, chunk=chunk, progress=progress)


def watermarks(engine: Engine) -> dict[str, int]:
    """Where each source stands (for ``scrm kpi status`` and tests)."""
    t = KpiWatermark.__table__
    with engine.connect() as conn:
        return {r.name: int(r.value) for r in conn.execute(select(t.c.name, t.c.value))}


__all__ = ["COARSE", "RefreshReport", "RollupError", "attribute_orders", "rebuild_rollups", "refresh_rollups",
           "reattribute", "watermarks"]
