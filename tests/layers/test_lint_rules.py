"""`scrm layers lint` as operators use it: the shipped rules lint clean, and every problem in a
rules folder is found in one run, each at the line to fix.

Each test writes a small rules folder the way an operator would (a typo, a rule in the wrong
place, a tag name too long...) and checks the problem names the right file line and says what is
wrong. Mutations tried are named in each docstring.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from scrm.layers.lint import (
    WARNING,
    WECOM_CORP_TAGS_MAX,
    Problem,
    RulesError,
    StoreRef,
    defined_layer_ids,
    errors_in,
    lint_rules,
    load_ruleset,
)
from scrm.layers.rules import render_json_schema

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "layers"

LAYERS = """
layers:
  - id: new
    name: 新客
    operation: 新人券
  - id: buyer
    name: 买过
    operation: 推第二杯
  - id: dormant
    name: 沉睡
    operation: 唤醒券
default_layer: new
"""


def write(directory: Path, name: str, text: str) -> tuple[Path, str]:
    text = textwrap.dedent(text).lstrip("\n")
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path, text


def line(text: str, marker: str, nth: int = 1) -> int:
    hits = [i for i, content in enumerate(text.splitlines(), start=1) if marker in content]
    return hits[nth - 1]


def rules_folder(tmp_path: Path, rules: str, *, layers: str = LAYERS, tags: str | None = None) -> tuple[Path, str]:
    """A folder with layers.yaml (layers + rules) and, if given, tags.yaml; returns the folder and
    the text of layers.yaml."""
    _, text = write(tmp_path, "layers.yaml", textwrap.dedent(layers).lstrip("\n") + textwrap.dedent(rules))
    if tags is not None:
        write(tmp_path, "tags.yaml", tags)
    return tmp_path, text


def only(problems: list[Problem], severity: str | None = None) -> Problem:
    chosen = [p for p in problems if severity is None or p.severity == severity]
    assert len(chosen) == 1, "\n".join(map(str, problems))
    return chosen[0]


# --------------------------------------------------------------------------------------------
# The shipped rules


def test_the_shipped_coffee_chain_rules_lint_clean_and_load_in_their_written_precedence():
    """Mutation tried: a copy of `bought` (orders >= 1) inserted above `orders-3-30d` in
    layers/layers.yaml: lint warns that the repeat rule can never match, and this test fails."""
    assert lint_rules(SHIPPED) == []
    ruleset = load_ruleset(SHIPPED)
    assert [layer.id for layer in ruleset.layers] == ["new", "first_time", "repeat", "high_value", "dormant",
                                                      "churned"]
    assert ruleset.default_layer == "new"
    assert [r.layer for r in ruleset.rules] == ["churned", "dormant", "high_value", "repeat", "first_time"]
    assert all(layer.operation for layer in ruleset.layers)
    audiences = {t.audience for t in ruleset.tags.rules}
    assert {"sales", "operators"} <= audiences
    assert ruleset.tags.city_tag and "{city}" in ruleset.tags.city_tag
    for path in SHIPPED.glob("*.yaml"):
        assert path.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=./schema.json\n"), path


def test_shipped_json_schema_matches_the_code():
    shipped = (SHIPPED / "schema.json").read_text(encoding="utf-8")
    assert shipped == render_json_schema(), "layers/schema.json is stale: run `python -m scrm.layers.rules`"


def test_editors_using_schema_json_accept_each_shipped_file_and_flag_a_typo():
    """Each file holds part of the rule set, so the schema requires no top-level key; a typo in a
    condition is still flagged."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads((SHIPPED / "schema.json").read_text(encoding="utf-8")))
    for path in sorted(SHIPPED.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert [e.message for e in validator.iter_errors(data)] == [], path
    typo = {"rules": [{"id": "x", "layer": "new", "when": {"ordrs": {"min": 1}}}]}
    assert any("ordrs" in e.message for e in validator.iter_errors(typo))


def test_defined_layer_ids_is_none_when_the_rules_do_not_load(tmp_path):
    assert defined_layer_ids(SHIPPED) == {"new", "first_time", "repeat", "high_value", "dormant", "churned"}
    write(tmp_path, "layers.yaml", "layers: [")
    assert defined_layer_ids(tmp_path) is None


# --------------------------------------------------------------------------------------------
# Each kind of problem, at its line


def test_a_typo_in_a_condition_is_an_error_at_its_line_with_the_key_meant(tmp_path):
    """Mutation tried: _keys_at returning no keys: no suggestion, the test fails."""
    folder, text = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyer
            when:
              ordrs: { min: 1 }
          - id: quiet
            layer: dormant
            when: { days_since_last_order: { min: 60 } }
        """)
    problem = only(lint_rules(folder))
    assert (problem.path, problem.line) == (str(folder / "layers.yaml"), line(text, "ordrs"))
    assert "rules[0].when: unknown key 'ordrs' (did you mean 'orders'?)" in problem.message


def test_yaml_syntax_errors_and_duplicate_keys_are_reported_at_their_lines(tmp_path):
    _, text = write(tmp_path, "layers.yaml", LAYERS + textwrap.dedent("""
        rules:
          - id: bought
            layer: buyer
            layer: dormant
            when: { orders: { min: 1 } }
        """))
    problems = lint_rules(tmp_path)
    dup = next(p for p in problems if "duplicate key" in p.message)
    assert dup.line == line(text, "layer: dormant") and "first at line" in dup.message
    write(tmp_path, "layers.yaml", "layers:\n  - id: new\n   name: x\n")
    bad = only(lint_rules(tmp_path))
    assert "YAML syntax error" in bad.message and bad.line in (2, 3)


def test_every_reference_problem_is_reported_in_one_run_each_at_its_line(tmp_path):
    """An unknown layer in a rule, an unknown default_layer, a rule id used twice and a bad field
    elsewhere: one run, four errors (the rule that fails validation still counts for the ids).
    Mutation tried: dropping the rule-id check from `_reference_problems`: the test fails."""
    folder, text = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyr
            when: { orders: { min: 1 } }
          - id: bought
            layer: dormant
            when: { days_since_last_order: { min: -1 } }
        """, layers=LAYERS.replace("default_layer: new", "default_layer: nwe"))
    problems = errors_in(lint_rules(folder))
    by_line = {p.line: p.message for p in problems}
    assert "'buyr', which is not a layer (did you mean 'buyer'?)" in by_line[line(text, "layer: buyr")]
    assert "default_layer: 'nwe' is not a layer (did you mean 'new'?)" in by_line[line(text, "default_layer")]
    assert "rule id 'bought' is already used by rules[0]" in by_line[line(text, "id: bought", 2)]
    assert "greater than or equal to 0" in by_line[line(text, "days_since_last_order")]
    assert len(problems) == 4, "\n".join(map(str, problems))
    with pytest.raises(RulesError) as caught:
        load_ruleset(folder)
    assert [str(p) for p in caught.value.problems] == [str(p) for p in problems]
    assert f"{folder / 'layers.yaml'}:{line(text, 'layer: buyr')}:" in str(caught.value)


def test_a_rule_an_earlier_rule_always_beats_is_a_warning_at_its_when(tmp_path):
    """`bought` (>= 1 order ever) above `regular` (>= 3 orders in 30 days): every regular has
    bought, so `regular` can never match. The reverse order is clean. Mutations tried: requiring
    equal windows in `_within` (the 30-day rule is then not seen as narrower): no warning; and
    `_shadow_problems` returning []: no warning."""
    regular = "  - id: regular\n    name: 常客\n    operation: 会员日\n"
    layers = LAYERS.replace("  - id: dormant", regular + "  - id: dormant")
    shadowed = """
        rules:
          - id: bought
            layer: buyer
            when: { orders: { min: 1 } }
          - id: regular
            layer: regular
            when:
              orders: { min: 3, within_days: 30 }
          - id: quiet
            layer: dormant
            when: { orders: { min: 1 }, days_since_last_order: { min: 60 } }
        """
    folder, text = rules_folder(tmp_path, shadowed, layers=layers)
    problems = lint_rules(folder)
    warnings = [p for p in problems if p.severity == WARNING]
    assert errors_in(problems) == []
    assert {p.line for p in warnings} == {line(text, "when:", 2), line(text, "days_since_last_order")}
    regular = next(p for p in warnings if "'regular'" in p.message)
    assert f"rule 'regular' can never match: rule 'bought' (rules[0], line {line(text, '- id: bought')})" \
        in regular.message
    assert "a weaker condition" in regular.message
    # The intended order: the narrow rules first.
    folder2 = tmp_path / "fixed"
    folder2.mkdir()
    rules_folder(folder2, """
        rules:
          - id: quiet
            layer: dormant
            when: { orders: { min: 1 }, days_since_last_order: { min: 60 } }
          - id: regular
            layer: regular
            when:
              orders: { min: 3, within_days: 30 }
          - id: bought
            layer: buyer
            when: { orders: { min: 1 } }
        """, layers=layers)
    assert lint_rules(folder2) == []


def test_a_layer_no_rule_fills_is_a_warning_unless_it_is_the_default(tmp_path):
    """Mutation tried: dropping the `!= default` test: `new` is flagged too and the test fails."""
    folder, text = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyer
            when: { orders: { min: 1 } }
        """)
    warning = only(lint_rules(folder), WARNING)
    assert warning.line == line(text, "id: dormant")
    assert "no rule puts anyone in layer 'dormant'" in warning.message


def test_a_top_level_key_in_two_files_is_an_error_in_the_second(tmp_path):
    folder, _ = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyer
            when: { orders: { min: 1 } }
          - id: quiet
            layer: dormant
            when: { days_since_last_order: { min: 60 } }
        """)
    _, more = write(tmp_path, "more.yaml", """
        # more rules
        rules:
          - id: late
            layer: dormant
            when: { deleted: true }
        """)
    problem = only(lint_rules(folder))
    assert (problem.path, problem.line) == (str(tmp_path / "more.yaml"), line(more, "rules:"))
    assert f"'rules' is already given in {tmp_path / 'layers.yaml'}" in problem.message


def test_the_folder_needs_layers_and_a_default_layer_somewhere(tmp_path):
    write(tmp_path, "tags.yaml", """
        tags:
          rules: []
        """)
    messages = [p.message for p in lint_rules(tmp_path)]
    assert any("missing required key 'layers'" in m for m in messages)
    assert any("missing required key 'default_layer'" in m for m in messages)


# --------------------------------------------------------------------------------------------
# WeCom tags


def test_a_layer_tag_over_30_characters_is_an_error_at_tags_layer_tag(tmp_path):
    """Mutation tried: allowing 31 characters (`> WECOM_TAG_NAME_MAX + 1`): the 31-character tag
    passes and this test fails."""
    tags = """
        tags:
          layer_tag: 客户分层标签（自动维护，请勿手改）·{name}
        """
    folder, _ = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyer
            when: { orders: { min: 1 } }
          - id: quiet
            layer: dormant
            when: { days_since_last_order: { min: 60 } }
        """, tags=tags)
    # The pattern is 18 characters and a name: 20 for 新客; 31 for a 13-character name.
    longer = "name: 沉睡超过六十天没下单的老客"
    text = (tmp_path / "layers.yaml").read_text(encoding="utf-8").replace("name: 沉睡", longer)
    (tmp_path / "layers.yaml").write_text(text, encoding="utf-8")
    problem = only(lint_rules(folder))
    assert problem.path == str(tmp_path / "tags.yaml") and problem.line == 2
    assert "layer 'dormant' gets the tag" in problem.message and "(31 characters)" in problem.message


def test_store_tag_names_are_checked_with_the_real_store_names_or_warned_about_with_a_long_sample(tmp_path):
    """With the stores from the database a too-long store tag is an error naming it; without, a
    warning with the long sample name. Mutation tried: filling the pattern with the store code
    instead of its name: the error disappears."""
    tags = """
        tags:
          store_tag: 归属门店（销售跟进用）·{name}
          city_tag: null
        """
    folder, _ = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyer
            when: { orders: { min: 1 } }
          - id: quiet
            layer: dormant
            when: { days_since_last_order: { min: 60 } }
        """, tags=tags)
    short = StoreRef("SH01", "瑞幸(静安寺店)", "上海")
    long = StoreRef("BJ09", "瑞幸咖啡(北京首都国际机场T3航站楼店)", "北京")
    problem = only(lint_rules(folder, stores=[short, long]))
    assert problem.severity != WARNING and (problem.path, problem.line) == (str(tmp_path / "tags.yaml"), 2)
    assert "1 store name makes tag names over WeCom's 30 characters" in problem.message
    assert "归属门店（销售跟进用）·瑞幸咖啡(北京首都国际机场T3航站楼店)" in problem.message
    assert errors_in(lint_rules(folder, stores=[short])) == []
    warning = only(lint_rules(folder), WARNING)
    assert warning.line == 2 and "scrm layers lint --stores" in warning.message


def test_conditions_naming_stores_or_cities_the_database_lacks_are_warnings(tmp_path):
    folder, text = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyer
            when: { orders: { min: 1 }, stores: [SH01, SH0l] }
          - id: quiet
            layer: dormant
            when:
              any:
                - cities: [上海, 杭洲]
        """)
    stores = [StoreRef("SH01", "静安寺店", "上海"), StoreRef("HZ01", "西湖店", "杭州")]
    warnings = [p for p in lint_rules(folder, stores=stores) if p.severity == WARNING]
    assert {(p.line, p.message.split(":")[0]) for p in warnings} == {
        (line(text, "SH0l"), "rules[0].when.stores"), (line(text, "杭洲"), "rules[1].when.any[0].cities")}
    assert any("did you mean 'SH01'?" in p.message for p in warnings)
    assert lint_rules(folder) == [], "without the database, store codes are not checked"


def test_tag_names_made_twice_and_more_tags_than_wecom_holds_are_errors(tmp_path):
    """A condition tag named like a layer tag would be one WeCom tag meaning two things.
    Mutation tried: `claim` keyed by (name, what) instead of name: the clash is missed."""
    tags = """
        tags:
          rules:
            - id: sleepy
              name: 分层·沉睡
              when: { days_since_last_order: { min: 30 } }
        """
    folder, _ = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyer
            when: { orders: { min: 1 } }
          - id: quiet
            layer: dormant
            when: { days_since_last_order: { min: 60 } }
        """, tags=tags)
    problem = only(lint_rules(folder))
    assert (problem.path, problem.line) == (str(tmp_path / "tags.yaml"), 4)
    assert "'分层·沉睡' is made twice (layer 'dormant' and tag rule 'sleepy')" in problem.message
    many = [StoreRef(f"S{i:04d}", f"门店{i}", f"城市{i % 300}") for i in range(WECOM_CORP_TAGS_MAX)]
    messages = [p.message for p in errors_in(lint_rules(folder, stores=many))]
    assert any(f"WeCom holds at most {WECOM_CORP_TAGS_MAX} corp tags" in m for m in messages), messages


def test_two_stores_with_one_name_make_one_tag_name_twice_unless_the_pattern_uses_the_code(tmp_path):
    """Mutation tried: labelling store claims by store name instead of code: the clash between
    two stores called 静安寺店 goes unseen."""
    folder, _ = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyer
            when: { orders: { min: 1 } }
          - id: quiet
            layer: dormant
            when: { days_since_last_order: { min: 60 } }
        """, tags="tags:\n  city_tag: null\n")
    twins = [StoreRef("SH01", "静安寺店", "上海"), StoreRef("SH02", "静安寺店", "上海")]
    problem = only(lint_rules(folder, stores=twins))
    assert "'门店·静安寺店' is made twice (store 'SH01' and store 'SH02')" in problem.message
    (tmp_path / "tags.yaml").write_text("tags:\n  city_tag: null\n  store_tag: 门店·{name}({code})\n",
                                        encoding="utf-8")
    assert lint_rules(folder, stores=twins) == []


def test_a_tag_pattern_without_its_placeholder_is_an_error(tmp_path):
    tags = """
        tags:
          store_tag: 门店·{city}
        """
    folder, _ = rules_folder(tmp_path, """
        rules:
          - id: bought
            layer: buyer
            when: { orders: { min: 1 } }
          - id: quiet
            layer: dormant
            when: { days_since_last_order: { min: 60 } }
        """, tags=tags)
    problem = only(lint_rules(folder))
    assert problem.line == 2 and "{city} is not filled in; store_tag may use {name} and/or {code}" in problem.message
    (tmp_path / "tags.yaml").write_text("tags:\n  layer_tag: 分层\n", encoding="utf-8")
    assert "'分层' must contain {name} once" in only(lint_rules(folder)).message
