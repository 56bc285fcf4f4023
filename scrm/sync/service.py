"""Initial full load from WeCom: members, customers of every follow user, groups, tags. Safe to rerun."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sqlalchemy.engine import Engine
from sqlmodel import Session

from scrm.contacts import service as contacts
from scrm.groups import service as groups
from scrm.logs import get_logger
from scrm.tags import service as tags
from scrm.wecom.client import WeComClient

log = get_logger(__name__)

Progress = Callable[[str, int, int | None], None]  # (stage, done, total)


@dataclass
class SyncReport:
    employees: int = 0
    customers: int = 0
    follows: int = 0
    groups: int = 0
    tags: int = 0


def full_sync(engine: Engine, client: WeComClient, progress: Progress = lambda *a: None) -> SyncReport:
    report = SyncReport()
    members = client.list_members()
    with Session(engine) as s:
        for m in members:
            contacts.upsert_employee(s, m["userid"], m.get("name", ""))
        s.commit()
    report.employees = len(members)
    progress("employees", report.employees, report.employees)

    follow_users = client.list_follow_users()
    seen_customers: set[str] = set()
    with Session(engine) as s:
        for item in client.iter_contacts_by_users(follow_users):
            contact, follow = item["external_contact"], item["follow_info"]
            contacts.upsert_customer(s, contact)
            s.flush()
            contacts.upsert_follow(s, contact["external_userid"], follow)
            seen_customers.add(contact["external_userid"])
            report.follows += 1
            if report.follows % 200 == 0:
                s.commit()
            progress("customers", len(seen_customers), None)
        s.commit()
    report.customers = len(seen_customers)

    chat_ids = [c["chat_id"] for c in client.list_group_chats(owner_userids=[m["userid"] for m in members] or None)]
    for i, chat_id in enumerate(chat_ids, 1):
        chat = client.get_group_chat(chat_id)
        with Session(engine) as s:
            groups.apply_group_chat(s, chat)
            s.commit()
        progress("groups", i, len(chat_ids))
    report.groups = len(chat_ids)

    with Session(engine) as s:
        report.tags = tags.apply_tag_library(s, client.get_corp_tags())
        s.commit()
    progress("tags", report.tags, report.tags)
    log.info("sync_done", **report.__dict__)
    return report
