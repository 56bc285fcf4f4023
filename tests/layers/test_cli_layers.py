"""`scrm layers lint / preview / run / history` as an operator types them, against a real (SQLite)
database and the shipped coffee-chain rules. Mutations tried are named in each docstring."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from rich.console import Console
from typer.testing import CliRunner

from scrm.config import reset_settings_cache
from scrm.db import dispose_engines, make_engine, migrate
from scrm.layers.cli import parse_at, render_report
from scrm.layers.lint import load_ruleset
from scrm.layers.models import CustomerLayer, LayerChange
from scrm.layers.report import PassReport
from scrm.stores.models import Store
from tests.layers.conftest import NOW, load
from tests.layers.oracle import World

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "layers"
DAY = dt.timedelta(days=1)


def coffee_world() -> World:
    """new (no order), first (one order yesterday), regular (3 orders this month), sleepy (one
    order 70 days ago), gone (deleted the employee)."""
    w = World(stores={"SH01": "上海"})
    people = ["new", "first", "regular", "sleepy", "gone"]
    for i, e in enumerate(people, 1):
        w.customers[e] = "active"
        w.follows.append((i, "u1", e, "st:SH01:1", "deleted_by_customer" if e == "gone" else "active",
                          NOW - 100 * DAY))
    w.orders += [("first", NOW - DAY, 2_500, 0), ("sleepy", NOW - 70 * DAY, 2_500, 0)]
    w.orders += [("regular", NOW - d * DAY, 3_000, 0) for d in (2, 9, 20)]
    return w


@pytest.fixture
def cli(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    monkeypatch.setenv("SCRM_DATABASE__URL", url)
    monkeypatch.setenv("SCRM_LAYERS__RULES_DIR", str(SHIPPED))
    monkeypatch.setenv("COLUMNS", "200")
    reset_settings_cache()
    migrate(url)
    engine = make_engine(url)
    from scrm.cli import app

    def run(*args: str):
        return CliRunner().invoke(app, ["layers", *args])

    yield run, engine
    engine.dispose()
    dispose_engines()
    reset_settings_cache()


def table_rows(output: str) -> list[list[str]]:
    """Rich table rows as lists of stripped cells."""
    return [[cell.strip() for cell in line.strip().strip("│┃").split("│")]
            for line in output.splitlines() if line.strip().startswith("│")]


# --------------------------------------------------------------------------------------------
# lint


def test_lint_passes_the_shipped_rules_and_fails_a_broken_folder_with_file_and_line(cli, tmp_path):
    run, _ = cli
    ok = run("lint")
    assert ok.exit_code == 0, ok.output
    assert "2 files, 0 problems" in ok.output
    broken = tmp_path / "broken"
    shutil.copytree(SHIPPED, broken)
    text = (broken / "layers.yaml").read_text(encoding="utf-8").replace("layer: repeat", "layer: repaet")
    (broken / "layers.yaml").write_text(text, encoding="utf-8")
    bad = run("lint", str(broken))
    assert bad.exit_code == 1
    wanted = next(i for i, line in enumerate(text.splitlines(), 1) if "layer: repaet" in line)
    assert f"{broken / 'layers.yaml'}:{wanted}: rules[3].layer: rule 'orders-3-30d' puts customers in 'repaet'" \
        in bad.output
    assert "2 files, 1 problem" in bad.output


def test_warnings_pass_lint_unless_strict(cli, tmp_path):
    """Mutation tried: `failed = errors or warnings` (strict ignored): the first run exits 1."""
    run, _ = cli
    folder = tmp_path / "rules"
    shutil.copytree(SHIPPED, folder)
    text = (folder / "layers.yaml").read_text(encoding="utf-8")
    # The catch-all buyer rule moved above the repeat rule: repeat can never match.
    bought = text[text.index("  - id: bought"):]
    text = text.replace(bought, "").replace("  - id: orders-3-30d", bought.rstrip("\n") + "\n\n  - id: orders-3-30d")
    (folder / "layers.yaml").write_text(text, encoding="utf-8")
    relaxed = run("lint", str(folder))
    assert relaxed.exit_code == 0, relaxed.output
    assert "warning: rules[4].when: rule 'orders-3-30d' can never match: rule 'bought'" in relaxed.output
    assert run("lint", str(folder), "--strict").exit_code == 1


def test_lint_with_stores_checks_tag_names_against_the_database(cli, tmp_path):
    run, engine = cli
    folder = tmp_path / "rules"
    shutil.copytree(SHIPPED, folder)
    tags = (folder / "tags.yaml").read_text(encoding="utf-8").replace("store_tag: 门店·{name}",
                                                                    "store_tag: 归属门店（销售跟进）·{name}")
    (folder / "tags.yaml").write_text(tags, encoding="utf-8")
    assert run("lint", str(folder), "--stores").exit_code == 0
    with engine.begin() as conn:
        conn.execute(sa.insert(Store.__table__), [dict(code="BJ09", name="瑞幸咖啡(北京首都国际机场T3航站楼店)",
                                                       city="北京")])
    result = run("lint", str(folder), "--stores")
    assert result.exit_code == 1
    assert "1 store name makes tag names over WeCom's 30 characters" in result.output


# --------------------------------------------------------------------------------------------
# preview, run, history: the real pass


def test_preview_shows_each_layer_and_rule_before_anything_is_written(cli):
    """Mutation tried: render_report listing every (layer, rule) count under each layer (the
    `layer == layer_id` filter made always true): the rows no longer match and the test fails."""
    run, engine = cli
    load(engine, coffee_world())
    result = run("preview", "--at", NOW.isoformat())
    assert result.exit_code == 0, result.output
    landed = {(row[0].split(" ")[0], row[1].split(":")[0]): row[2] for row in table_rows(result.output)
              if len(row) == 4 and row[0]}
    assert landed == {("new", "(default)"): "1", ("first_time", "bought"): "1", ("repeat", "orders-3-30d"): "1",
                      ("high_value", ""): "0", ("dormant", "quiet-60d"): "1", ("churned", "deleted"): "1"}
    assert "would move" in result.output
    assert "5 customers evaluated" in result.output and "5 would move layer" in result.output
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CustomerLayer.__table__)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(LayerChange.__table__)).scalar() == 0


def test_run_writes_the_layers_and_history_shows_when_and_by_which_rule(cli):
    """A first-time buyer who then stays silent 60 days turns dormant; `history` lists both moves
    with their rules. Mutation tried: history ordered by changed_at descending: the move order in
    the table flips and the test fails."""
    run, engine = cli
    load(engine, coffee_world())
    first = run("run", "--at", NOW.isoformat())
    assert first.exit_code == 0, first.output
    assert "5 moved layer" in first.output
    moves = {(row[0], row[1]): row[2] for row in table_rows(first.output) if len(row) == 3}
    assert moves[("(new)", "first_time 首单客")] == "1"
    later = (NOW + 61 * DAY).isoformat()
    second = run("run", "--at", later)
    assert second.exit_code == 0, second.output
    assert {(row[0], row[1]): row[2] for row in table_rows(second.output) if len(row) == 3} == {
        ("first_time 首单客", "dormant 沉睡"): "1", ("repeat 复购客", "dormant 沉睡"): "1"}
    history = run("history", "first")
    assert history.exit_code == 0, history.output
    assert "first: dormant 沉睡 since" in history.output and "by quiet-60d: 买过，但 60 天没有下单" in history.output
    rows = table_rows(history.output)
    assert [(r[1], r[2], r[3].split(":")[0]) for r in rows] == [
        ("(new)", "first_time 首单客", "bought"), ("first_time 首单客", "dormant 沉睡", "quiet-60d")]
    tz = ZoneInfo("Asia/Shanghai")
    assert rows[1][0] == (NOW + 61 * DAY).astimezone(tz).strftime("%Y-%m-%d %H:%M")
    unknown = run("history", "nobody")
    assert unknown.exit_code == 0 and "not layered yet" in unknown.output and "no moves recorded" in unknown.output


def test_preview_refuses_rules_with_errors_listing_them(cli, tmp_path):
    """An empty `layers` list is an error at its line (lint validates the parts one by one, so the
    list's own minimum is checked by hand). Mutation tried: that check removed: the test fails."""
    run, _ = cli
    (tmp_path / "layers.yaml").write_text("layers: []\ndefault_layer: new\n", encoding="utf-8")
    result = run("preview", "--path", str(tmp_path))
    assert result.exit_code == 2
    assert f"{tmp_path / 'layers.yaml'}:1: layers:" in result.output
    assert "fix them first (scrm layers lint)" in result.output


def test_a_bad_at_is_one_line_and_a_missing_schema_is_one_line(cli, tmp_path, monkeypatch):
    run, _ = cli
    bad = run("preview", "--at", "yesterday")
    assert bad.exit_code == 2 and "--at 'yesterday' is not an ISO date or time" in bad.output
    monkeypatch.setenv("SCRM_DATABASE__URL", f"sqlite:///{tmp_path / 'empty.db'}")
    reset_settings_cache()
    empty = run("history", "anyone")
    assert empty.exit_code == 2 and "run `scrm init` to create the schema?" in empty.output


# --------------------------------------------------------------------------------------------
# Rendering and --at, without a database


def test_at_without_an_offset_is_local_time():
    tz = ZoneInfo("Asia/Shanghai")
    assert parse_at("2026-12-01T09:00", tz) == dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)
    assert parse_at("2026-12-01", tz) == dt.datetime(2026, 11, 30, 16, 0, tzinfo=dt.UTC)
    assert parse_at("2026-12-01T09:00+00:00", tz) == dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def test_the_report_lists_layers_in_catalogue_order_with_shares_and_flags_unknown_layers():
    """A layer the pass stored that the rules no longer define (renamed in layers/) is shown as
    such, not dropped. Mutation tried: skipping layers absent from the rules: the row disappears."""
    rules = load_ruleset(SHIPPED)
    report = PassReport(customers=10, changed=3, moved=2, written=False)
    report.by_layer_rule.update({("dormant", "quiet-60d"): 2, ("new", None): 5, ("first_time", "bought"): 2,
                                 ("vip", "old-rule"): 1})
    report.moves.update({("new", "first_time"): 2})
    console = Console(record=True, width=200)
    render_report(console, report, rules, title="preview")
    out = console.export_text()
    rows = [r for r in table_rows(out) if len(r) == 4]
    assert [r[0].split(" ")[0] for r in rows if r[0]] == ["new", "first_time", "repeat", "high_value", "dormant",
                                                          "churned", "vip"]
    assert ["vip (not in the rules)", "old-rule", "1", "10.0%"] in rows
    assert ["new 新客", "(default)", "5", "50.0%"] in rows
    assert re.search(r"new 新客\s+│\s+first_time 首单客\s+│\s+2", out)
