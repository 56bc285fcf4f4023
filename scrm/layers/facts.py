"""What the rules are evaluated on, as plain data (tests' oracles and explanations use it; the
full pass computes the same facts in SQL)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class OrderFact:
    paid_at: dt.datetime  # UTC, aware
    amount_fen: int
    refunded_fen: int = 0

    @property
    def counted(self) -> bool:
        return self.refunded_fen < self.amount_fen


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    external_userid: str
    added_at: dt.datetime | None = None  # the first follow relation's add time
    deleted: bool = False  # no active follow relation left
    states: frozenset[str] = frozenset()  # the states of their follow relations
    # The store whose QR code brought them (the earliest follow relation whose ``state`` is a store
    # state, scrm.routing.state.parse_state, of a store that exists), else the store of the group
    # they joined earliest among their active memberships. The KPI attribution's customer store.
    home_store: str | None = None
    city: str | None = None  # the home store's city
    groups: frozenset[str] = frozenset()  # active customer groups they are a member of
    orders: tuple[OrderFact, ...] = ()
    clicks: tuple[dt.datetime, ...] = field(default=())  # counted clicks
