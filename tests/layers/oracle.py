"""The test oracle: the rule semantics of ``scrm.layers.rules`` (module docstring) evaluated in plain
Python over ``CustomerFacts``, and a small world of rows with the facts derived from it the way the
docstrings say. Written from the docstrings, not from ``scrm.layers.compile`` (no SQL, no shared
helpers), so the SQL pass and this can only agree by both following the text."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from fractions import Fraction

from scrm.layers.facts import CustomerFacts, OrderFact
from scrm.layers.rules import Condition, RuleSet
from scrm.routing.state import parse_state

DAY = dt.timedelta(hours=24)
NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------- the semantics


def _days_since(now: dt.datetime, t: dt.datetime) -> int:
    return (now - t) // DAY  # floor((now - t) / 24 h)


def _in_bounds(value, lo, hi) -> bool:
    # Exact: int/Fraction against the float's exact value.
    return (lo is None or value >= Fraction(lo)) and (hi is None or value <= Fraction(hi))


def _within(t: dt.datetime, now: dt.datetime, days: int | None) -> bool:
    return days is None or now - days * DAY < t <= now


def holds(c: Condition, f: CustomerFacts, now: dt.datetime) -> bool:
    counted = [o for o in f.orders if o.refunded_fen < o.amount_fen]
    checks: list[bool] = []
    if c.orders is not None:
        n = sum(1 for o in counted if _within(o.paid_at, now, c.orders.within_days))
        checks.append(_in_bounds(n, c.orders.min, c.orders.max))
    if c.gmv is not None:
        fen = sum(o.amount_fen - o.refunded_fen for o in counted if _within(o.paid_at, now, c.gmv.within_days))
        checks.append(_in_bounds(Fraction(fen, 100), c.gmv.min, c.gmv.max))
    last_order = max((o.paid_at for o in counted), default=None)
    if c.days_since_last_order is not None:
        b = c.days_since_last_order
        checks.append(last_order is not None and _in_bounds(_days_since(now, last_order), b.min, b.max))
    if c.unique_clicks is not None:
        n = sum(1 for t in f.clicks if _within(t, now, c.unique_clicks.within_days))
        checks.append(_in_bounds(n, c.unique_clicks.min, c.unique_clicks.max))
    if c.days_since_last_active is not None:
        moments = [t for t in (last_order, max(f.clicks, default=None), f.added_at) if t is not None]
        b = c.days_since_last_active
        checks.append(bool(moments) and _in_bounds(_days_since(now, max(moments)), b.min, b.max))
    if c.days_since_added is not None:
        b = c.days_since_added
        checks.append(f.added_at is not None and _in_bounds(_days_since(now, f.added_at), b.min, b.max))
    if c.in_group is not None:
        checks.append(bool(f.groups) == c.in_group)
    if c.stores:
        checks.append(f.home_store in c.stores)
    if c.cities:
        checks.append(f.city is not None and f.city in c.cities)
    if c.states:
        checks.append(any(s == p or (p.endswith("*") and s.startswith(p[:-1])) for s in f.states for p in c.states))
    if c.deleted is not None:
        checks.append(f.deleted == c.deleted)
    if c.any:
        checks.append(any(holds(x, f, now) for x in c.any))
    if c.all:
        checks.append(all(holds(x, f, now) for x in c.all))
    if c.not_ is not None:
        checks.append(not holds(c.not_, f, now))
    return all(checks)


def evaluate(ruleset: RuleSet, f: CustomerFacts, now: dt.datetime) -> tuple[str, str | None, str | None, int]:
    """(layer, rule_id, home_store, tag_bits): the first rule that holds, else the default layer."""
    layer, rule_id = ruleset.default_layer, None
    for rule in ruleset.rules:
        if holds(rule.when, f, now):
            layer, rule_id = rule.layer, rule.id
            break
    bits = sum(1 << i for i, t in enumerate(ruleset.tags.rules) if holds(t.when, f, now))
    return layer, rule_id, f.home_store, bits


# ---------------------------------------------------------------- a world of rows


@dataclass
class World:
    stores: dict[str, str] = field(default_factory=dict)  # code -> city
    customers: dict[str, str] = field(default_factory=dict)  # external_userid -> status
    # (id, userid, external_userid, state, status, added_at)
    follows: list[tuple[int, str, str, str | None, str, dt.datetime | None]] = field(default_factory=list)
    # (external_userid, paid_at, amount_fen, refunded_fen); external_userid None: unmatched
    orders: list[tuple[str | None, dt.datetime, int, int]] = field(default_factory=list)
    clicks: list[tuple[str | None, dt.datetime, bool]] = field(default_factory=list)  # (ext, clicked_at, counted)
    groups: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # chat_id -> (status, store_code)
    # (id, chat_id, member_id, state, joined_at)
    members: list[tuple[int, str, str, str, dt.datetime | None]] = field(default_factory=list)


def facts_of(w: World) -> dict[str, CustomerFacts]:
    """Each customer's facts as the docstrings of scrm.layers.facts define them."""
    out = {}
    for ext, status in w.customers.items():
        follows = [f for f in w.follows if f[2] == ext]
        added = [f[5] for f in follows if f[5] is not None]
        qr = sorted(((f[5] or NEVER, f[0]), parse_state(f[3]).store_code) for f in follows  # type: ignore[union-attr]
                    if parse_state(f[3]) is not None and parse_state(f[3]).store_code in w.stores)  # type: ignore[union-attr]
        joined = sorted(((m[4] or NEVER, m[0]), w.groups[m[1]][1]) for m in w.members
                        if m[2] == ext and m[3] == "member" and w.groups[m[1]][1] is not None)
        home = qr[0][1] if qr else joined[0][1] if joined else None
        out[ext] = CustomerFacts(
            external_userid=ext,
            added_at=min(added, default=None),
            deleted=status in ("lost", "gone") or not any(f[4] == "active" for f in follows),
            states=frozenset(f[3] for f in follows if f[3] is not None),
            home_store=home,
            city=w.stores.get(home) if home is not None else None,
            groups=frozenset(m[1] for m in w.members if m[2] == ext and m[3] == "member"
                             and w.groups[m[1]][0] == "active"),
            orders=tuple(OrderFact(t, a, r) for e, t, a, r in w.orders if e == ext),
            clicks=tuple(t for e, t, counted in w.clicks if e == ext and counted),
        )
    return out
