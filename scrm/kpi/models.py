"""Tables of the KPI domain: each order's attribution, and the rollups the dashboard reads.

Rollup keys use ``''`` (and post id 0) for "none", so a row of what no store, group, template or
post earned is a row like any other (:data:`scrm.kpi.report.UNATTRIBUTED`) and the unique key
holds (NULLs would never conflict). Rows are only ever changed by adding deltas (an upsert that
adds), so two refreshes cannot overwrite each other's work; the lock row in ``kpi_watermarks``
makes them take turns."""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar

from sqlalchemy import BigInteger, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class OrderAttributionRow(SQLModel, table=True):
    """One row per order: where it counts and why (``reason``, Chinese, shown to managers)."""

    __tablename__ = "order_attributions"
    __table__: ClassVar[Table]
    __table_args__ = (
        Index("ix_order_attributions_day_paid_at", "day", "paid_at"),
        Index("ix_order_attributions_store_code_day", "store_code", "day"),
    )

    order_pk: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    source: str = Field(max_length=32)
    order_id: str = Field(max_length=64)
    rule: str = Field(max_length=16)  # an AttributionRule
    store_code: str | None = Field(default=None, max_length=32)
    chat_id: str | None = Field(default=None, max_length=64)
    post_id: int | None = None
    template_id: str | None = Field(default=None, max_length=64)
    link_code: str | None = Field(default=None, max_length=24)
    click_id: int | None = None
    click_at: datetime | None = None
    reason: str = Field(sa_type=Text)
    day: date  # the local day of paid_at (sop.timezone)
    paid_at: datetime
    amount_fen: int = Field(sa_type=BigInteger)
    refunded_fen: int = Field(default=0, sa_type=BigInteger)  # refunds applied to the rollups so far
    buyer: str = Field(max_length=80)  # external_userid, or "order:<pk>" for an unmatched order
    updated_at: datetime = Field(default_factory=utcnow)


class KpiDaily(SQLModel, table=True):
    """Additive figures per local day × store × group × template × post."""

    __tablename__ = "kpi_daily"
    __table__: ClassVar[Table]
    __table_args__ = (
        UniqueConstraint("day", "store_code", "chat_id", "template_id", "post_id", name="uq_kpi_daily_key"),
        Index("ix_kpi_daily_store_code_day", "store_code", "day"),
        Index("ix_kpi_daily_chat_id_day", "chat_id", "day"),
        Index("ix_kpi_daily_template_id_day", "template_id", "day"),
        Index("ix_kpi_daily_post_id", "post_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    day: date
    store_code: str = Field(default="", max_length=32)
    chat_id: str = Field(default="", max_length=64)
    template_id: str = Field(default="", max_length=64)
    post_id: int = 0
    posts_delivered: int = 0
    members_reached: int = 0
    clicks: int = 0
    unique_clicks: int = 0
    orders: int = 0
    gmv_fen: int = Field(default=0, sa_type=BigInteger)
    refunds_fen: int = Field(default=0, sa_type=BigInteger)
    refunded_orders: int = 0


class KpiBuyerDay(SQLModel, table=True):
    """Orders per buyer per local day and key: buyers and repeat buyers are distinct counts over a
    range, so they are counted from here (one grouped query), never summed from days."""

    __tablename__ = "kpi_buyer_days"
    __table__: ClassVar[Table]
    __table_args__ = (
        UniqueConstraint("day", "store_code", "chat_id", "template_id", "post_id", "buyer",
                         name="uq_kpi_buyer_days_key"),
        Index("ix_kpi_buyer_days_store_code_day", "store_code", "day"),
        Index("ix_kpi_buyer_days_chat_id_day", "chat_id", "day"),
        Index("ix_kpi_buyer_days_template_id_day", "template_id", "day"),
        Index("ix_kpi_buyer_days_post_id", "post_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    day: date
    store_code: str = Field(default="", max_length=32)
    chat_id: str = Field(default="", max_length=64)
    template_id: str = Field(default="", max_length=64)
    post_id: int = 0
    buyer: str = Field(max_length=80)
    orders: int = 0
    gmv_fen: int = Field(default=0, sa_type=BigInteger)


class KpiPostDelivery(SQLModel, table=True):
    """A post counted as delivered in ``kpi_daily`` (and with what), so a post that stops being
    delivered (a mass send that came back over quota) is taken out with the same figures."""

    __tablename__ = "kpi_post_deliveries"
    __table__: ClassVar[Table]

    post_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    day: date = Field(index=True)
    store_code: str = Field(default="", max_length=32)
    chat_id: str = Field(default="", max_length=64)
    template_id: str = Field(default="", max_length=64)
    members: int = 0  # the group's customers at delivery
    delivered_at: datetime | None = None


class KpiRefundApplied(SQLModel, table=True):
    """A refund already taken off its order's row in ``kpi_daily``."""

    __tablename__ = "kpi_refunds_applied"
    __table__: ClassVar[Table]

    refund_pk: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    order_pk: int = Field(index=True)
    amount_fen: int = Field(sa_type=BigInteger)


class KpiWatermark(SQLModel, table=True):
    """How far each source table has been rolled up (``value``: the last id taken, or for
    ``post_days`` the first ledger day still scanned as an ordinal). The row named ``lock`` is
    the refresh lock: every refresh transaction updates it first, so refreshes take turns."""

    __tablename__ = "kpi_watermarks"
    __table__: ClassVar[Table]

    name: str = Field(primary_key=True, max_length=32)
    value: int = Field(default=0, sa_type=BigInteger)
    holder: str | None = Field(default=None, max_length=64)
    updated_at: datetime = Field(default_factory=utcnow)


# -- coarser rollups ------------------------------------------------------------------------------
# The same additive figures as ``kpi_daily`` summed over fewer key columns, so the all-store queries
# group thousands of rows instead of every (group, template, post) row of the range. Written in the
# same upsert as ``kpi_daily`` (one delta, every table), so each equals ``kpi_daily`` summed over its
# key at every commit.
class KpiDailyStore(SQLModel, table=True):
    """``kpi_daily`` summed per local day × store: the day and store tables and every total."""

    __tablename__ = "kpi_daily_stores"
    __table__: ClassVar[Table]
    __table_args__ = (
        UniqueConstraint("day", "store_code", name="uq_kpi_daily_stores_key"),
        Index("ix_kpi_daily_stores_store_code_day", "store_code", "day"),
    )

    id: int | None = Field(default=None, primary_key=True)
    day: date
    store_code: str = Field(default="", max_length=32)
    posts_delivered: int = 0
    members_reached: int = 0
    clicks: int = 0
    unique_clicks: int = 0
    orders: int = 0
    gmv_fen: int = Field(default=0, sa_type=BigInteger)
    refunds_fen: int = Field(default=0, sa_type=BigInteger)
    refunded_orders: int = 0


class KpiDailyTemplate(SQLModel, table=True):
    """``kpi_daily`` summed per local day × template (every store): the template table."""

    __tablename__ = "kpi_daily_templates"
    __table__: ClassVar[Table]
    __table_args__ = (
        UniqueConstraint("day", "template_id", name="uq_kpi_daily_templates_key"),
        Index("ix_kpi_daily_templates_template_id_day", "template_id", "day"),
    )

    id: int | None = Field(default=None, primary_key=True)
    day: date
    template_id: str = Field(default="", max_length=64)
    posts_delivered: int = 0
    members_reached: int = 0
    clicks: int = 0
    unique_clicks: int = 0
    orders: int = 0
    gmv_fen: int = Field(default=0, sa_type=BigInteger)
    refunds_fen: int = Field(default=0, sa_type=BigInteger)
    refunded_orders: int = 0


class KpiDailyGroup(SQLModel, table=True):
    """``kpi_daily`` summed per local day × store × group (every template and post): the group
    table and the GMV decomposition by group."""

    __tablename__ = "kpi_daily_groups"
    __table__: ClassVar[Table]
    __table_args__ = (
        UniqueConstraint("day", "store_code", "chat_id", name="uq_kpi_daily_groups_key"),
        Index("ix_kpi_daily_groups_store_code_day", "store_code", "day"),
        Index("ix_kpi_daily_groups_chat_id_day", "chat_id", "day"),
    )

    id: int | None = Field(default=None, primary_key=True)
    day: date
    store_code: str = Field(default="", max_length=32)
    chat_id: str = Field(default="", max_length=64)
    posts_delivered: int = 0
    members_reached: int = 0
    clicks: int = 0
    unique_clicks: int = 0
    orders: int = 0
    gmv_fen: int = Field(default=0, sa_type=BigInteger)
    refunds_fen: int = Field(default=0, sa_type=BigInteger)
    refunded_orders: int = 0
