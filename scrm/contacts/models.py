"""Employees (WeCom members), customers (external contacts) and who follows whom."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import JSON, Column, Table, UniqueConstraint
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class CustomerStatus(StrEnum):
    active = "active"  # at least one employee still follows
    lost = "lost"  # WeCom still lists them, but nobody follows any more (they deleted the member)
    gone = "gone"  # WeCom no longer lists them at all (a full sync)


class FollowStatus(StrEnum):
    active = "active"
    deleted_by_employee = "deleted_by_employee"  # the employee deleted the customer
    deleted_by_customer = "deleted_by_customer"  # the customer deleted the employee
    transferred = "transferred"  # the customer was handed over to another employee
    gone = "gone"  # batch/get_by_user no longer returns it (a full sync)


class Employee(SQLModel, table=True):
    __tablename__ = "employees"
    # SQLModel sets __table__ but does not declare it: declared so the type checker knows the columns.
    __table__: ClassVar[Table]

    userid: str = Field(primary_key=True, max_length=64)
    name: str = Field(default="", max_length=128)
    # A sending account ("bot") that SOP posts go out from.
    is_bot: bool = Field(default=False)
    active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    __table__: ClassVar[Table]

    external_userid: str = Field(primary_key=True, max_length=64)
    name: str = Field(default="", max_length=128)
    unionid: str | None = Field(default=None, max_length=64, index=True)
    type: int | None = None  # 1 WeChat user, 2 WeCom user
    gender: int | None = None
    avatar: str | None = Field(default=None, max_length=512)
    corp_name: str | None = Field(default=None, max_length=128)
    # Mobiles gathered from follow relations' remark_mobiles (CRM records key on them).
    mobiles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(default=CustomerStatus.active, max_length=16, index=True)  # a CustomerStatus
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class FollowRelation(SQLModel, table=True):
    """Employee x customer. Tags in WeCom are per relation, so they live here."""

    __tablename__ = "follow_relations"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("userid", "external_userid"),)

    id: int | None = Field(default=None, primary_key=True)
    userid: str = Field(max_length=64, index=True)
    external_userid: str = Field(max_length=64, index=True)
    remark: str | None = Field(default=None, max_length=128)
    description: str | None = Field(default=None, max_length=512)
    state: str | None = Field(default=None, max_length=64, index=True)
    add_way: int | None = None
    oper_userid: str | None = Field(default=None, max_length=64)
    tag_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    remark_mobiles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(default=FollowStatus.active, max_length=24, index=True)  # a FollowStatus
    added_at: datetime | None = Field(default=None, index=True)  # the store funnel's scans by day
    removed_at: datetime | None = None
    removed_by: str | None = Field(default=None, max_length=24)
    updated_at: datetime = Field(default_factory=utcnow)


class ChurnAlert(SQLModel, table=True):
    """Raised when a customer deletes an employee (or a transfer fails): someone should follow up."""

    __tablename__ = "churn_alerts"
    __table__: ClassVar[Table]

    id: int | None = Field(default=None, primary_key=True)
    # One alert per callback, however often the callback is redelivered.
    inbox_id: int = Field(unique=True)
    kind: str = Field(max_length=32)  # customer_deleted_employee | transfer_failed
    userid: str = Field(max_length=64, index=True)
    external_userid: str = Field(max_length=64, index=True)
    detail: str | None = Field(default=None, max_length=128)
    occurred_at: datetime = Field(index=True)  # churn by day (store funnel)
    acknowledged: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow)


class WelcomeSend(SQLModel, table=True):
    """One row per welcome code: the claim is made before calling WeCom, so a redelivered
    callback never sends a second welcome (WeCom would refuse it with 41051 anyway)."""

    __tablename__ = "welcome_sends"
    __table__: ClassVar[Table]

    id: int | None = Field(default=None, primary_key=True)
    inbox_id: int = Field(unique=True)
    userid: str = Field(max_length=64)
    external_userid: str = Field(max_length=64)
    outcome: str = Field(default="claimed", max_length=24)  # claimed | sent | expired | refused
    errcode: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
