"""A RuleSet at a moment ``now`` as one SQL SELECT: per customer the layer, the rule that put them
there, the home store and the condition-tag bits (``scrm.layers.rules`` says what each key means).

Set-based so a million customers are one query, not a million Python evaluations: the facts are
aggregate subqueries (counted orders, counted clicks, follow relations, active group membership,
home store and its city) joined to ``customers``, and every condition becomes a boolean expression
over them. Times are compared with bounds computed here from ``now`` (no date arithmetic in SQL, so
SQLite and PostgreSQL agree to the microsecond); amounts are compared in integer fen; every leaf
is two-valued (a missing moment is "does not hold", never NULL), so ``not`` negates exactly.

SQLAlchemy Core only; works on SQLite (>= 3.30: window functions, NULLS LAST) and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement

from scrm.contacts.models import Customer, CustomerStatus, FollowRelation, FollowStatus
from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.layers.rules import Amount, Condition, Count, Days, RuleSet
from scrm.orders.models import Order
from scrm.sop.models import LinkClick
from scrm.stores.models import Store

MAX_TAG_RULES = 63  # tag_bits is a signed 64-bit integer: bits 0..62
_BIG = 1 << 62  # a threshold past this can never be reached by a count or an amount in fen
_DAY = dt.timedelta(days=1)


class LayerCompileError(ValueError):
    """The rule set cannot be evaluated (e.g. more condition tags than tag_bits holds)."""


def ids_filter(column: Any, only: Sequence[str], dialect: str) -> ColumnElement[bool]:
    """``column IN only``: one array parameter on PostgreSQL, an expanding IN on SQLite."""
    if dialect == "postgresql":
        return column == sa.any_(sa.bindparam("layer_ids", list(only), type_=postgresql.ARRAY(sa.String)))
    return column.in_(sa.bindparam("layer_ids", list(only), expanding=True))


def _pos(dialect: str, haystack: Any, needle: str) -> Any:
    """1-based position of ``needle`` in ``haystack``, 0 when absent."""
    if dialect == "postgresql":
        return sa.func.strpos(haystack, needle)
    return sa.func.instr(haystack, needle)


def store_of_state(dialect: str, state: Any) -> Any:
    """``scrm.routing.state.parse_state(state).store_code`` in SQL (NULL for any other state):
    ``st:<store>:<n>`` (exactly three parts) or ``sg:<store>`` (exactly two), store non-empty."""
    rest = sa.func.substr(state, 4)
    colon = _pos(dialect, rest, ":")
    after = sa.func.substr(rest, colon + 1)
    return sa.case(
        (sa.and_(sa.func.substr(state, 1, 3) == "st:", colon > 1, _pos(dialect, after, ":") == 0),
         sa.func.substr(rest, 1, colon - 1)),
        (sa.and_(sa.func.substr(state, 1, 3) == "sg:", sa.func.length(rest) > 0, colon == 0), rest),
        else_=sa.null(),
    )


@dataclass
class _Needs:
    """What the conditions refer to, so only those facts are aggregated."""

    orders: bool = False
    order_windows: set[int] = field(default_factory=set)  # counted orders within N days
    gmv_windows: set[int] = field(default_factory=set)  # net GMV within N days
    clicks: bool = False
    click_windows: set[int] = field(default_factory=set)
    follows: bool = False
    groups: bool = False
    state_lists: list[tuple[str, ...]] = field(default_factory=list)

    def walk(self, c: Condition) -> None:
        if c.orders is not None or c.gmv is not None or c.days_since_last_order is not None:
            self.orders = True
        if c.orders is not None and c.orders.within_days is not None:
            self.order_windows.add(c.orders.within_days)
        if c.gmv is not None and c.gmv.within_days is not None:
            self.gmv_windows.add(c.gmv.within_days)
        if c.unique_clicks is not None:
            self.clicks = True
            if c.unique_clicks.within_days is not None:
                self.click_windows.add(c.unique_clicks.within_days)
        if c.days_since_last_active is not None:
            self.orders = self.clicks = self.follows = True
        if c.days_since_added is not None or c.deleted is not None:
            self.follows = True
        if c.states:
            self.follows = True
            key = tuple(c.states)
            if key not in self.state_lists:
                self.state_lists.append(key)
        if c.in_group is not None:
            self.groups = True
        for sub in (*c.any, *c.all, *([c.not_] if c.not_ is not None else [])):
            self.walk(sub)


def _state_match(state: Any, patterns: Sequence[str]) -> ColumnElement[bool]:
    """Exact, or a prefix when the pattern ends in ``*`` (case-sensitive on both databases)."""
    terms: list[ColumnElement[bool]] = []
    for p in patterns:
        if p.endswith("*"):
            prefix = p[:-1]
            terms.append(state.is_not(None) if not prefix else sa.func.substr(state, 1, len(prefix)) == prefix)
        else:
            terms.append(state == p)
    return sa.or_(*terms) if terms else sa.false()


def _first_per_customer(dialect: str, ext: Any, code: Any, order: tuple[Any, ...], from_: Any,
                        where: list[Any], name: str) -> Any:
    """(ext, code) of each customer's first row in ``order``: ``DISTINCT ON`` on PostgreSQL (one
    sort, no window over every row), ``row_number()`` elsewhere."""
    if dialect == "postgresql":
        return (sa.select(ext.label("ext"), code.label("code")).select_from(from_).where(*where)
                .ext(postgresql.distinct_on(ext)).order_by(ext, *order).subquery(name))
    ranked = (sa.select(ext.label("ext"), code.label("code"),
                        sa.func.row_number().over(partition_by=ext, order_by=order).label("rn"))
              .select_from(from_).where(*where).subquery(f"{name}r"))
    return sa.select(ranked.c.ext, ranked.c.code).where(ranked.c.rn == 1).subquery(name)


class _Facts:
    """The per-customer fact columns of the compiled query."""

    def __init__(self, needs: _Needs, *, now: dt.datetime, dialect: str, only: Sequence[str] | None):
        self.now = now
        self.needs = needs
        c = Customer.__table__.c
        base: Any = Customer.__table__
        self.customer = c
        o, lc, fr = Order.__table__.c, LinkClick.__table__.c, FollowRelation.__table__.c
        gm, g, st = GroupMember.__table__.c, CustomerGroup.__table__.c, Store.__table__.c

        def window(t: Any, days: int) -> ColumnElement[bool]:
            return sa.and_(t > now - days * _DAY, t <= now)

        self.orders: Any = None
        if needs.orders:
            cols: list[Any] = [o.external_userid.label("ext"), sa.func.count().label("n"),
                               sa.func.sum(o.amount_fen - o.refunded_fen).label("fen"),
                               sa.func.max(o.paid_at).label("last")]
            for d in sorted(needs.order_windows):
                cols.append(sa.func.sum(sa.case((window(o.paid_at, d), 1), else_=0)).label(f"n{d}"))
            for d in sorted(needs.gmv_windows):
                cols.append(sa.func.sum(sa.case((window(o.paid_at, d), o.amount_fen - o.refunded_fen), else_=0))
                            .label(f"fen{d}"))
            where = [o.external_userid.is_not(None), o.refunded_fen < o.amount_fen]
            self._restrict(where, o.external_userid, only, dialect)
            self.orders = sa.select(*cols).where(*where).group_by(o.external_userid).subquery("lo")
            base = base.outerjoin(self.orders, self.orders.c.ext == c.external_userid)

        self.clicks: Any = None
        if needs.clicks:
            cols = [lc.external_userid.label("ext"), sa.func.count().label("n"),
                    sa.func.max(lc.clicked_at).label("last")]
            for d in sorted(needs.click_windows):
                cols.append(sa.func.sum(sa.case((window(lc.clicked_at, d), 1), else_=0)).label(f"n{d}"))
            where = [lc.external_userid.is_not(None), lc.counted.is_(True)]
            self._restrict(where, lc.external_userid, only, dialect)
            self.clicks = sa.select(*cols).where(*where).group_by(lc.external_userid).subquery("lk")
            base = base.outerjoin(self.clicks, self.clicks.c.ext == c.external_userid)

        self.follows: Any = None
        if needs.follows:
            cols = [fr.external_userid.label("ext"), sa.func.min(fr.added_at).label("first_added"),
                    sa.func.max(sa.case((fr.status == FollowStatus.active.value, 1), else_=0)).label("active")]
            for i, patterns in enumerate(needs.state_lists):
                cols.append(sa.func.max(sa.case((_state_match(fr.state, patterns), 1), else_=0)).label(f"s{i}"))
            where = []
            self._restrict(where, fr.external_userid, only, dialect)
            self.follows = sa.select(*cols).where(*where).group_by(fr.external_userid).subquery("lf")
            base = base.outerjoin(self.follows, self.follows.c.ext == c.external_userid)

        self.groups: Any = None
        if needs.groups:
            where = [gm.state == MemberState.member.value, g.status == GroupStatus.active.value]
            self._restrict(where, gm.member_id, only, dialect)
            self.groups = (sa.select(gm.member_id.label("ext")).select_from(
                GroupMember.__table__.join(CustomerGroup.__table__, g.chat_id == gm.chat_id))
                .where(*where).group_by(gm.member_id).subquery("lg"))
            base = base.outerjoin(self.groups, self.groups.c.ext == c.external_userid)

        # Home store: the earliest follow relation whose state names an existing store, else the
        # store of the earliest active membership of a group with a store (KPI attribution's rule).
        code = store_of_state(dialect, fr.state)
        where = [fr.state.is_not(None)]
        self._restrict(where, fr.external_userid, only, dialect)
        self.qr = _first_per_customer(
            dialect, fr.external_userid, st.code, (fr.added_at.asc().nulls_last(), fr.id),
            FollowRelation.__table__.join(Store.__table__, st.code == code), where, "lq")
        where = [gm.state == MemberState.member.value, g.store_code.is_not(None)]
        self._restrict(where, gm.member_id, only, dialect)
        self.grp = _first_per_customer(
            dialect, gm.member_id, g.store_code, (gm.joined_at.asc().nulls_last(), gm.id),
            GroupMember.__table__.join(CustomerGroup.__table__, g.chat_id == gm.chat_id), where, "lgs")
        base = base.outerjoin(self.qr, self.qr.c.ext == c.external_userid)
        base = base.outerjoin(self.grp, self.grp.c.ext == c.external_userid)
        self.home = sa.func.coalesce(self.qr.c.code, self.grp.c.code)
        self.home_store = Store.__table__.alias("lhs")
        base = base.outerjoin(self.home_store, self.home_store.c.code == self.home)
        self.city = self.home_store.c.city
        self.from_ = base
        self.where: list[Any] = []
        self._restrict(self.where, c.external_userid, only, dialect)

    @staticmethod
    def _restrict(where: list[Any], column: Any, only: Sequence[str] | None, dialect: str) -> None:
        if only is not None:
            where.append(ids_filter(column, only, dialect))

    # The fact columns (NULL-free where a count is meant).
    def order_count(self, within: int | None) -> Any:
        return sa.func.coalesce(self.orders.c[f"n{within}" if within else "n"], 0)

    def order_fen(self, within: int | None) -> Any:
        return sa.func.coalesce(self.orders.c[f"fen{within}" if within else "fen"], 0)

    def click_count(self, within: int | None) -> Any:
        return sa.func.coalesce(self.clicks.c[f"n{within}" if within else "n"], 0)

    def deleted(self) -> ColumnElement[bool]:
        return sa.or_(self.customer.status.in_([CustomerStatus.lost.value, CustomerStatus.gone.value]),
                      sa.func.coalesce(self.follows.c.active, 0) == 0)


def _count(value: Any, b: Count) -> ColumnElement[bool]:
    """An integer count within [min, max] (count >= min <=> count >= ceil(min))."""
    parts: list[ColumnElement[bool]] = []
    if b.min is not None:
        lo = math.ceil(Fraction(b.min))
        parts.append(sa.false() if lo > _BIG else value >= lo)
    if b.max is not None:
        hi = math.floor(Fraction(b.max))
        if hi <= _BIG:
            parts.append(value <= hi)
    return sa.and_(*parts) if parts else sa.true()


def _fen(value: Any, b: Amount) -> ColumnElement[bool]:
    """Net GMV in yuan within [min, max], compared exactly in fen (fen / 100 >= min <=> fen >=
    ceil(100 * min) for the exact value of the float ``min``)."""
    parts: list[ColumnElement[bool]] = []
    if b.min is not None:
        lo = math.ceil(Fraction(b.min) * 100)
        parts.append(sa.false() if lo > _BIG else value >= lo)
    if b.max is not None:
        hi = math.floor(Fraction(b.max) * 100)
        if hi <= _BIG:
            parts.append(value <= hi)
    return sa.and_(*parts) if parts else sa.true()


def _days(moments: Sequence[Any], b: Days, now: dt.datetime) -> ColumnElement[bool]:
    """``floor((now - t) / 24 h)`` within [min, max] for t = the latest non-NULL of ``moments``;
    never holds when all are NULL. days >= m <=> t <= now - ceil(m) days; days <= M <=> t > now -
    (floor(M) + 1) days."""
    known = sa.or_(*[m.is_not(None) for m in moments])
    parts: list[ColumnElement[bool]] = [known]
    span = (now - dt.datetime(1, 1, 2, tzinfo=dt.UTC)).days  # further back than any stored time
    if b.min is not None:
        lo = math.ceil(Fraction(b.min))
        if lo > span:
            return sa.false()
        bound = now - lo * _DAY
        # The latest is <= bound: every known one is.
        parts += [sa.or_(m.is_(None), m <= bound) for m in moments]
    if b.max is not None:
        hi = math.floor(Fraction(b.max))
        if hi < span:
            bound = now - (hi + 1) * _DAY
            # The latest is > bound: some known one is.
            parts.append(sa.or_(*[sa.and_(m.is_not(None), m > bound) for m in moments]))
    return sa.and_(*parts)


def _condition(c: Condition, f: _Facts) -> ColumnElement[bool]:
    parts: list[ColumnElement[bool]] = []
    if c.orders is not None:
        parts.append(_count(f.order_count(c.orders.within_days), c.orders))
    if c.gmv is not None:
        parts.append(_fen(f.order_fen(c.gmv.within_days), c.gmv))
    if c.days_since_last_order is not None:
        parts.append(_days([f.orders.c.last], c.days_since_last_order, f.now))
    if c.unique_clicks is not None:
        parts.append(_count(f.click_count(c.unique_clicks.within_days), c.unique_clicks))
    if c.days_since_last_active is not None:
        parts.append(_days([f.orders.c.last, f.clicks.c.last, f.follows.c.first_added],
                           c.days_since_last_active, f.now))
    if c.days_since_added is not None:
        parts.append(_days([f.follows.c.first_added], c.days_since_added, f.now))
    if c.in_group is not None:
        parts.append(f.groups.c.ext.is_not(None) if c.in_group else f.groups.c.ext.is_(None))
    if c.stores:
        parts.append(sa.and_(f.home.is_not(None), f.home.in_(list(c.stores))))
    if c.cities:
        parts.append(sa.and_(f.city.is_not(None), f.city.in_(list(c.cities))))
    if c.states:
        i = f.needs.state_lists.index(tuple(c.states))
        parts.append(sa.func.coalesce(f.follows.c[f"s{i}"], 0) == 1)
    if c.deleted is not None:
        parts.append(f.deleted() if c.deleted else sa.not_(f.deleted()))
    if c.any:
        parts.append(sa.or_(*[_condition(x, f) for x in c.any]))
    if c.all:
        parts.append(sa.and_(*[_condition(x, f) for x in c.all]))
    if c.not_ is not None:
        parts.append(sa.not_(_condition(c.not_, f)))
    return sa.and_(*parts) if parts else sa.true()


def compile_pass(ruleset: RuleSet, *, now: dt.datetime, dialect: str,
                 only: Sequence[str] | None = None) -> sa.Select:
    """One SELECT of (external_userid, layer, rule_id, home_store, tag_bits) for every row of
    ``customers`` (or just ``only``'s ids). ``dialect``: ``engine.dialect.name``. On SQLite
    ``only`` is an expanding IN parameter, so keep it to a few hundred ids per query."""
    if now.tzinfo is None:
        raise LayerCompileError("now must be an aware datetime (UTC)")
    if len(ruleset.tags.rules) > MAX_TAG_RULES:
        raise LayerCompileError(f"{len(ruleset.tags.rules)} condition tags; tag_bits holds at most {MAX_TAG_RULES}")
    now = now.astimezone(dt.UTC)
    needs = _Needs()
    for rule in ruleset.rules:
        needs.walk(rule.when)
    for tag in ruleset.tags.rules:
        needs.walk(tag.when)
    f = _Facts(needs, now=now, dialect=dialect, only=only)

    if ruleset.rules:
        index: Any = sa.case(*[(_condition(r.when, f), i) for i, r in enumerate(ruleset.rules)], else_=-1)
    else:
        index = sa.literal(-1)
    bits: Any = sa.literal(0, sa.BigInteger)
    for i, tag in enumerate(ruleset.tags.rules):
        bits = bits + sa.case((_condition(tag.when, f), sa.literal(1 << i, sa.BigInteger)),
                              else_=sa.literal(0, sa.BigInteger))
    inner = (sa.select(f.customer.external_userid.label("external_userid"), index.label("ri"),
                       f.home.label("home_store"), sa.cast(bits, sa.BigInteger).label("tag_bits"))
             .select_from(f.from_).where(*f.where).subquery("lp"))
    if ruleset.rules:
        layer: Any = sa.case(*[(inner.c.ri == i, r.layer) for i, r in enumerate(ruleset.rules)],
                             else_=ruleset.default_layer)
        rule_id: Any = sa.case(*[(inner.c.ri == i, r.id) for i, r in enumerate(ruleset.rules)],
                               else_=sa.null())
    else:
        layer = sa.literal(ruleset.default_layer, sa.String)
        rule_id = sa.cast(sa.null(), sa.String)
    return sa.select(inner.c.external_userid, layer.label("layer"), rule_id.label("rule_id"),
                     inner.c.home_store, inner.c.tag_bits)
