"""Orders, refunds and the mobile index that matches an order's mobile to a customer.

Money is in fen (integer), the currency is CNY. An order keeps the customer identifiers exactly as
the shop gave them (``given_*``, the mobile normalised) and, separately, the customer it matched
(``external_userid``, NULL = unmatched), so a later match never loses what was reported."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Column, Table, UniqueConstraint
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class MatchedBy(StrEnum):
    external_userid = "external_userid"
    unionid = "unionid"
    mobile = "mobile"


class MobileSource(StrEnum):
    remark_mobiles = "remark_mobiles"  # a follow relation's remark mobiles (WeCom)
    order = "order"  # an order that matched by external_userid/unionid and carried a mobile
    import_ = "import"  # a CSV import that did the same


class Order(SQLModel, table=True):
    __tablename__ = "orders"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("source", "order_id"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(default="shop", max_length=32)  # which shop system numbered the order
    order_id: str = Field(max_length=64)
    paid_at: datetime = Field(index=True)
    amount_fen: int = Field(sa_type=BigInteger)
    # Refunded so far: raised only by a conditional UPDATE that keeps it <= amount_fen.
    refunded_fen: int = Field(default=0, sa_type=BigInteger)
    items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    store_code: str | None = Field(default=None, max_length=64, index=True)
    link_code: str | None = Field(default=None, max_length=24, index=True)  # a /t/{code} it came through
    from_param: str | None = Field(default=None, max_length=128)  # the ``from`` parameter
    given_external_userid: str | None = Field(default=None, max_length=64)
    given_unionid: str | None = Field(default=None, max_length=64)
    given_mobile: str | None = Field(default=None, max_length=16)  # E.164
    external_userid: str | None = Field(default=None, max_length=64, index=True)  # matched; NULL = unmatched
    matched_by: str | None = Field(default=None, max_length=16)  # a MatchedBy
    created_at: datetime = Field(default_factory=utcnow)


class Refund(SQLModel, table=True):
    __tablename__ = "order_refunds"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("source", "refund_id"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(default="shop", max_length=32)
    refund_id: str = Field(max_length=64)
    order_pk: int = Field(foreign_key="orders.id", index=True)
    order_id: str = Field(max_length=64)
    amount_fen: int = Field(sa_type=BigInteger)
    refunded_at: datetime = Field(index=True)
    created_at: datetime = Field(default_factory=utcnow)


class CustomerMobile(SQLModel, table=True):
    """Mobile (E.164) -> customer: an index table, so matching an order is one indexed lookup."""

    __tablename__ = "customer_mobiles"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("mobile", "external_userid"),)

    id: int | None = Field(default=None, primary_key=True)
    mobile: str = Field(max_length=16, index=True)
    external_userid: str = Field(max_length=64, index=True)
    source: str = Field(max_length=16)  # a MobileSource
    created_at: datetime = Field(default_factory=utcnow)
