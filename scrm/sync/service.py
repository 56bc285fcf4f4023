"""Full load from WeCom: members, customers of every follow user, groups, tags. Safe to rerun.

A full sync is also how scrm learns what WeCom no longer has: a group missing from
groupchat/list, a follow relation missing from batch/get_by_user, a customer nobody follows any
more, a member no longer listed. Those rows are kept (history, attribution) but marked ``gone``
(members: ``active = False``), so plans, budgets and pages skip them. Rows are only marked when
the listing that would have named them completed: a member WeCom skipped for want of a licence
keeps their relations as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from scrm.contacts import service as contacts
from scrm.contacts.models import Customer, CustomerStatus, Employee, FollowRelation, FollowStatus
from scrm.db import utcnow
from scrm.groups import service as groups
from scrm.groups.models import CustomerGroup, GroupStatus
from scrm.logs import get_logger
from scrm.tags import service as tags
from scrm.wecom.api import SyncAPI
from scrm.wecom.errors import WeComAPIError

log = get_logger(__name__)

Progress = Callable[[str, int, int | None], None]  # (stage, done, total)


@dataclass
class SyncReport:
    employees: int = 0
    customers: int = 0
    follows: int = 0
    groups: int = 0
    tags: int = 0
    # Rows WeCom no longer lists, marked by this sync.
    employees_gone: int = 0
    customers_gone: int = 0
    follows_gone: int = 0
    groups_gone: int = 0

    @property
    def gone(self) -> int:
        return self.employees_gone + self.customers_gone + self.follows_gone + self.groups_gone


def full_sync(engine: Engine, client: SyncAPI, progress: Progress = lambda *a: None) -> SyncReport:
    report = SyncReport()
    members = client.list_members()
    listed_members = {m["userid"] for m in members}
    with Session(engine) as s:
        for m in members:
            emp = contacts.upsert_employee(s, m["userid"], m.get("name", ""))
            emp.active = True
        s.flush()
        for emp in s.exec(select(Employee).where(Employee.active == True)):  # noqa: E712
            if emp.userid not in listed_members:
                emp.active, emp.updated_at = False, utcnow()
                report.employees_gone += 1
        s.commit()
    report.employees = len(members)
    progress("employees", report.employees, report.employees)

    follow_users = client.list_follow_users()
    seen_customers: set[str] = set()
    seen_relations: set[tuple[str, str]] = set()
    unlicensed: set[str] = set()
    with Session(engine) as s:
        for item in client.iter_contacts_by_users(follow_users, unlicensed=unlicensed):
            contact, follow = item["external_contact"], item["follow_info"]
            contacts.upsert_customer(s, contact)
            s.flush()
            contacts.upsert_follow(s, contact["external_userid"], follow)
            seen_customers.add(contact["external_userid"])
            seen_relations.add((follow["userid"], contact["external_userid"]))
            report.follows += 1
            if report.follows % 200 == 0:
                s.commit()
            progress("customers", len(seen_customers), None)
        s.commit()
    report.customers = len(seen_customers)
    report.follows_gone, report.customers_gone = _mark_unlisted_contacts(engine, seen_relations, kept_users=unlicensed)

    chat_ids = [c["chat_id"] for c in client.list_group_chats(owner_userids=[m["userid"] for m in members] or None)]
    for i, chat_id in enumerate(chat_ids, 1):
        try:
            chat = client.get_group_chat(chat_id)
        except WeComAPIError as exc:
            if exc.errcode not in groups.MISSING_CHAT_ERRCODES:
                raise
            with Session(engine) as s:  # gone between the list and the get
                groups.mark_missing(s, chat_id, exc.errcode)
                s.commit()
            continue
        with Session(engine) as s:
            groups.apply_group_chat(s, chat)
            s.commit()
        progress("groups", i, len(chat_ids))
    report.groups = len(chat_ids)
    with Session(engine) as s:
        listed = set(chat_ids)
        unlisted = [c for c in s.exec(select(CustomerGroup.chat_id).where(CustomerGroup.status == GroupStatus.active))
                    if c not in listed]
        g = CustomerGroup.__table__
        for i in range(0, len(unlisted), 500):
            report.groups_gone += s.connection().execute(
                update(g).where(g.c.chat_id.in_(unlisted[i:i + 500]))
                .values(status=GroupStatus.gone, updated_at=utcnow())).rowcount
        s.commit()

    with Session(engine) as s:
        report.tags = tags.apply_tag_library(s, client.get_corp_tags())
        s.commit()
    progress("tags", report.tags, report.tags)
    log.info("sync_done", **report.__dict__)
    return report


def _mark_unlisted_contacts(engine: Engine, seen: set[tuple[str, str]], *, kept_users: set[str]) -> tuple[int, int]:
    """Active relations batch/get_by_user did not return become ``gone`` (except those of members
    WeCom skipped for want of a licence). Then every customer's status follows its relations:
    ``active`` with an active relation, ``lost`` when listed but nobody follows them any more
    (they deleted the member), ``gone`` when WeCom no longer lists them at all.
    Returns (relations, customers) newly marked gone."""
    now = utcnow()
    follows_gone = customers_gone = 0
    listed = {e for _, e in seen}
    with Session(engine) as s:
        for rel in s.exec(select(FollowRelation).where(FollowRelation.status == FollowStatus.active)):
            if (rel.userid, rel.external_userid) in seen or rel.userid in kept_users:
                continue
            rel.status, rel.removed_at, rel.removed_by, rel.updated_at = FollowStatus.gone, now, "sync", now
            follows_gone += 1
        s.flush()
        followed = set(s.exec(select(FollowRelation.external_userid)
                              .where(FollowRelation.status == FollowStatus.active)))
        changes = []
        for eid, status in s.exec(select(Customer.external_userid, Customer.status)):
            want = (CustomerStatus.active if eid in followed else CustomerStatus.lost if eid in listed
                    else CustomerStatus.gone)
            if want != status:
                changes.append({"eid": eid, "new_status": want})
                customers_gone += want == CustomerStatus.gone
        if changes:
            s.connection().execute(
                update(Customer.__table__).where(Customer.__table__.c.external_userid == bindparam("eid"))
                .values(status=bindparam("new_status"), updated_at=now), changes)
        s.commit()
    return follows_gone, customers_gone
