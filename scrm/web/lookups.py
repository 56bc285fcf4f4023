"""The small queries behind the store pages, kept out of the routers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import func
from sqlmodel import Session, col, select

from scrm.contacts.models import Employee
from scrm.db import as_utc
from scrm.groups.models import CustomerGroup
from scrm.stores.models import CodeStatus, Store, StoreCode, StoreStatus


def find_store(s: Session, code: str) -> Store | None:
    """The store with this code, ignoring case (``/s/slt`` finds ``SLT``); an exact match wins."""
    if not code or len(code) > 32:
        return None
    store = s.get(Store, code)
    if store is not None:
        return store
    return s.exec(select(Store).where(func.upper(Store.code) == code.upper()).order_by(Store.code)).first()


def store_codes(s: Session, store_code: str) -> tuple[StoreCode | None, list[StoreCode]]:
    """The store's group live code and its staff codes (by userid), removed ones left out."""
    rows = s.exec(select(StoreCode).where(StoreCode.store_code == store_code,
                                          StoreCode.status != CodeStatus.removed)).all()
    group = next((c for c in rows if c.kind == "group"), None)
    return group, sorted((c for c in rows if c.kind == "staff"), key=lambda c: c.userid)


def employee_names(s: Session, userids: Iterable[str | None]) -> dict[str, str]:
    """userid -> the employee's name, for those that have one."""
    wanted = [u for u in set(userids) if u]
    if not wanted:
        return {}
    return {e.userid: e.name for e in s.exec(select(Employee).where(col(Employee.userid).in_(wanted))) if e.name}


def group_owner_names(s: Session, chat_ids: Iterable[str] | None) -> list[str]:
    """The names of the owners of these groups (no userids), each once, in order."""
    wanted = list(chat_ids or [])
    if not wanted:
        return []
    owners = [g.owner_userid for g in s.exec(select(CustomerGroup).where(col(CustomerGroup.chat_id).in_(wanted))
                                             .order_by(col(CustomerGroup.chat_id)))]
    names = employee_names(s, owners)
    return list(dict.fromkeys(names[o] for o in owners if o in names))


def open_stores(s: Session, *, offset: int, limit: int) -> tuple[list[Store], int]:
    """One page of the open stores (by city, then code) and how many there are."""
    total = s.exec(select(func.count()).select_from(Store).where(Store.status == StoreStatus.open)).one()
    rows = s.exec(select(Store).where(Store.status == StoreStatus.open).order_by(Store.city, Store.code)
                  .offset(offset).limit(limit)).all()
    return list(rows), int(total)


def local_time(value: dt.datetime | None, tz: dt.tzinfo) -> str:
    """A stored (UTC) time as the corp's wall clock, e.g. ``2026-11-24 11:53``."""
    if value is None:
        return ""
    return as_utc(value).astimezone(tz).strftime("%Y-%m-%d %H:%M")


def store_choices(engine) -> list[tuple[str, str]]:
    """(code, name) of every store for the dashboard's filter, closed ones too (their history
    still counts), by code."""
    with Session(engine) as s:
        return [(code, name) for code, name in s.exec(select(Store.code, Store.name).order_by(col(Store.code))).all()]
