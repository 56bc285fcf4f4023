"""Tables of the store funnel and owner compliance rollups, per corp-local day.

Filled and kept current by :mod:`scrm.kpi.funnel_rollups`; read by ``store_funnel`` and
``owner_compliance`` once a refresh has run (``funnel_rollup_state`` has its row). Keys use ``''``
for "none" (no store), so the primary key holds. Group sizes ("now") are a snapshot taken by
each refresh.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar

from sqlalchemy import Index, Table
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class FunnelStaffDay(SQLModel, table=True):
    """Scans and new customers through one staff member's code of a store, on one local day."""

    __tablename__ = "kpi_funnel_staff_days"
    __table__: ClassVar[Table]
    __table_args__ = (Index("ix_kpi_funnel_staff_days_store_code_day", "store_code", "day"),)

    day: date = Field(primary_key=True)
    store_code: str = Field(primary_key=True, max_length=32)
    userid: str = Field(primary_key=True, max_length=64)
    scans: int = 0
    new_customers: int = 0


class FunnelStoreDay(SQLModel, table=True):
    """Customers who joined and left a group of the store on one local day."""

    __tablename__ = "kpi_funnel_store_days"
    __table__: ClassVar[Table]
    __table_args__ = (Index("ix_kpi_funnel_store_days_store_code_day", "store_code", "day"),)

    day: date = Field(primary_key=True)
    store_code: str = Field(primary_key=True, max_length=32)
    group_joins: int = 0
    group_leaves: int = 0


class FunnelChurnDay(SQLModel, table=True):
    """A customer brought by the store's staff codes who deleted a staff member that day: one row
    per customer, so a range counts distinct customers (not the sum of per-day counts)."""

    __tablename__ = "kpi_funnel_churn_days"
    __table__: ClassVar[Table]
    __table_args__ = (Index("ix_kpi_funnel_churn_days_store_code_day", "store_code", "day"),)

    day: date = Field(primary_key=True)
    store_code: str = Field(primary_key=True, max_length=32)
    external_userid: str = Field(primary_key=True, max_length=64)


class ComplianceDay(SQLModel, table=True):
    """Owner compliance per SOP day × owner (the post's sender) × store (``''``: no store), as of
    the refresh that wrote it (``due`` and past-window mass sends depend on the time)."""

    __tablename__ = "kpi_compliance_days"
    __table__: ClassVar[Table]
    __table_args__ = (Index("ix_kpi_compliance_days_store_code_day", "store_code", "day"),)

    day: date = Field(primary_key=True)
    sender: str = Field(primary_key=True, max_length=64)
    store_code: str = Field(primary_key=True, max_length=32)
    due: int = 0
    sent_on_time: int = 0
    expired: int = 0
    over_quota: int = 0
    unconfirmed: int = 0


class FunnelRollupState(SQLModel, table=True):
    """One row (``name='funnel'``): the lock two refreshes take turns on, the time zone the days
    were cut in, and how far the rollups reach."""

    __tablename__ = "kpi_funnel_rollup_state"
    __table__: ClassVar[Table]

    name: str = Field(primary_key=True, max_length=16)
    tz: str = Field(default="", max_length=64)
    first_day: date | None = None  # the earliest day rolled up ('' tables hold nothing before it)
    through: date | None = None  # the latest local day rolled up (partly, when it is today)
    as_of: datetime | None = None  # when the last refresh read the raw tables
    updated_at: datetime = Field(default_factory=utcnow)


class FunnelGroupSize(SQLModel, table=True):
    """An active store group's current members (employees included), as of the last refresh:
    counting 1.2M members live took seconds, this is a few thousand rows."""

    __tablename__ = "kpi_funnel_group_sizes"
    __table__: ClassVar[Table]
    __table_args__ = (Index("ix_kpi_funnel_group_sizes_store_code", "store_code"),)

    chat_id: str = Field(primary_key=True, max_length=64)
    store_code: str = Field(max_length=32)
    members: int = 0
