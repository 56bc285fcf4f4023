"""Precedence of the layer rules: lint's "this rule can never match" warning is never wrong, and the
shipped coffee-chain rules put customers where the issue says (first order -> 首单客, a third order
within 30 days -> 复购客, 60 days of silence -> 沉睡, deleted -> 已流失).

The oracle is tests/layers/oracle.py: the rule semantics of scrm/layers/rules.py's docstring in
plain Python, written by the pass's tests independently of lint's cheap implication check.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrm.layers.facts import CustomerFacts, OrderFact
from scrm.layers.lint import implies, load_ruleset
from scrm.layers.rules import Condition
from tests.layers.oracle import evaluate, holds

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
SHIPPED = Path(__file__).resolve().parents[2] / "layers"
STORES = ["S1", "S2", "S3"]
CITIES = ["上海", "北京"]
STATES = ["st:S1:1", "sg:S2", "other"]

# --------------------------------------------------------------------------------------------
# Strategies

windows = st.sampled_from([None, 7, 30, 60, 90])
small = st.integers(0, 6)


@st.composite
def bounds(draw, *, window: bool, scale: int = 1):
    lo = draw(st.one_of(st.none(), small.map(lambda v: v * scale)))
    hi = draw(st.one_of(st.none(), small.map(lambda v: v * scale)))
    if lo is None and hi is None:
        lo = draw(small) * scale
    if lo is not None and hi is not None and hi < lo:
        lo, hi = hi, lo
    out: dict = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    if window:
        days = draw(windows)
        if days is not None:
            out["within_days"] = days
    return out


@st.composite
def conditions(draw, depth: int = 1):
    keys = draw(st.sets(st.sampled_from([
        "orders", "gmv", "unique_clicks", "days_since_last_order", "days_since_last_active", "days_since_added",
        "in_group", "deleted", "stores", "cities", "states", "any", "not"]), min_size=1, max_size=3))
    out: dict = {}
    for key in keys:
        if key in ("orders", "unique_clicks"):
            out[key] = draw(bounds(window=True))
        elif key == "gmv":
            out[key] = draw(bounds(window=True, scale=40))
        elif key.startswith("days_since"):
            out[key] = draw(bounds(window=False, scale=15))
        elif key in ("in_group", "deleted"):
            out[key] = draw(st.booleans())
        elif key in ("stores", "cities", "states"):
            pool = {"stores": STORES, "cities": CITIES, "states": STATES + ["sg:*"]}[key]
            out[key] = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
        elif depth > 0 and key == "any":
            out[key] = draw(st.lists(conditions(depth - 1), min_size=1, max_size=2))
        elif depth > 0 and key == "not":
            out[key] = draw(conditions(depth - 1))
    if not out:
        out["deleted"] = False
    return out


@st.composite
def tightened(draw, cond: dict) -> dict:
    """A condition every customer of which ``cond`` also holds for, by the moves lint is meant to
    see: a higher min or lower max, a narrower window for a lower bound (wider for an upper),
    fewer listed values, an extra key, one item of an ``any``."""
    out = dict(cond)
    for key, value in cond.items():
        if not draw(st.booleans()):
            continue
        if isinstance(value, dict) and ("min" in value or "max" in value):
            v = dict(value)
            if "min" in v:
                top = v.get("max", v["min"] + 3)
                v["min"] = draw(st.integers(v["min"], top))
            if "max" in v:
                v["max"] = draw(st.integers(max(v.get("min", 0), v["max"] - 3), v["max"]))
            if "within_days" in cond[key] or key in ("orders", "gmv", "unique_clicks"):
                if "min" in v and "max" not in v:
                    narrower = [d for d in (7, 30, 60, 90) if v.get("within_days") is None or d <= v["within_days"]]
                    v["within_days"] = draw(st.sampled_from(narrower))
                elif "max" in v and "min" not in v and v.get("within_days") is not None:
                    wider = [d for d in (7, 30, 60, 90) if d >= v["within_days"]] + [None]
                    days = draw(st.sampled_from(wider))
                    v.pop("within_days")
                    if days is not None:
                        v["within_days"] = days
            out[key] = v
        elif isinstance(value, list) and key in ("stores", "cities", "states") and len(value) > 1:
            out[key] = value[:1]
    if draw(st.booleans()):
        extra = draw(conditions(0))
        for key, value in extra.items():
            out.setdefault(key, value)
    return out


@st.composite
def perturbed(draw, cond: dict) -> dict:
    """A condition near ``cond``: bounds moved either way, windows changed, list values swapped,
    ``any`` items perturbed or replaced. Some imply ``cond``, many don't: the pairs where a sloppy
    implication check would be wrong."""
    out = dict(cond)
    for key, value in cond.items():
        if not draw(st.booleans()):
            continue
        if isinstance(value, dict) and ("min" in value or "max" in value):
            v = dict(value)
            for side in ("min", "max"):
                if side in v:
                    v[side] = max(0, v[side] + draw(st.integers(-2, 2)))
            if "min" in v and "max" in v and v["max"] < v["min"]:
                v["min"], v["max"] = v["max"], v["min"]
            if key in ("orders", "gmv", "unique_clicks"):
                v.pop("within_days", None)
                days = draw(windows)
                if days is not None:
                    v["within_days"] = days
            out[key] = v
        elif key in ("stores", "cities", "states"):
            pool = {"stores": STORES, "cities": CITIES, "states": STATES + ["sg:*"]}[key]
            out[key] = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
        elif key == "any":
            out[key] = [draw(st.one_of(perturbed(item), conditions(0))) if draw(st.booleans()) else item
                        for item in value]
    return out


@st.composite
def customers(draw):
    def moment(max_days: int = 200) -> dt.datetime:
        return NOW - dt.timedelta(hours=draw(st.integers(0, max_days * 24)))

    orders = tuple(
        OrderFact(moment(), amount, draw(st.sampled_from([0, amount, amount // 2])))
        for amount in draw(st.lists(st.integers(500, 30000), max_size=7)))
    home = draw(st.one_of(st.none(), st.sampled_from(STORES)))
    return CustomerFacts(
        external_userid="wm" + str(draw(st.integers(0, 10**6))),
        added_at=draw(st.one_of(st.none(), st.integers(0, 300 * 24).map(lambda h: NOW - dt.timedelta(hours=h)))),
        deleted=draw(st.booleans()),
        states=frozenset(draw(st.lists(st.sampled_from(STATES), max_size=2))),
        home_store=home,
        city=None if home is None else CITIES[STORES.index(home) % 2],
        groups=frozenset(draw(st.lists(st.sampled_from(["wr1", "wr2"]), max_size=2))),
        orders=orders,
        clicks=tuple(moment(100) for _ in range(draw(st.integers(0, 4)))),
    )


# --------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), people=st.lists(customers(), min_size=1, max_size=12))
def test_implies_is_never_wrong_for_random_conditions(data, people):
    """Soundness against the oracle: when lint says b implies a, no customer holds b without a.
    b is unrelated to a, or a's near neighbour. Mutation tried: `_window_inside` always True (a
    lower bound over 30 days "implies" one over 7): a counterexample is found (slowly: the
    hand-checked cases below catch it at once; `any` of b's own items implying one of a's instead
    of all survived this property and is caught there)."""
    a = data.draw(conditions())
    b = data.draw(st.one_of(conditions(), perturbed(a)))
    ca, cb = Condition.model_validate(a), Condition.model_validate(b)
    if implies(cb, ca):
        for f in people:
            assert not holds(cb, f, NOW) or holds(ca, f, NOW), (a, b, f)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), people=st.lists(customers(), min_size=1, max_size=12))
def test_a_tightened_condition_is_seen_as_implying_the_original_and_truly_does(data, people):
    """Completeness for the moves lint is meant to see, and soundness of those moves by the oracle.
    Mutation tried: requiring equal windows in `_within`: this property fails (a narrower window
    for a lower bound is not seen)."""
    a = data.draw(conditions())
    b = data.draw(tightened(a))
    ca, cb = Condition.model_validate(a), Condition.model_validate(b)
    assert implies(cb, ca), (a, b)
    assert implies(ca, ca)
    for f in people:
        assert not holds(cb, f, NOW) or holds(ca, f, NOW), (a, b, f)


# --------------------------------------------------------------------------------------------
# The shipped rules, customer by customer


def _customer(orders: list[tuple[float, int]], *, clicks: list[float] = (), deleted: bool = False,
              added_days_ago: float = 120) -> CustomerFacts:
    """Orders as (days ago, yuan)."""
    return CustomerFacts(
        external_userid="wm1", added_at=NOW - added_days_ago * DAY, deleted=deleted, home_store="S1", city="上海",
        orders=tuple(OrderFact(NOW - days * DAY, yuan * 100) for days, yuan in orders),
        clicks=tuple(NOW - days * DAY for days in clicks))


def test_the_shipped_rules_follow_a_customer_from_new_to_dormant_and_churned():
    """Mutation tried: `orders: { min: 3, within_days: 30 }` of the repeat rule changed to 60 days:
    the two-orders-30-days-apart customer below lands in repeat and this test fails."""
    rules = load_ruleset(SHIPPED)

    def layer(f: CustomerFacts) -> str:
        return evaluate(rules, f, NOW)[0]

    assert layer(_customer([])) == "new"
    assert layer(_customer([(1, 25)])) == "first_time"
    assert layer(_customer([(40, 25), (5, 25), (1, 25)])) == "first_time", "3 orders but not within 30 days"
    assert layer(_customer([(20, 25), (5, 25), (1, 25)])) == "repeat"
    assert layer(_customer([(80, 150), (50, 150), (20, 150), (1, 150)])) == "high_value"
    assert layer(_customer([(61, 25)])) == "dormant"
    assert layer(_customer([(61, 25)], clicks=[10])) == "first_time", "a counted click within 60 days is not silence"
    assert layer(_customer([(59, 25)])) == "first_time"
    # Dormant beats high value: a big spender gone quiet is woken up, not pampered.
    assert layer(_customer([(89, 200), (88, 200), (87, 200), (86, 200)])) == "dormant"
    assert layer(_customer([(1, 25)], deleted=True)) == "churned"
    tags = {t.id: rules.tag_bit(t.id) for t in rules.tags.rules}
    clicked = evaluate(rules, _customer([], clicks=[2]), NOW)[3]
    assert clicked & tags["clicked-no-order-7d"] and not clicked & tags["orders-3-30d"]
    assert evaluate(rules, _customer([(1, 120), (2, 110)]), NOW)[3] & tags["high-ticket-30d"]
    assert evaluate(rules, _customer([], added_days_ago=2), NOW)[3] & tags["added-no-order-7d"]


def test_implies_on_hand_checked_cases():
    """The cases the shadow warning rests on, each checked by hand (and by the oracle above).
    Mutations tried: `any` of b's own items implying one of a's instead of all of them (the
    last-but-one case); `_window_inside` always True (the 7-day case)."""
    def c(**kw) -> Condition:
        return Condition.model_validate(kw)

    bought, regular = c(orders={"min": 1}), c(orders={"min": 3, "within_days": 30})
    assert implies(regular, bought) and not implies(bought, regular)
    assert not implies(c(orders={"min": 1, "within_days": 30}), c(orders={"min": 1, "within_days": 7}))
    assert implies(c(orders={"max": 0}), c(orders={"max": 0, "within_days": 60})), "none ever: none lately"
    assert not implies(c(orders={"max": 0, "within_days": 60}), c(orders={"max": 0}))
    assert implies(c(deleted=True, stores=["S1"]), c(stores=["S1", "S2"]))
    assert not implies(c(stores=["S1", "S3"]), c(stores=["S1", "S2"]))
    assert implies(c(all=[{"deleted": True}, {"in_group": False}]), c(deleted=True))
    assert implies(c(any=[{"orders": {"min": 3}}]), c(any=[{"orders": {"min": 1}}, {"deleted": True}]))
    assert not implies(c(any=[{"orders": {"min": 3}}, {"in_group": True}]), c(any=[{"orders": {"min": 1}}]))
    assert not implies(c(not_={"deleted": True}), c(deleted=False)), "not shown: False, never a guess"
