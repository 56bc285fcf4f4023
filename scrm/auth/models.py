"""Tables of users and their roles.

A user is a WeCom member (their corp ``userid``, signed in through WeCom) or a local account (a login
name and an argon2 password hash) for before WeCom is set up. What a user may see is the set of role
grants; a clerk (store_staff) has one grant per store. A user with no grant, or disabled, cannot sign
in (``scrm.auth.service.principal_for`` answers None)."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from sqlalchemy import Table, UniqueConstraint
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table__: ClassVar[Table]

    userid: str = Field(primary_key=True, max_length=64)  # the WeCom userid, or a local login name
    name: str = Field(default="", max_length=128)
    # argon2id (pwdlib), local accounts only; None: signs in through WeCom only.
    password_hash: str | None = Field(default=None, max_length=255)
    disabled: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utcnow)
    last_sign_in_at: datetime | None = None


class RoleGrant(SQLModel, table=True):
    """One role of a user; ``store_code`` is the store of a store_staff grant and '' for the other
    roles (not NULL, so the unique constraint holds on SQLite and PostgreSQL alike)."""

    __tablename__ = "role_grants"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("userid", "role", "store_code"),)

    id: int | None = Field(default=None, primary_key=True)
    userid: str = Field(foreign_key="users.userid", max_length=64, index=True)
    role: str = Field(max_length=16)  # a scrm.auth.roles.Role
    store_code: str = Field(default="", max_length=32)
    created_at: datetime = Field(default_factory=utcnow)
