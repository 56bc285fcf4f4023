"""Shared CRM fixtures: the sample story's people (crm/samples/README.md) in a migrated database,
on SQLite and PostgreSQL (the ``engine`` fixture of tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scrm.contacts.models import Customer, Employee, FollowRelation
from scrm.orders.service import reindex_mobiles

SAMPLES = Path(__file__).resolve().parents[2] / "crm" / "samples"
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
LIU, CHEN, GUEST = "wmCrmSampleLiuYang0001", "wmCrmSampleChenJing0002", "wmCrmSampleGuest0003"
ZHANG, LI = "sales_zhang", "sales_li"
LIU_MOBILE, CHEN_MOBILE, STRANGER_MOBILE = "+8613800138000", "+8613900139000", "+8613700137000"


def add_people(engine: Engine, *, employees: dict[str, str] | None = None,
               customers: list[tuple[str, str, str, list[str]]] = ()) -> None:
    """Employees (userid -> name) and customers (external_userid, name, following rep, remark mobiles),
    then the mobile index filled from the remark mobiles as the contacts sync does."""
    with Session(engine) as s:
        for userid, name in (employees or {}).items():
            s.add(Employee(userid=userid, name=name))
        for ext, name, rep, mobiles in customers:
            s.add(Customer(external_userid=ext, name=name, mobiles=list(mobiles)))
            s.add(FollowRelation(userid=rep, external_userid=ext, remark_mobiles=list(mobiles)))
        s.commit()
    reindex_mobiles(engine)


def add_sample_people(engine: Engine) -> Engine:
    """张伟 (sales_zhang) follows 刘洋 (remark mobile 138-0013-8000); 李娜 (sales_li) follows 陈静."""
    add_people(engine, employees={ZHANG: "张伟", LI: "李娜"},
               customers=[(LIU, "刘洋", ZHANG, ["138-0013-8000"]), (CHEN, "陈静", LI, ["13900139000"])])
    return engine


@pytest.fixture
def sample_people(engine) -> Engine:
    """A migrated database (SQLite and PostgreSQL) with the sample story's reps and customers."""
    return add_sample_people(engine)
