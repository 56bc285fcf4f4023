"""SOP targets by the layers of a group's members: ``member_layers: [{layer: dormant, at_least: 30%}]``.

What an operator notices: a template for "groups where at least 30% are dormant" reaches exactly
those groups (shares counted over the customers still in the group), 30% and 0.3 mean the same,
a bare 30 is refused with a hint, and lint warns about a layer the layer rules don't define.
Mutations tried are named in each docstring.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlmodel import Session

from scrm.groups.models import CustomerGroup, GroupMember, GroupStatus, MemberState
from scrm.layers.lint import defined_layer_ids
from scrm.layers.models import CustomerLayer
from scrm.sop.lint import WARNING, errors_in, lint
from scrm.sop.planner import GroupIndex, GroupInfo, plan_day
from scrm.sop.service import load_groups
from scrm.sop.template import MemberLayers, SopTemplate

DAY = dt.date(2026, 11, 24)
LAYERS = ["new", "repeat", "dormant", "churned"]
SHIPPED_LAYERS = Path(__file__).resolve().parents[2] / "layers"


def template(targets: dict) -> SopTemplate:
    return SopTemplate.model_validate({"id": "wake", "name": "唤醒", "targets": targets,
                                       "steps": [{"at": "10:00", "channel": "owner_task", "text": "好久不见"}]})


# --------------------------------------------------------------------------------------------
# The share


@pytest.mark.parametrize("written, share", [("30%", 0.3), (0.3, 0.3), ("0.3", 0.3), (" 12.5 %", 0.125),
                                            ("100%", 1.0), (1, 1.0), ("1%", 0.01)])
def test_a_share_is_written_as_a_percentage_or_a_fraction(written, share):
    assert MemberLayers(layer="dormant", at_least=written).at_least == share


@pytest.mark.parametrize("written, says", [
    (30, "did you mean 30%?"), ("30", "did you mean 30%?"), (0, "between 0% (excluded) and 100%"),
    ("0%", "between 0% (excluded) and 100%"), ("101%", "between 0%"), ("三成", "percentage such as 30%"),
    ("x%", "not a percentage"), (True, "percentage such as 30%"), (float("nan"), "between 0%"), (-0.2, "between 0%")])
def test_a_share_that_is_not_one_is_refused_with_a_hint(written, says):
    """A bare 30 is not taken as 30% (nor as "at least 30 members"): the operator is asked."""
    with pytest.raises(ValidationError) as caught:
        MemberLayers(layer="dormant", at_least=written)
    assert says in str(caught.value)


# --------------------------------------------------------------------------------------------
# Matching groups: an oracle over random groups and shares


@st.composite
def groups_with_counts(draw):
    """Groups with integer member counts per layer (the oracle's truth) and GroupInfo's shares
    computed from them as load_groups does (n / total)."""
    out = []
    for i in range(draw(st.integers(1, 40))):
        total = draw(st.integers(0, 12))
        counts: dict[str, int] = {}
        left = total
        for layer in LAYERS:
            n = draw(st.integers(0, left))
            if n:
                counts[layer] = n
            left -= n
        info = GroupInfo(chat_id=f"wr{i:03d}", owner="bot1", city=draw(st.sampled_from(["上海", "北京", None])),
                         layer=draw(st.sampled_from(LAYERS + [None])),
                         member_layers=tuple(sorted((k, n / total) for k, n in counts.items())))
        out.append((info, counts, total))
    return out


# Percentages that land exactly on shares of small groups (1/2, 1/4, 3/10...) and between them.
SHARES = ["10%", "0.25", "30%", "1/3", "50%", "0.5", "2/3", "75%", "100%", "5%", "0.9"]


def share_text(s: str) -> str:
    """What an operator writes: 1/3 as 33.33333333%."""
    return f"{float(Fraction(s)) * 100:.10g}%" if "/" in s else s


def exact(s: str) -> Fraction:
    """The share an operator wrote, exactly (the oracle does not go through floats)."""
    return Fraction(s[:-1].strip()) / 100 if s.endswith("%") else Fraction(s)


@st.composite
def member_targets(draw):
    items = draw(st.lists(st.tuples(st.sampled_from(LAYERS + ["vip"]), st.sampled_from(SHARES).map(share_text)),
                          min_size=1, max_size=3))
    targets: dict = {"member_layers": [{"layer": layer, "at_least": s} for layer, s in items]}
    if draw(st.booleans()):
        targets["cities"] = draw(st.lists(st.sampled_from(["上海", "北京"]), min_size=1, max_size=1))
    if draw(st.booleans()):
        targets["layers"] = draw(st.lists(st.sampled_from(LAYERS), min_size=1, max_size=2))
    return targets, items


def oracle(targets: dict, items, info: GroupInfo, counts: dict[str, int], total: int) -> bool:
    """Written from the README: any item holds (that layer's members / active customers >= the
    share), and every other key holds."""
    by_share = total > 0 and any(Fraction(counts.get(layer, 0), total) >= exact(s) for layer, s in items)
    city_ok = "cities" not in targets or info.city in targets["cities"]
    layer_ok = "layers" not in targets or info.layer in targets["layers"]
    return by_share and city_ok and layer_ok


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=groups_with_counts(), chosen=member_targets())
def test_member_layers_targets_exactly_the_groups_the_oracle_picks(world, chosen):
    """Mutations tried: `bisect_right` for `bisect_left` (a group at exactly 50% missed by
    `at_least: 50%`); keeping only the groups matching every item (AND instead of OR): both fail."""
    targets, items = chosen
    index = GroupIndex([info for info, _, _ in world])
    got = index.match(template(targets))
    want = {info.chat_id for info, counts, total in world if oracle(targets, items, info, counts, total)}
    assert got == want


def test_the_oracle_agrees_with_hand_checked_cases():
    g = GroupInfo("wr1", "bot1", city="上海", member_layers=(("dormant", 0.3), ("repeat", 0.5)))
    counts, total = {"dormant": 3, "repeat": 5}, 10
    assert oracle({}, [("dormant", "30%")], g, counts, total)
    assert not oracle({}, [("dormant", "0.31")], g, counts, total)
    assert oracle({"cities": ["上海"]}, [("dormant", "50%"), ("repeat", "0.5")], g, counts, total)
    assert not oracle({"cities": ["北京"]}, [("repeat", "0.5")], g, counts, total)
    assert share_text("1/3") == "33.33333333%" and not oracle({}, [("dormant", "33.33333333%")], g, counts, total)
    assert oracle({}, [("dormant", "33.33333333%")], g, {"dormant": 1}, 3)


def test_a_member_layers_template_is_planned_for_the_matching_groups_only():
    groups = [GroupInfo("wr1", "bot1", member_layers=(("dormant", 0.5),)),
              GroupInfo("wr2", "bot1", member_layers=(("dormant", 0.2), ("repeat", 0.8))),
              GroupInfo("wr3", "bot1")]
    plan = plan_day(DAY, [template({"member_layers": [{"layer": "dormant", "at_least": "30%"}]})], groups)
    assert [p.chat_id for p in plan.posts] == ["wr1"]
    either = template({"member_layers": [{"layer": "dormant", "at_least": 0.3}, {"layer": "repeat", "at_least": 0.8}]})
    assert sorted(p.chat_id for p in plan_day(DAY, [either], groups).posts) == ["wr1", "wr2"]


# --------------------------------------------------------------------------------------------
# load_groups: shares from rows, on SQLite and PostgreSQL


def test_load_groups_computes_each_groups_layer_shares_from_its_current_customers(engine):
    """g1 has 4 customers still in it (2 dormant, 1 repeat, 1 not layered yet), an employee, and a
    dormant customer who left; g2 has none; g3 was dismissed. Mutations tried: dropping the
    member_type filter (the employee counted: dormant 2/5) and the state filter (the leaver
    counted: 3/5): both fail."""
    now = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
    with Session(engine) as s:
        s.add(CustomerGroup(chat_id="g1", name="一群", owner_userid="bot1"))
        s.add(CustomerGroup(chat_id="g2", name="二群", owner_userid="bot1"))
        s.add(CustomerGroup(chat_id="g3", name="散了", owner_userid="bot1", status=GroupStatus.dismissed))
        members = [("g1", "c1", 2, MemberState.member), ("g1", "c2", 2, MemberState.member),
                   ("g1", "c3", 2, MemberState.member), ("g1", "c4", 2, MemberState.member),
                   ("g1", "emp1", 1, MemberState.member), ("g1", "c5", 2, MemberState.left),
                   ("g3", "c1", 2, MemberState.member)]
        for chat_id, member, kind, state in members:
            s.add(GroupMember(chat_id=chat_id, member_id=member, member_type=kind, state=state))
        for ext, layer in (("c1", "dormant"), ("c2", "dormant"), ("c3", "repeat"), ("c5", "dormant"),
                           ("emp1", "repeat")):
            s.add(CustomerLayer(external_userid=ext, layer=layer, since=now, computed_at=now))
        s.commit()
    with engine.connect() as conn:
        groups = {g.chat_id: g for g in load_groups(conn)}
        assert {g.chat_id: g.member_layers for g in load_groups(conn, member_layers=False)} == {"g1": (), "g2": ()}
    assert set(groups) == {"g1", "g2"}
    assert groups["g1"].member_layers == (("dormant", 0.5), ("repeat", 0.25))
    assert groups["g2"].member_layers == ()
    index = GroupIndex(groups.values())
    assert index.match(template({"member_layers": [{"layer": "dormant", "at_least": "50%"}]})) == {"g1"}
    assert index.match(template({"member_layers": [{"layer": "dormant", "at_least": "51%"}]})) == set()


def test_replanning_a_day_reaches_the_groups_by_their_members_layers(engine):
    """The scheduler's path (replan_day loads the groups itself): a member_layers template is
    written into the ledger for the matching group only. Mutation tried: replan_day loading groups
    with member_layers=False: no post is planned and the test fails."""
    from zoneinfo import ZoneInfo

    from scrm.sop.models import SopPost
    from scrm.sop.planner import Limits
    from scrm.sop.service import replan_day

    now = dt.datetime(2026, 11, 23, 16, 0, tzinfo=dt.UTC)  # 00:00 on DAY in Shanghai
    with Session(engine) as s:
        for chat_id in ("sleepy", "busy"):
            s.add(CustomerGroup(chat_id=chat_id, name=chat_id, owner_userid="bot1"))
        for i, layer in enumerate(["dormant", "dormant", "repeat", "repeat", "repeat", "repeat"]):
            chat_id = "sleepy" if i < 3 else "busy"
            s.add(GroupMember(chat_id=chat_id, member_id=f"c{i}", member_type=2, state=MemberState.member))
            s.add(CustomerLayer(external_userid=f"c{i}", layer=layer, since=now, computed_at=now))
        s.commit()
    result = replan_day(engine, [template({"member_layers": [{"layer": "dormant", "at_least": "60%"}]})], DAY,
                        Limits(), tz=ZoneInfo("Asia/Shanghai"), now=now)
    assert result.inserted == 1
    with engine.connect() as conn:
        assert [r.chat_id for r in conn.execute(SopPost.__table__.select())] == ["sleepy"]


# --------------------------------------------------------------------------------------------
# Lint


def write(directory: Path, name: str, text: str) -> str:
    text = textwrap.dedent(text).lstrip("\n")
    (directory / name).write_text(text, encoding="utf-8")
    return text


def test_lint_warns_at_the_line_of_a_layer_the_layer_rules_do_not_define(tmp_path):
    """Mutation tried: `_layer_warnings` reading only `layers` (not member_layers): the
    member_layers warning is missing and the test fails."""
    text = write(tmp_path, "wake.yaml", """
        id: wake
        name: 唤醒沉睡群
        targets:
          layers: [dormant, vip]
          member_layers:
            - layer: dormant
              at_least: 30%
            - layer: dormnat
              at_least: 0.5
        steps:
          - at: "10:00"
            text: 好久不见
        """)
    lines = text.splitlines()
    known = defined_layer_ids(SHIPPED_LAYERS)
    assert known is not None
    _, problems = lint(tmp_path, layer_ids=known)
    assert errors_in(problems) == []
    assert [(p.line, p.severity) for p in problems] == [
        (lines.index("  layers: [dormant, vip]") + 1, WARNING), (lines.index("    - layer: dormnat") + 1, WARNING)]
    assert "targets.layers[1]: 'vip' is not a layer of the layer rules" in problems[0].message
    assert "targets.member_layers[1].layer: 'dormnat' is not a layer of the layer rules (did you mean 'dormant'?)" \
        in problems[1].message
    assert lint(tmp_path)[1] == [], "without the layer rules there is nothing to check against"


def test_lint_refuses_a_bare_number_share_at_its_line(tmp_path):
    text = write(tmp_path, "wake.yaml", """
        id: wake
        name: 唤醒沉睡群
        targets:
          member_layers:
            - layer: dormant
              at_least: 30
        steps:
          - at: "10:00"
            text: 好久不见
        """)
    _, problems = lint(tmp_path)
    [problem] = errors_in(problems)
    assert problem.line == text.splitlines().index("      at_least: 30") + 1
    assert "targets.member_layers[0].at_least" in problem.message and "did you mean 30%?" in problem.message
