"""What the dashboard asks for and what it gets back: the contract between the KPI queries
(:mod:`scrm.kpi.queries`) and the pages, the JSON API and the CSV export.

Money is in fen (integers) everywhere; ratios are computed here from the counts, so every view
(page, JSON, CSV) shows the same figure, and a ratio with a zero denominator is ``None`` (shown as
"—"), never 0 and never a division error.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum


class Dimension(StrEnum):
    day = "day"
    store = "store"
    group = "group"
    template = "template"
    post = "post"


UNATTRIBUTED = ""  # the key of the row that collects what no store/group/template/post earned


@dataclass(frozen=True)
class KpiFilter:
    """A date range in the corp's local days, both ends included, and optional narrowing.

    ``stores``: None means every store; a set limits every figure to those stores (a clerk's
    role gives their one store; an empty set sees nothing)."""

    start: dt.date
    end: dt.date
    stores: frozenset[str] | None = None
    chat_id: str | None = None
    template_id: str | None = None

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError("the range ends before it starts")

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def previous(self) -> KpiFilter:
        """The period of the same length just before this one (for "change against")."""
        length = dt.timedelta(days=self.days)
        return KpiFilter(self.start - length, self.end - length, self.stores, self.chat_id, self.template_id)


def ratio(numerator: float, denominator: float) -> float | None:
    return None if not denominator else numerator / denominator


@dataclass(frozen=True)
class KpiRow:
    """One line of the KPI table: a day, store, group, template or post (``key``), with its label
    (store or group name, template title, post time) as stored — the page escapes it."""

    key: str
    label: str
    store_code: str | None = None
    posts_delivered: int = 0  # posts the ledger has as sent/confirmed
    members_reached: int = 0  # group members at delivery, summed over delivered posts
    clicks: int = 0
    unique_clicks: int = 0
    orders: int = 0  # attributed orders
    buyers: int = 0  # distinct customers among those orders (unmatched orders count one each)
    repeat_buyers: int = 0  # buyers with two or more orders in the range
    gmv_fen: int = 0  # attributed order amounts, before refunds
    refunds_fen: int = 0
    refunded_orders: int = 0

    @property
    def net_gmv_fen(self) -> int:
        return self.gmv_fen - self.refunds_fen

    @property
    def ctr_per_post(self) -> float | None:
        return ratio(self.unique_clicks, self.posts_delivered)

    @property
    def ctr_per_member(self) -> float | None:
        return ratio(self.unique_clicks, self.members_reached)

    @property
    def average_order_fen(self) -> float | None:
        return ratio(self.gmv_fen, self.orders)

    @property
    def repeat_rate(self) -> float | None:
        return ratio(self.repeat_buyers, self.buyers)


@dataclass(frozen=True)
class KpiPage:
    rows: list[KpiRow]
    total_rows: int  # all rows of the query, for pagination
    totals: KpiRow  # the whole filtered range (buyers counted distinct over it, not summed)


@dataclass(frozen=True)
class GmvFactors:
    """GMV = customers × conversion × repeat × order value, for one store or group and period.

    customers: distinct customers in the store's groups (members) or brought by the store;
    conversion = buyers / customers; repeat = orders / buyers; order value = GMV / orders."""

    customers: int
    buyers: int
    orders: int
    gmv_fen: int

    @property
    def conversion(self) -> float | None:
        return ratio(self.buyers, self.customers)

    @property
    def repeat(self) -> float | None:
        return ratio(self.orders, self.buyers)

    @property
    def order_value_fen(self) -> float | None:
        return ratio(self.gmv_fen, self.orders)


@dataclass(frozen=True)
class GmvDecomposition:
    key: str  # store code or chat id
    label: str
    store_code: str | None
    current: GmvFactors
    previous: GmvFactors

    def change(self, factor: str) -> float | None:
        """Relative change of one factor (``customers``, ``conversion``, ``repeat``,
        ``order_value_fen``, ``gmv_fen``) against the previous period: 0.1 is +10 %."""
        before, now = getattr(self.previous, factor), getattr(self.current, factor)
        if before is None or now is None or not before:
            return None
        return now / before - 1


@dataclass(frozen=True)
class StaffCodeFunnel:
    userid: str
    name: str
    scans: int  # customers added through this staff member's store QR code
    new_customers: int  # of those, customers scrm had not seen before


@dataclass(frozen=True)
class StoreFunnel:
    store_code: str
    store_name: str
    scans: int
    new_customers: int
    staff: list[StaffCodeFunnel]
    group_joins: int
    group_leaves: int
    groups: int
    members: int  # now
    groups_at_cap: int  # groups with members >= the QR cap (200)
    churned: int  # customers who deleted their contact in the range
    cap: int = 200


@dataclass(frozen=True)
class OwnerCompliance:
    owner_userid: str
    owner_name: str
    store_code: str | None
    due: int  # posts that were due to this owner in the range
    sent_on_time: int
    expired: int
    over_quota: int
    unconfirmed: int

    @property
    def on_time_rate(self) -> float | None:
        return ratio(self.sent_on_time, self.due)


class AttributionRule(StrEnum):
    last_click = "last_click"  # the customer's last counted click within the window
    from_param = "from_param"  # the order's tracked-link code / from parameter
    customer_store = "customer_store"  # the store whose code brought the customer, or whose group they are in
    unattributed = "unattributed"


@dataclass(frozen=True)
class OrderAttribution:
    """Why an order counts where it counts (shown to a manager who asks "why this post")."""

    order_id: str
    source: str
    rule: AttributionRule
    reason: str  # Chinese, one sentence, e.g. "下单前 3 小时点击了 早餐券（群 A，12 月 1 日 08:00）"
    store_code: str | None = None
    chat_id: str | None = None
    post_id: int | None = None
    template_id: str | None = None
    link_code: str | None = None
    click_at: dt.datetime | None = None
    click_id: int | None = None  # the link_clicks row of a last_click attribution
    paid_at: dt.datetime | None = None
    amount_fen: int = 0
    extra: dict[str, str] = field(default_factory=dict)
