"""The send ledger: one row per SOP post, whatever its channel, from planned to confirmed.

The limits are facts of the database, not only of the planner, so they hold with two schedulers
and with an owner pressing Send twice:
- ``slot`` is 1..3 and unique per group and day: at most 3 posts a group a day, ever;
- ``mass_seq`` is set only on mass sends and unique per group and day (the planner hands out
  1..sop.max_mass_sends_per_group_per_day);
- a template step is planned at most once per group and day.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import JSON, CheckConstraint, Column, Index, Table, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from scrm.db import utcnow

# planned -> sending -> sent -> confirmed          (mass_send: sent = task created, confirmed = delivered)
#                    \-> failed (errcode)          (retried within its day while limits allow)
# planned -> due -> sending -> sent               (owner_task: the owner's page claimed it, with a lease,
#                          \-> due                  then confirmed it; a cancelled or failed send releases it)
#                          \-> unconfirmed          (the lease lapsed without a word: maybe sent; the owner says)
# planned|due -> expired                           (its window ended unsent)


class PostStatus(StrEnum):
    """Where a post is in the ledger (a str, so it compares and stores as its value)."""

    planned = "planned"
    due = "due"  # an owner task whose time has come: the owner sends it from the toolbar page
    sending = "sending"  # claimed: a worker is sending it, or an owner's page holds a lease on it
    sent = "sent"
    confirmed = "confirmed"
    failed = "failed"
    expired = "expired"
    over_quota = "over_quota"
    unconfirmed = "unconfirmed"  # an owner's claim lapsed without a confirmation: never re-offered as unsent


class Audience(StrEnum):
    group = "group"
    customer = "customer"


OPEN_STATUSES = (PostStatus.planned, PostStatus.sending, PostStatus.due)
FINAL_STATUSES = (PostStatus.sent, PostStatus.confirmed, PostStatus.failed, PostStatus.expired, PostStatus.over_quota,
                  PostStatus.unconfirmed)
HARD_MAX_POSTS_PER_DAY = 3


class SopPost(SQLModel, table=True):
    __tablename__ = "sop_posts"
    # SQLModel sets __table__ but does not declare it: declared so the type checker knows the columns.
    __table__: ClassVar[Table]
    __table_args__ = (
        UniqueConstraint("chat_id", "day", "slot"),
        UniqueConstraint("chat_id", "day", "mass_seq"),
        UniqueConstraint("chat_id", "day", "template_id", "step_key"),
        CheckConstraint(f"slot >= 1 AND slot <= {HARD_MAX_POSTS_PER_DAY}", name="slot_range"),
        # Only sent posts have a msgid: planned rows (most of a day's 300,000 at planning) cost no entry.
        Index("ix_sop_posts_msgid", "msgid", postgresql_where=text("msgid IS NOT NULL"),
              sqlite_where=text("msgid IS NOT NULL")),
    )
    # No index of its own on chat_id (the unique constraints start with it) nor on audience (two
    # values): every index is paid for on each of the day's first-plan inserts (bench/sop_plan.py).

    id: int | None = Field(default=None, primary_key=True)
    day: date = Field(index=True)  # the group's calendar day in the corp's time zone
    # ``group``: a group SOP post, ``chat_id`` is the customer group. ``customer``: a 1:1 journey
    # message, ``chat_id`` is the customer's external_userid (their 1:1 chat). The same limits hold
    # per chat: journey messages take slot 1 only, so a customer gets at most one a day.
    audience: str = Field(default="group", max_length=8,
                          sa_column_kwargs={"server_default": "group"})  # an Audience
    chat_id: str = Field(max_length=64)
    slot: int
    mass_seq: int | None = None
    template_id: str = Field(max_length=64, index=True)
    step_key: str = Field(max_length=64)
    # Digest of the step (and targets) as planned: a template edit shows up as a new digest.
    template_digest: str = Field(max_length=16)
    channel: str = Field(max_length=16)
    sender: str = Field(max_length=64, index=True)  # the sending account: the group's owner
    priority: int = 50
    scheduled_for: datetime = Field(index=True)  # UTC, jitter included
    window_ends_at: datetime  # UTC: after this an unsent post expires
    status: str = Field(default=PostStatus.planned, max_length=16, index=True)
    attempts: int = 0
    msgid: str | None = Field(default=None, max_length=128)
    errcode: int | None = None
    error: str | None = None
    # As rendered at send time; None is SQL NULL (not a JSON null), so "not fixed yet" is one test.
    content: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    sent_by: str | None = Field(default=None, max_length=64)
    # owner_task in ``sending``: the owner whose toolbar page claimed it, and until when the claim
    # holds. A worker never touches a post that has ``claimed_by``.
    claimed_by: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = None
    # owner_task: when the owner's reminder app message listed this post.
    reminded_at: datetime | None = None
    sent_at: datetime | None = None
    confirmed_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class TrackedLink(SQLModel, table=True):
    """A link attachment of one post, sent as ``{web.public_url}/t/{code}`` so clicks are counted
    per group, post and day (managers judge SOPs by click-through).

    The counters are kept by the click write-behind (:mod:`scrm.clicks.flush`): ``clicks`` are a
    person's clicks (repeats included), ``unique_clicks`` the counted ones (one per visitor per
    window); link previews and bots are in ``link_clicks`` only. First/last are of a person's clicks."""

    __tablename__ = "tracked_links"
    __table__: ClassVar[Table]
    __table_args__ = (UniqueConstraint("post_id", "position"),)

    code: str = Field(primary_key=True, max_length=24)
    post_id: int = Field(index=True)
    position: int  # index of the attachment in the post
    chat_id: str = Field(max_length=64, index=True)
    template_id: str = Field(max_length=64, index=True)
    day: date = Field(index=True)
    url: str
    clicks: int = 0
    unique_clicks: int = 0
    first_clicked_at: datetime | None = None
    last_clicked_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class LinkClick(SQLModel, table=True):
    """One request to ``/t/{code}``, as the write-behind decided it: who fetched it (``agent``,
    and the rule that said so), the visitor key unique clicks are counted by, whether it counted
    (``reason`` a :class:`scrm.clicks.counting.CountReason`) and the customer when a signed token
    named one. ``event_id`` is made by the request, so a retried flush never writes a click twice."""

    __tablename__ = "link_clicks"
    __table__: ClassVar[Table]
    __table_args__ = (
        # Attribution: a customer's last counted click before an order; a link's clicks by day.
        Index("ix_link_clicks_external_userid_clicked_at", "external_userid", "clicked_at"),
        Index("ix_link_clicks_code_clicked_at", "code", "clicked_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=32, unique=True)
    code: str = Field(max_length=24)
    clicked_at: datetime = Field(default_factory=utcnow, index=True)
    visitor: str = Field(default="", max_length=160)
    agent: str = Field(default="person", max_length=8)  # scrm.clicks.agents.AgentClass
    agent_reason: str | None = Field(default=None, max_length=24)  # scrm.clicks.agents.AgentReason
    reason: str = Field(default="counted", max_length=16)  # scrm.clicks.counting.CountReason
    counted: bool = True
    external_userid: str | None = Field(default=None, max_length=128)
