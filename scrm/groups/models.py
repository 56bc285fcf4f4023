"""Customer groups (客户群) and their members."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import JSON, Column, Table, UniqueConstraint
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class GroupStatus(StrEnum):
    active = "active"
    dismissed = "dismissed"  # the owner dissolved it (a dismiss callback, or WeCom's 49008)
    gone = "gone"  # WeCom no longer has it: unlisted by a full sync, or groupchat/get answered 40050


class MemberState(StrEnum):
    member = "member"
    left = "left"  # left or was removed (``quit_scene`` says which); the row is kept for attribution


class CustomerGroup(SQLModel, table=True):
    __tablename__ = "customer_groups"
    # SQLModel sets __table__ but does not declare it: declared so the type checker knows the columns.
    __table__: ClassVar[Table]

    chat_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(default="", max_length=128)
    owner_userid: str | None = Field(default=None, max_length=64, index=True)
    notice: str | None = None
    # groupchat/get member_version; a callback whose LastMemVer differs means we missed events.
    member_version: str | None = Field(default=None, max_length=64)
    status: str = Field(default=GroupStatus.active, max_length=16, index=True)
    # Set by scrm, not WeCom: the store the group serves and operator tags SOP templates target.
    store_code: str | None = Field(default=None, max_length=32, index=True)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, default=list))
    # The main user layer of its members, kept by the layering workers; SOP templates can target it.
    layer: str | None = Field(default=None, max_length=32)
    # The key of a group robot (群机器人) webhook, where one was added to the group: SOP steps on the
    # group_robot channel post through it. A credential: never logged or shown in full.
    robot_webhook_key: str | None = Field(default=None, max_length=128)
    created_at: datetime | None = None
    synced_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class GroupMember(SQLModel, table=True):
    __tablename__ = "group_members"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("chat_id", "member_id"),)

    id: int | None = Field(default=None, primary_key=True)
    chat_id: str = Field(max_length=64, index=True)
    member_id: str = Field(max_length=64, index=True)  # userid or external_userid
    member_type: int = 2  # 1 employee, 2 external contact
    unionid: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, max_length=128)
    group_nickname: str | None = Field(default=None, max_length=128)
    join_scene: int | None = None  # 1 direct invite, 2 invite link, 3 group QR
    # The 加入群聊 state that brought the member: attribution of store QR codes.
    join_state: str | None = Field(default=None, max_length=64, index=True)
    invitor: str | None = Field(default=None, max_length=64)
    state: str = Field(default=MemberState.member, max_length=16, index=True)  # a MemberState
    joined_at: datetime | None = Field(default=None, index=True)  # joins/leaves by day (store funnel)
    left_at: datetime | None = Field(default=None, index=True)
    quit_scene: int | None = None  # 0 left by themselves, 1 removed
    updated_at: datetime = Field(default_factory=utcnow)
