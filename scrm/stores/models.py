"""Stores (门店): the unit a customer group belongs to and the SOP targets and variables refer to."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import JSON, Column, Table, UniqueConstraint
from sqlmodel import Field, SQLModel

from scrm.db import utcnow

STORE_CODE_PATTERN = r"^[A-Za-z0-9_-]{1,20}$"  # short: it travels inside WeCom's 30-character `state`


class StoreStatus(StrEnum):
    open = "open"
    closed = "closed"


class CodeStatus(StrEnum):
    active = "active"  # exists in WeCom (config_id set)
    failed = "failed"  # WeCom refused it; ``error`` says why
    removed = "removed"  # deleted in WeCom (its staff member left the store)


class Store(SQLModel, table=True):
    __tablename__ = "stores"
    # SQLModel sets __table__ but does not declare it: declared so the type checker knows the columns.
    __table__: ClassVar[Table]

    code: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    address: str = Field(default="", max_length=256)
    city: str = Field(default="", max_length=64, index=True)
    latitude: float | None = None
    longitude: float | None = None
    status: str = Field(default=StoreStatus.open, max_length=16)
    updated_at: datetime = Field(default_factory=utcnow)


class StoreStaff(SQLModel, table=True):
    """An employee working at a store: each gets a "contact me" QR code carrying the store."""

    __tablename__ = "store_staff"
    __table__: ClassVar[Table]

    store_code: str = Field(primary_key=True, max_length=32)
    userid: str = Field(primary_key=True, max_length=64, index=True)


class StoreCode(SQLModel, table=True):
    """A QR code scrm created in WeCom for a store. WeCom does not list API-created codes in its
    console, so the config_id kept here is the only handle to update or delete them.

    kind ``staff``: add_contact_way for one staff member; kind ``group``: the store's group live
    code (add_join_way) over up to 5 of its groups that still have room."""

    __tablename__ = "store_codes"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("store_code", "kind", "userid"),)

    id: int | None = Field(default=None, primary_key=True)
    store_code: str = Field(max_length=32, index=True)
    kind: str = Field(max_length=8)  # staff | group
    userid: str = Field(default="", max_length=64)  # the staff member ('' for the group code)
    state: str = Field(max_length=30, unique=True)
    config_id: str | None = Field(default=None, max_length=64, unique=True)
    qr_code: str | None = None
    chat_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(default=CodeStatus.active, max_length=16)
    error: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)
