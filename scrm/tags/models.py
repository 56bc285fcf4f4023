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


class RuleTag(SQLModel, table=True):
    """A rule tag scrm owns in WeCom, found by its key, never by its name.

    Keys: ``group`` (scrm's tag group; ``tag_id`` is the group id), ``layer:<layer id>``,
    ``store:<store code>``, ``city:<city>``, ``tag:<tag rule id>``. ``rule_name`` is the name the
    rules gave when scrm last created or renamed the tag; ``name`` is the name WeCom has (a person may
    have renamed it: accepted, and only a change of ``rule_name`` renames it again). A row whose tag
    was deleted in WeCom is deleted here (forgotten); the next sync creates the tag again."""

    __tablename__ = "rule_tags"
    __table__: ClassVar[Table]

    key: str = Field(primary_key=True, max_length=96)
    tag_id: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=64)
    rule_name: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class RuleTagMark(SQLModel, table=True):
    """A rule tag scrm put on a follow relation (member x customer) with mark_tag: what tells a tag
    scrm applied from one a person applied. ``removed_by_hand_at`` set: a person took it off the
    relation in WeCom, and scrm does not put it back while the customer keeps qualifying for it
    (the override ends when the tag stops being one of the customer's desired tags)."""

    __tablename__ = "rule_tag_marks"
    __table__: ClassVar[Table]

    userid: str = Field(primary_key=True, max_length=64)
    external_userid: str = Field(primary_key=True, max_length=64, index=True)
    key: str = Field(primary_key=True, max_length=96)
    tag_id: str = Field(max_length=64, index=True)
    marked_at: datetime = Field(default_factory=utcnow)
    removed_by_hand_at: datetime | None = None


class RuleTagFailure(SQLModel, table=True):
    """A customer whose last tag sync failed on a relation (kept dirty): what WeCom said, so an
    operator can read it, and so the next runs take customers that have not failed first (a
    relation WeCom keeps refusing must not hold up everyone behind it)."""

    __tablename__ = "rule_tag_failures"
    __table__: ClassVar[Table]

    external_userid: str = Field(primary_key=True, max_length=64)
    userid: str = Field(max_length=64)
    errcode: int
    error: str = Field(max_length=500)
    attempts: int = 1
    failed_at: datetime = Field(default_factory=utcnow, index=True)
