"""Apply customer-contact data (from callbacks or the full sync) to the database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from scrm.contacts.models import (
    ChurnAlert,
    Customer,
    CustomerStatus,
    Employee,
    FollowRelation,
    FollowStatus,
    WelcomeSend,
)
from scrm.db import from_unix, utcnow
from scrm.orders.models import MobileSource
from scrm.orders.service import index_mobiles

WELCOME_WINDOW_SECONDS = 20


def upsert_employee(session: Session, userid: str, name: str = "") -> Employee:
    emp = session.get(Employee, userid)
    if emp is None:
        emp = Employee(userid=userid, name=name)
        session.add(emp)
    elif name and emp.name != name:
        emp.name, emp.updated_at = name, utcnow()
    return emp


def _ensure_employee(session: Session, userid: str) -> None:
    """``upsert_employee(session, userid)`` without a name, in one statement: the employee row
    exists afterwards, a stored one is left as it is. An employee this session already holds costs
    nothing; otherwise the session is flushed (as the SELECT of ``session.get`` would have) and
    one INSERT ... ON CONFLICT DO NOTHING replaces the SELECT and the INSERT."""
    if session.identity_key(Employee, userid) in session.identity_map:
        return
    session.flush()
    now = utcnow()
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.connection().execute(
        dialect_insert(Employee.__table__)
        .values(userid=userid, name="", is_bot=False, active=True, created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["userid"])
    )


def upsert_customer(session: Session, contact: dict) -> Customer:
    eid = contact["external_userid"]
    cust = session.get(Customer, eid)
    if cust is None:
        cust = Customer(external_userid=eid)
        session.add(cust)
    cust.name = contact.get("name") or cust.name
    cust.unionid = contact.get("unionid") or cust.unionid
    cust.type = contact.get("type", cust.type)
    cust.gender = contact.get("gender", cust.gender)
    cust.avatar = contact.get("avatar") or cust.avatar
    cust.corp_name = contact.get("corp_name") or cust.corp_name
    cust.updated_at = utcnow()
    return cust


def _relation(session: Session, userid: str, external_userid: str) -> FollowRelation:
    rel = session.exec(
        select(FollowRelation).where(FollowRelation.userid == userid, FollowRelation.external_userid == external_userid)
    ).first()
    if rel is None:
        rel = FollowRelation(userid=userid, external_userid=external_userid)
        session.add(rel)
    return rel


def upsert_follow(session: Session, external_userid: str, follow: dict, *,
                  as_of: datetime | None = None) -> FollowRelation:
    """``follow`` is a follow_user item (externalcontact/get) or follow_info (batch/get_by_user).

    A removal we learned from a callback is not undone by older news: an add event processed late
    (workers run in parallel) reactivates the relation only if it is newer than the removal.
    """
    userid = follow["userid"]
    rel = _relation(session, userid, external_userid)
    rel.remark = follow.get("remark", rel.remark)
    rel.description = follow.get("description", rel.description)
    rel.state = follow.get("state") or rel.state
    rel.add_way = follow.get("add_way", rel.add_way)
    rel.oper_userid = follow.get("oper_userid", rel.oper_userid)
    if "tag_id" in follow:
        rel.tag_ids = list(follow["tag_id"])
    elif "tags" in follow:
        rel.tag_ids = [t["tag_id"] for t in follow["tags"] if t.get("tag_id")]
    known_mobiles = list(rel.remark_mobiles or [])
    rel.remark_mobiles = list(follow.get("remark_mobiles") or known_mobiles)
    if rel.remark_mobiles != known_mobiles:  # orders reported with only a mobile find the customer by it
        index_mobiles(session.connection(), external_userid, rel.remark_mobiles, MobileSource.remark_mobiles)
    rel.added_at = from_unix(follow.get("createtime")) or rel.added_at
    newest = max((t for t in (as_of, rel.added_at) if t is not None), default=None)
    if rel.status == FollowStatus.active or rel.removed_at is None or (newest is not None and newest > rel.removed_at):
        rel.status, rel.removed_at, rel.removed_by = FollowStatus.active, None, None
    rel.updated_at = utcnow()
    _ensure_employee(session, userid)
    return rel


def apply_contact_detail(session: Session, detail: dict, *, as_of: datetime | None = None) -> Customer:
    """externalcontact/get result -> customer + every follow relation, mobiles merged."""
    contact = detail["external_contact"]
    cust = upsert_customer(session, contact)
    session.flush()
    mobiles = set(cust.mobiles or [])
    any_active = False
    for follow in detail.get("follow_user", []):
        rel = upsert_follow(session, cust.external_userid, follow, as_of=as_of)
        any_active = any_active or rel.status == FollowStatus.active
        mobiles.update(follow.get("remark_mobiles") or [])
    cust.mobiles = sorted(mobiles)
    session.flush()
    _refresh_status(session, cust, known_active=any_active)
    return cust


def apply_contact_event(session: Session, *, userid: str, external_userid: str, state: str | None,
                        at: datetime, added: bool) -> FollowRelation:
    """What an add/edit callback itself says, for when externalcontact/get cannot tell more
    (40096: WeCom refuses the external_userid): the customer (its id only), the employee, and
    the follow relation with its ``State`` (the QR code that brought the customer). ``added``:
    an add event, whose time is when the relation began. Fields already stored are kept."""
    cust = upsert_customer(session, {"external_userid": external_userid})
    session.flush()
    follow: dict = {"userid": userid, "state": state}
    if added and _relation(session, userid, external_userid).added_at is None:
        follow["createtime"] = int(at.timestamp())  # a stored time came from WeCom itself: kept
    rel = upsert_follow(session, external_userid, follow, as_of=at)
    session.flush()
    _refresh_status(session, cust, known_active=rel.status == FollowStatus.active)
    return rel


def _refresh_status(session: Session, cust: Customer, *, known_active: bool = False) -> None:
    """Active while any follow relation is. ``known_active``: the caller just wrote (and flushed)
    an active relation of this customer, so the query would find one: skipped."""
    if known_active:
        cust.status = CustomerStatus.active
        return
    active = session.exec(
        select(FollowRelation.id).where(
            FollowRelation.external_userid == cust.external_userid, FollowRelation.status == FollowStatus.active
        )
    ).first()
    cust.status = CustomerStatus.active if active is not None else CustomerStatus.lost


def mark_removed(session: Session, userid: str, external_userid: str, *, status: FollowStatus, at: datetime) -> None:
    rel = _relation(session, userid, external_userid)
    rel.status, rel.removed_at, rel.updated_at = status, at, utcnow()
    rel.removed_by = status.removeprefix("deleted_by_")
    session.flush()
    cust = session.get(Customer, external_userid)
    if cust is not None:
        _refresh_status(session, cust)


def raise_churn_alert(
    session: Session, *, inbox_id: int, kind: str, userid: str, external_userid: str, at: datetime,
    detail: str | None = None,
) -> None:
    session.add(
        ChurnAlert(inbox_id=inbox_id, kind=kind, userid=userid, external_userid=external_userid, occurred_at=at,
                   detail=detail)
    )


def claim_welcome_on(conn: Connection, *, inbox_id: int, userid: str, external_userid: str) -> bool:
    """Commit a claim row before calling WeCom: at most one welcome per callback, even across
    crashes. On a connection the caller holds (the worker's read of the inbox row, so the claim
    costs no checkout of its own); commits the claim (or rolls back: claimed before), ending
    whatever the connection's transaction held."""
    try:
        conn.execute(insert(WelcomeSend.__table__).values(
            inbox_id=inbox_id, userid=userid, external_userid=external_userid, outcome="claimed",
            created_at=utcnow()))
        conn.commit()
        return True
    except IntegrityError:
        conn.rollback()
        return False


def record_welcome(session_factory, inbox_id: int, outcome: str, errcode: int | None = None) -> None:
    """The claimed welcome's outcome (no claim row: nothing), in one UPDATE."""
    w = WelcomeSend.__table__.c
    with session_factory() as session:
        session.connection().execute(update(WelcomeSend.__table__).where(w.inbox_id == inbox_id)
                                     .values(outcome=outcome, errcode=errcode))
        session.commit()
