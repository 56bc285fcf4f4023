"""The corp customer-tag library (企业客户标签), mirrored from get_corp_tag_list."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class TagGroup(SQLModel, table=True):
    __tablename__ = "tag_groups"

    group_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=64)
    order: int = 0
    created_at: datetime | None = None
    deleted: bool = Field(default=False)
    updated_at: datetime = Field(default_factory=utcnow)


class Tag(SQLModel, table=True):
    __tablename__ = "tags"

    tag_id: str = Field(primary_key=True, max_length=64)
    group_id: str = Field(max_length=64, index=True)
    name: str = Field(max_length=64)
    order: int = 0
    created_at: datetime | None = None
    deleted: bool = Field(default=False)
    updated_at: datetime = Field(default_factory=utcnow)
