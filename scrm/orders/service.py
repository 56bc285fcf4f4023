"""Recording orders and refunds, matching each order to a customer, and the mobile index.

Idempotent by id: the same order (or refund) reported again changes nothing and says so; the same
id with different content is refused (:class:`OrderConflict`) naming what differs. A refund raises
the order's ``refunded_fen`` through one conditional UPDATE (``... WHERE refunded_fen + x <=
amount_fen``), so partial refunds racing each other never refund more than was paid.

Matching precedence: the given external_userid when it is a known customer, else the unionid of a
known customer, else the normalised mobile through ``customer_mobiles`` (a mobile shared by two
customers matches nobody: money is never put on a guess). An order that matches nobody is kept with
``external_userid`` NULL and counted as unmatched."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from scrm.contacts.models import Customer, FollowRelation
from scrm.db import as_utc, utcnow
from scrm.logs import get_logger
from scrm.orders.mobile import NotAMobile, normalise_mobile
from scrm.orders.models import CustomerMobile, MatchedBy, MobileSource, Order, Refund
from scrm.orders.schema import OrderIn, RefundIn

log = get_logger(__name__)


# -- errors ---------------------------------------------------------------------------------------
class OrderError(Exception):
    """A refusal the shop reads (English); ``kind`` becomes the HTTP status in the router."""

    kind = "conflict"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class OrderConflict(OrderError):
    """The id is already recorded with different content."""


class RefundExceedsOrder(OrderError):
    """The refunds would add up to more than the order's amount."""


class OrderNotFound(OrderError):
    kind = "not_found"


# -- matching -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Match:
    external_userid: str | None
    matched_by: MatchedBy | None


def match_customer(conn: Connection, *, external_userid: str | None, unionid: str | None,
                   mobile: str | None) -> Match:
    """Who the order belongs to, by the precedence in the module docstring."""
    c = Customer.__table__.c
    if external_userid and conn.execute(select(c.external_userid).where(c.external_userid == external_userid)).first():
        return Match(external_userid, MatchedBy.external_userid)
    if unionid:
        found = conn.execute(select(c.external_userid).where(c.unionid == unionid)
                             .order_by(c.external_userid).limit(1)).scalar()
        if found:
            return Match(found, MatchedBy.unionid)
    if mobile:
        m = CustomerMobile.__table__.c
        owners = conn.execute(select(m.external_userid).where(m.mobile == mobile).distinct().limit(2)).scalars().all()
        if len(owners) == 1:
            return Match(owners[0], MatchedBy.mobile)
        if len(owners) > 1:
            log.warning("order_mobile_ambiguous", customers=list(owners))
    return Match(None, None)


def index_mobiles(conn: Connection, external_userid: str, mobiles: Iterable[str], source: MobileSource) -> int:
    """Add the customer's mobiles to ``customer_mobiles`` (normalised; non-mobiles skipped, present
    pairs kept as they are). Returns how many pairs were new."""
    wanted = set()
    for raw in mobiles:
        try:
            wanted.add(normalise_mobile(raw))
        except NotAMobile:
            continue
    added = 0
    table = CustomerMobile.__table__
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    for mobile in sorted(wanted):
        stmt = insert(table).values(mobile=mobile, external_userid=external_userid, source=str(source),
                                    created_at=utcnow())
        new = stmt.on_conflict_do_nothing(index_elements=["mobile", "external_userid"]).returning(table.c.id)
        added += len(conn.execute(new).all())
    return added


@dataclass
class ReindexReport:
    customers: int
    added: int


def reindex_mobiles(engine: Engine) -> ReindexReport:
    """Backfill ``customer_mobiles`` from every customer's mobiles and follow relations'
    remark_mobiles, for contacts stored before the sync and callbacks kept the index current."""
    c, f = Customer.__table__.c, FollowRelation.__table__.c
    mobiles: dict[str, set[str]] = {}
    with engine.begin() as conn:
        for ext, values in conn.execute(select(c.external_userid, c.mobiles)):
            mobiles.setdefault(ext, set()).update(values or [])
        for ext, values in conn.execute(select(f.external_userid, f.remark_mobiles)):
            mobiles.setdefault(ext, set()).update(values or [])
        added = sum(index_mobiles(conn, ext, values, MobileSource.remark_mobiles)
                    for ext, values in mobiles.items() if values)
    log.info("mobiles_reindexed", customers=len(mobiles), added=added)
    return ReindexReport(customers=len(mobiles), added=added)


# -- orders ---------------------------------------------------------------------------------------
@dataclass
class OrderOutcome:
    order_id: str
    created: bool  # False: the same order was already recorded
    external_userid: str | None
    matched_by: str | None

    @property
    def matched(self) -> bool:
        return self.external_userid is not None


def _content(o: OrderIn) -> dict[str, Any]:
    """The fields that make an order the same order (compared on a repeated id)."""
    return {"amount_fen": o.amount_fen, "paid_at": as_utc(o.paid_at), "items": o.items, "store_code": o.store_code,
            "link_code": o.link_code, "from": o.from_param, "external_userid": o.external_userid,
            "unionid": o.unionid, "mobile": o.mobile}


def _stored_content(row: Any) -> dict[str, Any]:
    return {"amount_fen": row.amount_fen, "paid_at": as_utc(row.paid_at), "items": row.items,
            "store_code": row.store_code, "link_code": row.link_code, "from": row.from_param,
            "external_userid": row.given_external_userid, "unionid": row.given_unionid, "mobile": row.given_mobile}


def _differences(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    return [f"{k} was {stored[k]!r}, now {given[k]!r}" if k != "items" else "items differ"
            for k in stored if stored[k] != given[k]]


def _existing(conn: Connection, source: str, order_id: str) -> Any:
    o = Order.__table__.c
    return conn.execute(select(Order.__table__).where(o.source == source, o.order_id == order_id)).first()


def _same_or_conflict(row: Any, order: OrderIn) -> OrderOutcome:
    diff = _differences(_stored_content(row), _content(order))
    if diff:
        raise OrderConflict(f"order {order.order_id!r} is already recorded with different content: "
                            + "; ".join(diff) + " (an order id is never reused; report a refund instead)")
    return OrderOutcome(order.order_id, False, row.external_userid, row.matched_by)


def put_order(conn: Connection, order: OrderIn, *, mobile_source: MobileSource = MobileSource.order) -> OrderOutcome:
    """Record ``order`` inside the caller's transaction, or say it is already there (or conflicts)."""
    row = _existing(conn, order.source, order.order_id)
    if row is not None:
        return _same_or_conflict(row, order)
    match = match_customer(conn, external_userid=order.external_userid, unionid=order.unionid, mobile=order.mobile)
    conn.execute(Order.__table__.insert().values(
        source=order.source, order_id=order.order_id, paid_at=as_utc(order.paid_at), amount_fen=order.amount_fen,
        refunded_fen=0, items=order.items, store_code=order.store_code, link_code=order.link_code,
        from_param=order.from_param, given_external_userid=order.external_userid, given_unionid=order.unionid,
        given_mobile=order.mobile, external_userid=match.external_userid,
        matched_by=str(match.matched_by) if match.matched_by else None, created_at=utcnow()))
    if match.external_userid and order.mobile and match.matched_by is not MatchedBy.mobile:
        # The order names the customer and their mobile: later orders with only the mobile find them,
        # unless the mobile already belongs to another customer (an order never makes a mobile ambiguous).
        m = CustomerMobile.__table__.c
        if conn.execute(select(m.id).where(m.mobile == order.mobile, m.external_userid != match.external_userid)
                        .limit(1)).first() is None:
            index_mobiles(conn, match.external_userid, [order.mobile], mobile_source)
    return OrderOutcome(order.order_id, True, match.external_userid,
                        str(match.matched_by) if match.matched_by else None)


def record_order(engine: Engine, order: OrderIn) -> OrderOutcome:
    """Record one order (the API): created, already there, or :class:`OrderConflict`."""
    try:
        with engine.begin() as conn:
            out = put_order(conn, order)
    except IntegrityError:
        # The same id arrived at the same moment through another request: compare with that one.
        with engine.connect() as conn:
            row = _existing(conn, order.source, order.order_id)
        if row is None:
            raise
        out = _same_or_conflict(row, order)
    log.info("order_recorded", order_id=order.order_id, source=order.source, created=out.created,
             matched_by=out.matched_by, external_userid=out.external_userid)
    return out


# -- refunds --------------------------------------------------------------------------------------
@dataclass
class RefundOutcome:
    refund_id: str
    order_id: str
    created: bool
    refunded_fen: int  # the order's refunds so far, this one included
    amount_fen: int  # the order's amount
    external_userid: str | None = None  # the order's customer (None: unmatched)


def _refund_row(conn: Connection, refund: RefundIn) -> Any:
    r = Refund.__table__.c
    return conn.execute(select(Refund.__table__).where(r.source == refund.source,
                                                        r.refund_id == refund.refund_id)).first()


def _same_refund(conn: Connection, row: Any, refund: RefundIn) -> RefundOutcome:
    stored = {"order_id": row.order_id, "amount_fen": row.amount_fen, "refunded_at": as_utc(row.refunded_at)}
    given = {"order_id": refund.order_id, "amount_fen": refund.amount_fen, "refunded_at": as_utc(refund.refunded_at)}
    diff = [f"{k} was {stored[k]!r}, now {given[k]!r}" for k in stored if stored[k] != given[k]]
    if diff:
        raise OrderConflict(f"refund {refund.refund_id!r} is already recorded with different content: "
                            + "; ".join(diff))
    o = Order.__table__.c
    order = conn.execute(select(o.amount_fen, o.refunded_fen, o.external_userid).where(o.id == row.order_pk)).one()
    return RefundOutcome(refund.refund_id, refund.order_id, False, order.refunded_fen, order.amount_fen,
                         order.external_userid)


def record_refund(engine: Engine, refund: RefundIn) -> RefundOutcome:
    """Record a (partial) refund: created, already there, or refused (unknown order, more than
    the order's amount in all, the refund id reused with different content)."""
    o = Order.__table__.c
    try:
        with engine.begin() as conn:
            row = _refund_row(conn, refund)
            if row is not None:
                out = _same_refund(conn, row, refund)
            else:
                order = conn.execute(select(o.id, o.amount_fen, o.refunded_fen, o.external_userid).where(
                    o.source == refund.source, o.order_id == refund.order_id)).first()
                if order is None:
                    raise OrderNotFound(f"order {refund.order_id!r} (source {refund.source!r}) is not recorded: "
                                        "report the order before its refunds")
                raised = conn.execute(update(Order.__table__).where(
                    o.id == order.id, o.refunded_fen + refund.amount_fen <= o.amount_fen,
                ).values(refunded_fen=o.refunded_fen + refund.amount_fen)).rowcount
                if raised != 1:
                    now = conn.execute(select(o.refunded_fen).where(o.id == order.id)).scalar_one()
                    raise RefundExceedsOrder(
                        f"refund {refund.refund_id!r} of {refund.amount_fen} fen would bring the refunds of order "
                        f"{refund.order_id!r} to {now + refund.amount_fen} fen, more than its amount of "
                        f"{order.amount_fen} fen ({now} fen refunded already)")
                conn.execute(Refund.__table__.insert().values(
                    source=refund.source, refund_id=refund.refund_id, order_pk=order.id, order_id=refund.order_id,
                    amount_fen=refund.amount_fen, refunded_at=as_utc(refund.refunded_at),
                    created_at=utcnow()))
                total = conn.execute(select(o.refunded_fen).where(o.id == order.id)).scalar_one()
                out = RefundOutcome(refund.refund_id, refund.order_id, True, total, order.amount_fen,
                                    order.external_userid)
    except IntegrityError:
        with engine.connect() as conn:  # the same refund id at the same moment: compare with it
            row = _refund_row(conn, refund)
            if row is None:
                raise
            out = _same_refund(conn, row, refund)
    log.info("refund_recorded", refund_id=refund.refund_id, order_id=refund.order_id, created=out.created,
             refunded_fen=out.refunded_fen)
    return out


# -- figures --------------------------------------------------------------------------------------
@dataclass
class OrderCounts:
    orders: int
    matched: int
    unmatched: int


def order_counts(engine: Engine) -> OrderCounts:
    o = Order.__table__.c
    with engine.connect() as conn:
        total, matched = conn.execute(select(func.count(), func.count(o.external_userid))).one()
    return OrderCounts(total, matched, total - matched)
