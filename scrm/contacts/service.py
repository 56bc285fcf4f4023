"""Apply customer-contact data (from callbacks or the full sync) to the database."""

from __future__ import annotations

from datetime import datetime

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
    upsert_employee(session, userid)
    return rel


def apply_contact_detail(session: Session, detail: dict, *, as_of: datetime | None = None) -> Customer:
    """externalcontact/get result -> customer + every follow relation, mobiles merged."""
    contact = detail["external_contact"]
    cust = upsert_customer(session, contact)
    session.flush()
    mobiles = set(cust.mobiles or [])
    for follow in detail.get("follow_user", []):
        upsert_follow(session, cust.external_userid, follow, as_of=as_of)
        mobiles.update(follow.get("remark_mobiles") or [])
    cust.mobiles = sorted(mobiles)
    session.flush()
    _refresh_status(session, cust)
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
    _refresh_status(session, cust)
    return rel


def _refresh_status(session: Session, cust: Customer) -> None:
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


def claim_welcome(session_factory, *, inbox_id: int, userid: str, external_userid: str) -> bool:
    """Commit a claim row before calling WeCom: at most one welcome per callback, even across crashes."""
    with session_factory() as session:
        try:
            session.add(WelcomeSend(inbox_id=inbox_id, userid=userid, external_userid=external_userid))
            session.commit()
            return True
        except IntegrityError:
            session.rollback()
            return False


def record_welcome(session_factory, inbox_id: int, outcome: str, errcode: int | None = None) -> None:
    with session_factory() as session:
        row = session.exec(select(WelcomeSend).where(WelcomeSend.inbox_id == inbox_id)).first()
        if row is not None:
            row.outcome, row.errcode = outcome, errcode
            session.commit()
