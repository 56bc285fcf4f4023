"""Stores (门店): the unit a customer group belongs to and the SOP targets and variables refer to."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class Store(SQLModel, table=True):
    __tablename__ = "stores"

    code: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    address: str = Field(default="", max_length=256)
    city: str = Field(default="", max_length=64, index=True)
    latitude: float | None = None
    longitude: float | None = None
    status: str = Field(default="open", max_length=16)  # open | closed
    updated_at: datetime = Field(default_factory=utcnow)
