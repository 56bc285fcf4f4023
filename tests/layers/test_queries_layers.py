"""The dashboard's layer queries (scrm/layers/queries.py) against figures computed here in plain
Python from the same random rows, on SQLite and PostgreSQL: counts per layer and store with shares,
the from → to flows of a local-day range, moves per local day (the oracle takes each change's local
date with ``astimezone``; the queries bucket epoch seconds), and the top rules. Worlds put changes
exactly on local midnights and a microsecond either side, use a hostile store code, a layer the rule
set no longer has, customers without a home store, and a time zone whose range crosses a DST change.

Mutations tried (each made the named tests fail, then was undone):
- ``_scope`` ignoring the stores (``return []``): test_queries_match_the_oracle (every scoped world);
- the range's upper bound inclusive (``changed_at <= midnights[-1]``): test_queries_match_the_oracle
  (a change at the next midnight counted) and test_range_bounds_are_local_midnights;
- ``_day_index`` with one run of 86,400 s days whatever the zone: test_queries_match_the_oracle
  [*-new_york] (the days after the DST change shifted by an hour);
- daily_moves counting first placements by default (``include_first`` ignored): test_queries_match_the_oracle;
- flow_matrix leaving out the first-placement row (``rows = layers``): test_flow_matrix_rows_and_columns;
- SQLite's epoch seconds from the whole stored text (``strftime('%s', changed_at)``, which rounds
  23:59:59.999999 up to the next day): test_queries_match_the_oracle[sqlite-*].
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert

from scrm.layers import queries as q
from scrm.layers.models import CustomerLayer, LayerChange
from scrm.layers.rules import RuleSet
from scrm.stores.models import Store

RULESET = RuleSet.model_validate({
    "layers": [
        {"id": "new", "name": "新客", "operation": "欢迎语和首单券"},
        {"id": "first", "name": "首购", "operation": "引导复购"},
        {"id": "repeat", "name": "复购", "operation": "会员权益"},
        {"id": "dormant", "name": "沉睡", "operation": "唤醒券"},
        {"id": "churned", "name": "流失", "operation": "不再打扰"},
    ],
    "default_layer": "new",
    "rules": [
        {"id": "r-first", "layer": "first", "when": {"orders": {"min": 1, "max": 1}}, "description": "第一单"},
        {"id": "r-repeat", "layer": "repeat", "when": {"orders": {"min": 3, "within_days": 30}}},
        {"id": "r-dormant", "layer": "dormant", "when": {"days_since_last_active": {"min": 60}}},
        {"id": "r-churned", "layer": "churned", "when": {"deleted": True}},
    ],
})
NAMES = q.LayerNames.of(RULESET)
HOSTILE = "<b>店'\""
STORES = ["S1", "S2", "S3", HOSTILE]
LAYERS = ["new", "first", "repeat", "dormant", "churned", "ghost"]  # ghost: no longer in the rule set
RULES = [None, "r-first", "r-repeat", "r-dormant", "r-churned", "=evil"]


def make_world(seed: int, tz: ZoneInfo, start: dt.date, end: dt.date):
    rnd = random.Random(seed)
    customers = []
    for i in range(rnd.randint(0, 150)):
        customers.append({"external_userid": f"wm{i}", "layer": rnd.choice(LAYERS), "rule_id": rnd.choice(RULES),
                          "home_store": rnd.choice([*STORES, None]), "tag_bits": 0,
                          "since": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                          "computed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "tags_dirty": False})
    lo = dt.datetime.combine(start - dt.timedelta(days=2), dt.time(), tz)
    hi = dt.datetime.combine(end + dt.timedelta(days=3), dt.time(), tz)
    midnights = [dt.datetime.combine(start + dt.timedelta(days=d), dt.time(), tz)
                 for d in range(-1, (end - start).days + 3)]
    changes = []
    for _ in range(rnd.randint(0, 400)):
        roll = rnd.random()
        if roll < 0.3:  # on a local midnight, or a microsecond either side
            at = rnd.choice(midnights) + dt.timedelta(microseconds=rnd.choice([-1, 0, 1]))
        else:
            at = lo + (hi - lo) * rnd.random()
        changes.append({"external_userid": f"wm{rnd.randint(0, 60)}",
                        "from_layer": rnd.choice([None, *LAYERS]), "to_layer": rnd.choice(LAYERS),
                        "rule_id": rnd.choice(RULES), "home_store": rnd.choice([*STORES, None]),
                        "changed_at": at.astimezone(dt.UTC)})
    return customers, changes


def load(engine, customers, changes):
    with engine.begin() as conn:
        conn.execute(insert(Store.__table__), [{"code": s, "name": f"门店{s}", "address": "", "city": "上海",
                                                "status": "open", "updated_at": dt.datetime.now(dt.UTC)}
                                               for s in STORES[:3]])
        if customers:
            conn.execute(insert(CustomerLayer.__table__), customers)
        if changes:
            conn.execute(insert(LayerChange.__table__), changes)


def visible(store, stores):
    return stores is None or store in stores


WORLDS = [
    # (seed, zone, start, end)
    (1, "Asia/Shanghai", dt.date(2026, 11, 24), dt.date(2026, 11, 30)),
    (2, "Asia/Shanghai", dt.date(2026, 11, 30), dt.date(2026, 11, 30)),
    (3, "America/New_York", dt.date(2026, 10, 28), dt.date(2026, 11, 5)),  # DST ends 2026-11-01
    (4, "America/New_York", dt.date(2026, 3, 5), dt.date(2026, 3, 12)),  # DST starts 2026-03-08
    (5, "Asia/Kolkata", dt.date(2026, 6, 1), dt.date(2026, 6, 3)),  # a half-hour offset
]


@pytest.mark.parametrize("seed,zone,start,end", WORLDS,
                         ids=["shanghai-week", "shanghai-day", "new_york-autumn", "new_york-spring", "kolkata"])
def test_queries_match_the_oracle(engine, seed, zone, start, end):
    tz = ZoneInfo(zone)
    customers, changes = make_world(seed, tz, start, end)
    load(engine, customers, changes)
    for stores in (None, frozenset({"S1"}), frozenset({"S2", HOSTILE}), frozenset()):
        # counts now, per layer and per store
        summary = q.layer_summary(engine, stores, NAMES)
        mine = [c for c in customers if visible(c["home_store"], stores)]
        per_layer = Counter(c["layer"] for c in mine)
        assert summary.total == len(mine)
        assert {x.layer: x.customers for x in summary.layers if x.customers} == dict(per_layer)
        assert [x.layer for x in summary.layers][:5] == ["new", "first", "repeat", "dormant", "churned"]
        for x in summary.layers:
            assert x.share == (per_layer[x.layer] / len(mine) if mine else None)
        per_store = Counter((c["home_store"], c["layer"]) for c in mine)
        got = {(s.store_code, layer): n for s in summary.stores for layer, n in s.counts.items()}
        assert got == dict(per_store)
        assert [s.total for s in summary.stores] == sorted((s.total for s in summary.stores), reverse=True)
        names = {s.store_code: s.store_name for s in summary.stores}
        assert all(names[s] == f"门店{s}" for s in STORES[:3] if s in names)
        assert names.get(HOSTILE, HOSTILE) == HOSTILE and names.get(None, q.NO_STORE) == q.NO_STORE

        # the range's changes, by local date
        in_range = [c for c in changes if visible(c["home_store"], stores)
                    and start <= c["changed_at"].astimezone(tz).date() <= end]
        flows = q.layer_flows(engine, stores, start, end, tz)
        assert Counter({(f.store_code, f.from_layer, f.to_layer): f.moves for f in flows}) == Counter(
            (c["home_store"], c["from_layer"], c["to_layer"]) for c in in_range)

        daily = q.daily_moves(engine, stores, start, end, tz)
        assert {(m.day, m.to_layer): m.moves for m in daily} == dict(Counter(
            (c["changed_at"].astimezone(tz).date(), c["to_layer"]) for c in in_range if c["from_layer"] is not None))
        with_first = q.daily_moves(engine, stores, start, end, tz, include_first=True)
        assert sum(m.moves for m in with_first) == len(in_range)

        rules = Counter((c["rule_id"], c["to_layer"]) for c in in_range)
        expected = sorted(rules.items(), key=lambda kv: (-kv[1], kv[0][0] is not None, kv[0][0] or "", kv[0][1]))
        top = q.top_rules(engine, stores, start, end, tz, limit=q.TOP_RULES)
        assert [((r.rule_id, r.to_layer), r.moves) for r in top] == expected[:q.TOP_RULES]


def test_range_bounds_are_local_midnights(engine):
    """A change at 00:00 local on the start day counts, one at 00:00 the day after the end does
    not, and the one a microsecond before it lands on the last day."""
    tz = ZoneInfo("Asia/Shanghai")
    start, end = dt.date(2026, 11, 24), dt.date(2026, 11, 30)
    at = [dt.datetime(2026, 11, 24, tzinfo=tz), dt.datetime(2026, 12, 1, tzinfo=tz) - dt.timedelta(microseconds=1),
          dt.datetime(2026, 12, 1, tzinfo=tz), dt.datetime(2026, 11, 24, tzinfo=tz) - dt.timedelta(microseconds=1)]
    load(engine, [], [{"external_userid": f"b{i}", "from_layer": "new", "to_layer": "first", "rule_id": "r-first",
                       "home_store": "S1", "changed_at": t.astimezone(dt.UTC)} for i, t in enumerate(at)])
    daily = q.daily_moves(engine, None, start, end, tz)
    assert [(m.day, m.moves) for m in daily] == [(start, 1), (end, 1)]
    assert sum(f.moves for f in q.layer_flows(engine, None, start, end, tz)) == 2


def test_flow_matrix_rows_and_columns():
    """First placements are the first row (新进入); every layer of the rule set is a row and a
    column in its order, ids the rule set lacks come after; totals add up."""
    flows = [q.Flow("S1", None, "new", 5), q.Flow("S2", None, "new", 2), q.Flow("S1", "new", "first", 3),
             q.Flow(None, "first", "ghost", 1)]
    m = q.flow_matrix(flows, NAMES)
    assert m.rows == [None, "new", "first", "repeat", "dormant", "churned", "ghost"]
    assert m.columns == ["new", "first", "repeat", "dormant", "churned", "ghost"]
    assert m.cell(None, "new") == 7 and m.cell("new", "first") == 3 and m.cell("first", "ghost") == 1
    assert m.row_totals[None] == 7 and m.column_totals["new"] == 7 and m.total == 11 and m.largest == 7
    assert NAMES.name(None) == "新进入" and NAMES.name("ghost") == "ghost" and NAMES.name("dormant") == "沉睡"


def test_reversed_range_is_an_error(engine):
    with pytest.raises(q.LayerQueryError):
        q.layer_flows(engine, None, dt.date(2026, 11, 30), dt.date(2026, 11, 1), ZoneInfo("Asia/Shanghai"))


def test_names_fall_back_to_ids_when_rules_cannot_be_read(tmp_path):
    """No rule files (or no loader yet): ids shown as they are, with a Chinese notice."""
    names = q.load_layer_names(tmp_path / "missing")
    assert not names.loaded and names.error and "分层规则" in names.error
    assert names.name("dormant") == "dormant" and names.ordered(["b", "a"]) == ["a", "b"]


def test_shipped_rules_give_chinese_names_and_edits_show(tmp_path):
    """The coffee chain's rules in layers/ name every layer in Chinese with its operation; a
    RuleNames cache reads a changed file again and falls back to ids when it breaks.
    (Mutation tried: the cache key without st_mtime_ns/size — the edit was not seen.)"""
    import shutil
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "layers"
    names = q.load_layer_names(shipped)
    assert names.loaded, names.error
    assert all(names.name(i) != i and names.operation(i) for i in names.order)
    folder = tmp_path / "layers"
    shutil.copytree(shipped, folder)
    cache = q.RuleNames(folder)
    first = cache()
    assert first.loaded and cache() is first  # unchanged files: not read again
    layers_yaml = folder / "layers.yaml"
    layers_yaml.write_text(layers_yaml.read_text(encoding="utf-8") + "\n: broken\n", encoding="utf-8")
    broken = cache()
    assert not broken.loaded and "分层规则读取失败" in (broken.error or "")
