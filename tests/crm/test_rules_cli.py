"""``scrm crm rules preview`` and ``scrm crm rebuild`` through the real app: the preview shows a
customer's records with each fact's message and writes nothing; the rebuild builds them and says
what it wrote; bad arguments and broken rules are one line and exit 2.

Mutations tried: preview calling rebuild_customers first (failed: rows written); rebuild without
--all or ids accepted (failed: exit 0)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import scrm.crm.rules_cli  # noqa: F401  (adds the commands to crm_app)
from scrm.config import reset_settings_cache
from scrm.crm.models import FollowUp, ServiceEvent
from scrm.db import dispose_engines, make_engine, migrate
from tests.crm.builders import RULES_DIR, insert, local, msg, rows_of


@pytest.fixture
def cli(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'scrm.db'}"
    monkeypatch.setenv("SCRM_DATABASE__URL", url)
    monkeypatch.setenv("SCRM_CRM__RULES_DIR", str(RULES_DIR))
    monkeypatch.setenv("SCRM_SOP__TIMEZONE", "Asia/Shanghai")
    monkeypatch.setenv("COLUMNS", "200")
    reset_settings_cache()
    migrate(url)
    engine = make_engine(url)
    from scrm.cli import app

    def run(*args: str):
        return CliRunner().invoke(app, ["crm", *args])

    yield run, engine
    engine.dispose()
    dispose_engines()
    reset_settings_cache()


def test_preview_shows_the_records_and_writes_nothing(cli):
    run, engine = cli
    ids = insert(engine, [msg("c1", local(2026, 11, 23, 10), "订货30杯拿铁，下周三要，多少钱？"),
                          msg("c1", local(2026, 11, 23, 10, 5), "18元一杯，你自己看菜单", out=True, userid="rep1")])
    result = run("rules", "preview", "c1")
    assert result.exit_code == 0, result.output
    assert "record 1: 2026-11-23 10:00" in result.output
    assert f"意向: 订货  (intent-order, message #{ids[0]})" in result.output
    assert f"价格: 18  (price, message #{ids[1]})" in result.output
    assert "1 record, 1 risky reply, 0 unanswered turns (nothing written)" in result.output
    assert rows_of(engine, FollowUp) == [] and rows_of(engine, ServiceEvent) == []
    assert "no records" in run("rules", "preview", "nobody").output


def test_rebuild_builds_and_reports(cli):
    run, engine = cli
    insert(engine, [msg("c1", local(2026, 11, 23, 10), "在吗"), msg("c2", local(2026, 11, 23, 11), "在吗")])
    result = run("rebuild", "c1", "ghost")
    assert result.exit_code == 0, result.output
    assert "1 customer: 1 record (1 new, 0 changed, 0 removed)" in result.output
    assert "no messages for 1 customer: ghost" in result.output
    result = run("rebuild", "--all")
    assert result.exit_code == 0, result.output
    assert "2 customers: 2 records (1 new, 0 changed, 0 removed)" in result.output
    assert len(rows_of(engine, FollowUp)) == 2
    for args in (("rebuild",), ("rebuild", "--all", "c1")):
        bad = run(*args)
        assert bad.exit_code == 2 and "give customer ids or --all" in bad.output


def test_broken_rules_are_one_error_line(cli, tmp_path, monkeypatch):
    run, _ = cli
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "rules.yaml").write_text("questions: {markers: ['?']}\ndefault_next_step: 跟进\nfacts:\n"
                                    "  - {id: x, kind: price, label: 价格, regex: '(a+)+'}\n", encoding="utf-8")
    result = run("rules", "preview", "c1", "--rules", str(bad))
    assert result.exit_code == 2
    assert f"{bad / 'rules.yaml'}:4: facts[0].regex:" in result.output
    assert "fix them first (scrm crm rules lint)" in result.output
