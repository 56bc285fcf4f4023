"""A journey message's content for its customer: what the sender and the toolbar page render.

The customer's fields come from the database as plain values (never rows into a template): their
WeCom name, their owner's name, their home store (``customer_layers.home_store``, the store whose
QR code brought them, else their earliest group's store).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from scrm.contacts.models import Customer, Employee, FollowRelation, FollowStatus
from scrm.journeys.render import customer_context, render_journey
from scrm.journeys.template import Journey
from scrm.layers.models import CustomerLayer
from scrm.sop.render import TemplateRenderError, store_fields
from scrm.stores.models import Store
from scrm.wecom.messages import PostContent


@dataclass(frozen=True)
class Recipient:
    external_userid: str
    name: str
    store: dict[str, Any] | None
    followers: frozenset[str]  # employees with an active follow relation to them


def load_recipients(conn: Connection, external_userids: Iterable[str]) -> dict[str, Recipient]:
    ids = sorted(set(external_userids))
    if not ids:
        return {}
    cu, cl, f = Customer.__table__.c, CustomerLayer.__table__.c, FollowRelation.__table__.c
    out: dict[str, Recipient] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        names = {r.external_userid: r.name for r in conn.execute(
            select(cu.external_userid, cu.name).where(cu.external_userid.in_(chunk)))}
        homes = {r.external_userid: r.home_store for r in conn.execute(
            select(cl.external_userid, cl.home_store).where(cl.external_userid.in_(chunk)))}
        followers: dict[str, set[str]] = {}
        for r in conn.execute(select(f.external_userid, f.userid)
                              .where(f.external_userid.in_(chunk), f.status == FollowStatus.active)):
            followers.setdefault(r.external_userid, set()).add(r.userid)
        codes = {c for c in homes.values() if c}
        stores = {s.code: s for s in conn.execute(select(Store.__table__).where(Store.__table__.c.code.in_(codes)))} \
            if codes else {}
        for eid in chunk:
            if eid not in names and eid not in followers:
                continue  # not a customer scrm knows
            home = homes.get(eid)
            out[eid] = Recipient(eid, names.get(eid) or "", store_fields(stores.get(home)) if home else None,
                                 frozenset(followers.get(eid, ())))
    return out


def employee_names(conn: Connection, userids: Iterable[str]) -> dict[str, str]:
    e = Employee.__table__.c
    ids = sorted(set(userids))
    return {r.userid: r.name or r.userid for r in conn.execute(select(e.userid, e.name).where(e.userid.in_(ids)))} \
        if ids else {}


class MessageProblem(Exception):
    """Why a journey message has no content; ``kind`` is a scrm.sop.sender.RenderProblemKind value."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


def render_message(post: Any, journeys: Mapping[str, Journey], recipient: Recipient | None,
                   owner_name: str) -> PostContent:
    """The WeCom payload of one journey row for its customer, or MessageProblem."""
    journey = journeys.get(post.template_id)
    if journey is None:
        raise MessageProblem("journey_gone", f"journey {post.template_id!r} no longer exists")
    if recipient is None or post.sender not in recipient.followers:
        raise MessageProblem("customer_gone", "the owner no longer follows the customer")
    context = customer_context(journey, external_userid=recipient.external_userid, customer_name=recipient.name,
                               owner_name=owner_name, store=recipient.store, day=post.day)
    try:
        return render_journey(journey, context)
    except TemplateRenderError as exc:
        raise MessageProblem("render_error", f"render: {exc}") from None
