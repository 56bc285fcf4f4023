"""The corp customer-tag library (企业客户标签), mirrored from get_corp_tag_list."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import Table
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class TagGroup(SQLModel, table=True):
    __tablename__ = "tag_groups"
    # SQLModel sets __table__ but does not declare it: declared so the type checker knows the columns.
    __table__: ClassVar[Table]

    group_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=64)
    order: int = 0
    created_at: datetime | None = None
    deleted: bool = Field(default=False)
    updated_at: datetime = Field(default_factory=utcnow)


class Tag(SQLModel, table=True):
    __tablename__ = "tags"
    __table__: ClassVar[Table]

    tag_id: str = Field(primary_key=True, max_length=64)
    group_id: str = Field(max_length=64, index=True)
    name: str = Field(max_length=64)
    order: int = 0
    created_at: datetime | None = None
    deleted: bool = Field(default=False)
    updated_at: datetime = Field(default_factory=utcnow)
