"""The callback inbox: every accepted callback's plaintext, stored before it is acknowledged."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import Index, Table, Text
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class InboxStatus(StrEnum):
    pending = "pending"  # stored, not applied yet (queued, or waiting for the relay)
    done = "done"  # applied
    failed = "failed"  # gave up after max attempts; ``last_error`` says why



class CallbackInbox(SQLModel, table=True):
    __tablename__ = "callback_inbox"
    # SQLModel sets __table__ but does not declare it: declared so the type checker knows the columns.
    __table__: ClassVar[Table]
    __table_args__ = (Index("ix_callback_inbox_status_enqueued", "status", "enqueued_at"),)

    id: int | None = Field(default=None, primary_key=True)
    # sha256 of the decrypted plaintext: a WeCom retry of the same event maps to the same row.
    dedup_key: str = Field(max_length=64, unique=True)
    corp_id: str = Field(max_length=64)
    event: str = Field(default="", max_length=64)
    change_type: str = Field(default="", max_length=64)
    plaintext: str = Field(sa_type=Text)
    received_at: datetime = Field(default_factory=utcnow)
    status: str = Field(default=InboxStatus.pending, max_length=16)
    attempts: int = 0
    enqueued_at: datetime | None = None
    done_at: datetime | None = None
    last_error: str | None = Field(default=None, sa_type=Text)
