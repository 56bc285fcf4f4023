"""One customer's layer history, for ``scrm layers history``: where they are now and every move
that brought them there (oldest first), with the rule that made it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Engine

from scrm.layers.models import CustomerLayer, LayerChange


@dataclass(frozen=True)
class Move:
    changed_at: dt.datetime
    from_layer: str | None  # None: their first placement
    to_layer: str
    rule_id: str | None  # None: no rule matched, the default layer
    home_store: str | None


@dataclass
class CustomerHistory:
    external_userid: str
    layer: str | None = None  # None: the layering pass has not seen them
    rule_id: str | None = None
    since: dt.datetime | None = None
    home_store: str | None = None
    moves: list[Move] = field(default_factory=list)


def customer_history(engine: Engine, external_userid: str) -> CustomerHistory:
    """The customer's current layer (``customer_layers``) and moves (``layer_changes``), oldest first."""
    cl, ch = CustomerLayer.__table__.c, LayerChange.__table__.c
    with engine.connect() as conn:
        now = conn.execute(select(cl.layer, cl.rule_id, cl.since, cl.home_store)
                           .where(cl.external_userid == external_userid)).first()
        moves = [Move(r.changed_at, r.from_layer, r.to_layer, r.rule_id, r.home_store) for r in conn.execute(
            select(ch.changed_at, ch.from_layer, ch.to_layer, ch.rule_id, ch.home_store)
            .where(ch.external_userid == external_userid).order_by(ch.changed_at, ch.id))]
    history = CustomerHistory(external_userid, moves=moves)
    if now is not None:
        history.layer, history.rule_id, history.since, history.home_store = now.layer, now.rule_id, now.since, \
            now.home_store
    return history
