"""The ledger side of journeys: plan 1:1 messages into ``sop_posts``, and hold back at fire time
those whose customer has left the layer.

A journey message is a ``sop_posts`` row with audience ``customer``: ``chat_id`` is the customer's
external_userid, ``slot`` 1 (the ledger's unique (chat_id, day, slot) makes it at most one journey
message per customer per day, whatever two planners do), ``mass_seq`` 1 for a mass send,
``template_id`` the journey id, ``step_key`` the change (``lc:<id>:<layer>``), ``sender`` the
owner. The owner is the employee of the customer's earliest active follow relation (by add time,
then relation id): the first who added them, the same member WeCom's single mass send would pick
among their followers, and for a customer who came through a store's staff QR code the employee
of that code.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from scrm.contacts.models import FollowRelation, FollowStatus
from scrm.db import utcnow
from scrm.journeys.planner import (
    Change,
    DroppedMessage,
    ExistingMessage,
    JourneyPlan,
    parse_step_key,
)
from scrm.journeys.planner import plan_journeys as plan_messages
from scrm.journeys.template import Journey
from scrm.layers.models import CustomerLayer, LayerChange
from scrm.logs import get_logger
from scrm.sop.models import Audience, PostStatus, SopPost
from scrm.sop.planner import Limits
from scrm.sop.template import Channel

log = get_logger(__name__)
CHUNK = 500
# The shipped layers (layers/layers.yaml) in the owners' words, for messages held back at fire time
# (the layer rules' own names are used when given: ``layer_names``).
DEFAULT_LAYER_NAMES = {"new": "新客", "first_time": "首单客", "repeat": "复购客", "high_value": "高价值",
                       "dormant": "沉睡", "churned": "已流失"}


@dataclass
class JourneyReport:
    """What a planning run did: rows written, rows another planner wrote first, and every
    change not planned, by reason (and listed, the first 200)."""

    inserted: int = 0
    conflicts: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_list: list[DroppedMessage] = field(default_factory=list)
    plan: JourneyPlan | None = None


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def read_changes(conn: Connection, to_layers: Iterable[str], since: dt.datetime) -> list[Change]:
    c = LayerChange.__table__.c
    return [Change(r.id, r.external_userid, r.from_layer, r.to_layer, r.changed_at)
            for r in conn.execute(select(c.id, c.external_userid, c.from_layer, c.to_layer, c.changed_at)
                                  .where(c.to_layer.in_(sorted(set(to_layers))), c.changed_at >= since))]


def read_current(conn: Connection, customers: list[str]) -> dict[str, str]:
    c = CustomerLayer.__table__.c
    out: dict[str, str] = {}
    for chunk in _chunks(customers):
        out.update({r.external_userid: r.layer for r in conn.execute(
            select(c.external_userid, c.layer).where(c.external_userid.in_(chunk)))})
    return out


def read_owners(conn: Connection, customers: list[str]) -> dict[str, str]:
    """Each customer's owner: the employee of their earliest active follow relation."""
    f = FollowRelation.__table__.c
    out: dict[str, str] = {}
    for chunk in _chunks(customers):
        rows = conn.execute(select(f.external_userid, f.userid, f.added_at, f.id)
                            .where(f.external_userid.in_(chunk), f.status == FollowStatus.active)).all()
        far = dt.datetime.max.replace(tzinfo=dt.UTC)
        for r in sorted(rows, key=lambda r: (r.added_at or far, r.id), reverse=True):
            out[r.external_userid] = r.userid  # the earliest is written last
    return out


def read_existing(conn: Connection, customers: list[str]) -> list[ExistingMessage]:
    c = SopPost.__table__.c
    out: list[ExistingMessage] = []
    for chunk in _chunks(customers):
        out += [ExistingMessage(r.chat_id, r.day, r.template_id, r.step_key) for r in conn.execute(
            select(c.chat_id, c.day, c.template_id, c.step_key)
            .where(c.audience == Audience.customer, c.chat_id.in_(chunk)))]
    return out


def plan_journeys(engine: Engine, journeys: Iterable[Journey], *, now: dt.datetime | None = None,
                              tz: ZoneInfo, limits: Limits) -> JourneyReport:
    """Plan the messages the recent layer changes start and write them (insert ... on conflict do
    nothing). Reads the changes that can still lead to a message: the last ``max delay_days + 2``
    days. Safe to run again at any time: a change is planned once."""
    now = now or utcnow()
    active = [j for j in journeys if j.enabled]
    report = JourneyReport()
    if not active:
        return report
    horizon = max(j.delay_days for j in active) + 2
    table, c = SopPost.__table__, SopPost.__table__.c
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # two schedulers: one plans at a time
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(b"journeys:plan")})
        changes = read_changes(conn, (j.trigger.to_layer for j in active), now - dt.timedelta(days=horizon))
        customers = sorted({ch.external_userid for ch in changes})
        plan = plan_messages(active, changes, read_current(conn, customers), read_owners(conn, customers),
                             read_existing(conn, customers), limits, now=now, tz=tz)
        stamp = utcnow()
        rows = [dict(
            day=m.day, audience=Audience.customer, chat_id=m.external_userid, slot=1,
            mass_seq=1 if m.channel == Channel.mass_send.value else None, template_id=m.journey_id,
            step_key=m.step_key, template_digest=m.digest, channel=m.channel, sender=m.sender,
            priority=m.priority, scheduled_for=m.at.replace(tzinfo=tz).astimezone(dt.UTC),
            window_ends_at=m.window_end.replace(tzinfo=tz).astimezone(dt.UTC), status=PostStatus.planned,
            attempts=0, created_at=stamp, updated_at=stamp) for m in plan.messages]
        for i in range(0, len(rows), 1000):
            chunk = rows[i:i + 1000]
            written = conn.execute(insert(table).on_conflict_do_nothing().returning(c.id), chunk).all()
            report.inserted += len(written)
            report.conflicts += len(chunk) - len(written)
    report.plan = plan
    report.dropped = plan.dropped_counts
    report.dropped_list = plan.dropped[:200]
    log.info("journeys_planned", changes=len(changes), inserted=report.inserted, conflicts=report.conflicts,
             **{f"dropped_{k}": v for k, v in report.dropped.items()})
    return report


def left_layer_text(layer: str, layer_names: Mapping[str, str] | None = None) -> str:
    """Why a journey message did not go out, for the owner (the ledger's ``error``)."""
    name = (layer_names or {}).get(layer) or DEFAULT_LAYER_NAMES.get(layer) or layer
    return f"客户已离开「{name}」分层，这条消息不再发送"


def expire_left_layer(engine: Engine, now: dt.datetime | None = None, *,
                      layer_names: Mapping[str, str] | None = None) -> list[int]:
    """Journey messages about to be claimed (planned and due by ``now``) or waiting for their owner
    (``due``) whose customer is no longer in the layer the change put them in end ``expired``,
    with the reason in Chinese. Called by the fire job before posts are claimed, so such a message
    never reaches a worker or a page's Send button. Returns the expired ids."""
    now = now or utcnow()
    table, c = SopPost.__table__, SopPost.__table__.c
    cl = CustomerLayer.__table__.c
    expired: list[int] = []
    with engine.begin() as conn:
        rows = conn.execute(
            select(c.id, c.chat_id, c.step_key, cl.layer)
            .select_from(table.outerjoin(CustomerLayer.__table__, cl.external_userid == c.chat_id))
            .where(c.audience == Audience.customer,
                   ((c.status == PostStatus.planned) & (c.scheduled_for <= now)) | (c.status == PostStatus.due))
        ).all()
        by_reason: dict[str, list[int]] = {}
        for r in rows:
            parsed = parse_step_key(r.step_key)
            if parsed is None or r.layer == parsed[1]:
                continue
            by_reason.setdefault(left_layer_text(parsed[1], layer_names), []).append(r.id)
        for reason, ids in by_reason.items():
            for i in range(0, len(ids), CHUNK):
                expired += [r.id for r in conn.execute(
                    update(table).where(c.id.in_(ids[i:i + CHUNK]), c.status.in_((PostStatus.planned, PostStatus.due)))
                    .values(status=PostStatus.expired, error=reason, updated_at=now).returning(c.id))]
    if expired:
        log.info("journeys_left_layer_expired", count=len(expired), post_ids=expired[:20])
    return expired
