"""The CRM's tables: every imported message, the follow-up records built from them, the reps'
edits (kept across rebuilds) and the service-quality events the rebuild derives.

A customer is an ``external_userid``. Calls and SMS arrive keyed on a mobile number and find their
customer through ``customer_mobiles`` (:mod:`scrm.orders.models`); a row whose mobile matches no one
yet keeps ``external_userid`` NULL and is linked when the mobile becomes known."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, Column, Index, Table, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from scrm.db import utcnow


class Channel(StrEnum):
    chat = "chat"  # WeCom chat archive (会话存档), decrypted JSON lines
    call = "call"
    sms = "sms"


class Direction(StrEnum):
    inbound = "in"  # from the customer
    outbound = "out"  # from us (a rep / employee)


class ServiceEventKind(StrEnum):
    first_response = "first_response"  # a session's first customer message and the first reply to it
    wait = "wait"  # a customer turn (consecutive customer messages) and the reply that ended it, if any
    risky = "risky"  # a reply containing a configured rude or risky phrase


class CrmMessage(SQLModel, table=True):
    """One chat message, call or SMS. Idempotent by (channel, source_id): a re-import changes nothing.

    A recalled chat message keeps its row with ``revoked_at`` set, ``content`` "" and ``payload`` {}
    (its text is gone); the recall itself is a row with ``msgtype`` "revoke" and
    ``payload`` {"pre_msgid": ...}, so a recall imported before its message still blanks it."""

    __tablename__ = "crm_messages"
    __table__: ClassVar[Table]
    __table_args__ = (
        UniqueConstraint("channel", "source_id"),
        Index("ix_crm_messages_customer_sent_at", "external_userid", "sent_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=8)  # a Channel
    source_id: str = Field(max_length=128)  # archive msgid; the call's / SMS's id in its source system
    external_userid: str | None = Field(default=None, max_length=64)  # None: not matched to a customer yet
    mobile: str | None = Field(default=None, max_length=16, index=True)  # E.164, calls and SMS
    userid: str | None = Field(default=None, max_length=64, index=True)  # the employee on our side
    direction: str = Field(max_length=4)  # a Direction
    sent_at: datetime = Field(index=True)
    msgtype: str = Field(max_length=32)  # archive msgtype (text, image, ... revoke); "call" / "sms"
    content: str = Field(default="", sa_type=Text)  # what a person reads; "" once revoked
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    roomid: str | None = Field(default=None, max_length=64)  # a group chat's id; None for 1:1
    duration_seconds: int | None = None  # calls
    revoked_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class FollowUp(SQLModel, table=True):
    """A follow-up record: one session of a customer's merged timeline (messages no more than
    ``crm.session_gap_hours`` apart). Rebuilt from the messages; anchored on its first message."""

    __tablename__ = "crm_followups"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("external_userid", "first_message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    external_userid: str = Field(max_length=64, index=True)
    first_message_id: int  # crm_messages.id
    last_message_id: int
    started_at: datetime = Field(index=True)
    ended_at: datetime
    userid: str | None = Field(default=None, max_length=64, index=True)  # the rep who handled it
    channels: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    message_count: int = 0
    first_question: str = Field(default="", sa_type=Text)
    first_question_message_id: int | None = None
    last_reply: str = Field(default="", sa_type=Text)
    last_reply_message_id: int | None = None
    # [{"kind": "product|price|date|intent|…", "label": "…", "value": "…", "rule_id": "…", "message_id": 1}]
    facts: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # [{"text": "…", "message_id": 1, "asked_at": "ISO time"}]
    open_questions: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    next_step: str = Field(default="", max_length=512)
    next_step_rule: str | None = Field(default=None, max_length=64)
    built_at: datetime = Field(default_factory=utcnow)


class FollowUpEdit(SQLModel, table=True):
    """A rep's note or correction. Kept apart from the record so a rebuild never loses it: the
    rebuilt record that contains ``anchor_message_id`` shows it."""

    __tablename__ = "crm_followup_edits"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("external_userid", "anchor_message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    external_userid: str = Field(max_length=64, index=True)
    anchor_message_id: int  # a message of the record when it was edited
    note: str = Field(default="", sa_type=Text)
    # Corrected fields of the record, e.g. {"next_step": "…", "open_questions": []}.
    corrections: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    userid: str = Field(max_length=64)  # who edited
    updated_at: datetime = Field(default_factory=utcnow)


class ServiceEvent(SQLModel, table=True):
    """What service quality is counted from; rebuilt per customer with their records."""

    __tablename__ = "crm_service_events"
    __table__: ClassVar[Table]
    __table_args__ = (
        Index("ix_crm_service_events_userid_occurred_at", "userid", "occurred_at"),
        Index("ix_crm_service_events_store_occurred_at", "store_code", "occurred_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    external_userid: str = Field(max_length=64, index=True)
    userid: str | None = Field(default=None, max_length=64)  # the rep answerable
    store_code: str | None = Field(default=None, max_length=32)  # the customer's home store
    kind: str = Field(max_length=16)  # a ServiceEventKind
    message_id: int  # the customer's message (first_response, wait) or the rep's reply (risky)
    occurred_at: datetime  # when the customer wrote / the rep replied
    replied_at: datetime | None = None
    business_seconds: int | None = None  # waited within business hours until the reply; None: unanswered
    rule_id: str | None = Field(default=None, max_length=64)  # risky: the phrase rule
    phrase: str | None = Field(default=None, max_length=128)  # risky: the text that matched
    excerpt: str = Field(default="", max_length=200)
