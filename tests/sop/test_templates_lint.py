"""`scrm sop lint` / `preview` as operators use them: every problem found, each at its line.

Each test writes a small template the way an operator would (a typo, a bad time, a variable that
doesn't exist...) and checks the problem names the right file line and says what is wrong.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from scrm.sop.cli import sop_app
from scrm.sop.lint import WARNING, Problem, errors_in, lint, load_templates
from scrm.sop.schema import render_json_schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "sop_templates"


def write(directory: Path, name: str, text: str) -> tuple[Path, str]:
    text = textwrap.dedent(text).lstrip("\n")
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path, text


def line(text: str, marker: str, nth: int = 1) -> int:
    """The 1-based line of the nth line containing ``marker``."""
    hits = [i for i, content in enumerate(text.splitlines(), start=1) if marker in content]
    return hits[nth - 1]


def only_error(path: Path) -> Problem:
    """The one error lint finds (warnings, checked by their own tests, are left out)."""
    errors = errors_in(lint(path)[1])
    assert len(errors) == 1, "\n".join(map(str, errors))
    return errors[0]


# --------------------------------------------------------------------------------------------
# The shipped examples and schema


def test_every_example_template_lints_without_problems_or_warnings():
    templates, problems = lint(EXAMPLES)
    # The examples that print store fields say who they are for (with_store, or a city), so an
    # operator copying one starts from a template that lints clean.
    assert problems == [], "\n".join(map(str, problems))
    assert len(templates) >= 4
    for path in EXAMPLES.glob("*.yaml"):
        assert path.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=./schema.json\n"), path


def test_examples_cover_what_a_coffee_chain_runs():
    templates, _ = lint(EXAMPLES)
    steps = [(t, s) for t in templates for s in t.steps]
    assert any(s.at == "08:00" and s.channel.value == "mass_send" and "miniprogram" in s.model_dump()["attachments"][0]
               for _, s in steps), "weekday breakfast: 08:00 mass send with a mini program card"
    assert any(s.at == "15:00" and s.channel.value == "owner_task" and "link" in s.model_dump()["attachments"][0]
               for _, s in steps), "15:00 flash sale: owner task with a link"
    assert any(s.at == "10:30" and t.days.weekdays == ["sat", "sun"] for t, s in steps), "weekend post"
    assert any(t.days.dates and not t.days.weekdays for t in templates), "one-off launch dates"
    assert any(t.targets.cities for t in templates), "a city-specific template"
    assert any(t.targets.exclude_chat_ids for t in templates), "a template excluding groups"


def test_shipped_json_schema_matches_the_code():
    shipped = (EXAMPLES / "schema.json").read_text(encoding="utf-8")
    assert shipped == render_json_schema(), "sop_templates/schema.json is stale: run `python -m scrm.sop.schema`"


def test_editors_using_schema_json_accept_the_examples_and_flag_a_typo():
    jsonschema = pytest.importorskip("jsonschema")
    import json

    import yaml

    class Yaml12ishLoader(yaml.SafeLoader):
        """The VS Code extension reads YAML 1.2, where 2026-12-01 is text, not a date."""

    Yaml12ishLoader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))
    validator = jsonschema.Draft202012Validator(json.loads((EXAMPLES / "schema.json").read_text(encoding="utf-8")))
    for path in sorted(EXAMPLES.glob("*.yaml")):
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Yaml12ishLoader)
        assert [e.message for e in validator.iter_errors(data)] == [], path
    typo = {"id": "x", "name": "x", "steps": [{"at": "08:00", "txet": "hi"}]}
    assert any("txet" in e.message for e in validator.iter_errors(typo))


# --------------------------------------------------------------------------------------------
# Each kind of problem, at its line

VALID_STEP = """
      - at: "08:00"
        text: 早安
"""

CASES = {
    "bad YAML syntax (a key indented one space off)": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            text: 早安
           channel: mass_send
        """, "channel:", "YAML syntax error"),
    "unknown key (typo)": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            txet: 早安
        """, "txet:", "steps[0]: unknown key 'txet' (did you mean 'text'?)"),
    "unknown top-level key": ("""
        id: breakfast
        name: 早餐
        tiems: 3
        steps:
          - at: "08:00"
            text: 早安
        """, "tiems", "unknown key 'tiems'"),
    "bad time 25:00": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "25:00"
            text: 早安
        """, "25:00", "steps[0].at: '25:00' is not a time of day HH:MM"),
    "undefined variable on the 3rd line of a block text": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            text: |
              早安！
              今天是{{ weekday }}
              欢迎光临{{ stroe.name }}
        """, "stroe", "steps[0].text: unknown variable 'stroe' (did you mean 'store'?)"),
    "unknown field of a variable": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            text: "{{ store.nmae }}早安"
        """, "nmae", "store has no field 'nmae' (did you mean 'name'?)"),
    "undefined variable in a link title": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            attachments:
              - link:
                  title: "{{ shop.name }}秒杀"
                  url: https://m.example.com
        """, "shop.name", "steps[0].attachments[0].link.title: unknown variable 'shop'"),
    "Jinja syntax error on the 2nd line of a block": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            text: |
              早安
              {{ store.name }
        """, "{{ store.name }", "template syntax error"),
    "text over 4000 bytes once the store name is in": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            text: "{{ store.name }}LONG"
        """.replace("LONG", "好" * 1320), "text:", "steps[0].text: 4,0"),
    "10 attachments": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            attachments:
        """.rstrip(" ") + "              - image: {media_id: M}\n" * 10,
        "attachments:", "10 attachments; WeCom allows at most 9"),
    "duplicate key": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            text: 早安
            at: "09:00"
        """, 'at: "09:00"', "duplicate key 'at' (first at line 4)"),
    "until before from": ("""
        id: breakfast
        name: 早餐
        days:
          from: 2026-12-31
          until: 2026-12-01
        steps:
          - at: "08:00"
            text: 早安
        """, "until:", "days.until: until (2026-12-01) is before from (2026-12-31)"),
    "invalid miniprogram appid": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            attachments:
              - miniprogram:
                  title: 早餐
                  appid: wx123
                  page: pages/index/index.html
        """, "appid", "'wx123' is not a mini program appid"),
    "attachment kind misspelt": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            attachments:
              - lnik:
                  title: 早餐
                  url: https://m.example.com
        """, "lnik", "unknown key 'lnik' (did you mean 'link'?)"),
    "step inside quiet hours": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "23:30"
            text: 晚安
        """, "23:30", "inside quiet hours (22:00-08:00)"),
    "two steps at the same time": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            text: 早安
          - at: "8:00"
            text: 再说一次早安
        """, "8:00", "steps[1].at: 08:00 is the same time as steps[0]"),
    "two steps with the same id": ("""
        id: breakfast
        name: 早餐
        steps:
          - id: morning
            at: "08:00"
            text: 早安
          - id: morning
            at: "09:00"
            text: 早安
        """, "id: morning", "two steps share the id 'morning'"),
    "mini program page without .html": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            attachments:
              - miniprogram:
                  title: 早餐
                  appid: wx1234567890abcdef
                  page: pages/menu/index?store={{ store.code }}
        """, "page:", "should end in .html"),
    "top level is a list": ("""
        - id: breakfast
          name: 早餐
        """, "- id", "the top level must be a mapping"),
    "a hostile template": ("""
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            text: "{{ ''.__class__.__mro__[1].__subclasses__() }}"
        """, "text:", "not allowed"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_problem_is_reported_at_its_line(tmp_path, case):
    source, marker, message = CASES[case]
    path, text = write(tmp_path, "breakfast.yaml", source)
    nth = 2 if case in ("two steps at the same time", "two steps with the same id") else 1
    problem = only_error(path)
    assert message in problem.message
    assert problem.line == line(text, marker, nth), str(problem)
    assert str(problem) == f"{path}:{problem.line}: {problem.message}"


@pytest.mark.parametrize("source, reason", [
    ("{{ ''.__class__.__mro__ }}", "attribute '__mro__' is not allowed"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "calling functions or methods is not allowed"),
    ("{{ lipsum.__globals__ }}", "'lipsum' is not available"),
    ("{{ 'a' * 100000000 }}", "'*' only works on numbers"),
    ("{{ range(10**9)|list }}", "'range' is not available"),
    ("{{ self.__init__ }}", "'self' is not available"),
    ("{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}", "loops are not available"),
])
def test_hostile_templates_are_refused_at_lint_at_their_line(tmp_path, source, reason):
    path, text = write(tmp_path, "evil.yaml", """
        id: evil
        name: 早餐
        steps:
          - at: "08:00"
            text: |
              早安
              SOURCE
        """.replace("SOURCE", source))
    errors = errors_in(lint(path)[1])
    assert reason in errors[0].message and errors[0].line == line(text, source[:8]), "\n".join(map(str, errors))
    # One problem for one hostile expression, not one per part of it; a second only where the
    # expression has a second mistake of its own (|list is not an SOP filter).
    assert len(errors) == (2 if "|list" in source else 1), "\n".join(map(str, errors))
    assert all("<class" not in p.message and "0x" not in p.message for p in errors)


def test_several_problems_in_one_file_are_all_reported(tmp_path):
    path, text = write(tmp_path, "broken.yaml", """
        id: breakfast
        name: 早餐
        steps:
          - at: "25:00"
            text: "{{ stroe.name }}早安"
          - at: "09:00"
            txet: 早安
            attachments:
              - miniprogram: {title: 早餐, appid: wx1, page: pages/a.html}
          - at: "15:00"
            text: "{{ store.name }}"
            text: "{{ store.name }}!"
        """)
    _, problems = lint(path)
    found = {(p.line, p.message.split(":")[0]) for p in problems}
    assert found == {
        (line(text, "25:00"), "steps[0].at"),
        (line(text, "stroe"), "steps[0].text"),
        (line(text, "txet"), "steps[1]"),
        (line(text, "wx1"), "steps[1].attachments[0].miniprogram.appid"),
        (line(text, "!"), "duplicate key 'text' (first at line 11); YAML would keep only the last one"),
        (line(text, "{{ store.name }}"), "steps[2].text"),  # the warning on store fields, below
    }, "\n".join(map(str, problems))


def test_one_run_finds_every_problem_of_a_field_and_the_step_checks_despite_schema_errors(tmp_path):
    # An operator's file with schema errors (an unknown key at the top and in a step, a bad appid)
    # and, elsewhere, a text field with four problems of its own, a step in quiet hours, two steps
    # at the same time and a mini program page without .html: all of them in one lint run.
    path, text = write(tmp_path, "breakfast.yaml", """
        id: breakfast
        name: 早餐
        tiems: 3
        steps:
          - at: "08:00"
            txet: typo
            text: |
              早安{{ stroe.name }}
              {% for x in [1, 2] %}{{ x }}{% endfor %}
              {{ weekday|uper }}{{ group.nmae }}
          - at: "23:30"
            text: 晚安
          - at: "8:00"
            text: "{{ store.name }}又一条"
            attachments:
              - miniprogram: {title: 早餐, appid: wx1, page: pages/menu/index}
        """)
    _, problems = lint(path)
    found = {(p.line, p.severity, p.message.split(";")[0]) for p in problems}
    assert found == {
        (line(text, "tiems"), "error", "unknown key 'tiems'"),
        (line(text, "txet"), "error", "steps[0]: unknown key 'txet' (did you mean 'text'?)"),
        (line(text, "stroe"), "error", "steps[0].text: unknown variable 'stroe' (did you mean 'store'?)"),
        (line(text, "{% for"), "error", "steps[0].text: {% for %} loops are not available in SOP templates"),
        (line(text, "uper"), "error", "steps[0].text: unknown filter 'uper' (did you mean 'upper'?)"),
        (line(text, "nmae"), "error", "steps[0].text: group has no field 'nmae' (did you mean 'name'?)"),
        (line(text, "23:30"), "error",
         "steps[1].at: 23:30 is inside quiet hours (22:00-08:00), when no posts are sent"),
        (line(text, '"8:00"'), "error", "steps[2].at: 08:00 is the same time as steps[0]"),
        (line(text, "{{ store.name }}又一条"), "warning",
         "steps[2].text: uses {{ store.name }} but the targets can include groups without a store"),
        (line(text, "wx1"), "error",
         "steps[2].attachments[0].miniprogram.appid: 'wx1' is not a mini program appid: 'wx' and 16 letters or digits"),
        (line(text, "wx1"), "error",
         "steps[2].attachments[0].miniprogram.page: 'pages/menu/index' should end in .html (e.g. "
         "pages/index/index.html): WeChat opens a mini program page sent from WeCom only by its .html path, "
         "otherwise it shows 'page not found'"),
    }, "\n".join(map(str, problems))
    assert len(problems) == len(found)


def test_a_valid_file_refused_for_a_duplicate_key_is_still_checked(tmp_path):
    path, text = write(tmp_path, "late.yaml", """
        id: late
        name: 夜宵
        name: 夜宵2
        steps:
          - at: "23:00"
            text: "{{ stroe.name }}"
        """)
    templates, problems = lint(path)
    assert templates == []
    assert [(p.line, p.message.split(":")[0]) for p in problems] == [
        (line(text, "夜宵2"), "duplicate key 'name' (first at line 2); YAML would keep only the last one"),
        (line(text, "23:00"), "steps[0].at"),
        (line(text, "stroe"), "steps[0].text"),
    ], "\n".join(map(str, problems))


STORE_TEMPLATE = """
    id: flash
    name: 下午茶秒杀
    TARGETS
    steps:
      - at: "15:00"
        text: 下午三点，来杯咖啡提提神☕
      - at: "17:00"
        text: |
          傍晚好
          今天{{ weekday }}，{{ store.name }}第二杯半价
        attachments:
          - link: {title: 秒杀, url: "https://m.example.com/?s={{ store.code }}"}
    """


@pytest.mark.parametrize("targets", ["", "targets: {group_tags: [office]}", "targets: {chat_ids: [wr1]}",
                                     "targets: {exclude_stores: [SH01]}"])
def test_store_fields_for_targets_that_can_include_groups_without_a_store_warn_at_the_first_use(tmp_path, targets):
    path, text = write(tmp_path, "flash.yaml", STORE_TEMPLATE.replace("TARGETS", targets))
    templates, problems = lint(path)
    assert [t.id for t in templates] == ["flash"]  # a warning does not stop the template
    assert [(p.line, p.severity) for p in problems] == [(line(text, "{{ store.name }}"), WARNING)]
    assert str(problems[0]) == (
        f"{path}:{line(text, '{{ store.name }}')}: warning: steps[1].text: uses {{{{ store.name }}}} but the "
        "targets can include groups without a store; those groups will not get this template ('group has no "
        "store' in scrm sop plan). Set targets.with_store: true (or target stores or cities) to send it only to "
        "groups with a store")


@pytest.mark.parametrize("targets", ["targets: {stores: [SH01]}", "targets: {cities: [上海], group_tags: [office]}",
                                     "targets: {with_store: true, group_tags: [office]}"])
def test_no_store_warning_when_the_targets_imply_a_store(tmp_path, targets):
    path, _ = write(tmp_path, "flash.yaml", STORE_TEMPLATE.replace("TARGETS", targets))
    assert lint(path)[1] == []


def test_no_store_warning_for_a_template_without_store_fields(tmp_path):
    path, _ = write(tmp_path, "flash.yaml", STORE_TEMPLATE.replace("TARGETS", "").replace("store.name", "group.name")
                    .replace("store.code", "group.chat_id"))
    assert lint(path)[1] == []


def test_templates_with_only_warnings_are_not_refused_by_the_scheduler(tmp_path):
    from scrm.config import SopSettings
    from scrm.sop import jobs

    write(tmp_path, "flash.yaml", STORE_TEMPLATE.replace("TARGETS", ""))
    assert list(jobs.load_templates(tmp_path, SopSettings(templates_dir=tmp_path))) == ["flash"]
    write(tmp_path, "bad.yaml", "id: bad\nname: x\nsteps:\n  - {at: '25:00', text: hi}\n")
    with pytest.raises(jobs.TemplatesRefused) as refused:
        jobs.load_templates(tmp_path, SopSettings(templates_dir=tmp_path))
    assert "bad.yaml:4" in str(refused.value) and "warning" not in str(refused.value)


def test_duplicate_template_id_across_files_is_reported_on_the_second(tmp_path):
    write(tmp_path, "a-breakfast.yaml", "id: breakfast\nname: 早餐\nsteps:\n  - {at: '08:00', text: 早安}\n")
    second, text = write(tmp_path, "b-breakfast-copy.yaml", """
        # copied from a-breakfast.yaml
        id: breakfast
        name: 早餐（副本）
        steps:
          - {at: '09:00', text: 早安}
        """)
    templates, problems = lint(tmp_path)
    assert [t.name for t in templates] == ["早餐"]
    assert problems == [Problem(str(second), line(text, "id:"),
                                f"template id 'breakfast' is already used by {tmp_path / 'a-breakfast.yaml'}")]


def test_times_may_be_written_unquoted(tmp_path):
    # YAML 1.1 reads 10:30 as the base-60 number 630; operators should not have to know that.
    path, _ = write(tmp_path, "t.yaml", "id: brunch\nname: x\nsteps:\n  - at: 10:30\n    text: hi\n")
    templates, problems = lint(path)
    assert problems == [] and templates[0].steps[0].at == "10:30"


def test_quiet_hours_come_from_the_caller(tmp_path):
    path, _ = write(tmp_path, "t.yaml", "id: late\nname: x\nsteps:\n  - at: '21:30'\n    text: hi\n")
    assert lint(path)[1] == []
    assert "quiet hours (21:00-07:00)" in lint(path, quiet_hours=("21:00", "07:00"))[1][0].message
    assert lint(tmp_path / "t.yaml", quiet_hours=None)[1] == []


def test_load_templates_reads_subfolders_but_not_hidden_ones(tmp_path):
    (tmp_path / "上海").mkdir()
    (tmp_path / ".drafts").mkdir()
    write(tmp_path / "上海", "city.yml", "id: city\nname: x\nsteps:\n  - {at: '12:00', text: hi}\n")
    write(tmp_path / ".drafts", "draft.yaml", "id: [broken\n")
    write(tmp_path, "notes.txt", "not a template")
    templates, problems = load_templates(tmp_path)
    assert [t.id for t in templates] == ["city"] and problems == []


def test_missing_path_and_empty_file_are_problems(tmp_path):
    assert [str(p) for p in lint(tmp_path / "nope")[1]] == [f"{tmp_path / 'nope'}: no such file or directory"]
    path, _ = write(tmp_path, "empty.yaml", "# nothing yet\n")
    assert "the file is empty" in only_error(path).message


# --------------------------------------------------------------------------------------------
# CLI

runner = CliRunner()


def test_cli_lint_prints_file_line_problems_and_exits_1(tmp_path):
    path, text = write(tmp_path, "breakfast.yaml", """
        id: breakfast
        name: 早餐
        steps:
          - at: "08:00"
            txet: 早安
            text: "{{ stroe.name }}"
        """)
    write(tmp_path, "ok.yaml", "id: ok\nname: x\nsteps:\n  - {at: '12:00', text: hi}\n")
    result = runner.invoke(sop_app, ["lint", str(tmp_path)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{path}:{line(text, 'txet')}: steps[0]: unknown key 'txet' (did you mean 'text'?)"
    assert lines[1].startswith(f"{path}:{line(text, 'stroe')}: steps[0].text: unknown variable 'stroe'")
    assert lines[-1] == "2 templates, 2 problems"


def test_cli_lint_prints_warnings_and_passes_unless_strict(tmp_path):
    path, text = write(tmp_path, "flash.yaml", STORE_TEMPLATE.replace("TARGETS", ""))
    result = runner.invoke(sop_app, ["lint", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{path}:{line(text, '{{ store.name }}')}: warning: steps[1].text: uses ")
    assert lines[-1] == "1 template, 0 problems, 1 warning"
    strict = runner.invoke(sop_app, ["lint", "--strict", str(tmp_path)])
    assert strict.exit_code == 1 and strict.output == result.output


def test_cli_lint_of_a_missing_path_exits_2(tmp_path):
    result = runner.invoke(sop_app, ["lint", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cli_lint_exits_0_on_the_examples():
    result = runner.invoke(sop_app, ["lint", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("templates, 0 problems")


@pytest.fixture
def settings_env(monkeypatch, tmp_path):
    """Point scrm's settings at a fresh, migrated SQLite database (and back afterwards)."""
    from scrm.config import reset_settings_cache
    from scrm.db import dispose_engines, migrate

    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    migrate(url)
    monkeypatch.setenv("SCRM_DATABASE__URL", url)
    reset_settings_cache()
    yield monkeypatch
    dispose_engines()
    reset_settings_cache()


def test_cli_lint_defaults_to_the_configured_templates_dir(settings_env, tmp_path):
    write(tmp_path, "bad.yaml", "id: bad\nname: x\nsteps:\n  - {at: '25:00', text: hi}\n")
    settings_env.setenv("SCRM_SOP__TEMPLATES_DIR", str(tmp_path))
    from scrm.config import reset_settings_cache

    reset_settings_cache()
    result = runner.invoke(sop_app, ["lint"])
    assert result.exit_code == 1 and "bad.yaml:4: steps[0].at: '25:00'" in result.output, result.output


@pytest.fixture
def store_group(settings_env):
    from scrm.config import get_settings
    from scrm.db import get_engine
    from scrm.groups.models import CustomerGroup
    from scrm.stores.models import Store

    with Session(get_engine(get_settings().database_url())) as session:
        session.add(Store(code="SH0231", name="瑞幸咖啡(南京西路店)", address="上海市静安区南京西路1266号",
                          city="上海"))
        session.add(CustomerGroup(chat_id="wrNJXL01", name="南京西路店福利1群", owner_userid="zhangwei",
                                  store_code="SH0231"))
        session.add(CustomerGroup(chat_id="wrNOSTORE", name="内测群", owner_userid=None))
        session.commit()


def test_cli_preview_prints_the_message_the_group_receives(store_group):
    result = runner.invoke(sop_app, ["preview", "weekday-breakfast", "--group", "wrNJXL01", "--date", "2026-12-01",
                                     "--path", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "南京西路店福利1群" in out and "2026-12-01 周二" in out
    assert "08:00 · mass_send" in out
    assert "周二早安☀️ 瑞幸咖啡(南京西路店)的早餐已经备好啦" in out
    assert "[mini program] 9.9元早餐套餐 到店自提" in out
    assert "page pages/menu/index.html?store=SH0231&from=sop_breakfast" in out


def test_cli_preview_one_step_and_links(store_group):
    result = runner.invoke(sop_app, ["preview", "new-product-launch", "--group", "wrNJXL01", "--date", "2026-12-01",
                                     "--step", "evening", "--path", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert "17:30 · owner_task" in result.output and "09:30" not in result.output
    assert "瑞幸咖啡(南京西路店)（上海市静安区南京西路1266号）营业到 21:00" in result.output

    result = runner.invoke(sop_app, ["preview", "afternoon-flash-sale", "--group", "wrNJXL01", "--date", "2026-12-01",
                                     "--path", str(EXAMPLES)])
    assert "[link] 下午茶秒杀｜第二杯半价" in result.output
    assert "https://m.example.com/flash-sale?store=SH0231" in result.output


def test_cli_preview_group_without_store_says_so(store_group):
    result = runner.invoke(sop_app, ["preview", "afternoon-flash-sale", "--group", "wrNOSTORE", "--date",
                                     "2026-12-05", "--path", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert "this group has no store: the plan skips this template for it" in result.output
    assert "does not run on 2026-12-05" in result.output  # a Saturday; weekdays only


@pytest.mark.parametrize("args, message", [
    (["preview", "breakfast", "--group", "wrNJXL01"], "no template 'breakfast'; known: afternoon-flash-sale, "),
    (["preview", "weekday-breakfast", "--group", "wrNOPE"], "no group with chat_id 'wrNOPE'"),
    (["preview", "weekday-breakfast", "--group", "wrNJXL01", "--date", "12/01"], "not a date YYYY-MM-DD"),
    (["preview", "weekday-breakfast", "--group", "wrNJXL01", "--step", "lunch"],
     "has no step 'lunch'; steps: breakfast"),
])
def test_cli_preview_errors_are_clear_and_exit_2(store_group, args, message):
    result = runner.invoke(sop_app, [*args, "--path", str(EXAMPLES)])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_preview_refuses_templates_with_problems(store_group, tmp_path):
    write(tmp_path, "bad.yaml", "id: bad\nname: x\nsteps:\n  - {at: '08:00', text: '{{ stroe.name }}'}\n")
    result = runner.invoke(sop_app, ["preview", "bad", "--group", "wrNJXL01", "--path", str(tmp_path)])
    assert result.exit_code == 2
    assert "bad.yaml:4: steps[0].text: unknown variable 'stroe'" in result.output
    assert "fix them first" in result.output


def test_cli_lint_warns_when_a_template_targets_a_layer_the_layer_rules_do_not_define(tmp_path, monkeypatch):
    """`scrm sop lint` reads the layer rules (layers.rules_dir) and warns at the line of a layer id
    they do not define. Mutation tried: the command not passing the rules' layer ids to lint (the
    warning disappeared and the test failed)."""
    from scrm.config import reset_settings_cache

    monkeypatch.setenv("SCRM_LAYERS__RULES_DIR", str(Path(__file__).resolve().parents[2] / "layers"))
    reset_settings_cache()
    try:
        path, text = write(tmp_path, "winback.yaml", """
            id: winback
            name: 唤醒
            targets:
              member_layers: [{layer: dormant, at_least: 30%}]
              layers: [sleepy]
            steps:
              - {at: "10:00", text: 好久不见}
            """)
        result = runner.invoke(sop_app, ["lint", str(tmp_path)])
    finally:
        reset_settings_cache()
    assert result.exit_code == 0, result.output  # a warning, not an error
    warnings = [out for out in result.output.splitlines() if ": warning:" in out]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}:{line(text, 'sleepy')}: warning:"), result.output
    assert "'sleepy' is not a layer" in warnings[0]  # member_layers' dormant is one: no warning for it
