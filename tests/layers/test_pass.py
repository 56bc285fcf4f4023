"""The layering pass as the scheduler, the workers and an operator see it: history rows only for
moves, nothing rewritten when nothing changed, time alone moving a customer to dormant, the
re-layer of a few customers agreeing with the full pass, a preview that writes nothing, two passes
at once recording each move once, and a group's layer as its members' majority."""

from __future__ import annotations

import datetime as dt
import random

import pytest
import sqlalchemy as sa

from scrm.groups.models import CustomerGroup
from scrm.layers.models import CustomerLayer, LayerChange
from scrm.layers.service import full_pass, layer_history, preview_pass, relayer_customers
from tests.layers.conftest import NOW, STANDARD, load, rows, ruleset, stored, wipe
from tests.layers.oracle import World, evaluate, facts_of
from tests.waiting import run_threads

DAY = dt.timedelta(days=1)


def small_world() -> World:
    """A buyer, a repeat buyer, a VIP, a clicker, a churned customer and a lost-status one."""
    w = World(stores={"A": "上海", "B": "杭州"})
    for e in ("buyer", "repeat", "vip", "clicker", "churned", "lost"):
        w.customers[e] = "lost" if e == "lost" else "active"
    for i, (e, state, status) in enumerate([
            ("buyer", "st:A:1", "active"), ("repeat", "sg:B", "active"), ("vip", None, "active"),
            ("clicker", "ad:spring", "active"), ("churned", "st:B:2", "deleted_by_customer"),
            ("lost", None, "active")], 1):
        w.follows.append((i, f"u{i}", e, state, status, NOW - 10 * DAY))
    w.orders += [("buyer", NOW - 3 * DAY, 10_000, 0), ("repeat", NOW - 5 * DAY, 5_000, 0),
                 ("repeat", NOW - 4 * DAY, 5_000, 0), ("vip", NOW - DAY, 300_000, 50_000)]
    w.clicks += [("clicker", NOW - DAY, True)]
    return w


def test_history_only_on_moves_and_a_quiet_second_pass_rewrites_nothing(engine):
    """First pass: one history row per customer (from_layer NULL). Second pass with nothing new:
    no history row, no customer_layers row rewritten (computed_at and since untouched), report
    says 0 changed. Then one new order: exactly that customer moves, with one history row.

    Mutation tried: the diff taking every evaluated customer (``.where(wanted)`` -> ``.where(true)``):
    failed, the quiet pass rewrote computed_at."""
    load(engine, small_world())
    rules = ruleset(STANDARD)
    first = full_pass(engine, rules, now=NOW)
    assert first.customers == 6 and first.moved == 6 and first.changed == 6
    history = rows(engine, LayerChange)
    assert sorted((h.external_userid, h.from_layer, h.to_layer, h.rule_id) for h in history) == [
        ("buyer", None, "first", "first"), ("churned", None, "churned", "gone"), ("clicker", None, "new", None),
        ("lost", None, "churned", "gone"), ("repeat", None, "repeat", "repeat"), ("vip", None, "vip", "vip")]
    assert {h.home_store for h in history if h.external_userid == "buyer"} == {"A"}
    before = {r.external_userid: r for r in rows(engine, CustomerLayer)}

    second = full_pass(engine, rules, now=NOW + dt.timedelta(hours=1))
    assert (second.changed, second.moved) == (0, 0)
    assert len(rows(engine, LayerChange)) == 6
    after = {r.external_userid: r for r in rows(engine, CustomerLayer)}
    assert after == before  # computed_at, since, tags_dirty: nothing rewritten

    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO orders (source, order_id, paid_at, amount_fen, refunded_fen, items, "
                             "external_userid, created_at) VALUES ('shop', 'x1', :t, 100, 0, '[]', 'buyer', :t)"),
                     {"t": NOW + dt.timedelta(hours=1)})
    third = full_pass(engine, rules, now=NOW + dt.timedelta(hours=2))
    assert (third.changed, third.moved) == (1, 1)
    assert third.moves == {("first", "repeat"): 1}
    moves = layer_history(engine, "buyer")
    assert [(m.from_layer, m.to_layer, m.rule_id) for m in moves] == [(None, "first", "first"),
                                                                        ("first", "repeat", "repeat")]
    row = {r.external_userid: r for r in rows(engine, CustomerLayer)}["buyer"]
    assert row.since == NOW + dt.timedelta(hours=2) and row.tags_dirty is True


def test_a_rule_moved_to_another_layer_moves_its_customers(engine):
    """An operator edits the rules so rule ``first`` now puts customers in ``repeat``: same rule
    id, new layer: a history row and a new ``since`` for each of them, nobody else touched.

    Mutation tried: the diff without its ``cl.layer != p.layer`` term (failed: no move recorded,
    the rule id being unchanged)."""
    load(engine, small_world())
    full_pass(engine, ruleset(STANDARD), now=NOW)
    edited = [dict(r, layer="repeat") if r["id"] == "first" else r for r in STANDARD]
    report = full_pass(engine, ruleset(edited), now=NOW + DAY)
    assert report.moves == {("first", "repeat"): 1} and report.changed == 1
    assert stored(engine)["buyer"][:2] == ("repeat", "first")
    assert [(m.from_layer, m.to_layer, m.rule_id) for m in layer_history(engine, "buyer")][-1] == (
        "first", "repeat", "first")


def test_sixty_silent_days_make_a_buyer_dormant(engine):
    """No event at all: only the clock moves. At +56 days (59 days since the order) the buyer is
    still a first-time buyer; at +57 days (60) dormant, with a history row, a new ``since`` and
    tags_dirty.

    Mutation tried: the min bound one day short (``now - (ceil(min) - 1) days``): failed, dormant
    a day early."""
    load(engine, small_world())
    rules = ruleset(STANDARD)
    full_pass(engine, rules, now=NOW)
    with engine.begin() as conn:
        conn.execute(sa.update(CustomerLayer.__table__).values(tags_dirty=False))
    full_pass(engine, rules, now=NOW + 56 * DAY)
    assert stored(engine)["buyer"][0] == "first"
    later = NOW + 57 * DAY
    report = full_pass(engine, rules, now=later)
    assert stored(engine)["buyer"][:2] == ("dormant", "dormant")
    assert report.moves[("first", "dormant")] >= 1
    assert [(m.from_layer, m.to_layer) for m in layer_history(engine, "buyer")][-1] == ("first", "dormant")
    row = {r.external_userid: r for r in rows(engine, CustomerLayer)}["buyer"]
    assert row.tags_dirty is True and row.since == later


def test_within_days_includes_now_and_excludes_exactly_n_days_ago(engine):
    """``within_days: 1`` is ``now - 1 day < t <= now``: a click at exactly ``now`` counts, one at
    exactly ``now - 1 day`` does not, one a microsecond later does.

    Mutations tried: the window's ``t <= now`` -> ``t < now`` (failed: "at-now" unplaced);
    ``t > now - N days`` -> ``>=`` (failed: "edge" placed)."""
    w = World()
    for e, t in (("at-now", NOW), ("edge", NOW - DAY), ("inside", NOW - DAY + dt.timedelta(microseconds=1)),
                 ("future", NOW + dt.timedelta(microseconds=1))):
        w.customers[e] = "active"
        w.clicks.append((e, t, True))
    load(engine, w)
    rules = ruleset([dict(id="hot", layer="first", when={"unique_clicks": {"min": 1, "within_days": 1}})])
    full_pass(engine, rules, now=NOW)
    assert {e: v[0] for e, v in stored(engine).items()} == {
        "at-now": "first", "edge": "new", "inside": "first", "future": "new"}


def _random_world(seed: int) -> World:
    rnd = random.Random(seed)
    w = World(stores={"A": "上海", "B": "杭州", "C": "上海"})
    exts = [f"c{i}" for i in range(40)]
    for e in exts:
        w.customers[e] = rnd.choice(["active"] * 8 + ["lost", "gone"])
    for i, e in enumerate(exts * 2, 1):
        if rnd.random() < 0.7:
            w.follows.append((i, f"u{i}", e, rnd.choice([None, "st:A:1", "sg:B", "st:C:x", "ad:x"]),
                              rnd.choice(["active", "active", "deleted_by_customer"]),
                              NOW - dt.timedelta(days=rnd.randint(0, 90))))
    for _ in range(60):
        amount = rnd.choice([1000, 50_000, 150_000])
        w.orders.append((rnd.choice(exts), NOW - dt.timedelta(days=rnd.randint(0, 90)), amount,
                         rnd.choice([0, 0, amount])))
    for _ in range(60):
        w.clicks.append((rnd.choice(exts), NOW - dt.timedelta(days=rnd.randint(0, 20)), rnd.random() < 0.8))
    for g in range(5):
        w.groups[f"g{g}"] = (rnd.choice(["active", "active", "dismissed"]), rnd.choice(["A", "B", None]))
    pairs = rnd.sample([(f"g{g}", e) for g in range(5) for e in exts], 60)
    for i, (g, e) in enumerate(pairs, 1):
        w.members.append((i, g, e, rnd.choice(["member", "member", "left"]),
                          NOW - dt.timedelta(days=rnd.randint(0, 50))))
    return w


TAGS = [dict(id="clicked", name="近7天点击", when={"unique_clicks": {"min": 1, "within_days": 7}}),
        dict(id="east", name="上海群客", when={"in_group": True, "cities": ["上海"]})]


def test_relayer_of_a_subset_equals_the_full_pass_for_them(engine):
    """Re-layering 15 of 40 customers stores exactly what the full pass (and the oracle) stores for
    those 15 and nothing for the others; every one evaluated is tags_dirty; ids not in
    ``customers`` are ignored.

    Mutation tried: the compiled query without its outer customers filter (failed: all 40 stored)."""
    world = _random_world(7)
    load(engine, world)
    rules = ruleset(STANDARD, TAGS)
    subset = sorted(world.customers)[::2][:15]
    report = relayer_customers(engine, rules, [*subset, "nobody"], now=NOW)
    assert report.customers == 15
    expected = {e: evaluate(rules, f, NOW) for e, f in facts_of(world).items()}
    assert stored(engine) == {e: expected[e] for e in subset}
    assert all(r.tags_dirty for r in rows(engine, CustomerLayer))
    full_pass(engine, rules, now=NOW)
    assert stored(engine) == expected
    # Relayer of customers already placed: no move, yet they are marked for the tag sync.
    with engine.begin() as conn:
        conn.execute(sa.update(CustomerLayer.__table__).values(tags_dirty=False))
    again = relayer_customers(engine, rules, subset[:3], now=NOW)
    assert (again.changed, again.moved) == (0, 0)
    dirty = {r.external_userid for r in rows(engine, CustomerLayer) if r.tags_dirty}
    assert dirty == set(subset[:3])


def test_preview_writes_nothing_and_reports_what_the_pass_will_do(engine):
    """Mutation tried: preview through the writing path (``write=True``) — failed: rows appeared."""
    world = _random_world(11)
    load(engine, world)
    rules = ruleset(STANDARD, TAGS)
    preview = preview_pass(engine, rules, now=NOW)
    assert preview.written is False
    assert rows(engine, CustomerLayer) == [] and rows(engine, LayerChange) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(CustomerGroup.__table__.c.layer.is_not(None))
                            .select_from(CustomerGroup.__table__)).scalar_one() == 0
    real = full_pass(engine, rules, now=NOW)
    assert (preview.customers, preview.changed, preview.moved, preview.moves, preview.by_layer_rule,
            preview.groups_relayered) == (real.customers, real.changed, real.moved, real.moves,
                                          real.by_layer_rule, real.groups_relayered)
    assert preview.groups_relayered > 0


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_full_passes_at_once_record_each_move_once(engine):
    """Four passes race (PostgreSQL, READ COMMITTED): each customer has exactly one history row
    and one customer_layers row.

    Mutation tried: ``_lock`` made a no-op — failed (duplicate history rows, or a primary key
    violation on customer_layers when two passes inserted the same customer)."""
    world = _random_world(3)
    load(engine, world)
    rules = ruleset(STANDARD, TAGS)
    run_threads([lambda: full_pass(engine, rules, now=NOW) for _ in range(4)])
    history = rows(engine, LayerChange)
    assert sorted(h.external_userid for h in history) == sorted(world.customers)
    assert len(rows(engine, CustomerLayer)) == len(world.customers)


def test_group_layer_is_the_members_majority(engine):
    """Members' layers 2 repeat + 1 new (+ a VIP who left) -> repeat; a tie (1 new, 1 first) -> the
    layer listed first in the rule set (new, though 'first' sorts before it); no member with a
    layer -> NULL; dismissed groups untouched; employees do not count. A member leaving re-layers
    the group through relayer_customers of that member.

    Mutations tried (each failed): tie broken by layer id instead of the rule set's order; left
    members counted; relayer scoped to groups where the customer is still a member (the leave did
    not re-layer g1)."""
    w = World()
    for e in ("r1", "r2", "n1", "v1", "f1"):
        w.customers[e] = "active"
        w.follows.append((len(w.follows) + 1, f"u{e}", e, None, "active", NOW - DAY))
    w.orders += [(e, NOW - DAY, 1000, 0) for e in ("r1", "r1", "r2", "r2", "f1")]
    w.orders += [("v1", NOW - DAY, 500_000, 0)]
    w.groups = {"g1": ("active", None), "g2": ("active", None), "g3": ("active", None), "g4": ("dismissed", None)}
    members = [("g1", "r1", "member"), ("g1", "r2", "member"), ("g1", "n1", "member"), ("g1", "v1", "left"),
               ("g2", "n1", "member"), ("g2", "f1", "member"), ("g3", "emp1", "member"), ("g4", "r1", "member")]
    w.members = [(i, g, m, s, NOW - DAY) for i, (g, m, s) in enumerate(members, 1)]
    load(engine, w)
    rules = ruleset(STANDARD)
    report = full_pass(engine, rules, now=NOW)

    def layers() -> dict[str, str | None]:
        c = CustomerGroup.__table__.c
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(c.chat_id, c.layer)).all())

    assert layers() == {"g1": "repeat", "g2": "new", "g3": None, "g4": None}
    assert report.groups_relayered == 2
    assert full_pass(engine, rules, now=NOW).groups_relayered == 0
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE group_members SET state = 'left' "
                             "WHERE chat_id = 'g1' AND member_id IN ('r1', 'r2')"))
    assert relayer_customers(engine, rules, ["r2"], now=NOW).groups_relayered == 1
    assert layers()["g1"] == "new"


def test_wipe_leaves_no_rows(engine):
    """The property test's per-example wipe empties what the pass reads and writes."""
    load(engine, small_world())
    full_pass(engine, ruleset(STANDARD), now=NOW)
    wipe(engine)
    assert stored(engine) == {} and rows(engine, LayerChange) == []


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_a_first_placement_keeps_every_index_of_the_layer_tables(engine):
    """A first placement rebuilds the layer tables' non-unique indexes after its insert (one
    sorted build instead of a million index inserts): afterwards every index is there again,
    defined as before, and the second pass (fewer new rows than stored) leaves them alone.

    Mutation tried: ``_bulk_end`` doing nothing: failed, the indexes were gone after the pass."""
    def indexes() -> dict[str, str]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('customer_layers', 'layer_changes')"
            )).all())

    before = indexes()
    assert {"ix_customer_layers_home_store_layer", "ix_layer_changes_external_userid"} <= set(before)
    load(engine, small_world())
    rules = ruleset(STANDARD)
    assert full_pass(engine, rules, now=NOW).moved == 6
    assert indexes() == before
    assert full_pass(engine, rules, now=NOW + 90 * DAY).moved > 0
    assert indexes() == before
